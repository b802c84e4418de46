/**
 * npm run bench:cores [-- --quick] [--duration 8s] [--rounds 2] [--concurrency 64] [--tenants 1000] [--processes 1,2] [--proxy] [--runtime node|tsx]
 *
 * Does a second front end help on this host? Issue 13 asks for several front ends per node to
 * be built only if they show a gain on 2 cores against a client cheaper than grpc-js. So: the
 * same point-read load from one client on gRPC's C core (Python grpcio, lib/grpcio_load.py),
 * closed loop, against
 *   - a bare grpc-js echo server (what the client and gRPC alone cost),
 *   - for each P in --processes: P tenantd processes, each owning 1/P of the tenants with
 *     cores/P shards, the client sending each tenant's calls to the process that owns it (as the
 *     cluster's proxy hashes the tenant id, without the proxy's own cost: the best case for
 *     "several processes per host"),
 *   - with --proxy, also each P behind one HAProxy (one thread) that routes on x-tenant-id by a
 *     map, as deploy/haproxy.cfg does: what that design costs as deployed.
 * It prints calls/s, p50/p99, and server and client CPU per call for each, and the gain of P
 * processes over one.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { MethodDefinition } from '@grpc/proto-loader';
import { packageDefinition } from '../src/protos.ts';
import type { BenchServerArgs } from './lib/benchConfig.ts';
import { buildCompiled, startChild, type ChildServer } from './lib/child.ts';
import { parseDuration } from './lib/loadgen.ts';
import { processCpuMs } from './lib/procStat.ts';
import { createTenants, POINT_READ, type BenchTenant } from './lib/tenants.ts';
import { freePort } from '../test/support/freePort.ts';

const PYTHON = '/usr/bin/python3';
const METHOD = '/tenantd.v1.SqlService/Execute';
/** Distinct requests per target: random tenant and id, cycled. */
const REQUESTS_PER_TARGET = 4096;

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    duration: { type: 'string' },
    concurrency: { type: 'string', default: '64' },
    tenants: { type: 'string', default: '1000' },
    rows: { type: 'string', default: '100' },
    processes: { type: 'string', default: '1,2' },
    runtime: { type: 'string', default: 'node' },
    rounds: { type: 'string' },
    proxy: { type: 'boolean', default: false },
  },
  strict: true,
});
const durationS = parseDuration(flags.duration ?? (flags.quick ? '3s' : '8s'), '--duration') / 1000;
const rounds = Number(flags.rounds ?? (flags.quick ? 1 : 2));
const concurrency = Number(flags.concurrency);
const tenantCount = Number(flags.tenants);
const rows = Number(flags.rows);
const processCounts = flags.processes.split(',').map(Number);
if (processCounts.some((p) => !Number.isInteger(p) || p < 1)) throw new Error('--processes: a list of counts, e.g. 1,2');
if (flags.runtime !== 'node' && flags.runtime !== 'tsx') throw new Error('--runtime: node (compiled, as deployed) or tsx');
const compiled = flags.runtime === 'node';
const cores = availableParallelism();

const line = (s = '') => process.stdout.write(`${s}\n`);
const def = packageDefinition();
const execute = (def['tenantd.v1.SqlService'] as Record<string, MethodDefinition<object, object>>).Execute!;

interface Target {
  address: string;
  calls: { tenant: string; key: string; request: string }[];
}

interface LoadResult {
  calls: number;
  errors: Record<string, number>;
  seconds: number;
  client_cpu_s: number;
  latency_ms: { p50: number | null; p99: number | null };
}

function requestsFor(address: string, tenants: BenchTenant[]): Target {
  const calls = Array.from({ length: REQUESTS_PER_TARGET }, () => {
    const tenant = tenants[Math.floor(Math.random() * tenants.length)]!;
    const id = 1 + Math.floor(Math.random() * rows);
    const bytes = execute.requestSerialize({ sql: POINT_READ, params: [{ integer_value: String(id) }] });
    return { tenant: tenant.tenantId, key: tenant.key, request: Buffer.from(bytes).toString('base64') };
  });
  return { address, calls };
}

function runClient(targets: Target[], warmupS: number, seconds: number): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [new URL('./lib/grpcio_load.py', import.meta.url).pathname], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`grpcio_load.py exited with ${code}`));
      resolve(JSON.parse(out) as LoadResult);
    });
    child.stdin.end(JSON.stringify({ targets, method: METHOD, concurrency, warmup_s: warmupS, duration_s: seconds }));
  });
}

interface Setup {
  name: string;
  servers: ChildServer[];
  targets: Target[];
  /** A proxy in front: its CPU counts as the server side's. */
  proxyPid?: number;
}

