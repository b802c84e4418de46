/**
 * The front end's in-memory view of every tenant: its catalog record, the
 * quotas in force, and its slot of shared quota state. Admission reads only
 * this and the slot (never the catalog), so a data call costs a Map lookup
 * here plus a few Atomics.
 */
import { QUOTA_FIELDS, type Config, type QuotaValues } from '../config.ts';
import type { Catalog, TenantRecord } from '../catalog/catalog.ts';
import { LatencyWindow } from '../quota/latency.ts';
import type { QuotaTable, SlotRef } from '../quota/quotaTable.ts';

export interface LiveTenant {
  record: TenantRecord;
  /** The plan's values with the tenant's overrides applied. */
  quotas: QuotaValues;
  slot: SlotRef;
  /** Set while DeleteTenant runs: new calls are refused. */
  deleting: boolean;
  /** Woken when the calls in flight drop to zero; null until someone waits. */
  idleWaiters: (() => void)[] | null;
  /** Created on the tenant's first call; dropped again after two minutes without one. */
  latency: LatencyWindow | null;
  errorsByCode: Map<string, number> | null;
  /** Events appended since the server started. */
  eventsTotal: number;
  /** Microseconds of shard time charged to the tenant since the server started (admission takes them from its slot). */
  shardMicrosTotal: number;
}

/** How often finish() looks for latency windows whose calls have all expired. */
const LATENCY_SWEEP_MS = 60_000;

export class TenantRegistry {
  private readonly tenants = new Map<string, LiveTenant>();
  /**
   * The tenants holding a latency window. A node whose tenants all call now
   * and then would otherwise keep one for each of them (100,000 tenants:
   * ~100 MB); dropped windows cost only recently active tenants memory.
   */
  private readonly timed = new Set<LiveTenant>();
  /** How many tenants are at each schema version: migration progress without counting the catalog. */
  private readonly versions = new Map<number, number>();
  private nextLatencySweep = Date.now() + LATENCY_SWEEP_MS;

  constructor(
    private readonly config: Config,
    readonly table: QuotaTable,
  ) {}

  load(catalog: Catalog): void {
    for (const record of catalog.eachTenant()) this.put(record);
    catalog.shrinkMemory();
  }

  /** Every tenant, as the registry holds them (the catalog's rows, in memory). */
  all(): IterableIterator<LiveTenant> {
    return this.tenants.values();
  }

  get size(): number {
    return this.tenants.size;
  }

  get(tenantId: string): LiveTenant | undefined {
    return this.tenants.get(tenantId);
  }

  /** Adds or replaces a tenant's record; its counters and calls in flight are kept. */
  put(record: TenantRecord): LiveTenant {
    const quotas = this.effectiveQuotas(record);
    let live = this.tenants.get(record.tenantId);
    if (live) {
      this.countVersion(live.record.schemaVersion, -1);
      live.record = record;
      live.quotas = quotas;
    } else {
      live = { record, quotas, slot: this.table.allocate(), deleting: false, idleWaiters: null, latency: null, errorsByCode: null, eventsTotal: 0, shardMicrosTotal: 0 };
      this.tenants.set(record.tenantId, live);
    }
    this.countVersion(record.schemaVersion, 1);
    // Takes effect on the next admission: there is no other copy of the limits.
    this.table.setLimits(live.slot, quotas);
    return live;
  }

  remove(tenantId: string): void {
    const live = this.tenants.get(tenantId);
    if (!live) return;
    this.tenants.delete(tenantId);
    this.countVersion(live.record.schemaVersion, -1);
    this.timed.delete(live);
    this.table.release(live.slot);
  }

  /** The server-wide ceiling on any statement's run time (--max-query-timeout-ms). */
  get maxQueryTimeoutMs(): number {
    return this.config.maxQueryTimeoutMs;
  }

  /**
   * The plan a tenant is stored with: '' (none given) becomes today's
   * --default-plan, so a restart with another default leaves it alone.
   */
  resolvePlan(plan: string): string {
    return plan === '' ? this.config.defaultPlan : plan;
  }

  /** Tenants per schema version. */
  schemaVersions(): ReadonlyMap<number, number> {
    return this.versions;
  }

  private countVersion(version: number, delta: number): void {
    const n = (this.versions.get(version) ?? 0) + delta;
    if (n === 0) this.versions.delete(version);
    else this.versions.set(version, n);
  }

  planExists(plan: string): boolean {
    return plan === '' || this.config.plans[plan] !== undefined;
  }

  effectiveQuotas(record: Pick<TenantRecord, 'plan' | 'quotas'>): QuotaValues {
    const plan = this.config.plans[record.plan] ?? this.config.plans[this.config.defaultPlan]!;
    let quotas: QuotaValues | null = null;
    for (const field of QUOTA_FIELDS) {
      const override = record.quotas[field];
      if (override !== 0 && override !== undefined) (quotas ??= { ...plan })[field] = override;
    }
    // Without overrides the tenant shares its plan's object (read-only).
    return quotas ?? plan;
  }

  /** Ends an admitted call: the one place the in-flight count goes down. */
  finish(live: LiveTenant, code: string, durationMs: number): void {
    this.table.countRequest(live.slot, code !== 'OK');
    if (code !== 'OK') {
      live.errorsByCode ??= new Map();
      live.errorsByCode.set(code, (live.errorsByCode.get(code) ?? 0) + 1);
    }
    const now = Date.now();
    if (live.latency === null) {
      live.latency = new LatencyWindow(now);
      this.timed.add(live);
    }
    live.latency.record(durationMs, now);
    if (now >= this.nextLatencySweep) this.dropExpiredLatency(now);
    if (this.table.leave(live.slot) === 0 && live.idleWaiters !== null) {
      const waiters = live.idleWaiters;
      live.idleWaiters = null;
      for (const wake of waiters) wake();
    }
  }

  /** Drops the latency windows whose calls have all left the window (usage reports zeros for them either way). */
  private dropExpiredLatency(now: number): void {
    this.nextLatencySweep = now + LATENCY_SWEEP_MS;
    for (const live of this.timed) {
      if (live.latency === null || live.latency.expired(now)) {
        live.latency = null;
        this.timed.delete(live);
      }
    }
  }

  /** Tenants holding a latency window now (for tests and the scale bench). */
  get latencyWindows(): number {
    return this.timed.size;
  }

  /** A call refused before admission still counts as a request and an error. */
  refused(live: LiveTenant, code: string): void {
    this.table.countRequest(live.slot, true);
    live.errorsByCode ??= new Map();
    live.errorsByCode.set(code, (live.errorsByCode.get(code) ?? 0) + 1);
  }

  /** Resolves true once the tenant has no calls in flight, false after `timeoutMs`. */
  waitIdle(live: LiveTenant, timeoutMs: number): Promise<boolean> {
    if (this.table.inFlight(live.slot) === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      (live.idleWaiters ??= []).push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}
