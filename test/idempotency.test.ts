/**
 * Idempotent writes: request_id on Execute, Batch and Transaction begin,
 * against a real server.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rowsOf, startTestServer, v, type TestServer } from './support/server.ts';
import { TxStream } from './support/transaction.ts';

let t: TestServer;
let key: string;

async function count(sql: string): Promise<bigint> {
  return rowsOf(await t.sql(key, sql))[0]![0] as bigint;
}

beforeAll(async () => {
  t = await startTestServer();
  key = await t.createTenant('idem', { quotas: { requests_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '-1' } });
  await t.sql(key, 'CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)');
});
afterAll(async () => {
  await t?.stop();
});

describe('request_id', () => {
  it('a retried Execute whose first answer was lost returns the first response and writes one row', async () => {
    const id = randomUUID();
    const request = { sql: 'INSERT INTO orders (item) VALUES (?) RETURNING id', params: [v.text('lost-answer')], request_id: id };
    // The client drops the first answer, as if the network lost it, and retries.
    const first = await t.client.call('SqlService', 'Execute', request, { key });
    const retry = await t.client.call('SqlService', 'Execute', request, { key });
    const third = await t.client.call('SqlService', 'Execute', request, { key });
    expect(retry).toEqual(first);
    expect(third).toEqual(first);
    expect(await count("SELECT count(*) FROM orders WHERE item = 'lost-answer'")).toBe(1n);
  });

  it('a retried Batch returns the first results and applies once', async () => {
    const id = randomUUID();
    const request = {
      statements: [
        { sql: "INSERT INTO orders (item) VALUES ('batch-a')", params: [] },
        { sql: "INSERT INTO orders (item) VALUES ('batch-b')", params: [] },
      ],
      request_id: id,
    };
    const first = await t.client.call('SqlService', 'Batch', request, { key });
    const retry = await t.client.call('SqlService', 'Batch', request, { key });
    expect(retry).toEqual(first);
    expect(await count("SELECT count(*) FROM orders WHERE item LIKE 'batch-%'")).toBe(2n);
  });

  it('retries that arrive while the first still runs wait for it and get its result', async () => {
    const id = randomUUID();
    const request = { sql: 'INSERT INTO orders (item) VALUES (?)', params: [v.text('concurrent')], request_id: id };
    const answers = await Promise.all(Array.from({ length: 20 }, () => t.client.call('SqlService', 'Execute', request, { key })));
    for (const answer of answers) expect(answer).toEqual(answers[0]);
    expect(await count("SELECT count(*) FROM orders WHERE item = 'concurrent'")).toBe(1n);
  });

  it('the same id for a different request is INVALID_ARGUMENT REQUEST_ID_REUSED, and runs nothing', async () => {
    const id = randomUUID();
    await t.client.call('SqlService', 'Execute', { sql: "INSERT INTO orders (item) VALUES ('original')", request_id: id }, { key });
    for (const [method, request] of [
      ['Execute', { sql: "INSERT INTO orders (item) VALUES ('other')", request_id: id }],
      ['Execute', { sql: "INSERT INTO orders (item) VALUES ('original')", params: [v.int(1)], request_id: id }],
      ['Batch', { statements: [{ sql: "INSERT INTO orders (item) VALUES ('original')" }], request_id: id }],
    ] as const) {
      const status = await t.client.failure('SqlService', method, request, { key });
      expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(status.reason).toBe('REQUEST_ID_REUSED');
    }
    expect(await count("SELECT count(*) FROM orders WHERE item = 'other'")).toBe(0n);
  });

  it('is a UUID', async () => {
    const status = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1', request_id: 'not-a-uuid' }, { key });
    expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(status.fieldViolations[0]!.field).toBe('request_id');
  });

  it('a failed call records nothing: its retry runs again', async () => {
    const id = randomUUID();
    await t.sql(key, 'CREATE TABLE uniq (v TEXT UNIQUE)');
    await t.sql(key, "INSERT INTO uniq VALUES ('taken')");
    const request = { sql: 'INSERT INTO uniq VALUES (?)', params: [v.text('taken')], request_id: id };
    expect((await t.client.failure('SqlService', 'Execute', request, { key })).reason).toBe('SQLITE_CONSTRAINT_UNIQUE');
    await t.sql(key, "DELETE FROM uniq WHERE v = 'taken'");
    await t.client.call('SqlService', 'Execute', request, { key });
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM uniq'))).toEqual([[1n]]);
  });

  it('a transaction begun again with the id of one that committed is answered committed (replayed) and runs nothing', async () => {
    const id = randomUUID();
    const tx = TxStream.open(t.client, { key });
    expect((await tx.begin('IMMEDIATE', id)).kind).toBe('begun');
    await tx.exec("INSERT INTO orders (item) VALUES ('tx-once')");
    expect((await tx.commit()).committed.replayed).toBe(false);
    await tx.closed();
    const again = TxStream.open(t.client, { key });
    const answer = await again.begin('IMMEDIATE', id);
    expect(answer.kind).toBe('committed');
    expect(answer.committed.replayed).toBe(true);
    await again.closed();
    expect(await count("SELECT count(*) FROM orders WHERE item = 'tx-once'")).toBe(1n);
    // A transaction rolled back leaves no record: the id can begin again.
    const id2 = randomUUID();
    const rolled = TxStream.open(t.client, { key });
    await rolled.begin('IMMEDIATE', id2);
    await rolled.rollback();
    const fresh = TxStream.open(t.client, { key });
    expect((await fresh.begin('IMMEDIATE', id2)).kind).toBe('begun');
    await fresh.rollback();
  });

  it('a retried begin while the first try of the same id is still open waits for its outcome', async () => {
    const id = randomUUID();
    const first = TxStream.open(t.client, { key });
    await first.begin('DEFERRED', id);
    await first.exec("INSERT INTO orders (item) VALUES ('tx-wait')");
    const retry = TxStream.open(t.client, { key });
    const answered = retry.begin('DEFERRED', id);
    await new Promise((r) => setTimeout(r, 100));
    await first.commit();
    expect((await answered).committed?.replayed).toBe(true);
    expect(await count("SELECT count(*) FROM orders WHERE item = 'tx-wait'")).toBe(1n);
  });

  it('a retried Append returns the first positions, appends once, and is not published twice', async () => {
    const id = randomUUID();
    const request = { events: [{ type: 'order.placed', data: Buffer.from('{}') }, { type: 'order.paid', data: Buffer.from('{}') }], request_id: id };
    const first = await t.client.call('EventService', 'Append', request, { key });
    const retry = await t.client.call('EventService', 'Append', request, { key });
    expect(retry.positions).toEqual(first.positions);
    const read = await t.client.call('EventService', 'Read', { from_position: '1', limit: 100 }, { key });
    expect(read.events.filter((e: { type: string }) => e.type.startsWith('order.'))).toHaveLength(2);
    const other = await t.client.failure('EventService', 'Append', { events: [{ type: 'order.other', data: Buffer.from('{}') }], request_id: id }, { key });
    expect(other.reason).toBe('REQUEST_ID_REUSED');
  });

  it('tenant SQL cannot read or forge the request log', async () => {
    for (const sql of ['SELECT * FROM _tenantd_requests', "INSERT INTO _tenantd_requests VALUES ('x', 'Execute', x'00', x'00', 0)", 'DELETE FROM _tenantd_requests']) {
      const status = await t.client.failure('SqlService', 'Execute', { sql }, { key });
      expect(status.code, sql).toBe(grpc.status.PERMISSION_DENIED);
    }
  });
});
