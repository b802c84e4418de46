/**
 * --sync full's shared flush (workers/sharedFlush.ts): the shard's tenant
 * connections commit without syncing, and one sync before the shard answers
 * makes all of its commits durable: an fsync of the WAL when they all went to
 * one tenant's file, else a syncfs. The SIGKILL test in durability.test.ts
 * checks that no acknowledged write is lost in each mode; this one that the
 * syncs really are shared, that a lone writer's go to its own WAL (seen by
 * strace), one per commit under --sync-flush per-commit, none under
 * --sync normal, and that a tenant cannot reach the flush.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { status } from '@grpc/grpc-js';
import type { Config } from '../src/config.ts';
import { BIN } from './support/cluster.ts';
import { freePort } from './support/freePort.ts';
import { rowsOf, startTestServer, TestClient, until, v, type TestServer } from './support/server.ts';
import { writeThenCrash } from './support/shardCrash.ts';
import { TxStream } from './support/transaction.ts';

const UNLIMITED = { quotas: { requests_per_second: '-1', write_bytes_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '-1' } };
const TENANTS = 24;
const WRITES_PER_TENANT = 10;

const servers: TestServer[] = [];
afterAll(() => Promise.all(servers.map((s) => s.stop())));

/** Many tenants on one shard, each written by concurrent single-row INSERTs; returns the shard's counters after. */
async function writeMany(
  overrides: Partial<Config>,
): Promise<{ commits: number; committedCalls: number; syncs: number; filesystemSyncs: number; t: TestServer; keys: string[] }> {
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
  const before = { commits: shard.commits, syncs: shard.syncs, filesystemSyncs: shard.filesystemSyncs };
  // One write at a time per tenant (so that no two share a group commit), all tenants at once: a
  // shard turn holds single writes of many tenants, each its own commit.
  await Promise.all(
    keys.map(async (key) => {
      for (let n = 0; n < WRITES_PER_TENANT; n++) await t.sql(key, 'INSERT INTO w (n) VALUES (?)', [v.int(n)]);
    }),
  );
  await until(() => shard.committedCalls === TENANTS * (WRITES_PER_TENANT + 1), () => `committedCalls ${shard.committedCalls}`);
  for (const key of keys) expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM w'))).toEqual([[BigInt(WRITES_PER_TENANT)]]);
  return {
    commits: shard.commits - before.commits,
    committedCalls: shard.committedCalls,
    syncs: shard.syncs - before.syncs,
    filesystemSyncs: shard.filesystemSyncs - before.filesystemSyncs,
    t,
    keys,
  };
}

/** A one-shard server with the shared flush, and one tenant with a table `w` to write. */
async function sharedFlushTenant(tenantId: string) {
  const t = await startTestServer({ shards: 1, sync: 'full', syncFlush: 'shared' });
  servers.push(t);
  const key = await t.createTenant(tenantId, UNLIMITED);
  await t.sql(key, 'CREATE TABLE w (id INTEGER PRIMARY KEY, n INTEGER)');
  return { t, key, shard: t.server.router.forTenant(tenantId) };
}

