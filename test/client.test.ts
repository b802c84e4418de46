/**
 * The typed client (`tenantd/client`) against a real server: values both
 * ways with int64 exact, named parameters, batches, streamed queries, events
 * with a subscription that survives a server restart, and TenantdError.
 */
import { rmSync } from 'node:fs';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, TenantdError, type Event, type TenantdClient } from '../src/client/index.ts';
import { freshDataDir, startTestServer, type TestServer } from './support/server.ts';

let t: TestServer;
let db: TenantdClient;
let admin: TenantdClient;

beforeAll(async () => {
  t = await startTestServer();
  admin = connect({ address: `127.0.0.1:${t.server.port}`, key: t.adminKey });
  const created = await admin.admin.createTenant('client-a', { plan: 'pro' });
  db = connect({ address: `127.0.0.1:${t.server.port}`, key: created.api_key.key });
});
afterAll(async () => {
  db.close();
  admin.close();
  await t.stop();
});

/** The TenantdError a call failed with; fails the test if it succeeded. */
async function failureOf(call: Promise<unknown>): Promise<TenantdError> {
  const outcome = await call.then(
    () => null,
    (error: unknown) => error,
  );
  if (!(outcome instanceof TenantdError)) throw new Error(`expected a TenantdError, got ${String(outcome)}`);
  return outcome;
}

describe('the typed client', () => {
  it('sends and receives bigint, number, string, Uint8Array and null, with int64 exact', async () => {
    await db.execute('CREATE TABLE v (i INTEGER, r REAL, s TEXT, b BLOB, n)');
    const max = 2n ** 63n - 1n;
    const min = -(2n ** 63n);
    const inserted = await db.execute('INSERT INTO v VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)', [max, 1.5, 'héllo', new Uint8Array([0, 255]), null, min, 7, '', new Uint8Array(), undefined]);
    expect(inserted.rowsAffected).toBe(2n);
    expect(inserted.lastInsertRowid).toBe(2n);
    const { columns, rows } = await db.execute('SELECT i, r, s, b, n FROM v ORDER BY rowid');
    expect(columns.map((c) => c.name)).toEqual(['i', 'r', 's', 'b', 'n']);
    expect(columns[0]!.declType).toBe('INTEGER');
    expect(rows).toEqual([
      [max, 1.5, 'héllo', new Uint8Array([0, 255]), null],
      // 7 is a safe integer: sent as INTEGER, so the REAL column's affinity makes it 7.0.
      [min, 7, '', new Uint8Array(), null],
    ]);
    expect(typeof rows[1]![0]).toBe('bigint');
    await expect(db.execute('SELECT ?', [2n ** 63n])).rejects.toThrow(RangeError);
  });

  it('binds named parameters from an object, with or without their prefix', async () => {
    const { rows } = await db.execute('SELECT :a + @b, $c', { a: 40n, '@b': 2, $c: 'x' });
    expect(rows).toEqual([[42n, 'x']]);
  });

  it('runs a batch in one transaction: all or nothing', async () => {
    await db.execute('CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))');
    const results = await db.batch(['INSERT INTO acct VALUES (1, 10), (2, 0)', { sql: 'SELECT sum(balance) FROM acct WHERE id IN (?, ?)', params: [1, 2] }]);
    expect(results[1]!.rows).toEqual([[10n]]);
    await failureOf(db.batch([{ sql: 'UPDATE acct SET balance = balance + 20 WHERE id = ?', params: [2] }, 'UPDATE acct SET balance = balance - 20 WHERE id = 1']));
    expect((await db.execute('SELECT balance FROM acct ORDER BY id')).rows).toEqual([[10n], [0n]]);
  });

  it('streams a query as an async iterator, and a break cancels it', async () => {
    const sql = 'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) SELECT i, printf(?, i) FROM n';
    let count = 0;
    let last: unknown;
    const rows = db.query(sql, ['row %d'], { rowsPerChunk: 100 });
    for await (const row of rows) {
      count++;
      last = row;
    }
    expect(count).toBe(5000);
    expect(last).toEqual([5000n, 'row 5000']);
    expect(rows.columns.map((c) => c.name)).toEqual(['i', 'printf(?, i)']);
    let seen = 0;
    for await (const _row of db.query(sql, ['x'], { rowsPerChunk: 10 })) if (++seen === 15) break;
    expect(seen).toBe(15);
    // The tenant is not left with a call in flight.
    expect((await db.execute('SELECT 1')).rows).toEqual([[1n]]);
  });

  it('decodes every failure into one TenantdError: code, reason, field violations, quota and retry advice', async () => {
    const bad = await failureOf(admin.admin.createTenant('Not An Id'));
    expect(bad).toBeInstanceOf(TenantdError);
    expect(bad).toMatchObject({ code: status.INVALID_ARGUMENT, codeName: 'INVALID_ARGUMENT' });
    expect(bad.reason).not.toBe('');
    expect(bad.fieldViolations[0]!.field).toBe('tenant_id');
    expect(bad.message).toBe(`INVALID_ARGUMENT ${bad.reason}: ${bad.details}`);

    const missing = await failureOf(admin.admin.getTenant('nobody'));
    expect(missing).toMatchObject({ code: status.NOT_FOUND, reason: 'TENANT_NOT_FOUND', quota: null, retryAfterMs: null });

    const tiny = await admin.admin.createTenant('client-tiny', { quotas: { requests_per_second: 2 } });
    const limited = connect({ address: `127.0.0.1:${t.server.port}`, key: tiny.api_key.key });
    try {
      const outcomes = await Promise.allSettled(Array.from({ length: 10 }, () => limited.execute('SELECT 1')));
      const refused = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')?.reason as TenantdError;
      expect(refused).toBeInstanceOf(TenantdError);
      expect(refused).toMatchObject({ code: status.RESOURCE_EXHAUSTED, quota: 'requests_per_second' });
      expect(refused.retryAfterMs).toBeGreaterThan(0);
      expect(refused.quotaViolations[0]).toMatchObject({ quotaId: 'requests_per_second', quotaValue: '2', subject: 'tenants/client-tiny' });
    } finally {
      limited.close();
    }
  });

  it('appends and reads events', async () => {
    const positions = await db.events.append([{ type: 'created', data: '{"id":1}', metadata: { by: 'test' } }, { type: 'paid', data: new Uint8Array([1, 2]) }]);
    expect(positions).toEqual([1n, 2n]);
    const read = await db.events.read({ from: 1, types: ['paid'] });
    expect(read.events).toHaveLength(1);
    expect(read.events[0]).toMatchObject({ position: 2n, type: 'paid', data: new Uint8Array([1, 2]) });
    expect(read.events[0]!.time).toBeInstanceOf(Date);
    const conflict = await failureOf(db.events.append([{ type: 'x' }], { expectedPosition: 1 }));
    expect(conflict.code).toBe(status.ABORTED);
  });
});