interface Measured {
  rps: number;
  p50: number | null;
  p99: number | null;
  serverUs: number;
  /** Of serverUs: the proxy's. */
  proxyUs: number;
  clientUs: number;
  /** The front-end (main) threads' CPU over the wall time, each: 100 % is a saturated front end. */
  frontEndBusy: number[];
  errors: Record<string, number>;
}

async function measure(setup: Setup): Promise<Measured> {
  const proxyBefore = setup.proxyPid === undefined ? 0 : processCpuMs(setup.proxyPid)!;
  const before = await Promise.all(setup.servers.map((s) => s.sample()));
  const result = await runClient(setup.targets, 1, durationS);
  const after = await Promise.all(setup.servers.map((s) => s.sample()));
  const proxyMs = setup.proxyPid === undefined ? 0 : processCpuMs(setup.proxyPid)! - proxyBefore;
  // The client's window is inside the servers': their CPU over it includes the warm-up second and the drain.
  const serverMs = proxyMs + after.reduce((sum, a, i) => sum + a.processMs - before[i]!.processMs, 0);
  const wallMs = after.reduce((max, a, i) => Math.max(max, a.wallMs - before[i]!.wallMs), 0);
  const rps = result.calls / result.seconds;
  // Calls the servers answered over their whole sampled window, at the measured rate (warm-up and drain included).
  const served = (rps * wallMs) / 1000;
  return {
    rps,
    p50: result.latency_ms.p50,
    p99: result.latency_ms.p99,
    serverUs: (serverMs * 1000) / served,
    proxyUs: (proxyMs * 1000) / served,
    frontEndBusy: after.map((a, i) => (a.mainThreadMs! - before[i]!.mainThreadMs!) / (a.wallMs - before[i]!.wallMs)),
    clientUs: (result.client_cpu_s * 1e6) / result.calls,
    errors: result.errors,
  };
}

/** The client needs Debian's python3-grpcio, which installs for /usr/bin/python3 only. */
function check(): void {
  const probe = spawnSync(PYTHON, ['-c', 'import grpc'], { encoding: 'utf8' });
  if (probe.status !== 0) throw new Error(`${PYTHON} cannot import grpc (apt-get install python3-grpcio): ${probe.error?.message ?? probe.stderr.trim()}`);
}

/**
 * One HAProxy, one thread, in front of the given servers: h2 both ways, each tenant's calls to the
 * server that holds it by a map on x-tenant-id (deploy/haproxy.cfg routes the same way, by slot).
 */
