/**
 * npm run bench:peer [-- --quick | --duration 10s] [--rounds 2] [--tenants 1000] [--rows 100] [--concurrency 64] [--sync-flush shared|per-commit]
 *
 * tenantd against the peer most users would pick instead: one PostgreSQL
 * with a schema per tenant. Same client process, same load for both: 64
 * calls in flight, a random tenant and id per call; point reads, then
 * single-row durable UPDATEs; rounds alternate which server goes first.
 *
 * - tenantd: a child process (`--sync full`, `--sync-flush` as given: per-commit, the server's default, 1,000 open databases), the
 *   telemetry SDK installed as main.ts does, over grpc-js on one channel.
 * - PostgreSQL: a throwaway cluster (lib/postgres.ts: initdb into a temp
 *   dir, run as `postgres`, fsync and synchronous_commit on), a `pg.Pool`
 *   of 64 connections, schema-qualified prepared statements with the
 *   generic plan. Removed at the end, also on Ctrl-C.
 *
 * Prints calls/s, p50, p99, server CPU per call (tenantd: its process;
 * PostgreSQL: every process of the cluster, from /proc) and client CPU per
 * call, with ratios, and the machine's load and steal over each round.
 */
import { mkdirSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition } from '@grpc/proto-loader';
import pg from 'pg';
import { packageDefinition } from '../src/protos.ts';
import { syncFlushFlag, type BenchServerArgs } from './lib/benchConfig.ts';
import { startChild, type ChildServer } from './lib/child.ts';
import { parseDuration } from './lib/loadgen.ts';
import { startPostgres, type PostgresCluster } from './lib/postgres.ts';
import { cpuStealMs } from './lib/procStat.ts';
import { createTenants, POINT_READ, POINT_UPDATE, type BenchTenant } from './lib/tenants.ts';

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    duration: { type: 'string' },
    rounds: { type: 'string' },
    tenants: { type: 'string', default: '1000' },
    rows: { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '64' },
    shards: { type: 'string' },
    'sync-flush': { type: 'string', default: 'per-commit' },
  },
  strict: true,
});
const quick = flags.quick!;
const durationMs = parseDuration(flags.duration ?? (quick ? '3s' : '10s'), '--duration');
const rounds = Number(flags.rounds ?? (quick ? 1 : 2));
const tenantCount = Number(flags.tenants);
const rows = Number(flags.rows);
const concurrency = Number(flags.concurrency);

const line = (s = '') => process.stdout.write(`${s}\n`);
const def = packageDefinition();

// ---- the two targets behind one interface ----

interface Target {
  name: 'tenantd' | 'PostgreSQL';
  /** Runs one call: a read or an update of `id` in tenant `t`. */
  call(kind: Kind, t: number, id: number): Promise<void>;
  serverCpuMs(): Promise<number>;
  memoryBytes(): Promise<number>;
  memoryLabel: string;
}

type Kind = 'read' | 'update';