describe('admin.backup and admin.restore', () => {
  it('restore checks the bytes against a SHA-256 sent last, after the chunks', async () => {
    await db.execute('CREATE TABLE IF NOT EXISTS kept (x)');
    const chunks: Buffer[] = [];
    let sha256 = '';
    for await (const chunk of admin.admin.backup('client-a')) {
      chunks.push(chunk.data);
      if (chunk.sha256) sha256 = chunk.sha256;
    }
    const wrong = admin.admin.restore('client-restore-bad');
    for (const data of chunks) wrong.call.write({ chunk: data });
    wrong.call.write({ header: { tenant_id: '', tenant: null, sha256: '0'.repeat(64) } });
    wrong.call.end();
    expect(await failureOf(wrong.response)).toMatchObject({ code: status.INVALID_ARGUMENT, reason: 'CHECKSUM_MISMATCH' });
    await failureOf(admin.admin.getTenant('client-restore-bad'));

    const right = admin.admin.restore('client-restore-good', { plan: 'pro' });
    for (const data of chunks) right.call.write({ chunk: data });
    right.call.write({ header: { tenant_id: '', tenant: null, sha256 } });
    right.call.end();
    expect(await right.response).toMatchObject({ name: 'tenants/client-restore-good', state: 'ACTIVE' });
    // Nothing may follow the trailer.
    const late = admin.admin.restore('client-restore-late');
    late.call.write({ chunk: chunks[0]! });
    late.call.write({ header: { tenant_id: '', tenant: null, sha256 } });
    late.call.write({ chunk: chunks[0]! });
    late.call.end();
    expect((await failureOf(late.response)).reason).toBe('RESTORE_HEADER_REPEATED');
  });
});

describe('events.subscribe', { timeout: 120_000 }, () => {
  it('resumes after the server restarts, from the event after the last one delivered: none lost, none twice', async () => {
    const dataDir = freshDataDir();
    let server = await startTestServer({ dataDir }, { keepDataDir: true });
    const port = server.server.port;
    const key = await server.createTenant('client-sub');
    const client = connect({ address: `127.0.0.1:${port}`, key });
    const abort = new AbortController();
    const seen: Event[] = [];
    let arrived = () => {};
    const consumer = (async () => {
      for await (const event of client.events.subscribe({ signal: abort.signal, maxBackoffMs: 200 })) {
        seen.push(event);
        arrived();
      }
    })();
    const until = (n: number) =>
      new Promise<void>((resolve) => {
        arrived = () => seen.length >= n && resolve();
        arrived();
      });
    try {
      await client.events.append([{ type: 'a' }, { type: 'b' }, { type: 'c' }]);
      await until(3);
      await server.stop(); // the drain ends the stream with UNAVAILABLE
      server = await startTestServer({ dataDir, listen: `127.0.0.1:${port}` }, { keepDataDir: true });
      // Another connection writes: this one's channel may still be backing off from the restart.
      const writer = connect({ address: `127.0.0.1:${port}`, key });
      try {
        // A call the moment after the restart can still find no connection: retried, as an application would.
        for (let attempt = 0; ; attempt++) {
          const done = await writer.events.append([{ type: 'd' }, { type: 'e' }]).then(
            () => true,
            (error: unknown) => {
              if (!(error instanceof TenantdError) || error.code !== status.UNAVAILABLE || attempt >= 20) throw error;
              return false;
            },
          );
          if (done) break;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      } finally {
        writer.close();
      }
      await until(5);
      abort.abort();
      await consumer;
      expect(seen.map((e) => [e.position, e.type])).toEqual([
        [1n, 'a'],
        [2n, 'b'],
        [3n, 'c'],
        [4n, 'd'],
        [5n, 'e'],
      ]);
    } finally {
      abort.abort();
      client.close();
      await server.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('ends with the error when the request itself is refused, instead of retrying', async () => {
    const stranger = connect({ address: `127.0.0.1:${t.server.port}`, key: 'tdk_not_a_real_key_000000000000000000000000' });
    try {
      const outcome = await failureOf(
        (async () => {
          for await (const _ of stranger.events.subscribe()) return;
        })(),
      );
      expect(outcome.code).toBe(status.UNAUTHENTICATED);
    } finally {
      stranger.close();
    }
  });
});
