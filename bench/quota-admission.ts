/**
 * npm run bench:quota [-- --quick] [--part a|b] [--seconds 5] [--tenants 100] [--slots 10000] [--shards N] [--in-flight 64]
 *
 * What admission costs the front end's one thread.
 *
 * (a) Admitter.admit + release on a QuotaTable of 10,000 slots (a real
 *     TenantRegistry over it), mixed tenants in a pseudo-random order, limits
 *     finite but high enough that every call is admitted. A tight loop, ns/call.
 *     Target: <= 1 µs.
 *
 * (b) The whole front-end path of SqlService.Execute without gRPC, on the real
 *     pieces, in this process: startServer (real catalog, registry, shard
 *     worker threads), tenants created through CreateTenant, then per call
 *       new Metadata() for the trailer, Access.tenant(metadata) (real
 *       Authenticator over the real catalog, key cached after its first call),
 *       toStatement, the call limits, writeBytesOf, createAdmit's wrapper
 *       (Admitter.admit, x-ratelimit-* trailer, performance.now),
 *       router.forTenant(id).call({op: 'execute'}) (ShardHandle: postMessage
 *       with structured clone), and back: the worker's answer deserialized,
 *       the pending promise resolved, registry.finish (counters, latency
 *       window, in-flight down).
 *     Measured as main-thread CPU time per call (/proc/self/task/<tid>/stat)
 *     over a closed loop with `--in-flight` calls outstanding. Not included:
 *     grpc-js (HTTP/2 framing, protobuf decode/encode of the request and the
 *     response, toResponse) and the worker's own SQLite time (other threads).
 *     Target: <= 10 µs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Metadata } from '@grpc/grpc-js';
import { defaultConfig, type Config } from '../src/config.ts';
import { Catalog, type TenantRecord } from '../src/catalog/catalog.ts';
import { Authenticator } from '../src/auth/authenticator.ts';
import { Access } from '../src/grpc/access.ts';
import { createAdmit, writeBytesOf } from '../src/grpc/admit.ts';
import { toStatement, type ProtoStatement } from '../src/grpc/values.ts';
import { createLogger } from '../src/log.ts';
import type { CallLimits, ExecuteResult } from '../src/protocol.ts';
import { Admitter, isRefusal } from '../src/quota/admission.ts';
import { addShardTime, kBytesPerSlot, kSlotsPerPage } from '../src/quota/layout.ts';
import { QuotaTable } from '../src/quota/quotaTable.ts';
import { TenantRegistry, type LiveTenant } from '../src/tenants/registry.ts';
import { startServer, type StartedServer } from '../src/server.ts';
import { cpuDelta, cpuSample, mainThreadCpuMs } from './lib/procStat.ts';
import { fmtUs, line, loadLine, machineLine, median, numberFlag, parseFlags, progress, RawClient, UNLIMITED_QUOTAS, verdict } from './quota/common.ts';

const flags = parseFlags(process.argv.slice(2), ['--seconds', '--tenants', '--slots', '--shards', '--in-flight', '--part'], ['--quick']);
const part = flags.get('--part') ?? 'ab';
const quick = flags.has('--quick');
const seconds = numberFlag(flags, '--seconds', quick ? 2 : 5);
const slotCount = numberFlag(flags, '--slots', 10_000);
const tenantCount = numberFlag(flags, '--tenants', 100);
const shards = numberFlag(flags, '--shards', availableParallelism());
const inFlight = numberFlag(flags, '--in-flight', 64);

const ADMIT_TARGET_NS = 1_000;

/** This (main) thread's CPU time in ms: /proc ticks on Linux, else the whole process's rusage. */
function threadCpuMs(): number {
  const ms = mainThreadCpuMs();
  if (ms !== null) return ms;
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}
const PATH_TARGET_US = 10;

/** Limits high enough that nothing is refused, finite so every check runs. */
const HIGH_LIMITS = { rps: 1_000_000, wbps: 1 << 30, concurrency: 1_024 };

line(machineLine());
line(`quota state: ${kBytesPerSlot} bytes per tenant slot, ${kSlotsPerPage} slots per page`);
line();

// ---------------------------------------------------------------- (a)