function tenantdTarget(child: ChildServer, tenants: BenchTenant[]): Target {
  const client = new grpc.Client(`127.0.0.1:${child.ready.port}`, grpc.credentials.createInsecure());
  const m = (def['tenantd.v1.SqlService'] as Record<string, MethodDefinition<object, object>>).Execute!;
  const metadata = tenants.map((t) => {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${t.key}`);
    return md;
  });
  return {
    name: 'tenantd',
    call: (kind, t, id) =>
      new Promise((resolve, reject) =>
        client.makeUnaryRequest(
          m.path,
          m.requestSerialize as (v: object) => Buffer,
          m.responseDeserialize as (b: Buffer) => object,
          { sql: kind === 'read' ? POINT_READ : POINT_UPDATE, params: [{ integer_value: String(id) }] },
          metadata[t]!,
          (error) => (error ? reject(error) : resolve()),
        ),
      ),
    serverCpuMs: async () => (await child.sample()).processMs,
    memoryBytes: async () => Number((await child.sample()).counters?.rssBytes ?? 0),
    memoryLabel: 'RSS',
  };
}

function postgresStatements(): { read: pg.QueryConfig[]; update: pg.QueryConfig[] } {
  return {
    read: Array.from({ length: tenantCount }, (_, t) => ({ name: `r${t}`, text: `SELECT id, name, balance FROM t${t}.accounts WHERE id = $1` })),
    update: Array.from({ length: tenantCount }, (_, t) => ({ name: `u${t}`, text: `UPDATE t${t}.accounts SET balance = balance + 1 WHERE id = $1` })),
  };
}

/**
 * Prepares every tenant's statements on every connection of the pool, as a
 * long-running application's pool has them: otherwise a round's calls pay
 * PostgreSQL's parse and plan whenever the pool hands them a connection that
 * has not run that tenant's statement yet (up to connections x tenants x 2 of
 * them), which a short round would count as the steady state. The UPDATE is
 * prepared with an id no row has: nothing is written.
 */
async function preparePostgres(pool: pg.Pool): Promise<void> {
  const { read, update } = postgresStatements();
  const clients = await Promise.all(Array.from({ length: concurrency }, () => pool.connect()));
  try {
    await Promise.all(
      clients.map(async (client) => {
        for (let t = 0; t < tenantCount; t++) {
          await client.query({ ...read[t]!, values: [1] });
          await client.query({ ...update[t]!, values: [-1] });
        }
      }),
    );
  } finally {
    for (const client of clients) client.release();
  }
}

function postgresTarget(cluster: PostgresCluster, pool: pg.Pool): Target {
  const { read, update } = postgresStatements();
  return {
    name: 'PostgreSQL',
    call: async (kind, t, id) => {
      const q = kind === 'read' ? read[t]! : update[t]!;
      await pool.query({ name: q.name, text: q.text, values: [id] });
    },
    serverCpuMs: async () => cluster.cpuMs(),
    memoryBytes: async () => cluster.pssBytes(),
    memoryLabel: 'PSS',
  };
}

// ---- the load ----

interface RoundResult {
  target: Target['name'];
  kind: Kind;
  calls: number;
  errors: number;
  callsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  serverUsPerCall: number;
  clientUsPerCall: number;
  load: number;
  stealPct: number | null;
}

/** 64 calls in flight for `ms`, random tenant and id per call; warm-up first, not counted. */
async function drive(target: Target, kind: Kind, ms: number, warmupMs: number): Promise<RoundResult> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: unknown;
  let measuring = false;
  let stop = false;
  const lane = async () => {
    while (!stop) {
      const t = Math.floor(Math.random() * tenantCount);
      const id = 1 + Math.floor(Math.random() * rows);
      const start = performance.now();
      try {
        await target.call(kind, t, id);
        if (measuring) latencies.push(performance.now() - start);
      } catch (error) {
        if (measuring) errors++;
        firstError ??= error;
      }
    }
  };
  const lanes = Array.from({ length: concurrency }, lane);
  await new Promise((r) => setTimeout(r, warmupMs));
  const server0 = await target.serverCpuMs();
  const client0 = process.cpuUsage();
  const steal0 = cpuStealMs();
  const load0 = loadavg()[0]!;
  const t0 = performance.now();
  measuring = true;
  await new Promise((r) => setTimeout(r, ms));
  measuring = false;
  const wall = performance.now() - t0;
  const client = process.cpuUsage(client0);
  const server1 = await target.serverCpuMs();
  const steal1 = cpuStealMs();
  stop = true;
  await Promise.all(lanes);
  if (errors > 0) line(`  ${target.name} ${kind}: ${errors} errors, first: ${String(firstError)}`);
  latencies.sort((a, b) => a - b);
  const calls = latencies.length + errors;
  const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((latencies.length * p) / 100))] ?? NaN;
  return {
    target: target.name,
    kind,
    calls,
    errors,
    callsPerSecond: (latencies.length * 1000) / wall,
    p50Ms: pct(50),
    p99Ms: pct(99),
    serverUsPerCall: ((server1 - server0) * 1000) / calls,
    clientUsPerCall: (client.user + client.system) / calls,
    load: (load0 + loadavg()[0]!) / 2,
    stealPct: steal0 === null || steal1 === null ? null : ((steal1 - steal0) / (wall * availableParallelism())) * 100,
  };
}

// ---- setup ----

async function fillPostgres(pool: pg.Pool): Promise<void> {
  // A schema per tenant, one table each, the same rows as tenantd's tenants.
  for (let from = 0; from < tenantCount; from += 50) {
    const sql: string[] = [];
    for (let t = from; t < Math.min(tenantCount, from + 50); t++) {
      sql.push(
        `CREATE SCHEMA t${t}`,
        `CREATE TABLE t${t}.accounts (id integer PRIMARY KEY, name text NOT NULL, balance bigint NOT NULL)`,
        `INSERT INTO t${t}.accounts SELECT i, 'account-' || i, i * 100 FROM generate_series(1, ${rows}) i`,
      );
    }
    await pool.query(sql.join(';\n'));
  }
  await pool.query('ANALYZE');
}

const cleanups: (() => Promise<void>)[] = [];
let cleaning: Promise<void> | null = null;
/** Stops and removes what was started, newest first; a second caller waits for the same work. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch((e: unknown) => void process.stderr.write(`cleanup: ${String(e)}\n`));
  })();
  return cleaning;
}
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  // `on`, not `once`: Ctrl-C reaches this process twice (from the terminal, and relayed by tsx),
  // and a second signal without a handler would end it before the cleanup is done.
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: stopping PostgreSQL and tenantd, removing their data\n`);
    void cleanup().then(() => process.exit(130));
  });
}

