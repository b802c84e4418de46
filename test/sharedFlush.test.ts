/**
 * --sync full's shared flush (workers/sharedFlush.ts): the shard's tenant
 * connections commit without syncing, and one syncfs before the shard
 * answers makes all of its commits durable. The SIGKILL test in
 * durability.test.ts checks that no acknowledged write is lost in each mode;
 * this one that the syncs really are shared, one per commit under
 * --sync-flush per-commit, none under --sync normal, and that a tenant cannot
 * reach the flush.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import type { Config } from '../src/config.ts';
import { rowsOf, startTestServer, until, v, type TestServer } from './support/server.ts';
import { writeThenCrash } from './support/shardCrash.ts';
import { TxStream } from './support/transaction.ts';

const UNLIMITED = { quotas: { requests_per_second: '-1', write_bytes_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '-1' } };
const TENANTS = 24;
const WRITES_PER_TENANT = 10;

const servers: TestServer[] = [];
afterAll(() => Promise.all(servers.map((s) => s.stop())));

/** Many tenants on one shard, each written by concurrent single-row INSERTs; returns the shard's counters after. */
async function writeMany(overrides: Partial<Config>): Promise<{ commits: number; committedCalls: number; syncs: number; t: TestServer; keys: string[] }> {
  const t = await startTestServer({ shards: 1, ...overrides });
  servers.push(t);
  const keys: string[] = [];
  for (let i = 0; i < TENANTS; i++) {
    const key = await t.createTenant(`f${i}`, UNLIMITED);
    await t.sql(key, 'CREATE TABLE w (id INTEGER PRIMARY KEY, n INTEGER)');
    keys.push(key);
  }
  const shard = t.server.router.forTenant('f0');
  await until(() => shard.committedCalls === TENANTS, () => `committedCalls ${shard.committedCalls}`);
  const before = { commits: shard.commits, syncs: shard.syncs };
  // One write at a time per tenant (so that no two share a group commit), all tenants at once: a
  // shard turn holds single writes of many tenants, each its own commit.
  await Promise.all(
    keys.map(async (key) => {
      for (let n = 0; n < WRITES_PER_TENANT; n++) await t.sql(key, 'INSERT INTO w (n) VALUES (?)', [v.int(n)]);
    }),
  );
  await until(() => shard.committedCalls === TENANTS * (WRITES_PER_TENANT + 1), () => `committedCalls ${shard.committedCalls}`);
  for (const key of keys) expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM w'))).toEqual([[BigInt(WRITES_PER_TENANT)]]);
  return { commits: shard.commits - before.commits, committedCalls: shard.committedCalls, syncs: shard.syncs - before.syncs, t, keys };
}

describe('--sync full, shared flush', () => {
  it('makes the commits of many tenants durable with far fewer syncs than commits', async () => {
    const { commits, syncs } = await writeMany({ sync: 'full', syncFlush: 'shared' });
    expect(commits).toBe(TENANTS * WRITES_PER_TENANT);
    expect(syncs).toBeGreaterThanOrEqual(1);
    // Writes of different tenants never share a commit; here they share syncs.
    expect(syncs, `${syncs} syncs for ${commits} commits`).toBeLessThan(commits * 0.75);
  }, 60_000);

  it('syncs once per commit under --sync-flush per-commit (the default), and never at commit under --sync normal', async () => {
    const perCommit = await writeMany({ sync: 'full' });
    expect(perCommit.syncs).toBe(perCommit.commits);
    const normal = await writeMany({ sync: 'normal' });
    expect(normal.commits).toBe(TENANTS * WRITES_PER_TENANT);
    expect(normal.syncs).toBe(0);
  }, 60_000);

  it('syncs for commits on every path that writes: a Batch, an interactive Transaction on its own connection, a Query', async () => {
    const t = await startTestServer({ shards: 1, sync: 'full', syncFlush: 'shared' });
    servers.push(t);
    const key = await t.createTenant('paths', UNLIMITED);
    await t.sql(key, 'CREATE TABLE w (id INTEGER PRIMARY KEY, n INTEGER)');
    const shard = t.server.router.forTenant('paths');
    // The shard reports its counters after its turns: the count once it has stayed put for 300 ms.
    const settledSyncs = async (): Promise<number> => {
      for (let last = shard.syncs; ; ) {
        await new Promise((r) => setTimeout(r, 300));
        if (shard.syncs === last) return last;
        last = shard.syncs;
      }
    };
    // Each write below commits on an otherwise idle shard, so each must bring a sync before its answer.
    const oneMoreSync = async (what: string, write: () => Promise<unknown>) => {
      const before = await settledSyncs();
      await write();
      await until(() => shard.syncs > before, () => `${what}: syncs ${shard.syncs}, none since ${before}`);
    };
    await oneMoreSync('Batch', () =>
      t.client.call('SqlService', 'Batch', { statements: [{ sql: 'INSERT INTO w (n) VALUES (1)' }, { sql: 'INSERT INTO w (n) VALUES (2)' }] }, { key }),
    );
    await oneMoreSync('Transaction', async () => {
      const tx = TxStream.open(t.client, { key });
      await tx.begin('IMMEDIATE');
      await tx.exec('INSERT INTO w (n) VALUES (3)');
      expect((await tx.commit()).committed).toEqual({ replayed: false });
      await tx.closed();
    });
    await oneMoreSync('Query', () => t.client.stream('SqlService', 'Query', { sql: 'INSERT INTO w (n) VALUES (4) RETURNING id' }, { key }));
    // A read commits nothing: no sync.
    const before = await settledSyncs();
    await t.sql(key, 'SELECT count(*) FROM w');
    expect(await settledSyncs()).toBe(before);
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM w'))).toEqual([[4n]]);
  }, 60_000);

  it('still answers a write that committed when its shard dies in the same turn, its answer held for the sync', async () => {
    const t = await startTestServer({ shards: 1, sync: 'full', syncFlush: 'shared' });
    servers.push(t);
    const key = await t.createTenant('held', UNLIMITED);
    const readerKey = await t.createTenant('reader', UNLIMITED);
    await t.sql(key, 'CREATE TABLE w (x)');
    for (let i = 0; i < 12; i++) await t.sql(readerKey, 'SELECT 1');
    const shard = t.server.router.shards[0]!;
    const syncsBefore = shard.syncs;
    // One message to the worker: a write (its answer held for the turn's sync), a read, then the crash.
    const { rowsAffected, rowsAfterRestart } = await writeThenCrash(t, shard, { id: 'held', key }, 'reader');
    expect(rowsAffected).toBe('1');
    expect(rowsAfterRestart).toEqual([[1n]]);
    // The counters survive the restart; the dying worker's last sync may not have been reported.
    expect(shard.syncs).toBeGreaterThanOrEqual(syncsBefore);
  }, 60_000);

  it('is out of a tenant’s reach: its SQL cannot call the flush', async () => {
    const t = await startTestServer({ shards: 1, sync: 'full', syncFlush: 'shared' });
    servers.push(t);
    const key = await t.createTenant('probe', UNLIMITED);
    for (const sql of ["SELECT tenantd_sync('/', 1)", "SELECT tenantd_sync('.', 0)"]) {
      const failure = await t.client.failure('SqlService', 'Execute', { sql }, { key });
      expect(failure.code, sql).toBe(status.INVALID_ARGUMENT);
      expect(failure.message, sql).toMatch(/no such function/);
    }
  }, 60_000);
});
