import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import type { SyncFlushMode, SyncMode } from '../src/config.ts';
import { freshDataDir, rowsOf, startTestServer, TestClient, v, RpcError } from './support/server.ts';

const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));
const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** `tenantd serve` as a child process; resolves once it prints its port. */
function serveChild(dataDir: string, sync: SyncMode, syncFlush: SyncFlushMode = 'per-commit'): Promise<{ child: ChildProcess; port: number; adminKey: string }> {
  const args = ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--metrics-listen', 'off', '--sync', sync, '--sync-flush', syncFlush, '--shards', '2', '--log-level', 'warn'];
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out} ${err}`)), 20_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const port = /listening on port (\d+)/.exec(out);
      if (port) {
        clearTimeout(timer);
        resolve({ child, port: Number(port[1]), adminKey: readFileSync(`${dataDir}/admin.key`, 'utf8').trim() });
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${err}`)));
  });
}

describe('durability', () => {
  it('keeps tenants, keys and data across a clean restart', async () => {
    const dataDir = freshDataDir();
    dirs.push(dataDir);
    const first = await startTestServer({ dataDir }, { keepDataDir: true });
    const key = await first.createTenant('keeper', { display_name: 'Keeper' });
    await first.sql(key, 'CREATE TABLE notes (body TEXT)');
    await first.sql(key, 'INSERT INTO notes VALUES (?)', [v.text('remember me')]);
    await first.client.call('TenantService', 'SuspendTenant', { name: 'tenants/keeper' }, { key: first.adminKey });
    const adminKey = first.adminKey;
    await first.stop();

    const second = await startTestServer({ dataDir }, { keepDataDir: true });
    try {
      expect(second.adminKey).toBe(adminKey);
      expect(second.server.adminKey.created).toBe(false);
      const tenant = await second.client.call('TenantService', 'GetTenant', { name: 'tenants/keeper' }, { key: adminKey });
      expect(tenant.display_name).toBe('Keeper');
      expect(tenant.state).toBe('SUSPENDED');
      await second.client.call('TenantService', 'ActivateTenant', { name: 'tenants/keeper' }, { key: adminKey });
      expect(rowsOf(await second.sql(key, 'SELECT body FROM notes'))).toEqual([['remember me']]);
    } finally {
      await second.stop();
    }
  });

  // --sync full commits with NORMAL on the tenant's connection under the shared flush (one syncfs before
  // the shard answers, workers/sharedFlush.ts), with FULL under --sync-flush per-commit.
  const modes = [
    { sync: 'full', syncFlush: 'shared', pragma: 1n },
    { sync: 'full', syncFlush: 'per-commit', pragma: 2n },
    { sync: 'normal', syncFlush: 'shared', pragma: 1n },
  ] as const;
  for (const { sync, syncFlush, pragma } of modes) {
    it(`loses no acknowledged write when the process is killed with SIGKILL (--sync ${sync} --sync-flush ${syncFlush})`, async () => {
      const dataDir = freshDataDir();
      dirs.push(dataDir);
      const { child, port, adminKey } = await serveChild(dataDir, sync, syncFlush);
      const client = new TestClient(`127.0.0.1:${port}`);
      const keys: string[] = [];
      for (let i = 0; i < 4; i++) {
        const created = await client.call(
          'TenantService',
          'CreateTenant',
          { tenant_id: `w${i}`, tenant: { quotas: { requests_per_second: '-1', write_bytes_per_second: '-1' } } },
          { key: adminKey },
        );
        keys.push(created.api_key.key);
        await client.call('SqlService', 'Execute', { sql: 'CREATE TABLE w (id INTEGER PRIMARY KEY, payload TEXT)' }, { key: created.api_key.key });
      }
      // The mode is applied where it matters, on the tenant's connection in its
      // shard, as the tenant itself reads it (FULL = 2, NORMAL = 1): without
      // this the runs would be the same test.
      const mode = await client.call('SqlService', 'Execute', { sql: 'PRAGMA synchronous' }, { key: keys[0]! });
      expect(rowsOf(mode)).toEqual([[pragma]]);
      const acked: number[][] = keys.map(() => []);
      let stop = false;
      // Several writers per tenant, so that writes share commits (group commit).
      const WRITERS = 4;
      const writers = keys.flatMap((key, i) => Array.from({ length: WRITERS }, async (_, j) => {
        for (let n = 1; !stop && n < 100_000; n++) {
          const id = n * WRITERS + j;
          try {
            await client.call('SqlService', 'Execute', { sql: 'INSERT INTO w (id, payload) VALUES (?, ?)', params: [v.int(id), v.text('x'.repeat(200))] }, { key });
            acked[i]!.push(id);
          } catch (error) {
            if (error instanceof RpcError) return;
            throw error;
          }
        }
      }));
      await new Promise((r) => setTimeout(r, 700));
      child.kill('SIGKILL');
      stop = true;
      await Promise.all(writers);
      client.close();
      await new Promise((r) => child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r));
      expect(acked.every((list) => list.length > 0)).toBe(true);

      // Every database is intact and holds every acknowledged row.
      for (const tenant of readdirSync(`${dataDir}/tenants`)) {
        const db = new Database(`${dataDir}/tenants/${tenant}/db.sqlite`);
        expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
        const i = Number(tenant.slice(1));
        const present = new Set(db.prepare('SELECT id FROM w').pluck().all() as number[]);
        const missing = acked[i]!.filter((id) => !present.has(id));
        expect(missing, `tenant ${tenant}`).toEqual([]);
        db.close();
      }
      const catalog = new Database(`${dataDir}/catalog.db`);
      expect(catalog.pragma('integrity_check', { simple: true })).toBe('ok');
      catalog.close();

      // And the service comes back with all of it.
      const again = await serveChild(dataDir, sync, syncFlush);
      const client2 = new TestClient(`127.0.0.1:${again.port}`);
      const count = await client2.call('SqlService', 'Execute', { sql: 'SELECT count(*) FROM w' }, { key: keys[0]! });
      expect(Number(rowsOf(count)[0]![0])).toBeGreaterThanOrEqual(acked[0]!.length);
      client2.close();
      again.child.kill('SIGTERM');
      await new Promise((r) => again.child.once('exit', r));
      // Two servers started as processes: slow on a loaded host.
    }, 90_000);
  }
});

