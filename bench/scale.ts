/**
 * npm run bench:scale [-- --quick | --tenants 100000] [--api-tenants 10000] [--concurrency 32] [--shards N] [--sweep 20000 | 0]
 *                     [--sync full|normal] [--sample 1000] [--runtime node|tsx] [--max-open-dbs N] [--keep-data] [--profile]
 *
 * 100,000 registered tenants on one node.
 *
 *   1. A real tenantd in a child process (bench/quota/server.ts: startServer,
 *      compiled to dist/ and run by plain node as `npm start` runs it, or
 *      with --runtime tsx from the sources; stock plans, --max-open-dbs as configured by default unless told, --sync full unless told).
 *      The first `--api-tenants` tenants (default 10,000) are created through
 *      CreateTenant (plans free/pro/enterprise in turn), `--concurrency` calls
 *      in flight: one SQLite file each; the creation rate is reported. The
 *      shard workers are the bottleneck there (file creation, fsync, closing
 *      LRU victims), about 100 tenants/s on 2 cores, so 100,000 would take
 *      ~17 minutes: the rest are bulk-seeded while the server is stopped
 *      (bench/quota/seed.ts: copies of a database file the server created,
 *      catalog rows and key hashes written through the server's Catalog), the
 *      same state CreateTenant leaves. Pass --api-tenants 100000 for all
 *      through the API. 2 x `--sample` tenants spread over the whole range
 *      have an `accounts` table (100 rows), for the latency probes below.
 *   2. The server is stopped and started again on the same data directory, so
 *      it loads every tenant from the catalog: start-up time, the server
 *      process's RSS (/proc/<pid>/status VmRSS, all threads) after start and
 *      after touching `--sample` tenants (target <= 300 MB), and the shared
 *      quota state per tenant.
 *   3. Latency seen by a client of a point read (Execute), one call at a
 *      time, from a process of its own: on `--sample` tenants never touched
 *      since the restart (their database is not open, their key not yet
 *      cached; target p99 <= 5 ms), against calls to tenants whose database
 *      is open. Twice, on different cold tenants: from a grpc-js client
 *      (quota/probe.ts), and from a client on gRPC's C core (Python grpcio,
 *      quota/probe_grpcio.py) when /usr/bin/python3 has it, a client that
 *      does not stop for its own garbage collection as a Node one does.
 *
 * The data directory is under /tmp and removed at the end (unless --keep-data).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statfsSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { status as Status } from '@grpc/grpc-js';
import { allocatePage, kBytesPerSlot, kSlotsPerPage } from '../src/quota/layout.ts';
import { defaultConfig, type SyncMode } from '../src/config.ts';
import { buildCompiled, startChild, type ChildServer } from './lib/child.ts';
import { cpuStealMs } from './lib/procStat.ts';
import {
  fmtMs,
  line,
  loadLine,
  machineLine,
  memoryOf,
  numberFlag,
  parseFlags,
  percentile,
  progress,
  RawClient,
  sleep,
  sortedCopy,
  verdict,
  type Unary,
} from './quota/common.ts';
import { startGrpcioProbe, startProbe, type Probe, type ProbeCall, type ProbeResult } from './quota/probe.ts';
import { seedTenants } from './quota/seed.ts';
import type { ServerArgs, ServerReady } from './quota/server.ts';

const flags = parseFlags(
  process.argv.slice(2),
  ['--tenants', '--concurrency', '--shards', '--sync', '--sample', '--api-tenants', '--runtime', '--max-open-dbs', '--sweep'],
  ['--quick', '--keep-data', '--profile'],
);
const tenantCount = Math.round(numberFlag(flags, '--tenants', flags.has('--quick') ? 10_000 : 100_000));
const concurrency = Math.round(numberFlag(flags, '--concurrency', 32));
const shards = Math.round(numberFlag(flags, '--shards', availableParallelism()));
const sync = (flags.get('--sync') ?? 'full') as SyncMode;
if (sync !== 'full' && sync !== 'normal') throw new Error('--sync: full or normal');
const sample = Math.min(Math.round(numberFlag(flags, '--sample', 1_000)), Math.floor(tenantCount / 3));
/** Created through CreateTenant; the rest (if any) are bulk-seeded while the server is stopped (quota/seed.ts). */
const apiTenants = Math.min(tenantCount, Math.round(numberFlag(flags, '--api-tenants', 10_000)));

