/**
 * npm run bench:sql [-- --quick | --duration 10s] [--concurrency 64] [--tenants 1000] [--runtime tsx|node] [--rps N|0] [--write] [--sync full|normal] [--sync-flush shared|per-commit]
 *
 * In one run: (a) a bare grpc-js server answering tenantd.v1.SqlService/Execute
 * with a canned point-read response, and (b) tenantd doing real point reads
 * spread over many tenants, both driven by the same load generator from this
 * process, each server in its own child process: first closed loop (as fast
 * as the client goes), then both at one fixed rate (--rps; by default 60 % of
 * the slower server's closed-loop rate; 0 skips it), so that the CPU per call
 * of the two is compared at the same load. Then the main thread's own cost
 * per call (auth + routing + dispatch) without gRPC.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageDefinition } from '../src/protos.ts';
import { syncFlushFlag, type BenchServerArgs } from './lib/benchConfig.ts';
import { buildCompiled, startChild, type ChildServer } from './lib/child.ts';
import type { LoopResult } from './lib/closedLoop.ts';
import { measureFrontEnd } from './lib/frontEndCost.ts';
import { parseDuration, runLoad } from './lib/loadgen.ts';
import { cpuDelta, cpuSample, type CpuSample } from './lib/procStat.ts';
import { formatNanoUnit, type GhzReport } from './lib/report.ts';
import { compileData } from './lib/template.ts';
import { createTenants, POINT_READ, POINT_UPDATE } from './lib/tenants.ts';

/** Issue 13's goal for a point read: server CPU per call at most this times the bare echo server's. */
const CPU_GOAL = 1.25;
const KNOWN = ['--quick', '--duration', '--concurrency', '--connections', '--tenants', '--rows', '--shards', '--max-open-dbs', '--sync', '--profile', '--keep-data', '--runtime', '--rps', '--write', '--sync-flush'];

