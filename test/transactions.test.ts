/**
 * SqlService.Transaction against a real server: interactive transactions,
 * their limits and ends, and the writers that wait for them.
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RpcError, rowsOf, startTestServer, TestClient, v, type TestServer } from './support/server.ts';
import { entryStatus, retryingTransaction, TxStream } from './support/transaction.ts';

const OPEN_QUOTAS = { requests_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '-1', concurrent_transactions: '64' };

let t: TestServer;
let key: string;

async function count(k: string, sql: string): Promise<bigint> {
  return rowsOf(await t.sql(k, sql))[0]![0] as bigint;
}

beforeAll(async () => {
  t = await startTestServer({ transactionIdleMs: 1_500 });
  key = await t.createTenant('txa', { quotas: OPEN_QUOTAS });
  await t.sql(key, 'CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)');
  await t.sql(key, 'CREATE TABLE notes (body TEXT UNIQUE)');
  await t.sql(key, 'INSERT INTO counter VALUES (1, 0), (2, 0)');
});
afterAll(async () => {
  await t?.stop();
});

describe('an interactive transaction', () => {
  it('commits what its statements wrote, while the tenant\'s other calls read the committed state', async () => {
    const tx = TxStream.open(t.client, { key });
    expect((await tx.begin('IMMEDIATE')).kind).toBe('begun');
    await tx.exec('INSERT INTO notes VALUES (?)', [v.text('inside')]);
    expect(await count(key, "SELECT count(*) FROM notes WHERE body = 'inside'")).toBe(0n);
    const inside = await tx.exec("SELECT count(*) FROM notes WHERE body = 'inside'");
    expect(inside.rows[0].values[0].integer_value).toBe('1');
    expect((await tx.commit()).committed).toEqual({ replayed: false });
    await tx.closed();
    expect(tx.failure).toBeNull();
    expect(await count(key, "SELECT count(*) FROM notes WHERE body = 'inside'")).toBe(1n);
  });

  it('goes on after a failing statement, which undoes only itself', async () => {
    await t.sql(key, "INSERT INTO notes VALUES ('dup')");
    const tx = TxStream.open(t.client, { key });
    await tx.begin();
    await tx.exec("INSERT INTO notes VALUES ('kept')");
    const failed = await tx.send({ statement: { sql: "INSERT INTO notes VALUES ('dup')", params: [] } });
    expect(failed.kind).toBe('error');
    expect(failed.error.transaction_open).toBe(true);
    const status = entryStatus(failed.error);
    expect(status.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(status.reason).toBe('SQLITE_CONSTRAINT_UNIQUE');
    const batch = await tx.send({ batch: { statements: [{ sql: "INSERT INTO notes VALUES ('b1')" }, { sql: "INSERT INTO notes VALUES ('dup')" }] } });
    expect(batch.kind).toBe('error');
    const bad = await tx.send({ statement: { sql: 'SELEC nonsense', params: [] } });
    expect(entryStatus(bad.error).code).toBe(grpc.status.INVALID_ARGUMENT);
    await tx.commit();
    await tx.closed();
    expect(rowsOf(await t.sql(key, "SELECT body FROM notes WHERE body IN ('kept', 'b1') ORDER BY body"))).toEqual([['kept']]);
  });

  it('runs its statements under the guard', async () => {
    const tx = TxStream.open(t.client, { key });
    await tx.begin();
    for (const sql of ['COMMIT', 'SAVEPOINT x', "ATTACH 'x.db' AS x", 'SELECT * FROM _tenantd_meta']) {
      const r = await tx.send({ statement: { sql, params: [] } });
      expect(r.kind, sql).toBe('error');
      expect(entryStatus(r.error).code, sql).not.toBe(grpc.status.OK);
    }
    expect((await tx.rollback()).kind).toBe('rolled_back');
    await tx.closed();
  });

  it('rolls back on rollback, and on a half-close without commit', async () => {
    const tx = TxStream.open(t.client, { key });
    await tx.begin();
    await tx.exec("INSERT INTO notes VALUES ('rolled')");
    expect((await tx.rollback()).kind).toBe('rolled_back');
    const half = TxStream.open(t.client, { key });
    await half.begin();
    await half.exec("INSERT INTO notes VALUES ('half')");
    half.call.end();
    expect((await half.next()).kind).toBe('rolled_back');
    expect(await count(key, "SELECT count(*) FROM notes WHERE body IN ('rolled', 'half')")).toBe(0n);
  });

  it('refuses anything but begin first, and a second begin', async () => {
    const tx = TxStream.open(t.client, { key });
    await expect(tx.send({ statement: { sql: 'SELECT 1', params: [] } })).rejects.toMatchObject({ status: { code: grpc.status.INVALID_ARGUMENT, reason: 'TRANSACTION_NOT_BEGUN' } });
    const again = TxStream.open(t.client, { key });
    await again.begin();
    await expect(again.begin()).rejects.toMatchObject({ status: { code: grpc.status.INVALID_ARGUMENT } });
  });

  it('lets a READ_ONLY key open READ_ONLY transactions only, and a READ_ONLY transaction only read', async () => {
    const created = await t.client.call('TenantService', 'CreateApiKey', { parent: 'tenants/txa', api_key: { role: 'READ_ONLY' } }, { key: t.adminKey });
    const reader = created.key as string;
    const denied = TxStream.open(t.client, { key: reader });
    await expect(denied.begin('DEFERRED')).rejects.toMatchObject({ status: { code: grpc.status.PERMISSION_DENIED, reason: 'READ_ONLY_KEY' } });
    const tx = TxStream.open(t.client, { key: reader });
    await tx.begin('READ_ONLY');
    expect((await tx.exec('SELECT count(*) FROM notes')).rows).toHaveLength(1);
    const write = await tx.send({ statement: { sql: "INSERT INTO notes VALUES ('ro')", params: [] } });
    expect(entryStatus(write.error).code).toBe(grpc.status.PERMISSION_DENIED);
    const rw = TxStream.open(t.client, { key });
    await rw.begin('READ_ONLY');
    const write2 = await rw.send({ statement: { sql: "INSERT INTO notes VALUES ('ro')", params: [] } });
    expect(entryStatus(write2.error).code).toBe(grpc.status.PERMISSION_DENIED);
    await tx.commit();
    await rw.commit();
  });
});

describe('a client that sends ahead', () => {
  it('gets its responses in order, one per request', async () => {
    const tx = TxStream.open(t.client, { key });
    tx.call.write({ begin: { mode: 'IMMEDIATE' } });
    for (let i = 0; i < 5; i++) tx.call.write({ statement: { sql: 'INSERT INTO notes VALUES (?)', params: [v.text(`ahead-${i}`)] } });
    tx.call.write({ statement: { sql: "SELECT count(*) FROM notes WHERE body LIKE 'ahead-%'", params: [] } });
    tx.call.write({ commit: {} });
    const kinds: string[] = [];
    let last: any;
    for (let i = 0; i < 8; i++) {
      const r = await tx.next();
      kinds.push(r.kind);
      if (r.kind === 'result') last = r.result;
    }
    expect(kinds).toEqual(['begun', 'result', 'result', 'result', 'result', 'result', 'result', 'committed']);
    expect(last.rows[0].values[0].integer_value).toBe('5');
  });
});

describe('read-modify-write under contention', () => {
  it('50 concurrent clients adding 1 in IMMEDIATE transactions, retried on ABORTED, give exactly 50 x N', async () => {
    const N = 4;
    await t.sql(key, 'UPDATE counter SET n = 0 WHERE id = 1');
    const clients = Array.from({ length: 50 }, () => new TestClient(t.client.address));
    try {
      await Promise.all(
        clients.map(async (client) => {
          for (let i = 0; i < N; i++) {
            await retryingTransaction(client, { key }, 'IMMEDIATE', async (tx) => {
              const read = await tx.exec('SELECT n FROM counter WHERE id = 1');
              const n = BigInt(read.rows[0].values[0].integer_value);
              await tx.exec('UPDATE counter SET n = ? WHERE id = 1', [v.int(n + 1n)]);
            });
          }
        }),
      );
    } finally {
      for (const client of clients) client.close();
    }
    expect(await count(key, 'SELECT n FROM counter WHERE id = 1')).toBe(50n * BigInt(N));
  }, 120_000);

  it('DEFERRED transactions that read, then write, conflict instead of losing an update', async () => {
    const N = 3;
    await t.sql(key, 'UPDATE counter SET n = 0 WHERE id = 2');
    const clients = Array.from({ length: 10 }, () => new TestClient(t.client.address));
    let attempts = 0;
    try {
      await Promise.all(
        clients.map(async (client) => {
          for (let i = 0; i < N; i++) {
            const took = await retryingTransaction(client, { key }, 'DEFERRED', async (tx) => {
              const read = await tx.exec('SELECT n FROM counter WHERE id = 2');
              const n = BigInt(read.rows[0].values[0].integer_value);
              await new Promise((r) => setTimeout(r, 5));
              await tx.exec('UPDATE counter SET n = ? WHERE id = 2', [v.int(n + 1n)]);
            });
            attempts += took;
          }
        }),
      );
    } finally {
      for (const client of clients) client.close();
    }
    expect(await count(key, 'SELECT n FROM counter WHERE id = 2')).toBe(10n * BigInt(N));
    expect(attempts).toBeGreaterThan(10 * N);
  }, 120_000);
});

describe('writers that wait for a transaction', () => {
  it('a plain write waits for the transaction holding the lock and runs once it commits', async () => {
    const tx = TxStream.open(t.client, { key });
    await tx.begin('IMMEDIATE');
    await tx.exec("INSERT INTO notes VALUES ('first')");
    const open = t.server.callsInFlight();
    const waiting = t.sql(key, "INSERT INTO notes VALUES ('second')");
    await t.untilCallsInFlight(open + 1);
    await new Promise((r) => setTimeout(r, 50));
    await tx.commit();
    await waiting;
    expect(await count(key, "SELECT count(*) FROM notes WHERE body IN ('first', 'second')")).toBe(2n);
  });

  it('gets ABORTED TRANSACTION_CONFLICT with RetryInfo once it has waited its bound, and so does a writer inside another transaction', async () => {
    const holder = TxStream.open(t.client, { key });
    await holder.begin('IMMEDIATE');
    // Kept busy below the idle limit, so that only the bound ends the waits.
    let keep = true;
    const alive = (async () => {
      while (keep) {
        await holder.exec('SELECT 1');
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    const started = performance.now();
    const plain = await t.client.failure('SqlService', 'Execute', { sql: "INSERT INTO notes VALUES ('blocked')" }, { key });
    const waitedMs = performance.now() - started;
    expect(plain.code).toBe(grpc.status.ABORTED);
    expect(plain.reason).toBe('TRANSACTION_CONFLICT');
    expect(plain.retryDelayMs).not.toBeNull();
    expect(waitedMs).toBeGreaterThanOrEqual(1_900);
    expect(waitedMs).toBeLessThan(10_000);

    const other = TxStream.open(t.client, { key });
    await other.begin('DEFERRED');
    const blocked = await other.send({ statement: { sql: "INSERT INTO notes VALUES ('blocked2')", params: [] } });
    expect(blocked.kind).toBe('error');
    const status = entryStatus(blocked.error);
    expect(status.code).toBe(grpc.status.ABORTED);
    expect(status.reason).toBe('TRANSACTION_CONFLICT');
    expect(status.retryDelayMs).not.toBeNull();
    keep = false;
    await alive;
    await other.rollback();
    await holder.rollback();
    // Reads never waited, and the lock is free again.
    await t.sql(key, "INSERT INTO notes VALUES ('after')");
  }, 30_000);
});

describe('the ends of a transaction', () => {
  it('a cancel in the middle rolls back and frees the write lock at once', async () => {
    const tx = TxStream.open(t.client, { key });
    await tx.begin('IMMEDIATE');
    await tx.exec("INSERT INTO notes VALUES ('cancelled')");
    tx.call.cancel();
    // Well before the idle limit (1.5 s) would have ended it.
    const started = performance.now();
    await t.sql(key, "INSERT INTO notes VALUES ('next')");
    expect(performance.now() - started).toBeLessThan(1_200);
    expect(await count(key, "SELECT count(*) FROM notes WHERE body = 'cancelled'")).toBe(0n);
  });

  it('a client that disconnects in the middle (its process exits) has its transaction rolled back at once', async () => {
    const script = `
      const grpc = require('@grpc/grpc-js');
      const loader = require('@grpc/proto-loader');
      const def = loader.loadSync('tenantd/v1/sql_service.proto', { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: ['proto'] });
      const pkg = grpc.loadPackageDefinition(def).tenantd.v1;
      const client = new pkg.SqlService(process.argv[1], grpc.credentials.createInsecure());
      const md = new grpc.Metadata();
      md.set('authorization', 'Bearer ' + process.argv[2]);
      const call = client.Transaction(md);
      let n = 0;
      call.on('data', () => {
        if (++n === 1) call.write({ statement: { sql: "INSERT INTO notes VALUES ('disconnected')", params: [] } });
        else { process.stdout.write('written'); setInterval(() => {}, 1000); }
      });
      call.write({ begin: { mode: 'IMMEDIATE' } });
    `;
    const child = spawn(process.execPath, ['-e', script, t.client.address, key], { stdio: ['ignore', 'pipe', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d) => String(d).includes('written') && resolve());
      let err = '';
      child.stderr!.on('data', (d) => (err += d));
      child.on('exit', (code) => reject(new Error(`client exited early: ${code} ${err}`)));
    });
    child.kill('SIGKILL');
    const started = performance.now();
    await t.sql(key, "INSERT INTO notes VALUES ('after disconnect')");
    expect(performance.now() - started).toBeLessThan(1_200);
    expect(await count(key, "SELECT count(*) FROM notes WHERE body = 'disconnected'")).toBe(0n);
  });

  it('the idle limit rolls back a transaction whose client went quiet', async () => {
    const tx = TxStream.open(t.client, { key });
    await tx.begin('IMMEDIATE');
    await tx.exec("INSERT INTO notes VALUES ('idle')");
    await new Promise((r) => setTimeout(r, 2_000));
    await expect(tx.exec('SELECT 1')).rejects.toMatchObject({ status: { code: grpc.status.ABORTED, reason: 'TRANSACTION_IDLE_TIMEOUT' } });
    expect(await count(key, "SELECT count(*) FROM notes WHERE body = 'idle'")).toBe(0n);
  });

  it('the call\'s deadline rolls the transaction back', async () => {
    const tx = TxStream.open(t.client, { key, deadlineMs: 700 });
    await tx.begin('IMMEDIATE');
    await tx.exec("INSERT INTO notes VALUES ('deadline')");
    await expect(tx.next()).rejects.toMatchObject({ status: { code: grpc.status.DEADLINE_EXCEEDED } });
    const started = performance.now();
    await t.sql(key, "INSERT INTO notes VALUES ('after deadline')");
    expect(performance.now() - started).toBeLessThan(1_200);
    expect(await count(key, "SELECT count(*) FROM notes WHERE body = 'deadline'")).toBe(0n);
  });

  it('suspending the tenant ends its open transaction, rolled back', async () => {
    const k = await t.createTenant('txsusp', { quotas: OPEN_QUOTAS });
    await t.sql(k, 'CREATE TABLE x (a)');
    const tx = TxStream.open(t.client, { key: k });
    await tx.begin('IMMEDIATE');
    await tx.exec('INSERT INTO x VALUES (1)');
    await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/txsusp' }, { key: t.adminKey });
    await expect(tx.exec('INSERT INTO x VALUES (2)')).rejects.toMatchObject({ status: { code: grpc.status.FAILED_PRECONDITION } });
    await t.client.call('TenantService', 'ActivateTenant', { name: 'tenants/txsusp' }, { key: t.adminKey });
    expect(await count(k, 'SELECT count(*) FROM x')).toBe(0n);
  });

  it('deleting the tenant ends its open transactions, rolled back', async () => {
    const k = await t.createTenant('txdel', { quotas: OPEN_QUOTAS });
    await t.sql(k, 'CREATE TABLE x (a)');
    const tx = TxStream.open(t.client, { key: k });
    await tx.begin('IMMEDIATE');
    await tx.exec('INSERT INTO x VALUES (1)');
    await t.client.call('TenantService', 'DeleteTenant', { name: 'tenants/txdel', force: true }, { key: t.adminKey });
    await expect(tx.exec('INSERT INTO x VALUES (2)')).rejects.toBeInstanceOf(RpcError);
  });

  it('transaction_timeout_ms ends a transaction that keeps talking', async () => {
    const k = await t.createTenant('txtotal', { quotas: { ...OPEN_QUOTAS, transaction_timeout_ms: '1200' } });
    await t.sql(k, 'CREATE TABLE x (a)');
    const tx = TxStream.open(t.client, { key: k });
    await tx.begin('IMMEDIATE');
    const started = Date.now();
    let error: unknown = null;
    try {
      for (let i = 0; i < 100; i++) {
        await tx.exec('INSERT INTO x VALUES (?)', [v.int(i)]);
        await new Promise((r) => setTimeout(r, 200));
      }
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(RpcError);
    expect((error as RpcError).status).toMatchObject({ code: grpc.status.ABORTED, reason: 'TRANSACTION_TIMEOUT' });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await count(k, 'SELECT count(*) FROM x')).toBe(0n);
  });

  it('a statement is interrupted at its own timeout inside a transaction', async () => {
    const k = await t.createTenant('txslow', { quotas: { ...OPEN_QUOTAS, query_timeout_ms: '300' } });
    const tx = TxStream.open(t.client, { key: k });
    await tx.begin();
    const started = performance.now();
    const slow = await tx.send({ statement: { sql: 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c', params: [] } });
    expect(entryStatus(slow.error).code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(performance.now() - started).toBeLessThan(5_000);
    await tx.rollback();
  });

  it('holds at most concurrent_transactions open per tenant', async () => {
    const k = await t.createTenant('txmany', { quotas: { concurrent_transactions: '2' } });
    const a = TxStream.open(t.client, { key: k });
    const b = TxStream.open(t.client, { key: k });
    await a.begin();
    await b.begin();
    const c = TxStream.open(t.client, { key: k });
    await expect(c.begin()).rejects.toMatchObject({ status: { code: grpc.status.RESOURCE_EXHAUSTED, reason: 'QUOTA_EXCEEDED' } });
    await a.commit();
    await a.closed();
    const d = TxStream.open(t.client, { key: k });
    expect((await d.begin()).kind).toBe('begun');
    await b.rollback();
    await d.rollback();
  });

  it('shutdown rolls back open transactions without waiting out the drain', async () => {
    const s = await startTestServer({ transactionIdleMs: 60_000, drainTimeoutMs: 20_000 });
    try {
      const k = await s.createTenant('txdown');
      await s.sql(k, 'CREATE TABLE x (a)');
      const tx = TxStream.open(s.client, { key: k });
      await tx.begin('IMMEDIATE');
      await tx.exec('INSERT INTO x VALUES (1)');
      const started = performance.now();
      await s.server.shutdown();
      expect(performance.now() - started).toBeLessThan(10_000);
      await expect(tx.next()).rejects.toMatchObject({ status: { code: grpc.status.UNAVAILABLE } });
    } finally {
      await s.stop();
    }
  }, 30_000);
});

describe('the shard while transactions sit idle', () => {
  it('group commit keeps working: for other tenants while one holds a write lock, and for the tenant whose transaction only reads', async () => {
    const s = await startTestServer({ shards: 1, transactionIdleMs: 30_000 });
    try {
      const holder = await s.createTenant('holder', { quotas: OPEN_QUOTAS });
      const other = await s.createTenant('other', { quotas: OPEN_QUOTAS });
      await s.sql(holder, 'CREATE TABLE x (a)');
      await s.sql(other, 'CREATE TABLE y (a)');
      const shard = s.server.router.forTenant('other');
      const sharedCommits = async (k: string, table: string) => {
        const [commits, calls] = [shard.commits, shard.committedCalls];
        await Promise.all(Array.from({ length: 100 }, (_, i) => s.sql(k, `INSERT INTO ${table} VALUES (?)`, [v.int(i)])));
        // The shard reports its counters as they change; give the last report a moment.
        const until = Date.now() + 5_000;
        while (shard.committedCalls - calls < 100 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
        return { commits: shard.commits - commits, calls: shard.committedCalls - calls };
      };
      const writer = TxStream.open(s.client, { key: holder });
      await writer.begin('IMMEDIATE');
      await writer.exec('INSERT INTO x VALUES (1)');
      const others = await sharedCommits(other, 'y');
      expect(others.calls).toBe(100);
      expect(others.commits).toBeLessThan(100);
      await writer.commit();

      const reader = TxStream.open(s.client, { key: holder });
      await reader.begin('DEFERRED');
      await reader.exec('SELECT count(*) FROM x');
      const own = await sharedCommits(holder, 'x');
      expect(own.calls).toBe(100);
      expect(own.commits).toBeLessThan(100);
      // The reader still sees its snapshot: one row, not 101.
      expect((await reader.exec('SELECT count(*) FROM x')).rows[0].values[0].integer_value).toBe('1');
      await reader.rollback();
    } finally {
      await s.stop();
    }
  }, 60_000);

  it('a neighbour tenant on the same shard keeps its latency', async () => {
    const s = await startTestServer({ shards: 1, transactionIdleMs: 30_000 });
    try {
      const idle = await s.createTenant('idler', { quotas: OPEN_QUOTAS });
      const neighbour = await s.createTenant('neighbour', { quotas: OPEN_QUOTAS });
      await s.sql(idle, 'CREATE TABLE x (a)');
      await s.sql(neighbour, 'CREATE TABLE y (a)');
      const measure = async () => {
        const times: number[] = [];
        for (let i = 0; i < 60; i++) {
          const started = performance.now();
          await s.sql(neighbour, i % 2 ? 'INSERT INTO y VALUES (1)' : 'SELECT count(*) FROM y');
          times.push(performance.now() - started);
        }
        times.sort((a, b) => a - b);
        return times[Math.floor(times.length / 2)]!;
      };
      await measure();
      const before = await measure();
      const open = Array.from({ length: 4 }, () => TxStream.open(s.client, { key: idle }));
      await open[0]!.begin('IMMEDIATE');
      await open[0]!.exec('INSERT INTO x VALUES (1)');
      for (const tx of open.slice(1)) await tx.begin('DEFERRED');
      const during = await measure();
      // A shard that waited for the idle clients would add their whole idle time (30 s) to every call.
      expect(during).toBeLessThan(Math.max(before * 4, before + 20));
      for (const tx of open) await tx.rollback();
    } finally {
      await s.stop();
    }
  }, 60_000);
});
