/** src/client/transaction.ts against a real server. */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sqlClient, transaction, TransactionError } from '../src/client/transaction.ts';
import { connect } from '../src/client/index.ts';
import { rowsOf, startTestServer, type TestServer } from './support/server.ts';

let t: TestServer;
let key: string;
const md = () => {
  const m = new grpc.Metadata();
  m.set('authorization', `Bearer ${key}`);
  return m;
};

beforeAll(async () => {
  t = await startTestServer();
  key = await t.createTenant('client', { quotas: { requests_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '-1', concurrent_transactions: '64' } });
  await t.sql(key, 'CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)');
  await t.sql(key, 'INSERT INTO counter VALUES (1, 0)');
});
afterAll(async () => {
  await t?.stop();
});

describe('transaction()', () => {
  it('retries conflicting read-modify-write transactions until each applies exactly once', async () => {
    const clients = Array.from({ length: 12 }, () => sqlClient(t.client.address));
    try {
      await Promise.all(
        clients.map(async (client) => {
          for (let i = 0; i < 3; i++) {
            await transaction(client, md(), async (tx) => {
              const { rows } = await tx.execute('SELECT n FROM counter WHERE id = ?', [1n]);
              await tx.execute('UPDATE counter SET n = ? WHERE id = 1', [(rows[0]![0] as bigint) + 1n]);
            });
          }
        }),
      );
    } finally {
      for (const client of clients) client.close();
    }
    expect(rowsOf(await t.sql(key, 'SELECT n FROM counter WHERE id = 1'))).toEqual([[36n]]);
  }, 120_000);

  it('returns the body\'s value, and never applies a request_id twice', async () => {
    const client = sqlClient(t.client.address);
    try {
      const requestId = randomUUID();
      let runs = 0;
      const body = async (tx: Parameters<Parameters<typeof transaction>[2]>[0]) => {
        runs++;
        const r = await tx.execute("INSERT INTO counter (n) VALUES (100) RETURNING id");
        return r.rows[0]![0];
      };
      const id = await transaction(client, md(), body, { requestId, mode: 'IMMEDIATE' });
      expect(typeof id).toBe('bigint');
      expect(await transaction(client, md(), body, { requestId, mode: 'IMMEDIATE' })).toBeUndefined();
      expect(runs).toBe(1);
      expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM counter WHERE n = 100'))).toEqual([[1n]]);
    } finally {
      client.close();
    }
  });

  it('throws a failing statement\'s error as TransactionError and rolls back', async () => {
    const client = sqlClient(t.client.address);
    try {
      const error = await transaction(client, md(), async (tx) => {
        await tx.execute('INSERT INTO counter (n) VALUES (200)');
        await tx.execute('INSERT INTO nowhere VALUES (1)');
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TransactionError);
      expect((error as TransactionError).code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM counter WHERE n = 200'))).toEqual([[0n]]);
    } finally {
      client.close();
    }
  });

  it('is the typed client’s transaction(): read-modify-write from several clients applies each exactly once', async () => {
    await t.sql(key, 'INSERT OR REPLACE INTO counter VALUES (7, 0)');
    const clients = Array.from({ length: 6 }, () => connect({ address: t.client.address, key }));
    try {
      await Promise.all(
        clients.map(async (db) => {
          for (let i = 0; i < 3; i++) {
            await db.transaction(async (tx) => {
              const { rows } = await tx.execute('SELECT n FROM counter WHERE id = ?', [7n]);
              await tx.execute('UPDATE counter SET n = ? WHERE id = 7', [(rows[0]![0] as bigint) + 1n]);
            });
          }
        }),
      );
    } finally {
      for (const db of clients) db.close();
    }
    expect(rowsOf(await t.sql(key, 'SELECT n FROM counter WHERE id = 7'))).toEqual([[18n]]);
  });
});
