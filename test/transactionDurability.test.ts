/**
 * Transactions and idempotent writes across SIGKILL of the whole process:
 * `tenantd serve` as a child process, killed and started again on the same
 * data directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { freshDataDir, RpcError, rowsOf, TestClient, v } from './support/server.ts';
import { TxStream } from './support/transaction.ts';

const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));
const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function serve(dataDir: string, env: Record<string, string> = {}): Promise<{ child: ChildProcess; client: TestClient; adminKey: string }> {
  const child = spawn(process.execPath, [BIN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--metrics-listen', 'off', '--sync', 'full', '--shards', '2', '--log-level', 'warn'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  children.push(child);
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out} ${err}`)), 60_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const port = /listening on port (\d+)/.exec(out);
      if (port) {
        clearTimeout(timer);
        resolve({ child, client: new TestClient(`127.0.0.1:${port[1]}`), adminKey: readFileSync(`${dataDir}/admin.key`, 'utf8').trim() });
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${err}`)));
  });
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)));
}

async function setUp(): Promise<{ dataDir: string; key: string; first: Awaited<ReturnType<typeof serve>> }> {
  const dataDir = freshDataDir();
  dirs.push(dataDir);
  const first = await serve(dataDir);
  const created = await first.client.call('TenantService', 'CreateTenant', { tenant_id: 'dur', tenant: {} }, { key: first.adminKey });
  const key = created.api_key.key as string;
  await first.client.call('SqlService', 'Execute', { sql: 'CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)' }, { key });
  return { dataDir, key, first };
}

describe('transactions across SIGKILL', () => {
  it('an acknowledged commit survives SIGKILL; an open transaction leaves nothing', async () => {
    const { dataDir, key, first } = await setUp();
    for (let i = 1; i <= 5; i++) {
      const tx = TxStream.open(first.client, { key });
      await tx.begin('IMMEDIATE');
      await tx.exec('INSERT INTO t VALUES (?, ?)', [v.int(i), v.text('committed')]);
      await tx.exec('UPDATE t SET note = note || ? WHERE id = ?', [v.text('!'), v.int(i)]);
      expect((await tx.commit()).kind).toBe('committed');
    }
    const open = TxStream.open(first.client, { key });
    await open.begin('IMMEDIATE');
    for (let i = 100; i < 110; i++) await open.exec('INSERT INTO t VALUES (?, ?)', [v.int(i), v.text('uncommitted')]);
    await kill(first.child);
    first.client.close();

    const second = await serve(dataDir);
    try {
      expect(rowsOf(await second.client.call('SqlService', 'Execute', { sql: 'SELECT id, note FROM t ORDER BY id' }, { key }))).toEqual(
        [1, 2, 3, 4, 5].map((i) => [BigInt(i), 'committed!']),
      );
      // The tenant takes writes and transactions again.
      const tx = TxStream.open(second.client, { key });
      await tx.begin('IMMEDIATE');
      await tx.exec('INSERT INTO t VALUES (6, ?)', [v.text('after')]);
      await tx.commit();
    } finally {
      second.client.close();
      await kill(second.child);
    }
  }, 180_000);

  it('a SIGKILL between the commit of an idempotent write and its answer: the retry gets the response, and there is one row', async () => {
    const { dataDir, key, first } = await setUp();
    await kill(first.child);
    first.client.close();

    const execId = randomUUID();
    const txId = randomUUID();
    const dying = await serve(dataDir, { TENANTD_FAULT_KILL_AFTER_COMMIT: execId });
    const request = { sql: 'INSERT INTO t (note) VALUES (?)', params: [v.text('once')], request_id: execId };
    const lost = await dying.client.failure('SqlService', 'Execute', request, { key });
    expect(lost.code).toBe(grpc.status.UNAVAILABLE);
    await kill(dying.child);
    dying.client.close();

    const dyingTx = await serve(dataDir, { TENANTD_FAULT_KILL_AFTER_COMMIT: txId });
    const tx = TxStream.open(dyingTx.client, { key });
    await tx.begin('IMMEDIATE', txId);
    await tx.exec('INSERT INTO t (note) VALUES (?)', [v.text('tx-once')]);
    await expect(tx.commit()).rejects.toBeInstanceOf(RpcError);
    await kill(dyingTx.child);
    dyingTx.client.close();

    const again = await serve(dataDir);
    try {
      const retried = await again.client.call('SqlService', 'Execute', request, { key });
      expect(retried.rows_affected).toBe('1');
      const rows = rowsOf(await again.client.call('SqlService', 'Execute', { sql: "SELECT id FROM t WHERE note = 'once'" }, { key }));
      expect(rows).toEqual([[BigInt(retried.last_insert_rowid)]]);
      const txAgain = TxStream.open(again.client, { key });
      expect((await txAgain.begin('IMMEDIATE', txId)).committed?.replayed).toBe(true);
      expect(rowsOf(await again.client.call('SqlService', 'Execute', { sql: "SELECT count(*) FROM t WHERE note = 'tx-once'" }, { key }))).toEqual([[1n]]);
    } finally {
      again.client.close();
      await kill(again.child);
    }
  }, 180_000);
});
