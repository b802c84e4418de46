/**
 * npm run bench:migration [-- --tenants 100000] [--shards N] [--runtime tsx|node] [--before-s 5]
 *
 * A schema migration over many tenants, and what it costs a client of the
 * same node meanwhile.
 *
 *   1. A real tenantd in a child process (bench/quota/server.ts). Two tenants
 *      are created through CreateTenant: a template, and a reader with a
 *      100-row table. The server stops; the other `--tenants` - 2 are
 *      bulk-seeded as copies of the template (bench/quota/seed.ts, as
 *      bench:scale does), and the server starts again, loading them all.
 *   2. A client reads the reader's table by primary key, one call at a time,
 *      throughout: for `--before-s` seconds before the migration, and while
 *      ApplyMigration's pass runs over every tenant (GetMigration polled every
 *      250 ms until it leaves RUNNING).
 *   3. Figures: the pass's duration and rate; the point reads' p50/p99/max
 *      before and during, and the verdict p99(during) <= 2 x p99(before);
 *      GetMigration's latency (answered from memory).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startChild, buildCompiled, type ChildServer } from './lib/child.ts';
import { line, loadLine, machineLine, numberFlag, parseFlags, percentile, progress, RawClient, sleep, sortedCopy, UNLIMITED_QUOTAS, verdict } from './quota/common.ts';
import { seedTenants } from './quota/seed.ts';
import type { ServerArgs, ServerReady } from './quota/server.ts';

const flags = parseFlags(process.argv.slice(2), ['--tenants', '--shards', '--runtime', '--before-s'], []);
const tenantCount = Math.max(3, Math.round(numberFlag(flags, '--tenants', 100_000)));
const shards = Math.round(numberFlag(flags, '--shards', availableParallelism()));
const beforeMs = numberFlag(flags, '--before-s', 5) * 1000;
const runtime = flags.get('--runtime') ?? 'tsx';
if (runtime !== 'node' && runtime !== 'tsx') throw new Error('--runtime: node or tsx');
if (runtime === 'node') buildCompiled();

const idOf = (i: number) => `m${String(i).padStart(6, '0')}`;
const READER = 'reader';
const POINT_READ = 'SELECT v FROM kv WHERE k = ?';
const fmt = (ms: number) => `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;

const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-bench-migration-'));
let child: ChildServer | null = null;
const start = async () => {
  const c = await startChild(new URL('./quota/server.ts', import.meta.url), { dataDir, shards } satisfies ServerArgs, [], runtime === 'node');
  child = c;
  return c.ready as unknown as ServerReady;
};

line(machineLine());
try {
  let ready = await start();
  let client = new RawClient(`127.0.0.1:${ready.port}`);
  let createTenant = client.method('TenantService', 'CreateTenant');
  let execute = client.method('SqlService', 'Execute');
  const must = async <T>(what: string, p: ReturnType<typeof execute<T>>): Promise<T> => {
    const r = await p;
    if (!r.ok) throw new Error(`${what}: ${r.error.code} ${r.error.details}`);
    return r.response;
  };
  await must('CreateTenant template', createTenant({ tenant_id: idOf(0), tenant: {} }, ready.adminKey));
  const reader = await must<any>('CreateTenant reader', createTenant({ tenant_id: READER, tenant: { quotas: UNLIMITED_QUOTAS } }, ready.adminKey));
  const readerKey = reader.api_key.key as string;
  await must('CREATE TABLE', execute({ sql: 'CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)' }, readerKey));
  await must('INSERT', execute({ sql: "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) INSERT INTO kv SELECT x, 'value ' || x FROM c" }, readerKey));
  client.close();
  await child!.stop();
  child = null;

  const s0 = performance.now();
  const rest = Array.from({ length: tenantCount - 2 }, (_, k) => k + 1);
  seedTenants({ dataDir, indexes: rest, idOf, planOf: () => 'free', templateOf: () => idOf(0), onProgress: (n) => progress(`bulk seeding ${n}/${rest.length}`) });
  process.stderr.write('\n');
  line(`seeded ${tenantCount.toLocaleString('en-US')} tenants (${rest.length.toLocaleString('en-US')} bulk copies) in ${((performance.now() - s0) / 1000).toFixed(1)} s`);

  ready = await start();
  line(`server: ${runtime}, ${shards} shards, loaded ${ready.tenants.toLocaleString('en-US')} tenants in ${(ready.startServerMs / 1000).toFixed(2)} s`);
  client = new RawClient(`127.0.0.1:${ready.port}`);
  execute = client.method('SqlService', 'Execute');
  const apply = client.method('SchemaService', 'ApplyMigration');
  const getMigration = client.method('SchemaService', 'GetMigration');
  await sleep(2_000); // the shard workers finish starting

  // Point reads, one at a time, each stamped with when it started.
  const reads: { at: number; ms: number }[] = [];
  let reading = true;
  let k = 0;
  const readLoop = (async () => {
    while (reading) {
      const t0 = performance.now();
      await must('point read', execute({ sql: POINT_READ, params: [{ integer_value: String((k++ % 100) + 1) }] }, readerKey));
      reads.push({ at: t0, ms: performance.now() - t0 });
    }
  })();

  await sleep(beforeMs);
  const applyAt = performance.now();
  await must('ApplyMigration', apply({ migration_id: 'add-audit', sql: 'CREATE TABLE audit (at INTEGER, what TEXT); CREATE INDEX audit_at ON audit (at)' }, ready.adminKey));
  const polls: number[] = [];
  let final: any;
  for (;;) {
    await sleep(250);
    const p0 = performance.now();
    final = await must<any>('GetMigration', getMigration({ name: 'migrations/add-audit' }, ready.adminKey));
    polls.push(performance.now() - p0);
    progress(`pass: ${final.tenants_done}/${tenantCount} done, ${final.tenants_failed} failed`);
    if (final.state !== 'RUNNING') break;
  }
  const doneAt = performance.now();
  reading = false;
  await readLoop;
  process.stderr.write('\n');

  const before = sortedCopy(reads.filter((r) => r.at < applyAt).map((r) => r.ms));
  const during = sortedCopy(reads.filter((r) => r.at >= applyAt && r.at < doneAt).map((r) => r.ms));
  const passS = (doneAt - applyAt) / 1000;
  const pollsSorted = sortedCopy(polls);
  line(`migration over ${tenantCount.toLocaleString('en-US')} tenants: ${final.state} in ${passS.toFixed(1)} s (${(tenantCount / passS).toFixed(0)} tenants/s), done ${final.tenants_done}, failed ${final.tenants_failed}`);
  line();
  line('| point reads | n | p50 | p99 | max |');
  line('| --- | --- | --- | --- | --- |');
  for (const [name, l] of [['before the pass', before], ['during the pass', during]] as const) {
    line(`| ${name} | ${l.length} | ${fmt(percentile(l, 50))} | ${fmt(percentile(l, 99))} | ${fmt(l[l.length - 1] ?? NaN)} |`);
  }
  line();
  const ratio = percentile(during, 99) / percentile(before, 99);
  line(`p99 during / before: ${ratio.toFixed(2)} (target <= 2: ${verdict(ratio, 2)})`);
  line(`GetMigration (progress from memory), ${polls.length} polls: p50 ${fmt(percentile(pollsSorted, 50))}, max ${fmt(pollsSorted[pollsSorted.length - 1] ?? NaN)}`);
  client.close();
} finally {
  await (child as ChildServer | null)?.stop();
  rmSync(dataDir, { recursive: true, force: true });
  line(`done; ${loadLine()}`);
}
