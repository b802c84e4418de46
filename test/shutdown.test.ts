import { existsSync, rmSync, statSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { rowsOf, startTestServer, v } from './support/server.ts';

describe('open databases', () => {
  it('serves more tenants than --max-open-dbs by closing the least recently used', async () => {
    const t = await startTestServer({ shards: 1, maxOpenDbs: 2 });
    try {
      const keys: string[] = [];
      for (let i = 0; i < 6; i++) {
        keys.push(await t.createTenant(`lru-${i}`));
        await t.sql(keys[i]!, 'CREATE TABLE t (n INTEGER)');
      }
      for (let round = 1; round <= 3; round++) {
        for (let i = 0; i < keys.length; i++) await t.sql(keys[i]!, 'INSERT INTO t VALUES (?)', [v.int(i * 10 + round)]);
      }
      for (let i = 0; i < keys.length; i++) {
        expect(rowsOf(await t.sql(keys[i]!, 'SELECT n FROM t ORDER BY n'))).toEqual([[BigInt(i * 10 + 1)], [BigInt(i * 10 + 2)], [BigInt(i * 10 + 3)]]);
      }
      // Closed for good: a clean close checkpoints and empties the WAL. Every
      // tenant wrote; only the two used last may still hold theirs open.
      const last = keys.length - 1;
      await t.sql(keys[last]!, 'INSERT INTO t VALUES (99)');
      const walBytes = (i: number) => statSync(`${t.dataDir}/tenants/lru-${i}/db.sqlite-wal`, { throwIfNoEntry: false })?.size ?? 0;
      for (let i = 0; i < keys.length - 2; i++) expect(walBytes(i), `lru-${i}`).toBe(0);
      expect(walBytes(last)).toBeGreaterThan(0);
    } finally {
      await t.stop();
    }
  });
});

describe('graceful shutdown', () => {
  it('finishes calls in flight, reports NOT_SERVING, refuses new work and closes every database cleanly', async () => {
    // A drain long enough for the slow call on a loaded host: at the drain timeout its statement is interrupted.
    const t = await startTestServer({ shards: 2, drainTimeoutMs: 15_000 }, { keepDataDir: true });
    const key = await t.createTenant('drain', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1', query_timeout_ms: '15000' } });
    await t.sql(key, 'CREATE TABLE t (n)');
    await t.sql(key, 'INSERT INTO t VALUES (1)');
    const slow = t.sql(key, 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT count(*) FROM c');
    await t.untilCallsInFlight(1);
    const stopping = t.server.shutdown();
    expect(t.server.health.isServing).toBe(false);
    const late = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key, deadlineMs: 5_000 });
    expect(late.code).toBe(status.UNAVAILABLE);
    expect(rowsOf(await slow)).toEqual([[1500000n]]);
    await stopping;
    t.client.close();
    // A clean close checkpoints the WAL into the database and empties it
    // (the guard keeps the file itself, so the next open need not create it).
    expect(existsSync(`${t.dataDir}/tenants/drain/db.sqlite`)).toBe(true);
    expect(statSync(`${t.dataDir}/tenants/drain/db.sqlite-wal`).size).toBe(0);
    expect(existsSync(`${t.dataDir}/catalog.db-wal`)).toBe(false);
    rmSync(t.dataDir, { recursive: true, force: true });
  });
});
