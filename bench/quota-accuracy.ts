/**
 * npm run bench:accuracy [-- --rps 200] [--seconds 10] [--overload 3] [--in-flight 20] [--skip 1] [--shards N]
 *
 * How exactly requests_per_second holds under overload. A real tenantd runs
 * in a child process (bench/quota/server.ts: startServer, stock plans); one
 * tenant is created through CreateTenant with requests_per_second = R and
 * every other quota unlimited; then a real grpc-js client in this process
 * sends Execute("SELECT 1") open-loop at overload x R calls/s for `seconds`
 * (each call started on its own schedule, at most `in-flight` outstanding:
 * a call due while that many are outstanding is skipped and counted).
 *
 * Reported: the admitted rate (OK responses to calls sent in the steady part,
 * i.e. after the first `skip` seconds, divided by its length) against R
 * (target within ±5 %), the admitted count per second, and how many
 * RESOURCE_EXHAUSTED refusals carried google.rpc.RetryInfo.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { status as Status } from '@grpc/grpc-js';
import { startChild, type ChildServer } from './lib/child.ts';
import {
  decodeFailure,
  fmtMs,
  line,
  loadLine,
  machineLine,
  numberFlag,
  parseFlags,
  percentile,
  RawClient,
  sleep,
  sortedCopy,
  UNLIMITED_QUOTAS,
  verdict,
} from './quota/common.ts';
import type { ServerArgs, ServerReady } from './quota/server.ts';

const flags = parseFlags(process.argv.slice(2), ['--rps', '--seconds', '--overload', '--in-flight', '--skip', '--shards'], []);
const R = Math.round(numberFlag(flags, '--rps', 200));
const seconds = numberFlag(flags, '--seconds', 10);
const overload = numberFlag(flags, '--overload', 3);
const maxInFlight = numberFlag(flags, '--in-flight', 20);
const skip = flags.has('--skip') ? Number(flags.get('--skip')) : 1;
const shards = numberFlag(flags, '--shards', availableParallelism());
const TARGET_ERROR = 0.05;
if (!(skip >= 0 && skip < seconds)) throw new Error('--skip must be at least 0 and less than --seconds');

const offered = R * overload;

line(machineLine());
line(
  `plan: tenant with requests_per_second = ${R} (other quotas -1); Execute("SELECT 1") sent open-loop at ${offered} calls/s ` +
    `(${overload}x) for ${seconds} s, at most ${maxInFlight} in flight; steady part = sends after the first ${skip} s; ` +
    `server in a child process with ${shards} shards`,
);

interface Outcome {
  /** ms since the first send */
  sentMs: number;
  latencyMs: number;
  code: Status;
  retryDelayMs: number | null;
  quota: string;
}

