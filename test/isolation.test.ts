import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { shardOf } from '../src/routing/shardRouter.ts';
import { rowsOf, startTestServer, v, type TestServer } from './support/server.ts';

let t: TestServer;

beforeAll(async () => {
  t = await startTestServer({ shards: 2 });
});
afterAll(() => t.stop());

const RUNAWAY = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c';

/** A tenant id starting with `prefix` on the same shard as `tenantId`. */
function sameShardAs(tenantId: string, prefix: string): string {
  for (let i = 0; i < 100; i++) {
    const candidate = `${prefix}-${i}`;
    if (shardOf(candidate, 2) === shardOf(tenantId, 2)) return candidate;
  }
  throw new Error('no tenant id found');
}

/** Two tenant ids that hash to the same shard. */
function sameShardPair(prefix: string): [string, string] {
  const first = `${prefix}-0`;
  for (let i = 1; i < 100; i++) {
    const candidate = `${prefix}-${i}`;
    if (shardOf(candidate, 2) === shardOf(first, 2)) return [first, candidate];
  }
  throw new Error('no pair found');
}

describe('isolation between tenants', () => {
  it('gives each tenant its own tables under the same names', async () => {
    const a = await t.createTenant('iso-a');
    const b = await t.createTenant('iso-b');
    for (const [key, who] of [[a, 'a'], [b, 'b']] as const) {
      await t.sql(key, 'CREATE TABLE secrets (owner TEXT, value TEXT)');
      await t.sql(key, 'INSERT INTO secrets VALUES (?, ?)', [v.text(who), v.text(`secret of ${who}`)]);
    }
    expect(rowsOf(await t.sql(a, 'SELECT * FROM secrets'))).toEqual([['a', 'secret of a']]);
    expect(rowsOf(await t.sql(b, 'SELECT * FROM secrets'))).toEqual([['b', 'secret of b']]);
    await t.sql(a, 'DROP TABLE secrets');
    expect(rowsOf(await t.sql(b, 'SELECT count(*) FROM secrets'))).toEqual([[1n]]);
  });

  it('never lets a header pick another tenant', async () => {
    const a = await t.createTenant('hdr-x');
    await t.createTenant('hdr-y');
    const failure = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: a, tenantId: 'hdr-y' });
    expect(failure.code).toBe(status.PERMISSION_DENIED);
  });
});

describe('the guard', () => {
  let key: string;
  beforeAll(async () => {
    key = await t.createTenant('guarded');
    await t.sql(key, 'CREATE TABLE t (x)');
  });

  const refused: [string, string][] = [
    ["ATTACH DATABASE '/tmp/other.db' AS other", 'ATTACH'],
    ['DETACH DATABASE main', 'DETACH'],
    ["VACUUM INTO '/tmp/tenantd-stolen.db'", 'VACUUM INTO'],
    ["SELECT load_extension('/tmp/evil.so')", 'load_extension'],
    ['PRAGMA journal_mode = DELETE', 'journal_mode'],
    ['PRAGMA synchronous = OFF', 'synchronous'],
    ['PRAGMA max_page_count = 1000000000', 'max_page_count'],
    ['PRAGMA writable_schema = ON', 'writable_schema'],
    ['PRAGMA mmap_size = 1000000', 'mmap_size'],
    ['PRAGMA database_list', 'database_list'],
    ['SELECT * FROM _tenantd_meta', '_tenantd_meta'],
    ["INSERT INTO _tenantd_meta VALUES ('schema_version', 99)", '_tenantd_meta'],
    ['DROP TABLE _tenantd_meta', '_tenantd_meta'],
    ['CREATE TABLE _tenantd_mine (x)', '_tenantd_mine'],
    ['CREATE TEMP TABLE scratch (x)', 'TEMP'],
    ['BEGIN', 'transaction'],
    ['SAVEPOINT s1', 'SAVEPOINT'],
  ];

  for (const [sql, named] of refused) {
    it(`refuses ${sql}`, async () => {
      const failure = await t.client.failure('SqlService', 'Execute', { sql }, { key });
      expect([status.PERMISSION_DENIED, status.INVALID_ARGUMENT]).toContain(failure.code);
      expect(failure.reason).not.toBe('');
      expect(`${failure.message} ${JSON.stringify(failure.errorMetadata)}`.toLowerCase()).toContain(named.toLowerCase());
    });
  }

  it('allows ordinary schema work, read-only pragmas and FTS5', async () => {
    await t.sql(key, 'CREATE INDEX t_x ON t (x)');
    expect(rowsOf(await t.sql(key, 'PRAGMA table_info(t)')).map((r) => r[1])).toEqual(['x']);
    await t.sql(key, 'PRAGMA foreign_keys');
    await t.sql(key, 'PRAGMA user_version');
    await t.sql(key, 'CREATE VIRTUAL TABLE docs USING fts5(body)');
    await t.sql(key, "INSERT INTO docs VALUES ('the quick brown fox')");
    expect(rowsOf(await t.sql(key, "SELECT body FROM docs WHERE docs MATCH 'quick'"))).toEqual([['the quick brown fox']]);
  });

  it('cannot steer the guard through its own control functions', async () => {
    const failure = await t.client.failure('SqlService', 'Execute', { sql: "SELECT tenantd_disarm(x'00000000000000000000000000000000')" }, { key });
    expect(failure.code).not.toBe(status.OK);
    expect(failure.message).toContain('not permitted');
  });
});