function record(tenantId: string, overrides: Partial<Record<'requestsPerSecond' | 'writeBytesPerSecond' | 'concurrentRequests', number>>): TenantRecord {
  return {
    tenantId,
    displayName: '',
    labels: {},
    plan: '',
    quotas: {
      requestsPerSecond: overrides.requestsPerSecond ?? 0,
      writeBytesPerSecond: overrides.writeBytesPerSecond ?? 0,
      concurrentRequests: overrides.concurrentRequests ?? 0,
      storageBytes: -1,
      queryTimeoutMs: 0,
      eventRetentionHours: 0,
      shardMsPerSecond: 0,
      transactionTimeoutMs: 0,
      concurrentTransactions: 0,
    },
    state: 'ACTIVE',
    createTime: 0,
    updateTime: 0,
    etag: '',
    schemaVersion: 0,
  };
}

/** xorshift32: a fixed pseudo-random tenant order, the same every run. */
function tenantOrder(n: number, length: number): Int32Array {
  const order = new Int32Array(length);
  let x = 0x9e3779b9 | 0;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    order[i] = (x >>> 0) % n;
  }
  return order;
}

function measureAdmission() {
  const config: Config = defaultConfig();
  const table = new QuotaTable(() => undefined);
  const registry = new TenantRegistry(config, table);
  const lives: LiveTenant[] = [];
  for (let i = 0; i < slotCount; i++) {
    // Mixed tenants: three plans' worth of shapes, all with limits that admit everything here.
    const shape = i % 3;
    lives.push(
      registry.put(
        record(`t${i}`, {
          requestsPerSecond: HIGH_LIMITS.rps,
          writeBytesPerSecond: shape === 2 ? -1 : HIGH_LIMITS.wbps,
          concurrentRequests: shape === 1 ? -1 : HIGH_LIMITS.concurrency,
        }),
      ),
    );
  }
  const admitter = new Admitter(table);
  const ORDER = 1 << 16;
  const order = tenantOrder(slotCount, ORDER);
  // Reads (0 bytes) and small writes, alternating.
  const bytesOf = (i: number) => ((i & 1) === 0 ? 0 : 60 + (i & 63));

  let sink = 0;
  let refused = 0;
  type Variant = { name: string; run: (n: number) => void };
  /**
   * admit + table.leave over the tenants. `shardUs`: the shard time each call
   * leaves to charge; added 10 calls' worth on every 10th call, so that the
   * shard's own Atomics.add weighs little in what is timed here while
   * admission charges about as often as it would (once a tenant's time adds
   * up to 1 ms).
   */
  const admitAndLeave = (n: number, now: () => number, shardUs: number) => {
    for (let i = 0; i < n; i++) {
      const live = lives[order[i & (ORDER - 1)]!]!;
      if (shardUs > 0 && i % 10 === 0) addShardTime(live.slot.page, live.slot.index, 10 * shardUs);
      const r = admitter.admit(live.slot, bytesOf(i), now(), live.quotas.shardMsPerSecond);
      if (isRefusal(r)) refused++;
      else sink += table.leave(live.slot) + r.remaining;
    }
  };
  const variants: Variant[] = [
    {
      name: 'admit(slot, bytes, fixed now) + table.leave',
      run: (n) => {
        const fixed = Date.now();
        admitAndLeave(n, () => fixed, 0);
      },
    },
    { name: 'admit(slot, bytes) [Date.now() inside] + table.leave', run: (n) => admitAndLeave(n, Date.now, 0) },
    // As a shard leaves it: each call's time (here 100 µs) in the slot, charged once it adds up to 1 ms.
    { name: 'the same with 100 µs of shard time per call to charge (shard_ms_per_second)', run: (n) => admitAndLeave(n, Date.now, 100) },
    {
      // What createAdmit does synchronously around a call, minus the trailer and the promise.
      name: 'admit + performance.now() x2 + registry.finish (the real release)',
      run: (n) => {
        for (let i = 0; i < n; i++) {
          const live = lives[order[i & (ORDER - 1)]!]!;
          const r = admitter.admit(live.slot, bytesOf(i), Date.now(), live.quotas.shardMsPerSecond);
          if (isRefusal(r)) {
            refused++;
            continue;
          }
          const started = performance.now();
          sink += r.remaining;
          registry.finish(live, 'OK', performance.now() - started);
        }
      },
    },
  ];

  const N = quick ? 500_000 : 2_000_000;
  const REPS = quick ? 3 : 7;
  const results: { name: string; cpuNs: number; wallNs: number; bestWallNs: number }[] = [];
  for (const v of variants) {
    v.run(N); // JIT warm-up
    const cpu: number[] = [];
    const wall: number[] = [];
    for (let r = 0; r < REPS; r++) {
      const before = threadCpuMs();
      const t0 = process.hrtime.bigint();
      v.run(N);
      wall.push(Number(process.hrtime.bigint() - t0) / N);
      cpu.push(((threadCpuMs() - before) * 1e6) / N);
    }
    results.push({ name: v.name, cpuNs: median(cpu), wallNs: median(wall), bestWallNs: Math.min(...wall) });
  }

  // For scale: the refusal path (a tenant over its requests_per_second).
  const tight = registry.put(record('tight', { requestsPerSecond: 1, writeBytesPerSecond: -1, concurrentRequests: -1 }));
  const now = Date.now();
  admitter.admit(tight.slot, 0, now);
  table.leave(tight.slot);
  const t0 = process.hrtime.bigint();
  const M = 1_000_000;
  for (let i = 0; i < M; i++) {
    const r = admitter.admit(tight.slot, 0, now);
    if (isRefusal(r)) sink += r.limit;
  }
  const refusalNs = Number(process.hrtime.bigint() - t0) / M;
  if (sink === -1) line('unreachable');
  return { results, refused, refusalNs };
}