describe('--sync full, shared flush', () => {
  it('makes the commits of many tenants durable with far fewer syncs than commits', async () => {
    const { commits, syncs, filesystemSyncs } = await writeMany({ sync: 'full', syncFlush: 'shared' });
    expect(commits).toBe(TENANTS * WRITES_PER_TENANT);
    expect(syncs).toBeGreaterThanOrEqual(1);
    // Writes of different tenants never share a commit; here they share syncs, by syncfs.
    expect(syncs, `${syncs} syncs for ${commits} commits`).toBeLessThan(commits * 0.75);
    expect(filesystemSyncs).toBeGreaterThanOrEqual(1);
  }, 60_000);

  it('syncs a lone writer’s commits by an fsync of its file, not of the whole filesystem', async () => {
    const { t, key, shard } = await sharedFlushTenant('solo');
    // The CREATE TABLE's commit reported before counting from here.
    await until(() => shard.committedCalls >= 1, () => `committedCalls ${shard.committedCalls}`);
    const before = { commits: shard.commits, syncs: shard.syncs, filesystemSyncs: shard.filesystemSyncs };
    for (let n = 0; n < 20; n++) await t.sql(key, 'INSERT INTO w (n) VALUES (?)', [v.int(n)]);
    await until(() => shard.commits - before.commits === 20, () => `commits ${shard.commits - before.commits}`);
    await until(() => shard.syncs - before.syncs === 20, () => `syncs ${shard.syncs - before.syncs} for 20 commits`);
    expect(shard.filesystemSyncs - before.filesystemSyncs).toBe(0);
  }, 60_000);

  it('syncs once per commit under --sync-flush per-commit (the default), and never at commit under --sync normal', async () => {
    const perCommit = await writeMany({ sync: 'full' });
    expect(perCommit.syncs).toBe(perCommit.commits);
    const normal = await writeMany({ sync: 'normal' });
    expect(normal.commits).toBe(TENANTS * WRITES_PER_TENANT);
    expect(normal.syncs).toBe(0);
  }, 60_000);

  it('syncs for commits on every path that writes: a Batch, an interactive Transaction on its own connection, a Query', async () => {
    const { t, key, shard } = await sharedFlushTenant('paths');
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

/**
 * What the shared flush really syncs, seen from outside: the real server under strace, every
 * fsync and syncfs with the path of its file. Linux with strace (installed by .ci/run) allowed
 * to trace; skipped elsewhere (a container without ptrace).
 */
const canTrace = process.platform === 'linux' && spawnSync('strace', ['-f', '-qq', '--seccomp-bpf', '-e', 'trace=none', 'true']).status === 0;

describe.skipIf(!canTrace)('--sync-flush shared under strace', () => {
  it('fsyncs the lone writer’s own WAL and directory for each of its commits, and uses syncfs for several tenants’ at once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tenantd-flush-strace-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const dataDir = join(dir, 'data');
    const keyFile = join(dir, 'admin.key');
    const traceFile = join(dir, 'trace.txt');
    const adminKey = randomBytes(32).toString('base64');
    writeFileSync(keyFile, `${adminKey}\n`, { mode: 0o600 });
    const port = await freePort();
    const args = [
      // Only these calls stop the server (seccomp-bpf), so it runs at nearly its own speed.
      '-f', '-qq', '--seccomp-bpf', '-y', '-e', 'trace=fsync,fdatasync,syncfs', '-e', 'signal=none', '-o', traceFile,
      process.execPath, BIN, 'serve',
      '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--admin-key-file', keyFile, '--metrics-listen', 'off',
      '--shards', '1', '--sync', 'full', '--sync-flush', 'shared', '--log-level', 'warn',
    ];
    const child = spawn('strace', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const client = new TestClient(`127.0.0.1:${port}`, 30_000);
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error(`the server did not start under strace: ${out}`)), 60_000);
        const seen = (d: Buffer) => {
          out += d;
          if (/listening on port/.test(out)) (clearTimeout(timer), resolve());
        };
        child.stdout!.on('data', seen);
        child.stderr!.on('data', seen);
        child.once('exit', (code) => reject(new Error(`strace exited with ${code}: ${out}`)));
      });
      const create = async (id: string) => {
        const created = await client.call('TenantService', 'CreateTenant', { tenant_id: id, tenant: UNLIMITED }, { key: adminKey });
        const key = created.api_key.key as string;
        await client.call('SqlService', 'Execute', { sql: 'CREATE TABLE w (n INTEGER)' }, { key });
        return key;
      };
      const solo = await create('solo');
      const crowd = await Promise.all(Array.from({ length: 12 }, (_, i) => create(`crowd${i}`)));
      for (let n = 0; n < 20; n++) await client.call('SqlService', 'Execute', { sql: 'INSERT INTO w VALUES (?)', params: [v.int(n)] }, { key: solo });
      // Several tenants' writes in flight at once: their commits meet in shard turns.
      await Promise.all(
        crowd.map(async (key) => {
          for (let n = 0; n < 10; n++) await client.call('SqlService', 'Execute', { sql: 'INSERT INTO w VALUES (?)', params: [v.int(n)] }, { key });
        }),
      );
    } finally {
      client.close();
      // The server itself (strace's child) gets the SIGTERM: strace blocks it while it traces, and exits with its tracee.
      const server = Number(readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(' ')[0]);
      if (server > 0) process.kill(server, 'SIGTERM');
      else child.kill('SIGKILL');
      await exited;
    }
    const trace = readFileSync(traceFile, 'utf8').split('\n');
    const soloDir = join(dataDir, 'tenants', 'solo');
    const walFsyncs = trace.filter((l) => /^\d+\s+fsync\(/.test(l) && l.includes(`<${join(soloDir, 'db.sqlite-wal')}>`) && /= 0$/.test(l));
    const dirFsyncs = trace.filter((l) => /^\d+\s+fsync\(/.test(l) && l.includes(`<${soloDir}>`) && /= 0$/.test(l));
    const syncfs = trace.filter((l) => /^\d+\s+syncfs\(/.test(l) && /= 0$/.test(l));
    // 20 lone commits (besides the tenant's creation): one fsync of its WAL, and of its directory, each.
    expect(walFsyncs.length, trace.slice(0, 40).join('\n')).toBeGreaterThanOrEqual(20);
    expect(dirFsyncs.length).toBeGreaterThanOrEqual(20);
    expect(syncfs.length).toBeGreaterThanOrEqual(1);
  }, 120_000);
});
