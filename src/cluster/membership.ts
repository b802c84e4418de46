/**
 * This node's registration: `nodes/<id>` under a lease that is kept alive,
 * and the fence that follows from it.
 *
 * A node may accept writes only while it can be sure no other node was
 * given its tenants. etcd revokes a lease TTL seconds after its last
 * renewal, and only then can the leader move the node's slots away, so a
 * node that has renewed within the last 3/4 TTL (by its own monotonic
 * clock, at least a second short of the TTL) still owns what it owned.
 * Past that it fences itself: writes are refused until a new lease is
 * granted AND the placement has been reloaded from etcd (a zombie resumed
 * after SIGSTOP must not act on the placement it cached before it stopped).
 * A brief etcd restart costs nothing: renewals resume before the fence.
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
  /** Watchdog ticks in a row on which this node's key was missing from the placement it watches. */
  private missingTicks = 0;

  constructor(
    private readonly etcd: Etcd3,
    private readonly placement: Placement,
    private readonly self: NodeInfo,
    private readonly options: MembershipOptions,
  ) {}

  private watchdog: NodeJS.Timeout | null = null;

  async start(): Promise<void> {
    await this.grant();
    // etcd3 reports a lost lease only a whole TTL after the last renewal, by which time this node is
    // fenced. Past half the TTL without a renewal (etcd restarting, or partitioned away), ask for a
    // new lease: the moment etcd answers again, the node is renewed without ever being fenced.
    //
    // And the registration must be there while the lease lives: a put that etcd applied after this node
    // had given up on it (a grant timing out as etcd came back) leaves the key on a lease that is then
    // revoked, which deletes it, while the new lease is renewed without a key. Missing from the watched
    // placement on two ticks in a row (one may be the watch catching up), it is put again.
    this.watchdog = setInterval(() => {
      if (this.stopped || this.regranting !== null) return;
      const staleMs = performance.now() - this.renewedAt;
      if (staleMs > (this.options.ttlSeconds * 1000) / 2) {
        this.regrant();
        return;
      }
      const lease = this.lease;
      this.missingTicks = lease !== null && this.placement.node(this.self.id) === null ? this.missingTicks + 1 : 0;
      if (lease === null || this.missingTicks < 2) return;
      this.missingTicks = 0;
      this.options.onLog('warn', 'cluster registration missing while its lease lives; registering again', { node: this.self.id });
      this.register(lease).catch((error: unknown) => this.options.onLog('warn', 'cannot register again yet', { error: String(error) }));
    }, 1000);
    this.watchdog.unref();
  }

  /** True while this node may accept writes for the tenants it owns. */
  fresh(): boolean {
    return performance.now() - this.renewedAt < this.freshForMs();
  }

  /**
   * etcd drops the lease TTL after the last renewal it processed, which is no
   * earlier than the one this node saw confirmed; a quarter of the TTL (at
   * least a second) is kept as margin for clocks and for the time a write
   * takes once admitted.
   */
  private freshForMs(): number {
    const ttlMs = this.options.ttlSeconds * 1000;
    return ttlMs - Math.max(1000, ttlMs / 4);
  }

  /** Milliseconds since the last confirmed renewal (for errors and status). */
  staleForMs(): number {
    return Math.round(performance.now() - this.renewedAt);
  }

  private async grant(): Promise<void> {
    const previous = this.lease;
    const lease = this.etcd.lease(this.options.ttlSeconds, { autoKeepAlive: true });
    this.lease = lease;
    // The registration moves to the new lease below; the old one (if etcd still has it) must not outlive it.
    void previous?.revoke().catch(() => undefined);
    lease.on('keepaliveSucceeded', () => {
      if (this.lease === lease) this.renewedAt = performance.now();
    });
    lease.on('lost', (error: Error) => {
      if (this.lease !== lease || this.stopped) return;
      // Not a reason to fence at once: etcd may only be restarting, and it cannot have dropped the lease
      // before its TTL ran out, which fresh() measures. A new lease is asked for meanwhile.
      this.options.onLog('warn', 'cluster lease keep-alive failed; asking for a new lease', { error: error.message, staleMs: this.staleForMs() });
      this.regrant();
    });
    // Bounded: a grant that hangs (etcd gone mid-call) must not stop the next attempt.
    const within = <T>(work: Promise<T>): Promise<T> =>
      Promise.race([
        work,
        new Promise<T>((_, reject) => setTimeout(() => reject(new Error('etcd did not answer in time')), this.options.ttlSeconds * 1000).unref()),
      ]);
    try {
      await within(this.register(lease));
      // What this node cached may be older than the lease it just got.
      await within(this.placement.reload());
    } catch (error) {
      if (this.lease === lease) this.lease = null;
      void lease.revoke().catch(() => undefined);
      throw error;
    }
    this.renewedAt = performance.now();
    this.options.onLog('info', 'cluster lease granted', { node: this.self.id, ttlSeconds: this.options.ttlSeconds });
  }

  /** Puts this node's key under `lease`. */
  private async register(lease: Lease): Promise<void> {
    await lease.put(`${NODES}${this.self.id}`).value(JSON.stringify({ grpc: this.self.grpc, internal: this.self.internal }));
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
    if (this.watchdog) clearInterval(this.watchdog);
    const lease = this.lease;
    this.lease = null;
    this.renewedAt = -Infinity;
    await lease?.revoke().catch(() => undefined);
  }
}
