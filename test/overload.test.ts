/**
 * Overload is shed, not queued without end: at three times what the shards
 * can run, every call ends (answered, or refused with RetryInfo), memory
 * stays bounded, and the node serves normally right after.
 *
 * 6 s of overload, not the 20 s of the scenario: the queue budget is
 * reached within the first second at 3x, after which the state is steady
 * (the same queue, the same refusals), and a 2-core CI host shared with
 * other test files cannot spare 20 s. The budget here is small (64 calls a
 * shard) so that the bound, not the client, is what the load meets.
 */
import { status as Status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { RpcError, startTestServer, type TestServer } from './support/server.ts';

const WORK = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT sum(x) FROM c';
const quotas = { requests_per_second: '-1', write_bytes_per_second: '-1', shard_ms_per_second: '-1', concurrent_requests: '-1', query_timeout_ms: '30000' };

let t: TestServer | null = null;
afterEach(async () => {
  await t?.stop();
  t = null;
});

describe('overload', () => {
  it('at 3x capacity over many tenants: every call ends, refusals carry RetryInfo, RSS stays bounded, service is normal 2 s after', async () => {
    t = await startTestServer({ shards: 2, shardQueueLimits: { perShardCalls: 64, perShardBytes: 1024 * 1024, totalCalls: 100, totalBytes: 2 * 1024 * 1024 } });
    const keys: string[] = [];
    for (let i = 0; i < 40; i++) keys.push(await t.createTenant(`load-${i}`, { quotas }));
    for (const key of keys) await t.sql(key, 'SELECT 1');

    // Capacity: calls a second with 8 closed-loop clients.
    let done = 0;
    const until = performance.now() + 1_500;
    await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        while (performance.now() < until) {
          await t!.sql(keys[i]!, WORK);
          done++;
        }
      }),
    );
    const capacity = done / 1.5;
    const rate = 3 * capacity;

    const rssBefore = process.memoryUsage().rss;
    let rssMax = rssBefore;
    const sampler = setInterval(() => (rssMax = Math.max(rssMax, process.memoryUsage().rss)), 100);
    const outcomes: Promise<string>[] = [];
    const started = performance.now();
    // 6 s in the suite; the full 20 s: TENANTD_OVERLOAD_MS=20000 TENANTD_REPORT=1 npx vitest run test/overload.test.ts
    const LOAD_MS = Number(process.env.TENANTD_OVERLOAD_MS ?? 6_000);
    // Open loop: calls go out at `rate` whatever happens to the earlier ones.
    while (performance.now() - started < LOAD_MS) {
      const due = Math.floor(((performance.now() - started) / 1000) * rate);
      while (outcomes.length < due) {
        const key = keys[outcomes.length % keys.length]!;
        outcomes.push(
          t.client.call('SqlService', 'Execute', { sql: WORK }, { key, deadlineMs: 30_000 }).then(
            () => 'OK',
            (error: RpcError) => {
              if (error.status.code === Status.UNAVAILABLE && error.status.reason === 'SHARD_OVERLOADED') {
                expect(error.status.retryDelayMs).toBeGreaterThan(0);
              }
              return `${Status[error.status.code]} ${error.status.reason}`;
            },
          ),
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    const ended = await Promise.all(outcomes);
    clearInterval(sampler);
    const counts: Record<string, number> = {};
    for (const outcome of ended) counts[outcome] = (counts[outcome] ?? 0) + 1;
    if (process.env.TENANTD_REPORT) console.info(JSON.stringify({ capacityPerS: Math.round(capacity), ratePerS: Math.round(rate), calls: ended.length, counts, rssGrowthMiB: Math.round((rssMax - rssBefore) / 1048576) }));
    // Every call ended, and only as answered or shed: none ran into its deadline.
    expect(Object.keys(counts).every((k) => k === 'OK' || k === 'UNAVAILABLE SHARD_OVERLOADED' || k.startsWith('RESOURCE_EXHAUSTED')), JSON.stringify(counts)).toBe(true);
    expect(counts['UNAVAILABLE SHARD_OVERLOADED'] ?? 0, JSON.stringify({ capacity, counts })).toBeGreaterThan(0);
    expect(counts.OK ?? 0).toBeGreaterThan(0);
    // The bound: the test process (client and server) grows by less than 256 MiB under the load.
    expect(rssMax - rssBefore, `RSS grew ${((rssMax - rssBefore) / 1048576).toFixed(0)} MiB`).toBeLessThan(256 * 1024 * 1024);

    // Normal again at once: a plain call is answered within 2 s of the load's end.
    const after = performance.now();
    await t.sql(keys[0]!, 'SELECT 1');
    if (process.env.TENANTD_REPORT) console.info(JSON.stringify({ firstCallAfterLoadMs: Math.round(performance.now() - after) }));
    expect(performance.now() - after).toBeLessThan(2_000);
    expect(t.server.router.forTenant('load-0').inFlight).toBe(0);
  }, 120_000);
});