describe('runaway statements', () => {
  it('stops a runaway recursive CTE at query_timeout_ms while a tenant on the same shard keeps being served', async () => {
    const [slowId, fastId] = sameShardPair('cte');
    await t.createTenant(slowId, { quotas: { query_timeout_ms: '400', shard_ms_per_second: '-1' } });
    const fast = await t.createTenant(fastId);
    const { key: slowKey } = await t.client
      .call('TenantService', 'CreateApiKey', { parent: `tenants/${slowId}` }, { key: t.adminKey });

    const started = Date.now();
    const runaway = t.client.failure('SqlService', 'Execute', { sql: RUNAWAY }, { key: slowKey });
    // Sent while the runaway holds the shard: answered once it is stopped.
    const neighbour = t.sql(fast, 'SELECT 1').then(() => Date.now() - started);
    const failure = await runaway;
    const elapsed = Date.now() - started;
    expect(failure.code).toBe(status.DEADLINE_EXCEEDED);
    expect(failure.reason).toBe('QUERY_TIMEOUT');
    expect(elapsed).toBeGreaterThanOrEqual(350);
    expect(elapsed).toBeLessThan(5_000);
    expect(await neighbour).toBeLessThan(5_000);
    // The shard and the tenant are both fine afterwards.
    expect(rowsOf(await t.sql(slowKey, 'SELECT 2'))).toEqual([[2n]]);
  });

  it('answers a quick call at once even when a known-slow tenant’s call is right behind it on the shard', async () => {
    const [slowId, fastId] = sameShardPair('held');
    await t.createTenant(slowId, { quotas: { query_timeout_ms: '500', shard_ms_per_second: '-1' } });
    const fast = await t.createTenant(fastId);
    const { key: slowKey } = await t.client.call('TenantService', 'CreateApiKey', { parent: `tenants/${slowId}` }, { key: t.adminKey });
    await t.sql(fast, 'SELECT 1');
    // The shard now knows this tenant's calls can be slow, and one quick call does not make it forget.
    expect((await t.client.failure('SqlService', 'Execute', { sql: RUNAWAY }, { key: slowKey })).reason).toBe('QUERY_TIMEOUT');
    await t.sql(slowKey, 'SELECT 1');

    // Sent in the same turn, so they reach the shard together: the quick one first.
    const started = Date.now();
    const quick = t.sql(fast, 'SELECT 1').then(() => Date.now() - started);
    const slow = t.client.failure('SqlService', 'Execute', { sql: RUNAWAY }, { key: slowKey }).then(() => Date.now() - started);
    const [quickMs, slowMs] = await Promise.all([quick, slow]);
    expect(slowMs).toBeGreaterThanOrEqual(450);
    // Its answer was posted before the runaway started, not held until it ended.
    expect(quickMs).toBeLessThan(slowMs - 200);
  });

  it('stops a statement at the client’s deadline when that comes first', async () => {
    const key = await t.createTenant('deadline', { quotas: { query_timeout_ms: '60000', shard_ms_per_second: '-1' } });
    const started = Date.now();
    const failure = await t.client.failure('SqlService', 'Execute', { sql: RUNAWAY }, { key, deadlineMs: 300 });
    // (The client's own deadline says this whatever the server does.)
    expect(failure.code).toBe(status.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeLessThan(5_000);
    // The statement itself was interrupted: the shard answers the next call promptly.
    const next = Date.now();
    await t.sql(key, 'SELECT 1');
    expect(Date.now() - next).toBeLessThan(2_000);
    // The server's side: the shard ran the statement for about the client's
    // 300 ms (its time is charged to the tenant), not its 60 s quota, and not
    // zero (it did start). A statement left running would still hold the shard.
    const usage = await t.client.call('TenantService', 'GetTenantUsage', { name: 'tenants/deadline' }, { key: t.adminKey });
    expect(Number(usage.shard_ms_total)).toBeGreaterThanOrEqual(150);
    expect(Number(usage.shard_ms_total)).toBeLessThan(3_000);
  });

  it('rolls back a write interrupted by the timeout', async () => {
    const key = await t.createTenant('rollback', { quotas: { query_timeout_ms: '300', shard_ms_per_second: '-1' } });
    await t.sql(key, 'CREATE TABLE n (x)');
    const failure = await t.client.failure(
      'SqlService',
      'Execute',
      { sql: 'INSERT INTO n WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c' },
      { key },
    );
    expect(failure.code).toBe(status.DEADLINE_EXCEEDED);
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM n'))).toEqual([[0n]]);
  });
});

describe('a tenant of heavy queries', () => {
  const HEAVY = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) FROM c';

  /** For `ms`, the hog runs HEAVY back to back (waiting out refusals) while its neighbour reads; the neighbour's latencies, sorted. */
  async function contend(hogKey: string, neighbourKey: string, ms: number): Promise<{ reads: number[]; ran: number; refused: number }> {
    const until = Date.now() + ms;
    let ran = 0;
    let refused = 0;
    const hog = (async () => {
      while (Date.now() < until) {
        try {
          await t.sql(hogKey, HEAVY);
          ran++;
        } catch (error) {
          const failure = (error as { status: { code: number; retryDelayMs: number | null } }).status;
          expect(failure.code).toBe(status.RESOURCE_EXHAUSTED);
          refused++;
          await new Promise((r) => setTimeout(r, Math.min(failure.retryDelayMs ?? 50, Math.max(0, until - Date.now()))));
        }
      }
    })();
    const reads: number[] = [];
    while (Date.now() < until) {
      const started = performance.now();
      await t.sql(neighbourKey, 'SELECT 1');
      reads.push(performance.now() - started);
    }
    await hog;
    return { reads: reads.sort((a, b) => a - b), ran, refused };
  }

  it('gets no more of the shard than its shard_ms_per_second: the neighbour on its shard stays quick', async () => {
    const [neighbourId, unlimitedId] = sameShardPair('hog');
    const limitedId = sameShardAs(neighbourId, 'capped');
    const neighbour = await t.createTenant(neighbourId, { quotas: { requests_per_second: '-1' } });
    // Without the quota, for comparison: the neighbour waits behind one heavy query after another.
    const unlimited = await t.createTenant(unlimitedId, { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1' } });
    const limited = await t.createTenant(limitedId, { quotas: { requests_per_second: '-1', shard_ms_per_second: '100' } });
    const before = await contend(unlimited, neighbour, 1_500);
    const after = await contend(limited, neighbour, 3_000);

    const median = (xs: number[]) => xs[Math.floor(xs.length / 2)]!;
    // The capped tenant ran (its first second's worth at once) and was then held to ~100 ms/s.
    expect(after.ran).toBeGreaterThan(0);
    expect(after.refused).toBeGreaterThan(0);
    // Most of the time the shard is free for the neighbour: many more reads, and a median far below a heavy query's time
    // (4x and more on a quiet host; 2x asserted, as a full parallel run on 2 cores measured 3x).
    expect(after.reads.length).toBeGreaterThan(2 * before.reads.length);
    expect(median(after.reads)).toBeLessThan(median(before.reads) / 2);
  }, 30_000);

  it('takes turns on the shard: a neighbour’s call waits for at most the heavy call running, not all those queued', async () => {
    const [neighbourId, hogId] = sameShardPair('turns');
    const neighbour = await t.createTenant(neighbourId, { quotas: { requests_per_second: '-1' } });
    const hog = await t.createTenant(hogId, { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1' } });
    // Eight heavy calls queued at the shard, then the neighbour's quick one.
    const sent = performance.now();
    const heavy = Array.from({ length: 8 }, () => t.sql(hog, HEAVY));
    await new Promise((r) => setTimeout(r, 20));
    const started = performance.now();
    await t.sql(neighbour, 'SELECT 1');
    const waited = performance.now() - started;
    await Promise.all(heavy);
    const allEight = performance.now() - sent;
    // In arrival order it waits for nearly all eight (0.95 of their time, measured); taking
    // turns, for the one running: 0.1-0.35 of it on a quiet host, 0.5 measured once in a full
    // parallel run on 2 cores.
    expect(waited).toBeLessThan(allEight * 0.75);
  }, 30_000);
});
