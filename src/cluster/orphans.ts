/**
 * Copies of tenants that this node holds but another live node owns: what a
 * move leaves behind when it is cut short at the wrong moment — the target
 * killed after it installed its copy but before the flip (the move rolled
 * back to the source), or a source restarted within the grace period, whose
 * timer to remove its old copy died with it.
 *
 * Such a copy is never served (calls go to the owner), but it takes disk and
 * keeps catalog rows. The sweep sets it aside once placement has said,
 * continuously for the whole grace period, that a live node other than this
 * one owns it, while this node's lease is fresh (so its view of placement is
 * current) and no move of the tenant is running here. "Aside" means
 * `<data-dir>/orphans/<tenant>-<time>/`, not deleted: an operator who gave a
 * dead node's slots away by hand may still want what was on it.
 */
import { join } from 'node:path';
import type { TenantManager } from '../tenants/manager.ts';
import type { TenantRegistry } from '../tenants/registry.ts';
import type { Membership } from './membership.ts';
import type { MoveFences } from './moves.ts';
import type { Placement } from './placement.ts';

export interface OrphanSweepOptions {
  self: string;
  dataDir: string;
  placement: Placement;
  membership: Membership;
  fences: MoveFences;
  registry: TenantRegistry;
  manager: TenantManager;
  /** How long a copy must be seen owned elsewhere before it is set aside. */
  graceMs: number;
  onLog: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

export class OrphanSweeper {
  /** Tenant → when this node first saw it owned elsewhere (and has every sweep since). */
  private readonly seen = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;

  constructor(private readonly o: OrphanSweepOptions) {}

  /** Sweeps every `graceMs / 4` (at least every second, at most every minute). */
  start(): void {
    const every = Math.min(60_000, Math.max(1_000, Math.floor(this.o.graceMs / 4)));
    this.timer = setInterval(() => {
      this.sweep().catch((error: unknown) => this.o.onLog('warn', 'the orphan sweep failed', { error: String(error) }));
    }, every);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One pass; returns the tenants it set aside. */
  async sweep(now = Date.now()): Promise<string[]> {
    if (this.running) return [];
    this.running = true;
    try {
      const orphans = this.ownedElsewhere(now);
      for (const tenantId of this.seen.keys()) if (!orphans.has(tenantId)) this.seen.delete(tenantId);
      const setAside: string[] = [];
      for (const [tenantId, owner] of orphans) {
        const since = this.seen.get(tenantId);
        if (since === undefined) {
          this.seen.set(tenantId, now);
          continue;
        }
        if (now - since < this.o.graceMs) continue;
        // Checked again right before: a move may have begun, or placement changed, meanwhile.
        if (!this.ownedElsewhere(now).has(tenantId)) continue;
        const path = join(this.o.dataDir, 'orphans', `${tenantId}-${new Date(now).toISOString().replace(/[:.]/g, '-')}`);
        try {
          await this.o.manager.release(tenantId, path);
          this.seen.delete(tenantId);
          setAside.push(tenantId);
          this.o.onLog('warn', 'set aside a copy of a tenant another node owns', { tenant: tenantId, owner, path, seenForMs: now - since });
        } catch (error) {
          this.o.onLog('warn', 'could not set aside a copy of a tenant another node owns', { tenant: tenantId, owner, error: String(error) });
        }
      }
      return setAside;
    } finally {
      this.running = false;
    }
  }

  /** This node's tenants that a live other node owns, with that node; empty while this node's view may be stale. */
  private ownedElsewhere(now = Date.now()): Map<string, string> {
    const found = new Map<string, string>();
    if (!this.o.membership.fresh()) return found;
    for (const live of this.o.registry.all()) {
      const tenantId = live.record.tenantId;
      if (live.deleting || this.o.fences.get(tenantId)) continue;
      const owner = this.o.placement.ownerOf(tenantId);
      if (!owner || owner.node === this.o.self || this.o.placement.node(owner.node) === null) continue;
      // Moved here, and placement has not shown the flip yet: it may still come. A
      // flip that has not come within the grace period never will (the move rolled back).
      const adopted = this.o.fences.adoptedEpoch(tenantId, owner.epoch, false) === undefined ? undefined : this.o.fences.adoptedAt(tenantId);
      if (adopted !== undefined && now - adopted < this.o.graceMs) continue;
      found.set(tenantId, owner.node);
    }
    return found;
  }
}
