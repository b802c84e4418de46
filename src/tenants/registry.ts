/**
 * The front end's in-memory view of every tenant: its catalog record, the
 * quotas in force, and its calls in flight. Admission reads only this (never
 * the catalog), so a data call costs a Map lookup here.
 */
import { QUOTA_FIELDS, type Config, type QuotaValues } from '../config.ts';
import type { Catalog, TenantRecord } from '../catalog/catalog.ts';

export interface LiveTenant {
  record: TenantRecord;
  /** The plan's values with the tenant's overrides applied. */
  quotas: QuotaValues;
  /** Calls admitted and not yet answered. */
  inFlight: number;
  /** Set while DeleteTenant runs: new calls are refused. */
  deleting: boolean;
  /** Resolved whenever inFlight drops to zero. */
  idleWaiters: (() => void)[];
}

export class TenantRegistry {
  private readonly tenants = new Map<string, LiveTenant>();

  constructor(private readonly config: Config) {}

  load(catalog: Catalog): void {
    for (const record of catalog.allTenants()) this.put(record);
  }

  get size(): number {
    return this.tenants.size;
  }

  get(tenantId: string): LiveTenant | undefined {
    return this.tenants.get(tenantId);
  }

  /** Adds or replaces a tenant's record; calls in flight are kept. */
  put(record: TenantRecord): LiveTenant {
    const existing = this.tenants.get(record.tenantId);
    if (existing) {
      existing.record = record;
      existing.quotas = this.effectiveQuotas(record);
      return existing;
    }
    const live: LiveTenant = { record, quotas: this.effectiveQuotas(record), inFlight: 0, deleting: false, idleWaiters: [] };
    this.tenants.set(record.tenantId, live);
    return live;
  }

  remove(tenantId: string): void {
    this.tenants.delete(tenantId);
  }

  planExists(plan: string): boolean {
    return plan === '' || this.config.plans[plan] !== undefined;
  }

  effectiveQuotas(record: TenantRecord): QuotaValues {
    const plan = this.config.plans[record.plan] ?? this.config.plans[this.config.defaultPlan]!;
    const quotas = { ...plan };
    for (const field of QUOTA_FIELDS) {
      const override = record.quotas[field];
      if (override !== 0 && override !== undefined) quotas[field] = override;
    }
    return quotas;
  }

  begin(live: LiveTenant): void {
    live.inFlight++;
  }

  end(live: LiveTenant): void {
    live.inFlight--;
    if (live.inFlight === 0 && live.idleWaiters.length > 0) {
      const waiters = live.idleWaiters.splice(0);
      for (const wake of waiters) wake();
    }
  }

  /** Resolves true once the tenant has no calls in flight, false after `timeoutMs`. */
  waitIdle(live: LiveTenant, timeoutMs: number): Promise<boolean> {
    if (live.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      live.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}