if (part.includes('a')) {
line(`(a) Admitter.admit + release, ${slotCount.toLocaleString('en-US')} slots (${Math.ceil(slotCount / kSlotsPerPage)} pages), tenants in pseudo-random order, ` +
  `limits rps ${HIGH_LIMITS.rps}/wbps ${HIGH_LIMITS.wbps}/concurrency ${HIGH_LIMITS.concurrency} (some unlimited); every call admitted`);
const a = measureAdmission();
line(`    ${''.padEnd(68)}   CPU ns/call   wall ns/call (median, best)`);
for (const r of a.results) {
  line(`    ${r.name.padEnd(68)} ${r.cpuNs.toFixed(0).padStart(8)}   ${r.wallNs.toFixed(0).padStart(8)}, ${r.bestWallNs.toFixed(0)}`);
}
line(`    ${'refusal path (over requests_per_second), for comparison'.padEnd(68)} ${''.padStart(8)}   ${a.refusalNs.toFixed(0).padStart(8)}`);
if (a.refused > 0) line(`    WARNING: ${a.refused} calls were refused; the limits were meant to admit everything`);
// With the shard's time to charge, as a real call's admission has it.
const withLeave = a.results[2]!.cpuNs;
const withFinish = a.results[3]!.cpuNs;
line(`    (CPU = this thread's CPU time from /proc, median of reps, so time spent descheduled on a busy machine is not counted)`);
line(`    target admit + release <= ${ADMIT_TARGET_NS} ns:`);
line(`      release = table.leave (in-flight count only), shard time charged: ${withLeave.toFixed(0).padStart(5)} ns  ${verdict(withLeave, ADMIT_TARGET_NS)}`);
line(`      release = registry.finish, as createAdmit does it (+ counters, latency window, 2x performance.now): ${withFinish.toFixed(0)} ns  ${verdict(withFinish, ADMIT_TARGET_NS)}`);
line();
}

// ---------------------------------------------------------------- (b)

const POINT_READ = 'SELECT id, name, balance FROM accounts WHERE id = ?';
const ROWS = 100;