const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-bench-accuracy-'));
let child: ChildServer | null = null;
let client: RawClient | null = null;
try {
  child = await startChild(new URL('./quota/server.ts', import.meta.url), { dataDir, shards } satisfies ServerArgs);
  const ready = child.ready as ServerReady;
  client = new RawClient(`127.0.0.1:${ready.port}`);
  const createTenant = client.method('TenantService', 'CreateTenant');
  const execute = client.method('SqlService', 'Execute');

  const created = await createTenant<any>(
    { tenant_id: 'accuracy', tenant: { quotas: { ...UNLIMITED_QUOTAS, requests_per_second: String(R) } } },
    ready.adminKey,
  );
  if (!created.ok) throw new Error(`CreateTenant: ${created.error.message}`);
  const key: string = created.response.api_key.key;
  const effective = created.response.tenant.effective_quotas.requests_per_second;
  line(`tenant created; effective requests_per_second = ${effective}`);

  // Open the tenant's database and the channel, then let the one-second window empty.
  const warm = await execute({ sql: 'SELECT 1' }, key);
  if (!warm.ok) throw new Error(`warm-up Execute: ${warm.error.message}`);
  await sleep(1_200);

  const outcomes: Outcome[] = [];
  let skipped = 0;
  let inFlight = 0;
  const total = Math.round(offered * seconds);
  const intervalMs = 1000 / offered;
  const t0 = performance.now();
  let next = 0;
  await new Promise<void>((resolve) => {
    const send = (i: number) => {
      const sentMs = performance.now() - t0;
      inFlight++;
      void execute({ sql: 'SELECT 1' }, key, 10_000).then((r) => {
        inFlight--;
        const latencyMs = performance.now() - t0 - sentMs;
        if (r.ok) outcomes[i] = { sentMs, latencyMs, code: Status.OK, retryDelayMs: null, quota: '' };
        else {
          const f = decodeFailure(r.error);
          outcomes[i] = { sentMs, latencyMs, code: f.code, retryDelayMs: f.retryDelayMs, quota: f.quotaIds[0] ?? f.reason };
        }
        if (next >= total && inFlight === 0) resolve();
      });
    };
    // Every millisecond or so, start every call whose time has come.
    const pump = () => {
      const now = performance.now() - t0;
      while (next < total && next * intervalMs <= now) {
        if (inFlight >= maxInFlight) skipped++;
        else send(next);
        next++;
      }
      if (next < total) setTimeout(pump, Math.max(0, Math.min(1, next * intervalMs - now)));
      else if (inFlight === 0) resolve();
    };
    pump();
  });
  const sendSpanS = (performance.now() - t0) / 1000;

  const done = outcomes.filter((o): o is Outcome => o !== undefined);
  const ok = done.filter((o) => o.code === Status.OK);
  const refused = done.filter((o) => o.code === Status.RESOURCE_EXHAUSTED);
  const other = done.filter((o) => o.code !== Status.OK && o.code !== Status.RESOURCE_EXHAUSTED);
  const steady = ok.filter((o) => o.sentMs >= skip * 1000 && o.sentMs < seconds * 1000);
  const steadyRate = steady.length / (seconds - skip);
  const error = (steadyRate - R) / R;
  const lastSend = Math.max(...done.map((o) => o.sentMs));

  line();
  line(`sent ${done.length} calls in ${(lastSend / 1000).toFixed(2)} s (${(done.length / (lastSend / 1000)).toFixed(1)} calls/s offered; ` +
    `${skipped} skipped at the ${maxInFlight}-in-flight cap); all answered after ${sendSpanS.toFixed(2)} s`);
  line(`answers: ${ok.length} OK, ${refused.length} RESOURCE_EXHAUSTED, ${other.length} other` +
    (other.length ? ` (${[...new Set(other.map((o) => `${Status[o.code]} ${o.quota}`))].join(', ')})` : ''));
  const okLat = sortedCopy(ok.map((o) => o.latencyMs));
  const refLat = sortedCopy(refused.map((o) => o.latencyMs));
  line(`latency: OK p50 ${fmtMs(percentile(okLat, 50))} p99 ${fmtMs(percentile(okLat, 99))}; refused p50 ${fmtMs(percentile(refLat, 50))} p99 ${fmtMs(percentile(refLat, 99))}`);

  const perSecond: number[] = [];
  for (let s = 0; s < Math.ceil(seconds); s++) perSecond.push(ok.filter((o) => o.sentMs >= s * 1000 && o.sentMs < (s + 1) * 1000).length);
  line(`admitted per second of sending: ${perSecond.join(' ')}`);
  // The window slides in 100 ms buckets, so a 1 s span not aligned with them can hold a little more than R.
  const okTimes = ok.map((o) => o.sentMs).sort((x, y) => x - y);
  let maxInSecond = 0;
  for (let lo = 0, hi = 0; hi < okTimes.length; hi++) {
    while (okTimes[hi]! - okTimes[lo]! >= 1000) lo++;
    if (okTimes[lo]! >= skip * 1000) maxInSecond = Math.max(maxInSecond, hi - lo + 1);
  }
  line(`most admitted in any 1,000 ms of sending (steady part): ${maxInSecond} (${(((maxInSecond - R) / R) * 100).toFixed(1)} % over R)`);
  line(`admitted over the whole run: ${ok.length} in ${seconds} s = ${(ok.length / seconds).toFixed(1)}/s (the first second also admits a full window)`);
  line(
    `admitted rate, steady part (${skip}-${seconds} s): ${steady.length} / ${seconds - skip} s = ${steadyRate.toFixed(1)}/s vs limit ${R}: ` +
      `error ${(error * 100).toFixed(2)} %  target ±${TARGET_ERROR * 100} %  ${verdict(Math.abs(error), TARGET_ERROR)}`,
  );

  const withRetry = refused.filter((o) => o.retryDelayMs !== null);
  const rpsRefusals = refused.filter((o) => o.quota === 'requests_per_second').length;
  const delays = sortedCopy(withRetry.map((o) => o.retryDelayMs!));
  line(
    `refusals with google.rpc.RetryInfo: ${withRetry.length} of ${refused.length}` +
      (refused.length ? ` (${((withRetry.length / refused.length) * 100).toFixed(1)} %)` : '') +
      `; naming requests_per_second in QuotaFailure: ${rpsRefusals}` +
      (withRetry.length
        ? `; retry_delay min ${fmtMs(delays[0]!)} p50 ${fmtMs(percentile(delays, 50))} max ${fmtMs(delays[delays.length - 1]!)}`
        : ''),
  );
  line(`  RetryInfo on every refusal: ${withRetry.length === refused.length ? 'PASS' : 'MISS'}`);
} finally {
  client?.close();
  await child?.stop();
  rmSync(dataDir, { recursive: true, force: true });
  line(`done; ${loadLine()}`);
}