/** `node`: the server runs compiled, as `npm start` and the Docker image run it; `tsx`: from the sources. */
const runtime = flags.get('--runtime') ?? 'node';
if (runtime !== 'node' && runtime !== 'tsx') throw new Error('--runtime: node or tsx');
if (runtime === 'node') buildCompiled();

const maxOpenDbs = Math.round(numberFlag(flags, '--max-open-dbs', defaultConfig().maxOpenDbs));

const RSS_TARGET_MB = 300;
const COLD_P99_TARGET_MS = 5;
const PLANS = ['free', 'pro', 'enterprise'];
const POINT_READ = 'SELECT id, name, balance FROM accounts WHERE id = ?';
const ROWS = 100;

const idOf = (i: number) => `s${String(i).padStart(6, '0')}`;
/**
 * Three sets evenly spread over all tenants: `touched` are called after the
 * restart, `cold` only by the grpc-js cold probe, `coldC` only by the C-core one.
 */
const step = tenantCount / sample;
const spread = (third: number) => Array.from({ length: sample }, (_, k) => Math.floor(k * step) + Math.floor((third * step) / 3));
const touched = spread(0);
const cold = spread(1);
const coldC = spread(2);
const withTable = new Set([...touched, ...cold, ...coldC]);
/** Step 4: this many other tenants get a first call, evenly spread over the rest. */
const sweepCount =
  flags.get('--sweep') === '0' ? 0 : Math.min(Math.round(numberFlag(flags, '--sweep', flags.has('--quick') ? 3_000 : 20_000)), tenantCount - withTable.size);
const SWEEP_CHUNK = 2_000;
const IDLE_SETTLE_MS = 30_000;

const mb = (mib: number) => `${mib.toFixed(1)} MiB`;

/** Dirty and under-writeback page cache (/proc/meminfo), MiB; null where there is none. */
function dirtyPageCacheMiB(): number | null {
  try {
    const info = readFileSync('/proc/meminfo', 'utf8');
    const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(info)?.[1] ?? 0);
    return (kib('Dirty') + kib('Writeback')) / 1024;
  } catch {
    return null;
  }
}
const rssLine = (pid: number) => {
  const m = memoryOf(pid);
  return m === null ? { text: 'n/a (no /proc)', rss: NaN } : { text: `RSS ${mb(m.rssMiB)} (peak ${mb(m.hwmMiB)})`, rss: m.rssMiB };
};

line(machineLine());
const fs = statfsSync(tmpdir());
line(
  `plan: ${tenantCount.toLocaleString('en-US')} tenants, ${apiTenants.toLocaleString('en-US')} of them via CreateTenant with ${concurrency} in flight` +
    `${apiTenants < tenantCount ? ', the rest bulk-seeded' : ''}; server in a child process (${runtime === 'node' ? 'compiled, plain node' : 'tsx'}): ${shards} shards, ` +
    `sync ${sync}, max-open-dbs ${maxOpenDbs}${maxOpenDbs === defaultConfig().maxOpenDbs ? ' (default)' : ''}; probes on ${sample} + ${sample} tenants; ` +
    `${tmpdir()} has ${((fs.bavail * fs.bsize) / 2 ** 30).toFixed(0)} GiB and ${fs.ffree.toLocaleString('en-US')} inodes free`,
);

