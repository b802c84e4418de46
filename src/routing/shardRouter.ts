/**
 * tenant -> shard. The hash is FNV-1a over the tenant id: stable across
 * restarts and processes, cheap, and spreads short ids well.
 */
import type { ShardHandle } from './shardHandle.ts';

export function shardOf(tenantId: string, shards: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < tenantId.length; i++) {
    hash ^= tenantId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % shards;
}

export class ShardRouter {
  constructor(readonly shards: readonly ShardHandle[]) {}

  forTenant(tenantId: string): ShardHandle {
    return this.shards[shardOf(tenantId, this.shards.length)]!;
  }

  /**
   * Runs `each` on every tenant: the shards in parallel, each shard's
   * tenants one after another, so a background pass (migrations,
   * maintenance) keeps at most one call of its own in a shard's queue, ahead
   * of the tenants' calls.
   */
  async eachByShard(tenantIds: Iterable<string>, each: (tenantId: string) => Promise<void>): Promise<void> {
    const byShard: string[][] = this.shards.map(() => []);
    for (const tenantId of tenantIds) byShard[shardOf(tenantId, this.shards.length)]!.push(tenantId);
    await Promise.all(
      byShard.map(async (tenants) => {
        for (const tenantId of tenants) await each(tenantId);
      }),
    );
  }

  async stop(): Promise<void> {
    await Promise.all(this.shards.map((shard) => shard.stop()));
  }
}
