/**
 * npm run bench:transaction [-- --ops 2000] [--concurrency 1] [--sync normal|full]
 *
 * What an interactive transaction costs over a Batch: the same three point
 * statements (read a row, update it, read it back), sent as one Batch, and
 * as a Transaction (begin, three statements, commit: five round trips on one
 * stream) through src/client/transaction.ts. tenantd runs in a child
 * process; each of `concurrency` closed-loop clients has its own tenant, so
 * the figure is the protocol's cost, not lock waits.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { sqlClient, transaction } from '../src/client/transaction.ts';
import { packageDefinition } from '../src/protos.ts';
import { UNLIMITED_PROTO_QUOTAS, type BenchServerArgs } from './lib/benchConfig.ts';
import { startChild } from './lib/child.ts';

const { values } = parseArgs({
  options: {
    ops: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '1' },
    sync: { type: 'string', default: 'normal' },
  },
  strict: true,
});
const ops = Number(values.ops);
const concurrency = Number(values.concurrency);
const serverArgs: BenchServerArgs = { dataDir: mkdtempSync(join(tmpdir(), 'tenantd-bench-tx-')), shards: 2, sync: values.sync as BenchServerArgs['sync'], maxOpenDbs: 100 };

type Stub = grpc.Client & Record<string, (req: unknown, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: any) => void) => void>;
const loaded = grpc.loadPackageDefinition(packageDefinition()) as any;

function unary(stub: Stub, method: string, request: unknown, md: grpc.Metadata): Promise<any> {
  return new Promise((resolve, reject) => stub[method]!(request, md, (e, r) => (e ? reject(e) : resolve(r))));
}

function auth(key: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${key}`);
  return md;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function measure(name: string, clients: number, perClient: number, op: (client: number, i: number) => Promise<void>): Promise<{ name: string; mean: number; p50: number; p99: number; perSecond: number }> {
  for (let c = 0; c < clients; c++) for (let i = 0; i < 50; i++) await op(c, i); // warm-up
  const times: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; i < perClient; i++) {
        const t0 = performance.now();
        await op(c, i);
        times.push(performance.now() - t0);
      }
    }),
  );
  const wall = performance.now() - started;
  times.sort((a, b) => a - b);
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  return { name, mean, p50: percentile(times, 50), p99: percentile(times, 99), perSecond: (times.length / wall) * 1000 };
}

const server = await startChild(new URL('./lib/serveTenantd.ts', import.meta.url), serverArgs);
try {
  const address = `127.0.0.1:${server.ready.port}`;
  const admin = new loaded.tenantd.v1.TenantService(address, grpc.credentials.createInsecure()) as Stub;
  const sql = new loaded.tenantd.v1.SqlService(address, grpc.credentials.createInsecure()) as Stub;
  const txClient = sqlClient(address);
  const keys: grpc.Metadata[] = [];
  for (let c = 0; c < concurrency; c++) {
    const created = await unary(admin, 'CreateTenant', { tenant_id: `txbench${c}`, tenant: { quotas: UNLIMITED_PROTO_QUOTAS } }, auth(String(server.ready.adminKey)));
    const md = auth(created.api_key.key);
    keys.push(md);
    await unary(sql, 'Execute', { sql: 'CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)' }, md);
    await unary(sql, 'Execute', { sql: 'INSERT INTO accounts SELECT value, 100 FROM generate_series(1, 1000)' }, md).catch(async () => {
      for (let i = 1; i <= 1000; i++) await unary(sql, 'Execute', { sql: 'INSERT INTO accounts VALUES (?, 100)', params: [{ integer_value: String(i) }] }, md);
    });
  }
  const id = (i: number) => ({ integer_value: String((i % 1000) + 1) });
  const three = (i: number) => [
    { sql: 'SELECT balance FROM accounts WHERE id = ?', params: [id(i)] },
    { sql: 'UPDATE accounts SET balance = balance + 1 WHERE id = ?', params: [id(i)] },
    { sql: 'SELECT balance FROM accounts WHERE id = ?', params: [id(i)] },
  ];
  const perClient = Math.ceil(ops / concurrency);
  const batch = await measure('Batch of 3', concurrency, perClient, async (c, i) => {
    await unary(sql, 'Batch', { statements: three(i) }, keys[c]!);
  });
  const tx = await measure('Transaction of 3', concurrency, perClient, async (c, i) => {
    await transaction(
      txClient,
      keys[c]!,
      async (t) => {
        const n = BigInt((i % 1000) + 1);
        await t.execute('SELECT balance FROM accounts WHERE id = ?', [n]);
        await t.execute('UPDATE accounts SET balance = balance + 1 WHERE id = ?', [n]);
        await t.execute('SELECT balance FROM accounts WHERE id = ?', [n]);
      },
      { mode: 'IMMEDIATE' },
    );
  });
  const line = (s = '') => process.stdout.write(`${s}\n`);
  line(`tenantd transaction overhead: ${ops} ops, concurrency ${concurrency} (one tenant per client), --sync ${serverArgs.sync}, 2 shards`);
  line(`machine: ${cpus().length}x ${cpus()[0]?.model ?? '?'}, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  for (const r of [batch, tx]) {
    line(`  ${r.name.padEnd(18)} mean ${r.mean.toFixed(2)} ms  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  ${r.perSecond.toFixed(0)}/s`);
  }
  line(`  overhead: a transaction takes ${(tx.mean / batch.mean).toFixed(2)}x the time of the Batch (mean), +${(tx.mean - batch.mean).toFixed(2)} ms`);
  admin.close();
  sql.close();
  txClient.close();
} finally {
  await server.stop();
  rmSync(serverArgs.dataDir, { recursive: true, force: true });
}
