/**
 * shard_ms_per_second is work-conserving: a tenant past its share is
 * refused only while another tenant of its shard wants the shard, and its
 * calls then run after those of every tenant within its share.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { performance } from 'node:perf_hooks';
import { status } from '@grpc/grpc-js';
import { shardOf } from '../src/routing/shardRouter.ts';
import { NEIGHBOUR_WINDOW_MS } from '../src/quota/shardActivity.ts';
import { rowsOf, startTestServer, type TestServer } from './support/server.ts';

/** Runs until its statement timeout (query_timeout_ms below), however fast the host. */
const ENDLESS = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c';
const HEAVY = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) FROM c';

let t: TestServer | undefined;
afterEach(async () => {
  await t?.stop();
  t = undefined;
});

/** `count` tenant ids that land on the same one of `shards` shards. */
function sameShard(prefix: string, count: number, shards: number): string[] {
  const ids = [`${prefix}-0`];
  for (let i = 1; ids.length < count; i++) if (shardOf(`${prefix}-${i}`, shards) === shardOf(ids[0]!, shards)) ids.push(`${prefix}-${i}`);
  return ids;
}

describe('shard_ms_per_second without lock-outs', () => {
  it('never refuses a lone tenant on an idle shard after a statement that timed out', async () => {
    t = await startTestServer({ shards: 1 });
    // The free plan's share; a statement that runs three times a second's worth.
    const key = await t.createTenant('lone', { quotas: { requests_per_second: '-1', shard_ms_per_second: '200', query_timeout_ms: '600' } });
    const timedOut = await t.client.failure('SqlService', 'Execute', { sql: ENDLESS }, { key });
    expect(timedOut.reason).toBe('QUERY_TIMEOUT');
    // On 011b252: refused for ~2 s ("600 of 200"). Now every call is served at once.
    for (let i = 0; i < 20; i++) expect(rowsOf(await t.sql(key, 'SELECT 1'))).toEqual([[1n]]);
    // And again after a second timeout, with calls queued meanwhile.
    await t.client.failure('SqlService', 'Execute', { sql: ENDLESS }, { key });
    const results = await Promise.all(Array.from({ length: 5 }, () => t!.sql(key, 'SELECT 2')));
    for (const r of results) expect(rowsOf(r)).toEqual([[2n]]);
  }, 30_000);

  it('refuses the tenant past its share, with RetryInfo, while a neighbour uses the shard, and serves it again once the neighbour is gone', async () => {
    t = await startTestServer({ shards: 2 });
    const [hogId, neighbourId] = sameShard('share', 2, 2);
    const hog = await t.createTenant(hogId!, { quotas: { requests_per_second: '-1', shard_ms_per_second: '100', query_timeout_ms: '600' } });
    const neighbour = await t.createTenant(neighbourId!, { quotas: { requests_per_second: '-1' } });
    await t.client.failure('SqlService', 'Execute', { sql: ENDLESS }, { key: hog });
    await t.sql(neighbour, 'SELECT 1');
    const refused = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: hog });
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.errorMetadata).toMatchObject({ quota: 'shard_ms_per_second', limit: '100' });
    expect(refused.retryDelayMs).toBeGreaterThan(0);
    // The neighbour stops: a second later the shard is the hog's again.
    await new Promise((r) => setTimeout(r, NEIGHBOUR_WINDOW_MS + 100));
    expect(rowsOf(await t.sql(hog, 'SELECT 1'))).toEqual([[1n]]);
  }, 30_000);

  it('runs the calls of a tenant past its share after those of a tenant within it', async () => {
    t = await startTestServer({ shards: 1 });
    const hog = await t.createTenant('hog', { quotas: { requests_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '20', query_timeout_ms: '2000' } });
    const neighbour = await t.createTenant('calm', { quotas: { requests_per_second: '-1', concurrent_requests: '-1' } });
    // The heavy query's time on this host, now: the hog is past its share after it.
    let heavyMs = Infinity;
    for (let i = 0; i < 2; i++) {
      const started = performance.now();
      await t.sql(hog, HEAVY);
      heavyMs = Math.min(heavyMs, performance.now() - started);
    }
    // Alone on the shard, it is admitted: a statement that runs two seconds, then six heavy calls, queue at the shard.
    const endless = t.client.failure('SqlService', 'Execute', { sql: ENDLESS }, { key: hog });
    const heavy = Array.from({ length: 6 }, () => t!.sql(hog, HEAVY));
    await new Promise((r) => setTimeout(r, 500));
    // Six calls of the neighbour, all queued while the endless one runs; each
    // says when it ran, by the server's clock. Taking turns one for one, they
    // would alternate with the heavy calls: the last ran five heavy calls
    // after the first. Within its share, the neighbour goes first: all six
    // run before the next heavy call.
    // (Query: each call its own turn; Executes queued together would share one as a group commit.)
    const ranAt = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const chunks = await t!.client.stream<{ rows: { values: { real_value: number }[] }[] }>('SqlService', 'Query', { sql: "SELECT (julianday('now') - 2440587.5) * 86400000.0" }, { key: neighbour });
        return chunks.flatMap((c) => c.rows)[0]!.values[0]!.real_value;
      }),
    );
    expect((await endless).reason).toBe('QUERY_TIMEOUT');
    const heavyResults = await Promise.allSettled(heavy);
    // All admitted before the neighbour came: all served.
    expect(heavyResults.every((r) => r.status === 'fulfilled')).toBe(true);
    expect(Math.max(...ranAt) - Math.min(...ranAt)).toBeLessThan(heavyMs / 2);
  }, 30_000);
});