const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-bench-scale-'));
const serverArgs: ServerArgs = { dataDir, shards, sync, maxOpenDbs };
let child: ChildServer | null = null;
let client: RawClient | null = null;
/** The latency probes run in a process of their own (quota/probe.ts), the bench's big heap out of their way. */
const probe = startProbe(runtime === 'node');
/** The same probe with gRPC's C core (Python grpcio), where installed: a client that does not stop for its own GC. */
const probeC = startGrpcioProbe();

async function start(execArgv: string[] = []): Promise<{ child: ChildServer; ready: ServerReady; wallMs: number }> {
  const t0 = performance.now();
  const c = await startChild(new URL('./quota/server.ts', import.meta.url), serverArgs, execArgv, runtime === 'node');
  return { child: c, ready: c.ready as ServerReady, wallMs: performance.now() - t0 };
}

async function addTable(execute: Unary, i: number, key: string): Promise<void> {
  const ddl = await execute<any>({ sql: 'CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)' }, key);
  const fill = await execute<any>(
    {
      sql: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) INSERT INTO accounts SELECT i, 'account-' || i, i * 100 FROM n",
      params: [{ integer_value: String(ROWS) }],
    },
    key,
  );
  for (const x of [ddl, fill]) if (!x.ok) throw new Error(`Execute setup on ${idOf(i)}: ${x.error.details}`);
}

/**
 * One call at a time, from the probe process; latencies in ms, sorted.
 * Fails loudly on any error. `clean` gets those of the calls that no GC
 * pause of the probe process overlapped.
 */
async function sequential(
  address: string,
  calls: ProbeCall[],
  gcTotals?: ProbeResult['gc'],
  clean?: number[],
  by: Probe = probe,
): Promise<Float64Array> {
  const { latencies, inGc, gc } = await by.run(address, POINT_READ, ROWS, calls);
  if (gcTotals) {
    gcTotals.pauses += gc.pauses;
    gcTotals.totalMs += gc.totalMs;
    gcTotals.maxMs = Math.max(gcTotals.maxMs, gc.maxMs);
  }
  clean?.push(...latencies.filter((_, k) => !inGc[k]));
  return sortedCopy(latencies);
}

const latLine = (l: Float64Array) =>
  `p50 ${fmtMs(percentile(l, 50))}  p90 ${fmtMs(percentile(l, 90))}  p99 ${fmtMs(percentile(l, 99))}  max ${fmtMs(l[l.length - 1]!)}  (n=${l.length})`;

