/**
 * This node's registration: `nodes/<id>` under a lease that is kept alive,
 * and the fence that follows from it.
 *
 * A node may accept writes only while it can be sure no other node was
 * given its tenants. etcd revokes a lease TTL seconds after its last
 * renewal, and only then can the leader move the node's slots away, so a
 * node that has renewed within the last 2/3 TTL (by its own monotonic
 * clock) still owns what it owned. Past that, or once the lease is known
 * lost, it fences itself: writes are refused until a new lease is granted
 * AND the placement has been reloaded from etcd (a zombie resumed after
 * SIGSTOP must not act on the placement it cached before it stopped).
 */
import type { Etcd3, Lease } from 'etcd3';
import { NODES, type NodeInfo, type Placement } from './placement.ts';

export interface MembershipOptions {
  ttlSeconds: number;
  onLog: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

export class Membership {
  private lease: Lease | null = null;
  /** performance.now() of the last renewal etcd confirmed; -Infinity while fenced. */
  private renewedAt = -Infinity;
  private stopped = false;
  private regranting: Promise<void> | null = null;

  constructor(
    private readonly etcd: Etcd3,
    private readonly placement: Placement,
    private readonly self: NodeInfo,
    private readonly options: MembershipOptions,
  ) {}

  async start(): Promise<void> {
    await this.grant();
  }

  /** True while this node may accept writes for the tenants it owns. */
  fresh(): boolean {
    return performance.now() - this.renewedAt < (this.options.ttlSeconds * 1000 * 2) / 3;
  }

  /** Milliseconds since the last confirmed renewal (for errors and status). */
  staleForMs(): number {
    return Math.round(performance.now() - this.renewedAt);
  }

  private async grant(): Promise<void> {
    const lease = this.etcd.lease(this.options.ttlSeconds, { autoKeepAlive: true });
    this.lease = lease;
    lease.on('keepaliveSucceeded', () => {
      if (this.lease === lease) this.renewedAt = performance.now();
    });
    lease.on('lost', (error: Error) => {
      if (this.lease !== lease || this.stopped) return;
      this.renewedAt = -Infinity;
      this.options.onLog('warn', 'cluster lease lost; refusing writes until it is granted again', { error: error.message });
      this.regrant();
    });
    await lease.put(`${NODES}${this.self.id}`).value(JSON.stringify({ grpc: this.self.grpc, internal: this.self.internal }));
    // What this node cached may be older than the lease it just got.
    await this.placement.reload();
    this.renewedAt = performance.now();
    this.options.onLog('info', 'cluster lease granted', { node: this.self.id, ttlSeconds: this.options.ttlSeconds });
  }

  private regrant(): void {
    this.regranting ??= (async () => {
      while (!this.stopped) {
        try {
          await this.grant();
          return;
        } catch (error) {
          this.options.onLog('warn', 'cannot get a cluster lease yet', { error: String(error) });
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    })().finally(() => (this.regranting = null));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const lease = this.lease;
    this.lease = null;
    this.renewedAt = -Infinity;
    await lease?.revoke().catch(() => undefined);
  }
}
