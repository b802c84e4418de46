import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { RpcError, rowsOf, startTestServer, until, v, type TestServer } from './support/server.ts';

let t: TestServer;
const UNLIMITED = { quotas: { requests_per_second: '-1', write_bytes_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '-1' } };

beforeAll(async () => {
  t = await startTestServer({ shards: 1, sync: 'full' });
});
afterAll(() => t.stop());

async function settle<T>(promises: Promise<T>[]) {
  const results = await Promise.allSettled(promises);
  return {
    ok: results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : [])),
    failed: results.flatMap((r, i) => (r.status === 'rejected' ? [{ i, status: (r.reason as RpcError).status }] : [])),
  };
}

describe('group commit', () => {
  it('commits many concurrent writers to one tenant, each with its own result', async () => {
    const key = await t.createTenant('gc-many', UNLIMITED);
    await t.sql(key, 'CREATE TABLE w (id INTEGER PRIMARY KEY, n INTEGER)');
    // The shard's counters (tenantd.shard.commits / committed_calls): the CREATE TABLE so far.
    const shard = t.server.router.forTenant('gc-many');
    await until(() => shard.committedCalls === 1);
    expect(shard.commits).toBe(1);

    const writes = Array.from({ length: 200 }, (_, n) => t.sql(key, 'INSERT INTO w (n) VALUES (?)', [v.int(n)]));
    const responses = await Promise.all(writes);
    const ids = responses.map((r) => r.last_insert_rowid);
    expect(new Set(ids).size).toBe(200);
    expect(responses.every((r) => r.rows_affected === '1')).toBe(true);
    expect(rowsOf(await t.sql(key, 'SELECT count(*), count(DISTINCT n) FROM w'))).toEqual([[200n, 200n]]);
    // Every write was made durable by some commit, and calls shared commits.
    await until(() => shard.committedCalls === 201);
    expect(shard.commits - 1).toBeLessThan(200);
  });

  it('undoes only the failing call when calls share a commit', async () => {
    const key = await t.createTenant('gc-fail', UNLIMITED);
    await t.sql(key, 'CREATE TABLE u (k INTEGER PRIMARY KEY)');
    await t.sql(key, 'INSERT INTO u VALUES (7), (21), (35)');
    // Keys that are multiples of 7 collide with rows already there or with each other.
    const calls = Array.from({ length: 60 }, (_, n) =>
      n % 10 === 0
        ? t.client.call('SqlService', 'Batch', { statements: [{ sql: 'INSERT INTO u VALUES (?)', params: [v.int(1000 + n)] }, { sql: 'INSERT INTO u VALUES (7)' }] }, { key })
        : t.sql(key, 'INSERT INTO u VALUES (?)', [v.int(100 + n)]),
    );
    const { ok, failed } = await settle(calls);
    expect(failed.map((f) => f.i)).toEqual([0, 10, 20, 30, 40, 50]);
    expect(failed.every((f) => f.status.reason === 'SQLITE_CONSTRAINT_PRIMARYKEY')).toBe(true);
    const keys = rowsOf(await t.sql(key, 'SELECT k FROM u ORDER BY k')).map((r) => Number(r[0]));
    // Every successful call's row is there; nothing of a failed Batch is.
    expect(keys).toEqual([7, 21, 35, ...ok.map((n) => 100 + n)].sort((a, b) => a - b));
  });

  it('never acknowledges a write that an interrupted neighbour rolled back', async () => {
    const key = await t.createTenant('gc-interrupt', { quotas: { ...UNLIMITED.quotas, query_timeout_ms: '200' } });
    await t.sql(key, 'CREATE TABLE r (x)');
    const runaway = 'INSERT INTO r WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT -x FROM c';
    const calls: Promise<unknown>[] = [];
    for (let n = 0; n < 40; n++) {
      calls.push(n === 5 ? t.sql(key, runaway) : t.sql(key, 'INSERT INTO r VALUES (?)', [v.int(n)]));
    }
    const { ok, failed } = await settle(calls);
    const runawayFailure = failed.find((f) => f.i === 5);
    expect(runawayFailure?.status.code).toBe(status.DEADLINE_EXCEEDED);
    for (const f of failed.filter((f) => f.i !== 5)) expect(f.status.reason).toBe('GROUP_ROLLED_BACK');
    const present = rowsOf(await t.sql(key, 'SELECT x FROM r WHERE x >= 0 ORDER BY x')).map((r) => Number(r[0]));
    expect(present).toEqual(ok);
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM r WHERE x < 0'))).toEqual([[0n]]);
  });

  it('keeps reads in a group consistent with the writes before them', async () => {
    const key = await t.createTenant('gc-read', UNLIMITED);
    await t.sql(key, 'CREATE TABLE c (n INTEGER)');
    const calls: Promise<any>[] = [];
    for (let n = 0; n < 30; n++) calls.push(t.sql(key, 'INSERT INTO c VALUES (1)'));
    calls.push(t.sql(key, 'SELECT count(*) FROM c'));
    const results = await Promise.all(calls);
    expect(rowsOf(results[30])).toEqual([[30n]]);
  });
});

describe('--group-commit off', () => {
  it('commits every write on its own: as many commits as writes, each with its own result', async () => {
    const off = await startTestServer({ shards: 1, sync: 'full', groupCommit: false });
    try {
      const key = await off.createTenant('gc-off', UNLIMITED);
      await off.sql(key, 'CREATE TABLE w (id INTEGER PRIMARY KEY, n INTEGER)');
      const shard = off.server.router.forTenant('gc-off');
      await until(() => shard.committedCalls === 1);
      // The same 200 concurrent writers that share commits when it is on.
      const responses = await Promise.all(Array.from({ length: 200 }, (_, n) => off.sql(key, 'INSERT INTO w (n) VALUES (?)', [v.int(n)])));
      expect(new Set(responses.map((r) => r.last_insert_rowid)).size).toBe(200);
      expect(rowsOf(await off.sql(key, 'SELECT count(*) FROM w'))).toEqual([[200n]]);
      await until(() => shard.committedCalls === 201);
      expect(shard.commits).toBe(201);
    } finally {
      await off.stop();
    }
  });
});
