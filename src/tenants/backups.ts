/**
 * Backups, restores and maintenance: the front end's side. A tenant's shard
 * writes its snapshots, a step at a time between its other calls, and takes
 * restored files over (only that thread ever opens the tenant's live
 * database); the front end streams the bytes, in files under
 * `<data-dir>/tmp/`, which is emptied at start. Checks of whole files run
 * off the shards (fileChecks.ts).
 */
import type { CancelSignal } from '../grpc/cancelSignal.ts';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { copyFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tenantDbPath, type MaintenanceOperation, type RewriteOperation } from '../protocol.ts';
import type { ShardRouter } from '../routing/shardRouter.ts';
import type { FileChecks } from './fileChecks.ts';
import type { TenantRegistry } from './registry.ts';

export interface MaintenanceResult {
  tenantId: string;
  ok: boolean;
  message: string;
}

export class Backups {
  readonly tmpDir: string;

  constructor(
    private readonly dataDir: string,
    private readonly registry: TenantRegistry,
    private readonly router: ShardRouter,
    private readonly fileChecks: FileChecks,
  ) {
    this.tmpDir = join(dataDir, 'tmp');
    mkdirSync(this.tmpDir, { recursive: true });
    // Left by a stream or a snapshot that a crash cut short.
    for (const name of readdirSync(this.tmpDir)) rmSync(join(this.tmpDir, name), { recursive: true, force: true });
  }

  shardOf(tenantId: string): number {
    return this.router.forTenant(tenantId).index;
  }

  /** A fresh path in the temporary directory (nothing is created). */
  tmpFile(kind: 'backup' | 'restore'): string {
    return join(this.tmpDir, `${kind}-${randomUUID()}.sqlite`);
  }

  /** The bytes of the tenant's live database and its WAL: what a snapshot of it would about copy. */
  liveBytes(tenantId: string): number {
    const path = tenantDbPath(this.dataDir, tenantId);
    let bytes = 0;
    for (const file of [path, `${path}-wal`]) {
      try {
        bytes += statSync(file).size;
      } catch {
        // Not there (yet): nothing to count.
      }
    }
    return bytes;
  }

  /**
   * integrity_check of a copy that must stay byte for byte as it came (a
   * move's staged snapshot): the check opens a database as a tenant, which
   * writes to it, so it runs on a scratch copy of `file`.
   */
  async checkCopy(file: string, tenantId: string): Promise<string[]> {
    const scratch = this.tmpFile('restore');
    try {
      await copyFile(file, scratch);
      return await this.fileChecks.integrityProblems(scratch, tenantId);
    } finally {
      await Promise.all(['', '-wal', '-shm'].map((suffix) => rm(`${scratch}${suffix}`, { force: true })));
    }
  }

  /** A consistent copy of the tenant's database, written by its shard; the caller removes it. */
  async snapshot(tenantId: string): Promise<string> {
    const file = this.tmpFile('backup');
    try {
      await this.router.forTenant(tenantId).call({ op: 'snapshot', tenantId, file });
    } catch (error) {
      rmSync(file, { force: true });
      throw error;
    }
    return file;
  }

  /**
   * integrity_check of a snapshot, off the shard: the snapshot's online
   * backup copies the pages as they are, so what is wrong in the database is
   * wrong in the copy. Needs room for one copy of the database in tmp/.
   */
  private async integrityCheck(tenantId: string, signal?: CancelSignal): Promise<{ ok: boolean; message: string }> {
    const file = await this.snapshot(tenantId);
    try {
      const problems = await this.fileChecks.integrityProblems(file, tenantId, signal);
      return problems.length === 0 ? { ok: true, message: 'ok' } : { ok: false, message: problems.join('; ') };
    } finally {
      // Unlinking a large file takes a while: not on the main thread.
      await Promise.all([rm(file, { force: true }), rm(`${file}-wal`, { force: true })]);
    }
  }

  /**
   * VACUUM, ANALYZE or OPTIMIZE rewrite the live database, so they need it
   * to themselves: the tenant's shard closes it and holds the tenant's calls
   * (they run afterwards, in order) while the file-task pool works on it.
   * The shard's other tenants go on meanwhile.
   */
  private async rewrite(tenantId: string, operation: RewriteOperation, slot: number, signal?: CancelSignal): Promise<{ ok: boolean; message: string }> {
    const shard = this.router.forTenant(tenantId);
    await shard.call({ op: 'hold', tenantId });
    try {
      return { ok: true, message: await this.fileChecks.rewrite(tenantDbPath(this.dataDir, tenantId), tenantId, operation, signal) };
    } finally {
      // A shard that died meanwhile comes back holding nothing.
      await shard.call({ op: 'release', tenantId, slot }).catch(() => undefined);
    }
  }

  /**
   * Runs `operation` on each tenant (every tenant when
   * `tenantIds` is null), the shards in parallel and each shard's tenants
   * one after another, calling `progress` as each one finishes. Stops
   * starting new ones once `signal` aborts, and interrupts the one running.
   */
  async maintain(
    operation: MaintenanceOperation,
    tenantIds: string[] | null,
    progress: (result: MaintenanceResult, done: number, total: number) => void,
    signal?: CancelSignal,
  ): Promise<void> {
    const ids = tenantIds ?? Array.from(this.registry.all(), (live) => live.record.tenantId);
    let done = 0;
    await this.router.eachByShard(ids, async (tenantId) => {
      if (signal?.aborted) return;
      const live = this.registry.get(tenantId);
      let result: MaintenanceResult;
      if (!live || live.deleting) {
        result = { tenantId, ok: false, message: 'the tenant was deleted' };
      } else {
        try {
          const outcome =
            operation === 'INTEGRITY_CHECK' ? await this.integrityCheck(tenantId, signal) : await this.rewrite(tenantId, operation, live.slot.slot, signal);
          result = { tenantId, ...outcome };
        } catch (error) {
          result = { tenantId, ok: false, message: (error as Error).message };
        }
      }
      progress(result, ++done, ids.length);
    });
  }
}
