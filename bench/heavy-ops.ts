/**
 * npm run bench:heavy [-- --mb 256] [--runtime node|tsx] [--neighbour read|write] [--sync-flush shared|per-commit]
 *
 * What an operator's heavy work on one tenant costs the other tenants of its
 * shard. A real tenantd in a child process with one shard; a tenant of
 * `--mb` MiB of blobs and a small neighbour whose point reads run one at a
 * time from this process throughout each phase:
 *
 *   idle          the neighbour alone (the baseline)
 *   BackupTenant  the snapshot (SQLite's online backup, ~1 MiB per step
 *                 between the shard's other calls) and streaming it
 *   INTEGRITY     RunMaintenance INTEGRITY_CHECK: a snapshot, checked in the
 *                 piscina file-task pool
 *   VACUUM        RunMaintenance VACUUM after half the rows are deleted: in
 *                 the pool, with only the big tenant's calls held
 *   heavy queries another tenant runs ~100 ms queries back to back for 5 s,
 *                 first without shard_ms_per_second, then with 200 ms/s (the
 *                 free plan's): how much of the shard it gets
 *
 * For each phase: its duration and the neighbour's latency (p50, p99, max).
 * `--neighbour write`: the neighbour's calls are durable single-row UPDATEs
 * instead, to see what the heavy work's disk writes cost its commits (under
 * --sync-flush shared, a syncfs for several tenants' commits writes back all the filesystem's dirty data).
 * When the work ran on the shard itself (before), the neighbour's longest
 * call was about the whole duration.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { status as Status } from '@grpc/grpc-js';
import { syncFlushFlag } from './lib/benchConfig.ts';
import { buildCompiled, startChild, type ChildServer } from './lib/child.ts';
import { decodeFailure, fmtMs, line, loadLine, machineLine, numberFlag, parseFlags, percentile, RawClient, sortedCopy, UNLIMITED_QUOTAS } from './quota/common.ts';
import type { ServerArgs, ServerReady } from './quota/server.ts';

const flags = parseFlags(process.argv.slice(2), ['--mb', '--runtime', '--neighbour', '--sync-flush'], []);
const neighbour = flags.get('--neighbour') ?? 'read';
if (neighbour !== 'read' && neighbour !== 'write') throw new Error('--neighbour: read or write');
const neighbourWrites = neighbour === 'write';
const syncFlush = syncFlushFlag(flags.get('--sync-flush'));
const megabytes = Math.round(numberFlag(flags, '--mb', 256));
const runtime = flags.get('--runtime') ?? 'node';
if (runtime !== 'node' && runtime !== 'tsx') throw new Error('--runtime: node or tsx');
if (runtime === 'node') buildCompiled();

const BLOB_BYTES = 256 * 1024;
const BLOBS_PER_CALL = 64; // 16 MiB
/** ~100 ms of one thread's time here. */
const HEAVY_QUERY = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000) SELECT count(*) FROM c';
const HOG_MS = 5_000;
/** Runs until its statement's timeout. */
const ENDLESS_QUERY = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c';

line(machineLine());
const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-bench-heavy-'));
let child: ChildServer | null = null;
let client: RawClient | null = null;