try {
  // ------------------------------------------------------------ 1. create
  const profileDir = join(tmpdir(), 'tenantd-scale-profiles');
  const profileArgs = (name: string) =>
    flags.has('--profile') ? ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, name)}`] : [];
  const first = await start(profileArgs('create'));
  child = first.child;
  let ready = first.ready;
  client = new RawClient(`127.0.0.1:${ready.port}`);
  let createTenant = client.method('TenantService', 'CreateTenant');
  const execute = client.method('SqlService', 'Execute');

  const keys: string[] = new Array(tenantCount);
  const createMs: number[] = [];
  let next = 0;
  let done = 0;
  const t0 = performance.now();
  let lastReport = t0;
  const lane = async () => {
    while (next < apiTenants) {
      const i = next++;
      const c0 = performance.now();
      const r = await createTenant<any>(
        { tenant_id: idOf(i), tenant: { plan: PLANS[i % PLANS.length], display_name: `scale tenant ${i}`, labels: { bench: 'scale' } } },
        ready.adminKey,
        120_000,
      );
      createMs.push(performance.now() - c0);
      if (!r.ok) throw new Error(`CreateTenant ${idOf(i)}: ${Status[r.error.code]} ${r.error.details}`);
      keys[i] = r.response.api_key.key;
      if (withTable.has(i)) await addTable(execute, i, keys[i]!);
      done++;
      const now = performance.now();
      if (now - lastReport > 2_000) {
        lastReport = now;
        const rate = done / ((now - t0) / 1000);
        progress(`creating: ${done.toLocaleString('en-US')}/${apiTenants.toLocaleString('en-US')}  ${rate.toFixed(0)}/s  eta ${((apiTenants - done) / rate).toFixed(0)} s`);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  const createS = (performance.now() - t0) / 1000;
  process.stderr.write('\n');
  const created = sortedCopy(createMs);
  const apiTables = [...withTable].filter((i) => i < apiTenants).length;
  line();
  line(
    `1. created ${apiTenants.toLocaleString('en-US')} tenants through CreateTenant in ${createS.toFixed(1)} s = ${(apiTenants / createS).toFixed(0)} tenants/s ` +
      `(${concurrency} in flight; ${apiTables} of them also got a 100-row table: 2 more Execute calls each)`,
  );
  line(`   CreateTenant latency: ${latLine(created)}`);
  line(`   server after creating: ${rssLine(ready.pid).text}`);
  line(`   100,000 tenants at this rate: ${(100_000 / (apiTenants / createS) / 60).toFixed(1)} min`);

  client.close();
  const s0 = performance.now();
  await child.stop();
  child = null;
  const stopMs = performance.now() - s0;

  let seedFlush = '';
  if (apiTenants < tenantCount) {
    // Templates made by the server itself: a plain tenant and one with the accounts table.
    const plainTemplate = idOf([...Array(apiTenants).keys()].find((i) => !withTable.has(i))!);
    const tableTemplate = idOf([...withTable].find((i) => i < apiTenants)!);
    const rest = Array.from({ length: tenantCount - apiTenants }, (_, k) => apiTenants + k);
    const b0 = performance.now();
    const seeded = seedTenants({
      dataDir,
      indexes: rest,
      idOf,
      planOf: (i) => PLANS[i % PLANS.length]!,
      templateOf: (i) => (withTable.has(i) ? tableTemplate : plainTemplate),
      onProgress: (n) => progress(`bulk seeding: ${n.toLocaleString('en-US')}/${rest.length.toLocaleString('en-US')}`),
    });
    const seedS = (performance.now() - b0) / 1000;
    process.stderr.write('\n');
    // The copies sit in the page cache: written back now, not by the kernel while the probes run.
    const f0 = performance.now();
    const dirtyMiB = dirtyPageCacheMiB();
    execFileSync('sync', ['-f', dataDir]);
    seedFlush = `; then flushed to disk (${dirtyMiB === null ? '?' : dirtyMiB.toFixed(0)} MiB dirty in the page cache) in ${((performance.now() - f0) / 1000).toFixed(1)} s`;
    for (const [i, key] of seeded) keys[i] = key;
    line(
      `   bulk-seeded the other ${rest.length.toLocaleString('en-US')} tenants in ${seedS.toFixed(1)} s (${(rest.length / seedS).toFixed(0)}/s; server stopped; ` +
        `copies of ${plainTemplate}/${tableTemplate}'s database files, catalog rows + key hashes through src/catalog/catalog.ts)${seedFlush}`,
    );
  }

  // ------------------------------------------------------------ 2. restart

  // --expose-gc: step 4 asks the server for its live heap (quota/server.ts collects before it answers).
  const second = await start([...profileArgs('restart'), '--expose-gc']);
  child = second.child;
  ready = second.ready;
  const atReady = rssLine(ready.pid);
  client = new RawClient(`127.0.0.1:${ready.port}`);
  createTenant = client.method('TenantService', 'CreateTenant');
  await sleep(2_000); // let the shard workers finish starting
  const settled = rssLine(ready.pid);

  line();
  line(`2. restart (the graceful stop took ${(stopMs / 1000).toFixed(1)} s): the new server loaded ${ready.tenants.toLocaleString('en-US')} tenants from the catalog`);
  line(
    `   start-up: ${(second.wallMs / 1000).toFixed(2)} s from fork to listening (Node + tsx + imports ${((ready.sinceProcessStartMs - ready.startServerMs) / 1000).toFixed(2)} s, ` +
      `startServer() ${(ready.startServerMs / 1000).toFixed(2)} s: catalog, registry of every tenant, quota slots, workers spawned, gRPC bound)`,
  );
  line(`   server memory at ready: ${atReady.text}; 2 s later (shard workers up): ${settled.text}`);

  const address = `127.0.0.1:${ready.port}`;
  const touchLat = await sequential(address, touched.map((i) => ({ key: keys[i]!, i })));
  const afterTouch = rssLine(ready.pid);
  line(`   after touching ${sample} tenants (first call each, one at a time): ${afterTouch.text}`);
  // The target is in MB (10^6 bytes); /proc reports KiB.
  const toMB = (mib: number) => (mib * 2 ** 20) / 1e6;
  const rssVerdict = verdict(toMB(Math.max(settled.rss, afterTouch.rss)), RSS_TARGET_MB);
  line(
    `   target RSS <= ${RSS_TARGET_MB} MB after start and after touching ${sample}: ${toMB(settled.rss).toFixed(0)} MB / ${toMB(afterTouch.rss).toFixed(0)} MB  ${rssVerdict}`,
  );

  const pageBytes = Object.values(allocatePage()).reduce((sum, b) => sum + b.byteLength, 0);
  const quotaBytes = ready.quotaPages * pageBytes;
  line(
    `   shared quota state: kBytesPerSlot = ${kBytesPerSlot} B (budget <= 128 B: ${verdict(kBytesPerSlot, 128)}); allocated: ${ready.quotaPages} pages x ` +
      `${pageBytes.toLocaleString('en-US')} B (${kSlotsPerPage} slots each) = ${(quotaBytes / 2 ** 20).toFixed(2)} MiB for ` +
      `${ready.tenants.toLocaleString('en-US')} tenants = ${(quotaBytes / ready.tenants).toFixed(1)} B/tenant (the last page is partly empty)`,
  );

  // ------------------------------------------------------------ 3. latency
  const dirtyAtProbes = dirtyPageCacheMiB();
  const steal0 = cpuStealMs();
  const probes0 = performance.now();
  // Warm: the most recently touched tenants, whose databases are still open (LRU of 1000 over the shards).
  const recent = touched.slice(-100);
  const warmCalls = Array.from({ length: 2 * sample }, (_, k) => recent[k % recent.length]!).map((i) => ({ key: keys[i]!, i }));
  const reopenRecent = () => sequential(address, recent.map((i) => ({ key: keys[i]!, i })));
  // The probe process is young: its client code is warmed up (JIT) before anything is measured.
  await sequential(address, [...warmCalls, ...warmCalls]);
  const probeGc = { pauses: 0, totalMs: 0, maxMs: 0 };
  const warm1 = await sequential(address, warmCalls, probeGc);
  const coldOutsideGc: number[] = [];
  const coldLat = await sequential(address, cold.map((i) => ({ key: keys[i]!, i })), probeGc, coldOutsideGc);
  const coldClean = sortedCopy(coldOutsideGc);
  // The cold probe evicted them (LRU): open them again before measuring warm calls.
  await reopenRecent();
  const warm2 = await sequential(address, warmCalls, probeGc);
  let warmCalled = 4 * warmCalls.length + 2 * recent.length;
  // The same with gRPC's C core: its own warm-up (connection, first calls), warm calls, its own cold tenants.
  let cCore: { warm: Float64Array; cold: Float64Array } | null = null;
  if ('run' in probeC) {
    await sequential(address, warmCalls, undefined, undefined, probeC);
    const warm = await sequential(address, warmCalls, undefined, undefined, probeC);
    const coldCore = await sequential(address, coldC.map((i) => ({ key: keys[i]!, i })), undefined, undefined, probeC);
    await reopenRecent();
    cCore = { warm, cold: coldCore };
    warmCalled += 2 * warmCalls.length + recent.length;
  }
  const steal = steal0 === null ? null : cpuStealMs()! - steal0;
  const probesS = (performance.now() - probes0) / 1000;
  const afterCold = rssLine(ready.pid);
  // The server's own view of each cold call: GetTenantUsage's latency, admission to the shard's
  // answer (its latency window holds that one call; buckets are 20 % wide, the upper bound is reported).
  const getUsage = client.method('TenantService', 'GetTenantUsage');
  const serverSide = async (indexes: number[]) => {
    const out: number[] = [];
    for (const i of indexes) {
      const u = await getUsage<any>({ name: `tenants/${idOf(i)}` }, ready.adminKey);
      if (u.ok) out.push(Number(u.response.latency_p50_ms));
    }
    return sortedCopy(out);
  };
  const coldServer = await serverSide(cCore ? [...cold, ...coldC] : cold);
  const warmServer = await serverSide(recent);
  line();
  line(
    `3. point-read latency at the client (Execute over gRPC, one call at a time, from a probe process of its own), ` +
      `${ready.tenants.toLocaleString('en-US')} tenants registered:`,
  );
  line(`   grpc-js client (Node, as the rest of this bench):`);
  line(`     warm (database open, key cached), before: ${latLine(warm1)}`);
  line(`     warm, after the cold probe:               ${latLine(warm2)}`);
  line(`     cold (first call since restart, database not open, key not cached): ${latLine(coldLat)}`);
  line(
    `     its own GC during these ${warm1.length + coldLat.length + warm2.length} calls: ${probeGc.pauses} pauses, ` +
      `${fmtMs(probeGc.totalMs)} in all, longest ${fmtMs(probeGc.maxMs)}`,
  );
  line(
    `     cold, leaving out the ${coldLat.length - coldClean.length} calls that a GC pause of the probe process itself overlapped ` +
      `(the client stopped, not tenantd): ${latLine(coldClean)}`,
  );
  if (cCore) {
    line(`   gRPC C-core client (Python grpcio, quota/probe_grpcio.py; its cycle collector off while timing), other cold tenants:`);
    line(`     warm:                                     ${latLine(cCore.warm)}`);
    line(`     cold:                                     ${latLine(cCore.cold)}`);
  } else {
    line(`   gRPC C-core client: not run: ${'unavailable' in probeC ? probeC.unavailable : ''}`);
  }
  line(`   inside the server (admitted -> shard answered; GetTenantUsage latency_p50_ms per tenant, upper bounds of 20 %-wide buckets):`);
  line(`     cold tenants (their one call):          ${latLine(coldServer)}`);
  line(`     warm tenants (p50 of their ~${Math.round(warmCalled / recent.length)} calls): ${latLine(warmServer)}`);
  line(`   first calls right after start (the ${sample} touched above, grpc-js): ${latLine(touchLat)}`);
  line(`   cold minus warm at p50 (grpc-js): ${fmtMs(percentile(coldLat, 50) - percentile(warm1, 50))}`);
  const coldP99 = percentile(coldLat, 99);
  const coldP99C = cCore ? percentile(cCore.cold, 99) : NaN;
  const coldVerdicts =
    `grpc-js client ${fmtMs(coldP99)} ${verdict(coldP99, COLD_P99_TARGET_MS)}` +
    (cCore ? `, C-core client ${fmtMs(coldP99C)} ${verdict(coldP99C, COLD_P99_TARGET_MS)}` : '');
  if (dirtyAtProbes !== null) line(`   page cache waiting to be written back when the probes began: ${dirtyAtProbes.toFixed(1)} MiB`);
  if (steal !== null) {
    line(
      `   CPU steal while the probes ran (${probesS.toFixed(0)} s): ${(steal / 1000).toFixed(1)} s of CPU taken by the host ` +
        `(/proc/stat; near 0 on a quiet host, and every second of it is time nothing here could run)`,
    );
  }
  line(`   target cold p99 <= ${COLD_P99_TARGET_MS} ms: ${coldVerdicts}`);
  line(`   server memory after the cold probes: ${afterCold.text}`);

  // ------------------------------------------------------------ 4. memory as tenants come and go
  if (sweepCount > 0) {
    const rest = [...Array(tenantCount).keys()].filter((i) => !withTable.has(i));
    const others = Array.from({ length: sweepCount }, (_, k) => rest[Math.floor((k * rest.length) / sweepCount)]!);
    const by = 'run' in probeC ? probeC : probe;
    const mainThread = async () => (await child!.sample()).counters ?? {};
    // Measured idle before and after: V8 gives back heap it no longer needs once allocation stops for a while.
    // The main thread's figures are after a full collection (live objects only).
    const settle = async () => {
      await sleep(IDLE_SETTLE_MS);
      const main = await mainThread();
      return { rss: memoryOf(ready.pid)?.rssMiB ?? NaN, main };
    };
    const before = await settle();
    const marks: string[] = [];
    const s0 = performance.now();
    for (let k = 0; k < others.length; k += SWEEP_CHUNK) {
      // Any tenant answers `SELECT ?` with one row: no table needed.
      await by.run(address, 'SELECT ?', 1, others.slice(k, k + SWEEP_CHUNK).map((i) => ({ key: keys[i]!, i })));
      marks.push(`${Math.min(k + SWEEP_CHUNK, others.length).toLocaleString('en-US')}: ${mb(memoryOf(ready.pid)?.rssMiB ?? NaN)}`);
    }
    const sweepS = (performance.now() - s0) / 1000;
    const after = await settle();
    const heapLine = (c: Record<string, number>) =>
      `heap ${c.mainHeapUsedMiB} of ${c.mainHeapTotalMiB} MiB, external ${c.externalMiB} MiB, ${c.latencyWindows} latency windows`;
    const perTenantKiB = (a: number, b: number) => `${(((b - a) * 1024) / sweepCount).toFixed(2)} KiB per tenant`;
    line();
    line(
      `4. ${sweepCount.toLocaleString('en-US')} more tenants get their first call since the restart (one each, \`SELECT ?\`, ${sweepS.toFixed(1)} s; ` +
        `the pool keeps ${maxOpenDbs} databases open, the key cache every key, a latency window each until 2 min after its last call):`,
    );
    line(`   server RSS ${IDLE_SETTLE_MS / 1000} s idle before: ${mb(before.rss)}; while calling, after ${marks.join(', ')}; ${IDLE_SETTLE_MS / 1000} s idle after: ${mb(after.rss)} (${perTenantKiB(before.rss, after.rss)})`);
    line(`   the main thread's (idle before / after): ${heapLine(before.main)} / ${heapLine(after.main)}`);
    line(
      `   = ${perTenantKiB(before.main.mainHeapUsedMiB! + before.main.externalMiB!, after.main.mainHeapUsedMiB! + after.main.externalMiB!)} on the main thread, ` +
        `the rest in the shard threads (heaps, SQLite) and the allocator`,
    );
  }
  line();
  line(`summary: RSS ${rssVerdict}, cold p99 ${coldVerdicts}, quota state ${kBytesPerSlot} B/slot`);
  if (flags.has('--profile')) line(`CPU profiles of the servers (one file per thread): ${profileDir}/{create,restart}`);
} finally {
  probe.stop();
  if ('run' in probeC) probeC.stop();
  client?.close();
  await child?.stop();
  if (flags.has('--keep-data')) line(`data kept in ${dataDir}`);
  else {
    const r0 = performance.now();
    rmSync(dataDir, { recursive: true, force: true });
    line(`removed ${dataDir} in ${((performance.now() - r0) / 1000).toFixed(1)} s`);
  }
  line(`done; ${loadLine()}`);
}