async function measurePath() {
  const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-bench-admission-'));
  const config: Config = {
    ...defaultConfig(),
    listen: '127.0.0.1:0',
    dataDir,
    shards,
    metricsListen: null,
    logLevel: 'warn',
    drainTimeoutMs: 5_000,
  };
  let server: StartedServer | null = null;
  let catalog: Catalog | null = null;
  try {
    server = await startServer(config, createLogger(config.logLevel));
    const { router, registry } = server;

    // Tenants through the real API (CreateTenant), with finite limits that admit everything here.
    const client = new RawClient(`127.0.0.1:${server.port}`);
    const createTenant = client.method('TenantService', 'CreateTenant');
    const keys: string[] = [];
    const ids: string[] = [];
    for (let i = 0; i < tenantCount; i += 16) {
      await Promise.all(
        Array.from({ length: Math.min(16, tenantCount - i) }, async (_, j) => {
          const tenantId = `adm${String(i + j).padStart(5, '0')}`;
          const r = await createTenant<any>(
            {
              tenant_id: tenantId,
              tenant: {
                quotas: {
                  ...UNLIMITED_QUOTAS,
                  requests_per_second: String(HIGH_LIMITS.rps),
                  write_bytes_per_second: String(HIGH_LIMITS.wbps),
                  concurrent_requests: String(HIGH_LIMITS.concurrency),
                },
              },
            },
            server!.adminKey.key,
          );
          if (!r.ok) throw new Error(`CreateTenant ${tenantId}: ${r.error.message}`);
          ids[i + j] = tenantId;
          keys[i + j] = r.response.api_key.key;
        }),
      );
      progress(`(b) creating tenants ${Math.min(i + 16, tenantCount)}/${tenantCount}`);
    }
    client.close();
    process.stderr.write('\n');

    // Each tenant gets a small table, straight through its shard (these calls are not admitted
    // by the server's own Admitter, so its window state stays untouched).
    const setupLimits = (id: string): CallLimits => ({ readOnly: false, timeoutMs: 60_000, storageLimitBytes: -1, slot: registry.get(id)!.slot.slot });
    await Promise.all(
      ids.map(async (id) => {
        const shard = router.forTenant(id);
        await shard.call({ op: 'execute', tenantId: id, limits: setupLimits(id), statement: { sql: 'CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)', params: [], named: null } });
        await shard.call({
          op: 'execute',
          tenantId: id,
          limits: setupLimits(id),
          statement: {
            sql: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) INSERT INTO accounts SELECT i, 'account-' || i, i * 100 FROM n",
            params: [BigInt(ROWS)],
            named: null,
          },
        });
      }),
    );

    // The front end's pieces, built over the same catalog and registry the way src/server.ts builds them.
    catalog = new Catalog(join(dataDir, 'catalog.db'));
    const access = new Access(new Authenticator(catalog), registry);
    const admitter = new Admitter(registry.table);
    const admit = createAdmit(admitter, registry);
    const metadata = keys.map((key) => {
      const md = new Metadata();
      md.set('authorization', `Bearer ${key}`);
      return md;
    });
    // Requests as grpc-js + proto-loader hand them to the handler.
    const requests: ProtoStatement[] = Array.from({ length: 1024 }, (_, i) => ({
      sql: POINT_READ,
      params: [{ kind: 'integer_value', integer_value: String(1 + ((i * 7919) % ROWS)) }],
      named_params: {},
    }));
    const order = tenantOrder(tenantCount, 1 << 16);

    /** SqlService.Execute's handler body, minus grpc-js and toResponse. */
    const frontEnd = (i: number): Promise<ExecuteResult> => {
      const trailer = new Metadata();
      const tenantCall = access.tenant(metadata[order[i & 0xffff]!]!);
      const statement = toStatement(requests[i & 1023]!, '');
      const quota = tenantCall.tenant.quotas.queryTimeoutMs;
      const limits: CallLimits = {
        readOnly: tenantCall.readOnly,
        timeoutMs: Math.max(1, Math.floor(Math.min(quota < 0 ? 3_600_000 : quota, Infinity))),
        storageLimitBytes: tenantCall.tenant.quotas.storageBytes,
        slot: tenantCall.tenant.slot.slot,
      };
      const tenantId = tenantCall.tenant.record.tenantId;
      const bytes = writeBytesOf(statement.sql, statement.params, statement.named);
      return admit(tenantCall, bytes, trailer, () => router.forTenant(tenantId).call({ op: 'execute', tenantId, limits, statement }));
    };

    // Dispatch alone, for comparison: the same shard call with everything precomputed.
    const fixedLimits = new Map(ids.map((id) => [id, setupLimits(id)]));
    const fixedStatements = requests.map((r) => toStatement(r, ''));
    const dispatchOnly = (i: number): Promise<ExecuteResult> => {
      const tenantId = ids[order[i & 0xffff]!]!;
      return router.forTenant(tenantId).call({ op: 'execute', tenantId, limits: fixedLimits.get(tenantId)!, statement: fixedStatements[i & 1023]! });
    };

    // Closed loop: `inFlight` calls outstanding; main-thread CPU from /proc over the run.
    const closedLoop = async (start: (i: number) => Promise<unknown>, ms: number) => {
      let issued = 0;
      let completed = 0;
      let failed = 0;
      let stop = false;
      const before = cpuSample();
      await new Promise<void>((resolve) => {
        let running = inFlight;
        const next = (): void => {
          if (stop) {
            if (--running === 0) resolve();
            return;
          }
          start(issued++).then(
            () => {
              completed++;
              next();
            },
            () => {
              failed++;
              next();
            },
          );
        };
        setTimeout(() => (stop = true), ms);
        for (let k = 0; k < inFlight; k++) next();
      });
      const d = cpuDelta(before, cpuSample());
      return {
        calls: completed,
        failed,
        callsPerSecond: (completed / d.wallMs) * 1000,
        mainUs: d.mainThreadMs === null ? NaN : (d.mainThreadMs * 1000) / completed,
        eluUs: (d.elu * d.wallMs * 1000) / completed,
        processUs: (d.processMs * 1000) / completed,
      };
    };

    // The synchronous part only: batches of `inFlight` calls started back to back, each batch timed
    // with hrtime; the median batch, so that batches hit by preemption on a busy machine do not count.
    const syncPart = async (start: (i: number) => Promise<unknown>, rounds: number) => {
      const perCallUs: number[] = [];
      let n = 0;
      const pending: Promise<unknown>[] = new Array(inFlight);
      for (let r = 0; r < rounds; r++) {
        const t0 = process.hrtime.bigint();
        for (let k = 0; k < inFlight; k++) pending[k] = start(n + k);
        perCallUs.push(Number(process.hrtime.bigint() - t0) / inFlight / 1000);
        n += inFlight;
        await Promise.all(pending);
      }
      return median(perCallUs);
    };

    // Warm-up: every key cached, every database open, the JIT settled.
    for (let i = 0; i < tenantCount; i++) await frontEnd(order.indexOf(i));
    await closedLoop(frontEnd, 1_000);
    await closedLoop(dispatchOnly, 500);

    const runs = quick ? 1 : 3;
    const full: Awaited<ReturnType<typeof closedLoop>>[] = [];
    const bare: Awaited<ReturnType<typeof closedLoop>>[] = [];
    for (let r = 0; r < runs; r++) {
      progress(`(b) closed loops, run ${r + 1}/${runs}`);
      full.push(await closedLoop(frontEnd, seconds * 1000));
      bare.push(await closedLoop(dispatchOnly, seconds * 1000));
    }
    process.stderr.write('\n');
    const syncFull = await syncPart(frontEnd, quick ? 2_000 : 5_000);
    const syncBare = await syncPart(dispatchOnly, quick ? 2_000 : 5_000);
    return { full, bare, syncFull, syncBare, dataDir };
  } finally {
    catalog?.close();
    await server?.shutdown();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

if (part.includes('b')) {
line(
  `(b) front-end path per Execute call without gRPC: ${tenantCount} tenants (point reads on 100-row tables), ${shards} shard workers, ` +
    `closed loop with ${inFlight} in flight, ${seconds} s per run`,
);
const b = await measurePath();
const pick = (runs: { mainUs: number }[]) => median(runs.map((r) => r.mainUs));
const fullUs = pick(b.full);
const bareUs = pick(b.bare);
for (const [label, runs] of [
  ['whole path: access.tenant + toStatement + admit + shard.call + finish', b.full],
  ['dispatch alone: shard.call with precomputed request (baseline)', b.bare],
] as const) {
  line(`    ${label}`);
  for (const r of runs) {
    line(
      `        ${fmtUs(r.mainUs).padStart(9)} main-thread CPU/call   ${r.callsPerSecond.toFixed(0).padStart(6)} calls/s   ELU ${fmtUs(r.eluUs)}/call   ` +
        `whole process ${fmtUs(r.processUs)}/call${r.failed ? `   FAILED ${r.failed}` : ''}`,
    );
  }
}
line(`    synchronous part only (call start until shard.call has posted; hrtime over batches of ${inFlight}):`);
line(`        whole path ${fmtUs(b.syncFull)}/call, dispatch alone ${fmtUs(b.syncBare)}/call -> auth + statement + admission ${fmtUs(b.syncFull - b.syncBare)}/call`);
line(`    so of the ${fmtUs(fullUs)} main-thread CPU per call: dispatch round trip ${fmtUs(bareUs)}, auth + statement + admission + finish ${fmtUs(fullUs - bareUs)}`);
line(`    target whole path <= ${PATH_TARGET_US} µs main-thread CPU/call: ${fmtUs(fullUs)}  ${verdict(fullUs, PATH_TARGET_US)}`);
line(`    (main-thread CPU is read from /proc in 10 ms ticks; ${b.full.reduce((s, r) => s + r.calls, 0).toLocaleString('en-US')} calls measured)`);
}
line(`done; ${loadLine()}`);