try {
  child = await startChild(new URL('./quota/server.ts', import.meta.url), { dataDir, shards: 1, syncFlush } satisfies ServerArgs, [], runtime === 'node');
  const ready = child.ready as ServerReady;
  client = new RawClient(`127.0.0.1:${ready.port}`);
  const createTenant = client.method('TenantService', 'CreateTenant');
  const execute = client.method('SqlService', 'Execute');
  const stream = client.serverStream('TenantService', 'RunMaintenance');
  const backup = client.serverStream('TenantService', 'BackupTenant');

  const must = async <T>(what: string, result: Promise<{ ok: true; response: T } | { ok: false; error: { code: number; details: string } }>) => {
    const r = await result;
    if (!r.ok) throw new Error(`${what}: ${Status[r.error.code]} ${r.error.details}`);
    return r.response;
  };
  const newTenant = async (id: string) =>
    (await must<any>(`CreateTenant ${id}`, createTenant({ tenant_id: id, tenant: { quotas: { ...UNLIMITED_QUOTAS, query_timeout_ms: '60000' } } }, ready.adminKey))).api_key.key as string;

  const bigKey = await newTenant('big');
  await must('CREATE TABLE', execute({ sql: 'CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)' }, bigKey));
  const f0 = performance.now();
  for (let done = 0; done < (megabytes * 1024 * 1024) / BLOB_BYTES; done += BLOBS_PER_CALL) {
    await must(
      'fill',
      execute(
        {
          sql: 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) INSERT INTO blobs (b) SELECT randomblob(?) FROM c',
          params: [{ integer_value: String(BLOBS_PER_CALL) }, { integer_value: String(BLOB_BYTES) }],
        },
        bigKey,
        120_000,
      ),
    );
  }
  const smallKey = await newTenant('small');
  await must('CREATE TABLE', execute({ sql: 'CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)' }, smallKey));
  await must('INSERT', execute({ sql: "INSERT INTO kv VALUES (1, 'one')" }, smallKey));
  line(`server: compiled=${runtime === 'node'}, 1 shard, --sync full --sync-flush ${syncFlush}, neighbour ${neighbourWrites ? 'writes' : 'reads'}; tenant "big" filled with ${megabytes} MiB in ${((performance.now() - f0) / 1000).toFixed(1)} s`);

  /** Runs `work`, reading the small tenant one call at a time until it is done. */
  const phase = async (name: string, work: () => Promise<string>) => {
    let finished = false;
    const started = performance.now();
    const outcome = work().finally(() => (finished = true));
    const latencies: number[] = [];
    while (!finished) {
      const t0 = performance.now();
      const sql = neighbourWrites ? "UPDATE kv SET v = 'one' WHERE k = 1" : 'SELECT v FROM kv WHERE k = 1';
      await must('neighbour call', execute({ sql }, smallKey));
      latencies.push(performance.now() - t0);
    }
    const note = await outcome;
    const ms = performance.now() - started;
    const l = sortedCopy(latencies);
    const max = l[l.length - 1]!;
    line(
      `| ${name} | ${fmtMs(ms)} | ${l.length} | ${fmtMs(percentile(l, 50))} | ${fmtMs(percentile(l, 99))} | ${fmtMs(max)} | ${((100 * max) / ms).toFixed(1)} % | ${note} |`,
    );
  };

  line();
  line(`| phase | duration | neighbour ${neighbourWrites ? 'writes' : 'reads'} | p50 | p99 | max | max / duration | result |`);
  line('| --- | --- | --- | --- | --- | --- | --- | --- |');
  await phase('idle', async () => {
    await new Promise((r) => setTimeout(r, 1_000));
    return 'neighbour alone for 1 s';
  });
  await phase('BackupTenant', async () => {
    const chunks = await backup<{ data: Buffer }>({ name: 'tenants/big' }, ready.adminKey);
    return `${(chunks.reduce((n, c) => n + c.data.length, 0) / 2 ** 20).toFixed(0)} MiB streamed`;
  });
  await phase('INTEGRITY_CHECK', async () => {
    const [result] = await stream<{ ok: boolean; message: string }>({ name: 'tenants/big', operation: 'INTEGRITY_CHECK' }, ready.adminKey);
    return `ok=${result?.ok} ${result?.message}`;
  });
  await must('DELETE', execute({ sql: 'DELETE FROM blobs WHERE id % 2 = 0' }, bigKey, 120_000));
  await phase('VACUUM', async () => {
    const [result] = await stream<{ ok: boolean; message: string }>({ name: 'tenants/big', operation: 'VACUUM' }, ready.adminKey);
    return `ok=${result?.ok} ${result?.message}`;
  });

  // A tenant that runs heavy queries back to back for HOG_MS, retrying when refused as its RetryInfo says.
  const hogPhase = async (id: string, shardMs: string) => {
    const created = await must<any>(
      `CreateTenant ${id}`,
      createTenant({ tenant_id: id, tenant: { quotas: { requests_per_second: '-1', shard_ms_per_second: shardMs } } }, ready.adminKey),
    );
    const key = created.api_key.key as string;
    await phase(`${id}: heavy queries, shard_ms_per_second ${shardMs}`, async () => {
      let ran = 0;
      let refused = 0;
      const until = performance.now() + HOG_MS;
      while (performance.now() < until) {
        const r = await execute({ sql: HEAVY_QUERY }, key);
        if (r.ok) ran++;
        else {
          const failure = decodeFailure(r.error);
          if (failure.reason !== 'QUOTA_EXCEEDED') throw new Error(`heavy query: ${failure.reason} ${failure.message}`);
          refused++;
          await new Promise((resolve) => setTimeout(resolve, Math.min(failure.retryDelayMs ?? 100, until - performance.now())));
        }
      }
      return `${ran} heavy queries ran, ${refused} refused`;
    });
  };
  await hogPhase('hog-unlimited', '-1');
  await hogPhase('hog-free', '200');

  // A lone tenant on the idle shard (its neighbour reads nothing now): after
  // one statement that times out, at the free plan's 200 ms/s, it is served
  // as the shard is free (the quota is work-conserving).
  {
    const created = await must<any>(
      'CreateTenant lone',
      createTenant({ tenant_id: 'lone', tenant: { quotas: { requests_per_second: '-1', shard_ms_per_second: '200', query_timeout_ms: '1500' } } }, ready.adminKey),
    );
    const key = created.api_key.key as string;
    // Past the neighbour's last read by more than the window in which it counts as active.
    await new Promise((r) => setTimeout(r, 1_500));
    const timedOut = await execute({ sql: ENDLESS_QUERY }, key);
    const reason = timedOut.ok ? 'ok' : decodeFailure(timedOut.error).reason;
    let served = 0;
    let refused = 0;
    const until = performance.now() + 3_000;
    while (performance.now() < until) {
      const r = await execute({ sql: 'SELECT 1' }, key);
      if (r.ok) served++;
      else refused++;
    }
    line();
    line(`lone tenant, shard_ms_per_second 200: one statement ended ${reason} at 1.5 s, then for 3 s: ${served} calls served, ${refused} refused (${refused === 0 ? 'never refused' : 'REFUSED'})`);
  }
} finally {
  client?.close();
  await child?.stop();
  rmSync(dataDir, { recursive: true, force: true });
  line(`done; ${loadLine()}`);
}