describe('a SIGKILL in the middle of restores, deletes and creates', () => {
  /** Each tenant, after the restart, is in its old state or its new one: never listed without its data. */
  it('leaves every tenant old or new, never half, and no files of unlisted tenants', async () => {
    const { serveChild: serve } = await import('./support/childServer.ts');
    const { createHash } = await import('node:crypto');
    const dataDir = freshDataDir();
    dirs.push(dataDir);
    const N = 4;
    const quotas = { requests_per_second: '-1', write_bytes_per_second: '-1', shard_ms_per_second: '-1' };
    for (let round = 0; round < 2; round++) {
      const server = await serve(dataDir, ['--sync', 'full']);
      const client = new TestClient(`127.0.0.1:${server.port}`);
      const admin = { key: server.adminKey };
      const keys = new Map<string, string>();
      // Per round: tenants to restore over (rows A and B now, the backup has A), to delete, and to create.
      for (let i = 0; i < N; i++) {
        for (const kind of ['r', 'd']) {
          const id = `${kind}${round}-${i}`;
          const created = await client.call('TenantService', 'CreateTenant', { tenant_id: id, tenant: { quotas } }, admin);
          keys.set(id, created.api_key.key);
          await client.call('SqlService', 'Execute', { sql: 'CREATE TABLE t (v TEXT)' }, { key: created.api_key.key });
          await client.call('SqlService', 'Execute', { sql: "INSERT INTO t VALUES ('A')" }, { key: created.api_key.key });
        }
      }
      const backups = new Map<string, Buffer>();
      for (let i = 0; i < N; i++) {
        const id = `r${round}-${i}`;
        const chunks = await client.stream('TenantService', 'BackupTenant', { name: `tenants/${id}` }, admin);
        backups.set(id, Buffer.concat(chunks.map((c: { data: Buffer }) => c.data)));
        await client.call('SqlService', 'Execute', { sql: "INSERT INTO t VALUES ('B')" }, { key: keys.get(id)! });
        await client.call('TenantService', 'SuspendTenant', { name: `tenants/${id}` }, admin);
      }
      // Started a few ms apart, so the kill finds them at different steps.
      const ops: Promise<unknown>[] = [];
      for (let i = 0; i < N; i++) {
        const lag = (ms: number) => new Promise((r) => setTimeout(r, ms));
        const bytes = backups.get(`r${round}-${i}`)!;
        const messages: object[] = [{ header: { tenant_id: `r${round}-${i}`, sha256: createHash('sha256').update(bytes).digest('hex') } }, { chunk: bytes }];
        ops.push(lag(i * 7).then(() => client.clientStream('TenantService', 'RestoreTenant', messages, admin)));
        ops.push(lag(i * 7).then(() => client.call('TenantService', 'DeleteTenant', { name: `tenants/d${round}-${i}`, force: true }, admin)));
        ops.push(lag(i * 7).then(() => client.call('TenantService', 'CreateTenant', { tenant_id: `c${round}-${i}`, tenant: { quotas } }, admin)));
      }
      const settled = Promise.allSettled(ops);
      await new Promise((r) => setTimeout(r, 15 + round * 20));
      server.child.kill('SIGKILL');
      await server.exited;
      await settled;
      client.close();

      const again = await serve(dataDir, ['--sync', 'full']);
      const check = new TestClient(`127.0.0.1:${again.port}`);
      try {
        const listed = new Set<string>();
        for (let i = 0; i < N; i++) {
          for (const id of [`r${round}-${i}`, `d${round}-${i}`, `c${round}-${i}`]) {
            let exists = true;
            try {
              await check.call('TenantService', 'GetTenant', { name: `tenants/${id}` }, { key: again.adminKey });
            } catch (error) {
              if (!(error instanceof RpcError) || error.status.reason !== 'TENANT_NOT_FOUND') throw error;
              exists = false;
            }
            if (id.startsWith('r')) expect(exists, id).toBe(true);
            if (!exists) continue;
            listed.add(id);
            if (id.startsWith('c')) continue;
            // The tenant's data: its old rows or the backup's, read through a key of its own.
            await check.call('TenantService', 'ActivateTenant', { name: `tenants/${id}` }, { key: again.adminKey }).catch(() => undefined);
            const key = (await check.call('TenantService', 'CreateApiKey', { parent: `tenants/${id}`, api_key: { role: 'READ_ONLY' } }, { key: again.adminKey })).key;
            const rows = rowsOf(await check.call('SqlService', 'Execute', { sql: 'SELECT v FROM t ORDER BY v' }, { key })).map((r) => r[0]);
            if (id.startsWith('r')) expect([['A'], ['A', 'B']], id).toContainEqual(rows);
            else expect(rows, id).toEqual(['A']);
          }
        }
        // No files of tenants the catalog does not list, and nothing set aside.
        const onDisk = readdirSync(`${dataDir}/tenants`).filter((id) => new RegExp(`^[rdc]${round}-`).test(id));
        expect(onDisk.filter((id) => !listed.has(id)), 'files of unlisted tenants').toEqual([]);
        if (existsSync(`${dataDir}/replaced`)) expect(readdirSync(`${dataDir}/replaced`)).toEqual([]);
      } finally {
        check.close();
        again.child.kill('SIGTERM');
        await again.exited;
      }
    }
  }, 400_000);
});
