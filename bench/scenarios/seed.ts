/**
 * Tenants through the public API, as a client would create them:
 * CreateTenant (plan `bench`, unlimited overrides) then one Batch that builds
 * the tenant's table and fills it, `lanes` tenants in flight at once.
 */
import * as grpc from '@grpc/grpc-js';
import type { PackageDefinition } from '@grpc/proto-loader';
import { BENCH_PLAN, UNLIMITED_PROTO_QUOTAS } from '../lib/benchConfig.ts';
import { unary } from '../lib/tenants.ts';
import { ACCOUNTS_DDL, ACCOUNTS_FILL, EVENTS_DDL } from './common.ts';

export interface SeededTenant {
  tenantId: string;
  key: string;
}

export interface SeedOptions {
  host: string;
  def: PackageDefinition;
  adminKey: string;
  count: number;
  /** Tenant ids are `${prefix}${i}`, zero-padded. */
  prefix: string;
  /** `accounts` with this many rows (point reads), or `events` empty (inserts). */
  table: { accounts: number } | 'events';
  /** CreateTenant calls in flight. Default 32. */
  lanes?: number;
  /** Quota overrides on the wire (default: every quota unlimited). */
  quotas?: Record<string, string>;
  onProgress?: (done: number) => void;
}

export interface Seeded {
  tenants: SeededTenant[];
  ms: number;
}


export async function seedTenants(options: SeedOptions): Promise<Seeded> {
  const t0 = performance.now();
  const client = new grpc.Client(options.host, grpc.credentials.createInsecure());
  const createTenant = unary(client, options.def, 'tenantd.v1.TenantService', 'CreateTenant', 120_000);
  const batch = unary(client, options.def, 'tenantd.v1.SqlService', 'Batch', 120_000);
  const statements =
    options.table === 'events'
      ? [{ sql: EVENTS_DDL }]
      : [{ sql: ACCOUNTS_DDL }, { sql: ACCOUNTS_FILL, params: [{ integer_value: String(options.table.accounts) }] }];
  const width = String(options.count - 1).length;
  const tenants: SeededTenant[] = new Array(options.count);
  let next = 0;
  let done = 0;
  const one = async (i: number) => {
    const tenantId = `${options.prefix}${String(i).padStart(width, '0')}`;
    const created = await createTenant(
      { tenant_id: tenantId, tenant: { plan: BENCH_PLAN, quotas: options.quotas ?? UNLIMITED_PROTO_QUOTAS, display_name: 'scenario' } },
      options.adminKey,
    );
    const key = created.api_key.key as string;
    await batch({ statements }, key);
    tenants[i] = { tenantId, key };
    done++;
    if (done % 250 === 0 || done === options.count) options.onProgress?.(done);
  };
  const lanes = Array.from({ length: Math.min(options.lanes ?? 32, options.count) }, async () => {
    while (next < options.count) await one(next++);
  });
  try {
    await Promise.all(lanes);
  } finally {
    client.close();
  }
  return { tenants, ms: performance.now() - t0 };
}