function parseArgs(argv: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [name, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    if (!KNOWN.includes(name!)) throw new Error(`unknown flag ${name}; known: ${KNOWN.join(' ')}`);
    if (['--quick', '--profile', '--keep-data', '--write'].includes(name!)) out.set(name!, 'true');
    else {
      const value = inline ?? argv[++i];
      if (value === undefined) throw new Error(`${name} needs a value`);
      out.set(name!, value);
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const quick = args.has('--quick');
const runtime = args.get('--runtime') ?? 'tsx';
if (runtime !== 'tsx' && runtime !== 'node') throw new Error('--runtime: tsx (from source, the default) or node (compiled, as deployed)');
const durationMs = parseDuration(args.get('--duration') ?? (quick ? '3s' : '10s'), '--duration');
const warmupMs = Math.min(2000, Math.max(500, durationMs / 5));
const concurrency = Number(args.get('--concurrency') ?? 64);
const connections = Number(args.get('--connections') ?? 1);
const tenantCount = Number(args.get('--tenants') ?? 1000);
const rows = Number(args.get('--rows') ?? 100);
const serverArgs: BenchServerArgs = {
  dataDir: mkdtempSync(join(tmpdir(), 'tenantd-bench-')),
  shards: Number(args.get('--shards') ?? availableParallelism()),
  sync: (args.get('--sync') ?? 'normal') as BenchServerArgs['sync'],
  syncFlush: syncFlushFlag(args.get('--sync-flush')),
  maxOpenDbs: Number(args.get('--max-open-dbs') ?? 1000),
};
const resultsDir = new URL('./results/', import.meta.url);
const profileDir = join(tmpdir(), `tenantd-bench-profiles-${process.pid}`);

const def = packageDefinition();
const line = (s = '') => process.stdout.write(`${s}\n`);
const us = (v: number | null) => (v === null ? 'n/a' : `${v.toFixed(2)} µs`);
const pct = (r: GhzReport, p: number) => r.latencyDistribution?.find((l) => l.percentage === p)?.latency ?? 0;

line(`machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} at start`);
line(
  `plan: ${tenantCount} tenants x ${rows} rows, ${serverArgs.shards} shards, max-open-dbs ${serverArgs.maxOpenDbs}, sync ${serverArgs.sync}${serverArgs.sync === 'full' ? ` (--sync-flush ${serverArgs.syncFlush})` : ''}; ` +
    `load: -c ${concurrency} --connections ${connections} -z ${durationMs / 1000}s each after ${warmupMs / 1000}s warm-up`,
);

const children: ChildServer[] = [];
const serverMainUs: Record<string, number> = {};
const serverProcessUs: Record<string, number> = {};
try {
  const profiling = args.has('--profile');
  if (profiling) mkdirSync(profileDir, { recursive: true });
  // --runtime node: both servers from their compiled copies under dist/ (as deployed), not through tsx.
  const compiled = runtime === 'node';
  if (compiled) buildCompiled();
  const tenantd = await startChild(new URL('./lib/serveTenantd.ts', import.meta.url), serverArgs, [], compiled);
  children.push(tenantd);
  const echo = await startChild(new URL('./lib/echoServer.ts', import.meta.url), {}, [], compiled);
  children.push(echo);

  const t0 = performance.now();
  const tenants = await createTenants(`127.0.0.1:${tenantd.ready.port}`, def, String(tenantd.ready.adminKey), tenantCount, rows, (n) =>
    process.stderr.write(`\rcreating tenants: ${n}/${tenantCount}`),
  );
  process.stderr.write('\n');
  line(`setup: ${tenantCount} tenants created and filled in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  // Same request stream for both servers: point reads with a random id, the
  // tenant key round-robined per request through ghz-style array metadata.
  // --write: single-row UPDATEs instead (the echo server still answers with its canned read).
  const data = compileData({ sql: args.has('--write') ? POINT_UPDATE : POINT_READ, params: [{ integer_value: `{{randomInt 1 ${rows + 1}}}` }] });
  const metadata = compileData(tenants.map((t) => ({ authorization: `Bearer ${t.key}` })));

  const run = async (name: string, server: ChildServer, rps = 0) => {
    const key = rps > 0 ? `${name}@rate` : name;
    let before: CpuSample | undefined;
    let clientBefore: CpuSample | undefined;
    const { report } = await runLoad({
      beforeMeasure: async () => {
        if (profiling) await server.profile('start', profileDir, key);
        before = await server.sample();
        clientBefore = cpuSample();
      },
      call: 'tenantd.v1.SqlService.Execute',
      host: `127.0.0.1:${server.ready.port}`,
      packageDefinition: def,
      concurrency,
      connections,
      duration: durationMs,
      warmup: '250ms',
      data,
      metadata,
      name,
      ...(rps > 0 ? { rps } : {}),
    });
    const client = cpuDelta(clientBefore!, cpuSample());
    const after = await server.sample();
    const cpu = cpuDelta(before!, after);
    // tenantd's shard threads apart (their OS ids from the shards' reports); the rest: V8's GC and compiler helpers, libuv.
    const [shardsBefore, shardsAfter] = [before!.counters?.shardThreadsCpuMs, after.counters?.shardThreadsCpuMs];
    const shardMs = shardsBefore !== undefined && shardsAfter !== undefined ? shardsAfter - shardsBefore : null;
    if (profiling) await server.profile('stop', profileDir, key);
    const perCall = (ms: number | null) => (ms === null ? null : (ms * 1000) / report.count);
    const rest = cpu.mainThreadMs === null ? null : cpu.processMs - cpu.mainThreadMs;
    const threadSplit =
      rest === null ? '' : shardMs === null ? `; other threads ${us(perCall(rest))}` : `; shard threads ${us(perCall(shardMs))}, other threads ${us(perCall(rest - shardMs))}`;
    if (cpu.mainThreadMs !== null) serverMainUs[key] = perCall(cpu.mainThreadMs)!;
    serverProcessUs[key] = perCall(cpu.processMs)!;
    mkdirSync(resultsDir, { recursive: true });
    if (rps === 0) writeFileSync(new URL(`sql-${name}.json`, resultsDir), `${JSON.stringify(report, null, 2)}\n`);
    const ok = report.statusCodeDistribution.OK ?? 0;
    line(
      `${name.padEnd(8)} ${report.rps.toFixed(0).padStart(7)} calls/s  p50 ${formatNanoUnit(pct(report, 50)).padStart(9)}  ` +
        `p99 ${formatNanoUnit(pct(report, 99)).padStart(9)}  ok ${ok}/${report.count}  ` +
        `server CPU/call ${us(perCall(cpu.processMs))} (main thread ${us(perCall(cpu.mainThreadMs))}, ELU ${(cpu.elu * 100).toFixed(0)}%` +
        `${threadSplit})  ` +
        `load generator main thread ${us(perCall(client.mainThreadMs))}/call (ELU ${(client.elu * 100).toFixed(0)}%)`,
    );
    if (ok !== report.count) line(`  statuses: ${JSON.stringify(report.statusCodeDistribution)} errors: ${JSON.stringify(report.errorDistribution)}`);
    return report;
  };

  line();
  // Warm the client's JIT, both servers and tenantd's page caches before measuring either.
  // Two calls per tenant first, so every database is open and its statement prepared.
  for (const server of [echo, tenantd]) {
    const base = { call: 'tenantd.v1.SqlService.Execute', host: `127.0.0.1:${server.ready.port}`, packageDefinition: def, concurrency, data, metadata };
    await runLoad({ ...base, total: tenantCount * 2, warmup: `${warmupMs}ms` });
  }
  line('throughput (closed loop, ghz-format reports in bench/results/sql-{echo,tenantd}.json):');
  const echoReport = await run('echo', echo);
  const tenantdReport = await run('tenantd', tenantd);
  line(
    `ratio tenantd/echo: ${(tenantdReport.rps / echoReport.rps).toFixed(2)} ` +
      `(p50 ${(pct(tenantdReport, 50) / pct(echoReport, 50)).toFixed(2)}x, p99 ${(pct(tenantdReport, 99) / pct(echoReport, 99)).toFixed(2)}x)`,
  );
  // --write: the echo server still answers a canned read, and the write's goal is PostgreSQL's CPU (bench:peer).
  const goal = (ratio: number) =>
    args.has('--write') ? 'writes: the goal is against PostgreSQL, bench:peer' : `goal <= ${CPU_GOAL.toFixed(2)}x: ${ratio <= CPU_GOAL ? 'met' : 'MISSED'}`;
  line(
    `server CPU per call tenantd/echo: ${(serverProcessUs.tenantd! / serverProcessUs.echo!).toFixed(2)}x (${goal(serverProcessUs.tenantd! / serverProcessUs.echo!)}) ` +
      `(${us(serverProcessUs.tenantd!)} vs ${us(serverProcessUs.echo!)}, all threads: gRPC, auth, routing, dispatch, SQLite in the shards)`,
  );
  line(
    `note: ${availableParallelism()} cores shared by the load generator, the server and its shard workers; the echo figure is ` +
      'mostly bounded by the client (one grpc-js event loop), so the ratio understates what tenantd alone would do on a separate box.',
  );

  // Closed loop, the faster server also batches more calls per event-loop turn and per syscall, which
  // lowers its CPU per call: at one fixed rate both see the same arrivals, so their CPU per call compares.
  const fixedRps = Number(args.get('--rps') ?? Math.floor((0.6 * Math.min(echoReport.rps, tenantdReport.rps)) / 100) * 100);
  if (fixedRps > 0) {
    line();
    line(`at one fixed rate (${fixedRps} calls/s started, -c ${concurrency}), both servers:`);
    const echoFixed = await run('echo', echo, fixedRps);
    const tenantdFixed = await run('tenantd', tenantd, fixedRps);
    line(
      `server CPU per call at ${fixedRps} calls/s tenantd/echo: ${(serverProcessUs['tenantd@rate']! / serverProcessUs['echo@rate']!).toFixed(2)}x ` +
        `(${goal(serverProcessUs['tenantd@rate']! / serverProcessUs['echo@rate']!)}) ` +
        `(${us(serverProcessUs['tenantd@rate']!)} vs ${us(serverProcessUs['echo@rate']!)}; achieved ${tenantdFixed.rps.toFixed(0)} and ${echoFixed.rps.toFixed(0)} calls/s)`,
    );
  }

  await Promise.all(children.splice(0).map((c) => c.stop()));
  if (profiling) line(`CPU profiles of both servers' threads over the measured window (main, shard workers): ${profileDir}`);

  line();
  line('main-thread cost per call without gRPC (real Authenticator/Access/ShardRouter/ShardHandle, in this process):');
  const cost = await measureFrontEnd(serverArgs, tenants, rows, quick ? 2 : 4);
  const show = (label: string, r: LoopResult) =>
    line(
      `  ${label.padEnd(56)} ${us(r.mainThreadUsPerCall).padStart(10)} main-thread CPU/call  (${r.callsPerSecond.toFixed(0)} calls/s, ELU ${us(r.eluUsPerCall)}/call)`,
    );
  line(`  ${'admit: access.tenant + toStatement + router.forTenant'.padEnd(56)} ${us(cost.admitUsPerCall).padStart(10)} per call (tight loop)`);
  show('dispatch: shard.call postMessage round trip, 64 in flight', cost.dispatch);
  line(
    `  ${'clone: post+receive on one thread, request / response'.padEnd(56)} ${us(cost.clone.requestUs).padStart(10)} / ${us(cost.clone.responseUs)} ` +
      `(packed; as objects ${us(cost.clone.objectRequestUs)} / ${us(cost.clone.objectResponseUs)}; a 4-field message: ${us(cost.clone.minimalUs)})`,
  );
  const sum = cost.dispatch.mainThreadUsPerCall === null ? null : cost.admitUsPerCall + cost.dispatch.mainThreadUsPerCall;
  line(`  ${'auth + routing + dispatch (admit + dispatch)'.padEnd(56)} ${us(sum).padStart(10)} per call`);
  line(`  target <= 10 µs: ${sum === null ? 'n/a (no /proc)' : sum <= 10 ? 'met' : 'MISSED'}`);
  const { tenantd: tMain, echo: eMain } = serverMainUs;
  if (tMain !== undefined && eMain !== undefined && sum !== null) {
    line(
      `  under gRPC load tenantd's main thread spent ${us(tMain)}/call and the echo server's ${us(eMain)}: ` +
        `${us(tMain - eMain)} more, of which admit + dispatch measured alone are ${us(sum)}`,
    );
  }
} finally {
  await Promise.all(children.map((c) => c.stop()));
  if (!args.has('--keep-data')) rmSync(serverArgs.dataDir, { recursive: true, force: true });
  else line(`data kept in ${serverArgs.dataDir}`);
}
