import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rowsOf, startTestServer, v, type TestServer } from './support/server.ts';
import { TxStream } from './support/transaction.ts';

let t: TestServer;
let key: string;

beforeAll(async () => {
  t = await startTestServer({ transactionIdleMs: 1_000 });
  key = await t.createTenant('txa');
  await t.sql(key, 'CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)');
  await t.sql(key, 'INSERT INTO counter VALUES (1, 0)');
});
afterAll(async () => {
  await t?.stop();
});

describe('transactions', () => {
  it('commits what its statements wrote, and others read only the committed state meanwhile', async () => {
    const tx = TxStream.open(t.client, { key });
    expect((await tx.begin('IMMEDIATE')).kind).toBe('begun');
    const read = await tx.exec('SELECT n FROM counter WHERE id = 1');
    expect(read.rows[0].values[0].integer_value).toBe('0');
    await tx.exec('UPDATE counter SET n = n + 5 WHERE id = 1');
    expect(rowsOf(await t.sql(key, 'SELECT n FROM counter WHERE id = 1'))).toEqual([[0n]]);
    expect((await tx.commit()).kind).toBe('committed');
    await tx.closed();
    expect(rowsOf(await t.sql(key, 'SELECT n FROM counter WHERE id = 1'))).toEqual([[5n]]);
  });
});