line(`machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} at start`);
line(`plan: tenantd --sync full --sync-flush ${flags['sync-flush']}; ${tenantCount} tenants x ${rows} rows; -c ${concurrency}, random tenant and id per call; ${rounds} round(s) of ${durationMs / 1000} s per server and kind, order alternated`);

try {
  const serverArgs: BenchServerArgs = {
    dataDir: mkdtempSync(join(tmpdir(), 'tenantd-peer-')),
    shards: Number(flags.shards ?? availableParallelism()),
    sync: 'full',
    syncFlush: syncFlushFlag(flags['sync-flush']),
    maxOpenDbs: Math.max(1000, tenantCount),
  };
  cleanups.push(async () => rmSync(serverArgs.dataDir, { recursive: true, force: true }));
  const child = await startChild(new URL('./lib/serveTenantd.ts', import.meta.url), serverArgs);
  cleanups.push(() => child.stop());
  const cluster = await startPostgres(concurrency + 10);
  cleanups.push(() => cluster.stop());
  // idleTimeoutMillis 0: pg.Pool closes a connection idle for 10 s by default, which every
  // PostgreSQL connection is while tenantd's round runs: the next round would reconnect and
  // prepare everything again, cold, inside its measurement.
  const pool = new pg.Pool({ host: '127.0.0.1', port: cluster.port, user: 'postgres', database: 'postgres', max: concurrency, idleTimeoutMillis: 0 });
  // An idle connection's error (the server going away, e.g. at the cleanup) is emitted on the pool;
  // unhandled, it would end the bench with a stack trace instead of its report.
  pool.on('error', (error) => void process.stderr.write(`PostgreSQL pool: ${error.message}\n`));
  cleanups.push(() => pool.end());

  const t0 = performance.now();
  const tenants = await createTenants(`127.0.0.1:${child.ready.port}`, def, String(child.ready.adminKey), tenantCount, rows);
  await fillPostgres(pool);
  line(`setup: ${tenantCount} tenants in each in ${((performance.now() - t0) / 1000).toFixed(1)} s; PostgreSQL ${(await pool.query('SHOW server_version')).rows[0].server_version} in ${cluster.dir}`);

  const t1 = performance.now();
  await preparePostgres(pool);
  line(`PostgreSQL: ${tenantCount * 2} statements prepared on each of the pool's ${concurrency} connections in ${((performance.now() - t1) / 1000).toFixed(1)} s`);
  const targets = [tenantdTarget(child, tenants), postgresTarget(cluster, pool)];
  // Every tenant touched once by each (databases open, statements prepared on the pool's connections), then the rounds.
  for (const target of targets) {
    for (let t = 0; t < tenantCount; t += concurrency) {
      await Promise.all(Array.from({ length: Math.min(concurrency, tenantCount - t) }, (_, k) => target.call('read', t + k, 1)));
    }
  }
  const results: RoundResult[] = [];
  const warmupMs = Math.min(2_000, Math.max(500, durationMs / 5));
  for (const kind of ['read', 'update'] as Kind[]) {
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? targets : [...targets].reverse();
      for (const target of order) {
        const r = await drive(target, kind, durationMs, warmupMs);
        results.push(r);
        line(
          `  ${kind.padEnd(6)} round ${round + 1} ${target.name.padEnd(10)} ${r.callsPerSecond.toFixed(0).padStart(6)} calls/s  p50 ${r.p50Ms.toFixed(1)} ms  p99 ${r.p99Ms.toFixed(1)} ms  ` +
            `server ${r.serverUsPerCall.toFixed(0)} µs/call  client ${r.clientUsPerCall.toFixed(0)} µs/call  (load ${r.load.toFixed(1)}, steal ${r.stealPct?.toFixed(1) ?? 'n/a'}%)`,
        );
      }
    }
  }
  const memory = await Promise.all(targets.map(async (t) => `${t.name} ${(await t.memoryBytes() / 2 ** 20).toFixed(0)} MiB ${t.memoryLabel}`));

  // Means over the rounds, per target and kind.
  const mean = (target: Target['name'], kind: Kind) => {
    const rs = results.filter((r) => r.target === target && r.kind === kind);
    const avg = (f: (r: RoundResult) => number) => rs.reduce((s, r) => s + f(r), 0) / rs.length;
    return {
      callsPerSecond: avg((r) => r.callsPerSecond),
      p50Ms: avg((r) => r.p50Ms),
      p99Ms: avg((r) => r.p99Ms),
      serverUs: avg((r) => r.serverUsPerCall),
      clientUs: avg((r) => r.clientUsPerCall),
    };
  };
  const table: string[] = [];
  table.push('| | calls/s | p50 | p99 | server CPU per call | client CPU per call |', '|---|---|---|---|---|---|');
  for (const kind of ['read', 'update'] as Kind[]) {
    table.push(`| **${kind === 'read' ? 'point reads' : 'single-row UPDATEs, durable'}** | | | | | |`);
    const a = mean('tenantd', kind);
    const b = mean('PostgreSQL', kind);
    for (const [name, m] of [['tenantd', a], ['PostgreSQL', b]] as const) {
      table.push(`| ${name} | ${m.callsPerSecond.toFixed(0)} | ${m.p50Ms.toFixed(1)} ms | ${m.p99Ms.toFixed(1)} ms | ${m.serverUs.toFixed(0)} µs | ${m.clientUs.toFixed(0)} µs |`);
    }
    table.push(
      `| tenantd / PostgreSQL | ${(a.callsPerSecond / b.callsPerSecond).toFixed(2)}x | ${(a.p50Ms / b.p50Ms).toFixed(2)}x | ${(a.p99Ms / b.p99Ms).toFixed(2)}x | ` +
        `**${(a.serverUs / b.serverUs).toFixed(2)}x** | ${(a.clientUs / b.clientUs).toFixed(2)}x |`,
    );
  }
  line();
  for (const row of table) line(row);
  line();
  line(`memory after the load: ${memory.join(', ')}`);
  const readRatio = mean('tenantd', 'read').serverUs / mean('PostgreSQL', 'read').serverUs;
  const writeRatio = mean('tenantd', 'update').serverUs / mean('PostgreSQL', 'update').serverUs;
  line(`server CPU per call, tenantd / PostgreSQL: reads ${readRatio.toFixed(2)}x, durable writes ${writeRatio.toFixed(2)}x (goal for writes <= 1.00: ${writeRatio <= 1 ? 'met' : 'MISSED'})`);

  const stamp = new Date().toISOString().replace(/[:.]/g, '-').replace(/-\d+Z$/, 'Z');
  const resultsDir = new URL('./results/', import.meta.url);
  mkdirSync(resultsDir, { recursive: true });
  writeFileSync(
    new URL(`peer-${stamp}.md`, resultsDir),
    `# bench:peer ${new Date().toISOString()}\n\n${cpus()[0]?.model ?? ''}, ${availableParallelism()} cores, Node ${process.version}; ` +
      `tenantd --sync full --sync-flush ${flags['sync-flush']}; ${tenantCount} tenants x ${rows} rows, -c ${concurrency}, ${rounds} round(s) x ${durationMs / 1000} s${quick ? ' (--quick)' : ''}\n\n` +
      `${results.map((r) => `- ${r.kind} ${r.target}: ${r.callsPerSecond.toFixed(0)} calls/s, p50 ${r.p50Ms.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)} ms, server ${r.serverUsPerCall.toFixed(0)} µs, client ${r.clientUsPerCall.toFixed(0)} µs, load ${r.load.toFixed(1)}, steal ${r.stealPct?.toFixed(1) ?? 'n/a'}%`).join('\n')}\n\n` +
      `${table.join('\n')}\n\nmemory: ${memory.join(', ')}\n`,
  );
} finally {
  await cleanup();
}
