/**
 * Creates the benchmark's tenants through the public API (CreateTenant with
 * unlimited quotas, then Execute to build and fill `accounts`), as a client
 * would, and returns their keys.
 */
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition, PackageDefinition } from '@grpc/proto-loader';
import { BENCH_PLAN, UNLIMITED_PROTO_QUOTAS } from './benchConfig.ts';

export interface BenchTenant {
  tenantId: string;
  key: string;
}

/** A unary caller for `service.method` that authenticates with the key it is given. */
export function unary(client: grpc.Client, def: PackageDefinition, service: string, method: string, deadlineMs = 60_000) {
  const m = (def[service] as Record<string, MethodDefinition<object, object>>)[method]!;
  return (request: object, key: string): Promise<any> =>
    new Promise((resolve, reject) => {
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${key}`);
      client.makeUnaryRequest(
        m.path,
        m.requestSerialize as (v: object) => Buffer,
        m.responseDeserialize as (b: Buffer) => object,
        request,
        md,
        { deadline: Date.now() + deadlineMs },
        (error, response) => (error ? reject(new Error(`${service}.${method}: ${error.message}`)) : resolve(response)),
      );
    });
}

export const POINT_READ = 'SELECT id, name, balance FROM accounts WHERE id = ?';
/** The single-row write of bench:peer and `bench:sql --write`. */
export const POINT_UPDATE = 'UPDATE accounts SET balance = balance + 1 WHERE id = ?';

export async function createTenants(
  host: string,
  def: PackageDefinition,
  adminKey: string,
  count: number,
  rows: number,
  onProgress?: (done: number) => void,
  /** Tenant ids are `<prefix><5-digit index>`: distinct prefixes keep the ids of several servers apart. */
  prefix = 'bench',
): Promise<BenchTenant[]> {
  const client = new grpc.Client(host, grpc.credentials.createInsecure());
  const createTenant = unary(client, def, 'tenantd.v1.TenantService', 'CreateTenant');
  const execute = unary(client, def, 'tenantd.v1.SqlService', 'Execute');
  const tenants: BenchTenant[] = new Array(count);
  let next = 0;
  let done = 0;
  const one = async (i: number) => {
    const tenantId = `${prefix}${String(i).padStart(5, '0')}`;
    const created = await createTenant(
      { tenant_id: tenantId, tenant: { plan: BENCH_PLAN, quotas: UNLIMITED_PROTO_QUOTAS, display_name: 'bench' } },
      adminKey,
    );
    const key = created.api_key.key as string;
    await execute({ sql: 'CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)' }, key);
    await execute(
      {
        sql:
          'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) ' +
          "INSERT INTO accounts (id, name, balance) SELECT i, 'account-' || i, i * 100 FROM n",
        params: [{ integer_value: String(rows) }],
      },
      key,
    );
    tenants[i] = { tenantId, key };
    if (++done % 100 === 0) onProgress?.(done);
  };
  const lanes = Array.from({ length: 16 }, async () => {
    while (next < count) await one(next++);
  });
  try {
    await Promise.all(lanes);
  } finally {
    client.close();
  }
  return tenants;
}