async function startProxy(dir: string, backends: { address: string; tenants: BenchTenant[] }[]): Promise<{ address: string; proc: ChildProcess }> {
  const port = await freePort();
  const mapFile = join(dir, 'tenants.map');
  writeFileSync(mapFile, backends.flatMap((b, i) => b.tenants.map((t) => `${t.tenantId} p${i}`)).join('\n') + '\n');
  const cfg = [
    'global',
    '  nbthread 1',
    '  maxconn 4000',
    'defaults',
    '  mode http',
    '  timeout connect 5s',
    '  timeout client 60s',
    '  timeout server 60s',
    'frontend grpc',
    `  bind 127.0.0.1:${port} proto h2`,
    `  use_backend %[req.hdr(x-tenant-id),map(${mapFile},p0)]`,
    ...backends.flatMap((b, i) => [`backend p${i}`, `  server s${i} ${b.address} proto h2`]),
  ].join('\n');
  const cfgFile = join(dir, 'haproxy.cfg');
  writeFileSync(cfgFile, `${cfg}\n`);
  const proc = spawn('haproxy', ['-db', '-f', cfgFile], { stdio: ['ignore', 'ignore', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    proc.once('error', reject);
    proc.once('exit', (code) => reject(new Error(`haproxy exited with ${code}`)));
    const poll = () => {
      const probe = createConnection(port, '127.0.0.1');
      probe.once('connect', () => (probe.destroy(), resolve()));
      probe.once('error', () => setTimeout(poll, 50));
    };
    poll();
  });
  return { address: `127.0.0.1:${port}`, proc };
}

const dataDirs: string[] = [];
const children: ChildServer[] = [];
const proxies: ChildProcess[] = [];
try {
  check();
  if (flags.proxy && spawnSync('haproxy', ['-v']).status !== 0) throw new Error('--proxy needs haproxy on PATH (apt-get install haproxy)');
  line(`machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cores} cores, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} at start`);
  line(
    `plan: ${tenantCount} tenants x ${rows} rows split over P processes (--shards cores/P each), point reads, ` +
      `client Python grpcio closed loop -c ${concurrency}, ${rounds} round(s) of ${durationS} s per setup, alternated`,
  );
  if (compiled) buildCompiled();

  const setups: Setup[] = [];
  const echo = await startChild(new URL('./lib/echoServer.ts', import.meta.url), {}, [], compiled);
  children.push(echo);
  const echoTenants = Array.from({ length: 64 }, (_, i) => ({ tenantId: `echo${i}`, key: `unused-${i}` }));
  setups.push({ name: 'echo', servers: [echo], targets: [requestsFor(`127.0.0.1:${echo.ready.port}`, echoTenants)] });

  for (const p of processCounts) {
    const servers: ChildServer[] = [];
    const backends: { address: string; tenants: BenchTenant[] }[] = [];
    for (let i = 0; i < p; i++) {
      const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-cores-'));
      dataDirs.push(dataDir);
      const args: BenchServerArgs = { dataDir, shards: Math.max(1, Math.floor(cores / p)), sync: 'full', maxOpenDbs: tenantCount };
      const server = await startChild(new URL('./lib/serveTenantd.ts', import.meta.url), args, [], compiled);
      children.push(server);
      servers.push(server);
      const address = `127.0.0.1:${server.ready.port}`;
      const share = Math.floor(tenantCount / p) + (i < tenantCount % p ? 1 : 0);
      // Distinct tenant ids per process, so that one proxy map can route them all.
      backends.push({ address, tenants: await createTenants(address, def, String(server.ready.adminKey), share, rows, undefined, `p${i}t`) });
    }
    setups.push({ name: `tenantd x${p}`, servers, targets: backends.map((b) => requestsFor(b.address, b.tenants)) });
    if (flags.proxy) {
      const dir = mkdtempSync(join(tmpdir(), 'tenantd-cores-proxy-'));
      dataDirs.push(dir);
      const proxy = await startProxy(dir, backends);
      proxies.push(proxy.proc);
      setups.push({ name: `tenantd x${p}+proxy`, servers, targets: [requestsFor(proxy.address, backends.flatMap((b) => b.tenants))], proxyPid: proxy.proc.pid! });
    }
  }
  line(`setup done: ${setups.map((s) => s.name).join(', ')}`);

  // Every tenant opened and its statement prepared before anything is measured.
  for (const setup of setups) await runClient(setup.targets, 0, flags.quick ? 2 : 4);

  const results = new Map<string, Measured[]>();
  const f = (v: number | null) => (v === null ? 'n/a' : `${v.toFixed(2)} ms`);
  const busy = (m: Measured) => m.frontEndBusy.map((b) => `${(b * 100).toFixed(0)}%`).join('/');
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? setups : [...setups].reverse();
    for (const setup of order) {
      const m = await measure(setup);
      results.set(setup.name, [...(results.get(setup.name) ?? []), m]);
      line(
        `${setup.name.padEnd(18)} ${m.rps.toFixed(0).padStart(6)} calls/s  p50 ${f(m.p50).padStart(9)}  p99 ${f(m.p99).padStart(9)}  ` +
          `server CPU/call ${m.serverUs.toFixed(1)} µs${setup.proxyPid === undefined ? '' : ` (proxy ${m.proxyUs.toFixed(1)})`}  ` +
          `front-end thread busy ${busy(m)}  client CPU/call ${m.clientUs.toFixed(1)} µs` +
          (Object.keys(m.errors).length > 0 ? `  errors ${JSON.stringify(m.errors)}` : ''),
      );
    }
  }

  const mean = (name: string, pick: (m: Measured) => number) => {
    const list = results.get(name)!;
    return list.reduce((sum, m) => sum + pick(m), 0) / list.length;
  };
  line();
  line('means over the rounds:');
  for (const setup of setups) {
    line(
      `  ${setup.name.padEnd(18)} ${mean(setup.name, (m) => m.rps).toFixed(0).padStart(6)} calls/s, server ${mean(setup.name, (m) => m.serverUs).toFixed(1)} µs/call, ` +
        `client ${mean(setup.name, (m) => m.clientUs).toFixed(1)} µs/call`,
    );
  }
  const base = `tenantd x${processCounts[0]}`;
  const gain = (name: string) =>
    line(`  ${name} / ${base}: throughput ${(mean(name, (m) => m.rps) / mean(base, (m) => m.rps)).toFixed(2)}x, server CPU per call ${(mean(name, (m) => m.serverUs) / mean(base, (m) => m.serverUs)).toFixed(2)}x`);
  for (const p of processCounts.slice(1)) gain(`tenantd x${p}`);
  if (flags.proxy) for (const p of processCounts) gain(`tenantd x${p}+proxy`);
  line(`  ${base} / echo: server CPU per call ${(mean(base, (m) => m.serverUs) / mean('echo', (m) => m.serverUs)).toFixed(2)}x`);
} finally {
  for (const proxy of proxies) proxy.kill('SIGTERM');
  await Promise.all(children.map((c) => c.stop()));
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
}
