/**
 * BackupTenant, RestoreTenant and RunMaintenance against a real server: the
 * bytes that come out are a sound SQLite database with the tenant's rows,
 * they go back in as a new tenant or over a suspended one, and a bad backup
 * (not a database, corrupt, wrong checksum, too large) never costs a tenant
 * its data.
 */
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replacedDir, trashDir } from '../src/tenants/restoreFiles.ts';
import { RpcError, freshDataDir, rowsOf, startTestServer, v, type DecodedStatus, type TestServer } from './support/server.ts';

let t: TestServer;
let key: string;
const admin = () => ({ key: t.adminKey });
const BIG = 9007199254740993n;
const scratch = freshDataDir();

beforeAll(async () => {
  t = await startTestServer({ shards: 2 });
  key = await t.createTenant('origin');
  await t.sql(key, 'CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, n INTEGER, raw BLOB)');
  await t.sql(key, 'CREATE INDEX notes_n ON notes (n)');
  await t.sql(key, "INSERT INTO notes (body, n, raw) SELECT printf('note %d', value), value, randomblob(100) FROM generate_series(1, 300)").catch(async () => {
    // generate_series is not compiled into every SQLite: a recursive CTE does the same.
    await t.sql(key, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300) INSERT INTO notes (body, n, raw) SELECT printf('note %d', x), x, randomblob(100) FROM c");
  });
  await t.sql(key, 'INSERT INTO notes (body, n) VALUES (?, ?)', [v.text('big'), v.int(BIG)]);
});

afterAll(async () => {
  await t.stop();
  rmSync(scratch, { recursive: true, force: true });
});

interface Chunk {
  data: Buffer;
  offset: string;
  total_size: string;
  sha256: string;
}

async function backup(name: string, chunkSize = 0): Promise<{ bytes: Buffer; chunks: Chunk[] }> {
  const chunks = await t.client.stream<Chunk>('TenantService', 'BackupTenant', { name, chunk_size: chunkSize }, admin());
  return { bytes: Buffer.concat(chunks.map((c) => c.data)), chunks };
}

function restoreMessages(tenantId: string, bytes: Buffer, options: { sha256?: string; tenant?: object; chunk?: number } = {}): object[] {
  const size = options.chunk ?? 64 * 1024;
  const messages: object[] = [{ header: { tenant_id: tenantId, tenant: options.tenant ?? null, sha256: options.sha256 ?? sha256(bytes) } }];
  for (let offset = 0; offset < bytes.length; offset += size) messages.push({ chunk: bytes.subarray(offset, offset + size) });
  return messages;
}

function restore(tenantId: string, bytes: Buffer, options: { sha256?: string; tenant?: object; chunk?: number } = {}): Promise<any> {
  return t.client.clientStream('TenantService', 'RestoreTenant', restoreMessages(tenantId, bytes, options), admin());
}

async function restoreFailure(messages: object[]): Promise<DecodedStatus> {
  try {
    await t.client.clientStream('TenantService', 'RestoreTenant', messages, admin());
  } catch (error) {
    if (error instanceof RpcError) return error.status;
    throw error;
  }
  throw new Error('RestoreTenant succeeded but was expected to fail');
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function rowsIn(bytes: Buffer, sql: string): unknown[][] {
  const file = join(scratch, `check-${Math.random().toString(36).slice(2)}.sqlite`);
  writeFileSync(file, bytes);
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).raw(true).safeIntegers(true).all() as unknown[][];
  } finally {
    db.close();
    rmSync(file, { force: true });
  }
}

async function keyFor(tenantId: string): Promise<string> {
  const created = await t.client.call('TenantService', 'CreateApiKey', { parent: `tenants/${tenantId}` }, admin());
  return created.key as string;
}

describe('BackupTenant', () => {
  it('streams a consistent snapshot in chunks, with its size, offsets and SHA-256', async () => {
    const { bytes, chunks } = await backup('tenants/origin', 16 * 1024);
    expect(chunks.length).toBeGreaterThan(2);
    const total = Number(chunks[0]!.total_size);
    expect(bytes.length).toBe(total);
    let offset = 0;
    for (const chunk of chunks) {
      expect(Number(chunk.offset)).toBe(offset);
      expect(chunk.data.length).toBeLessThanOrEqual(16 * 1024);
      offset += chunk.data.length;
    }
    expect(chunks.slice(0, -1).every((c) => c.sha256 === '')).toBe(true);
    expect(chunks.at(-1)!.sha256).toBe(sha256(bytes));
    expect(rowsIn(bytes, 'PRAGMA integrity_check')).toEqual([['ok']]);
    expect(rowsIn(bytes, 'SELECT count(*), max(n) FROM notes')).toEqual([[301n, BIG]]);
    // Nothing is left behind in the server's temporary directory.
    expect(readdirSync(join(t.dataDir, 'tmp'))).toEqual([]);
  });

  it('keeps 4 MiB chunks within the 4 MiB message a default gRPC client accepts', async () => {
    const bigKey = await t.createTenant('big', { quotas: { write_bytes_per_second: '-1', storage_bytes: '-1', shard_ms_per_second: '-1' } });
    await t.sql(bigKey, 'CREATE TABLE blobs (b BLOB)');
    await t.sql(bigKey, 'INSERT INTO blobs VALUES (randomblob(6 * 1024 * 1024))');
    // The test client has grpc-js's default 4 MiB receive limit.
    const { bytes, chunks } = await backup('tenants/big', 4 * 1024 * 1024);
    expect(chunks.length).toBe(2);
    expect(chunks[0]!.data.length).toBe(4 * 1024 * 1024 - 1024);
    expect(rowsIn(bytes, 'SELECT length(b) FROM blobs')).toEqual([[6n * 1024n * 1024n]]);
    await t.client.call('TenantService', 'DeleteTenant', { name: 'tenants/big', force: true }, admin());
  });

  it('refuses bad chunk sizes, unknown tenants and tenant keys', async () => {
    const tooBig = await t.client.stream('TenantService', 'BackupTenant', { name: 'tenants/origin', chunk_size: 5 * 1024 * 1024 }, admin()).catch((e: RpcError) => e.status);
    expect((tooBig as DecodedStatus).code).toBe(status.INVALID_ARGUMENT);
    const missing = await t.client.stream('TenantService', 'BackupTenant', { name: 'tenants/nobody' }, admin()).catch((e: RpcError) => e.status);
    expect((missing as DecodedStatus).code).toBe(status.NOT_FOUND);
    const tenantKey = await t.client.stream('TenantService', 'BackupTenant', { name: 'tenants/origin' }, { key }).catch((e: RpcError) => e.status);
    expect((tenantKey as DecodedStatus).code).toBe(status.PERMISSION_DENIED);
  });
});

describe('RestoreTenant', () => {
  it('creates a new tenant from a backup, with the backup’s rows and values exact', async () => {
    const { bytes } = await backup('tenants/origin');
    const restored = await restore('copy', bytes, { tenant: { display_name: 'Restored copy' }, chunk: 10_000 });
    expect(restored.name).toBe('tenants/copy');
    expect(restored.display_name).toBe('Restored copy');
    expect(restored.state).toBe('ACTIVE');
    const copyKey = await keyFor('copy');
    expect(rowsOf(await t.sql(copyKey, 'SELECT count(*), max(n) FROM notes'))).toEqual([[301n, BIG]]);
    // The copy is its own tenant: writing to it leaves the origin alone.
    await t.sql(copyKey, 'DELETE FROM notes');
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM notes'))).toEqual([[301n]]);
  });

  it('replaces a suspended tenant’s database, keeping its keys, and refuses an active one', async () => {
    const { bytes } = await backup('tenants/origin');
    await t.sql(key, "INSERT INTO notes (body) VALUES ('after the backup')");
    const active = await restoreFailure(restoreMessages('origin', bytes));
    expect(active.code).toBe(status.FAILED_PRECONDITION);
    expect(active.reason).toBe('TENANT_ACTIVE');

    await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/origin' }, admin());
    await restore('origin', bytes);
    await t.client.call('TenantService', 'ActivateTenant', { name: 'tenants/origin' }, admin());
    // The same key still works; the row written after the backup is gone.
    expect(rowsOf(await t.sql(key, "SELECT count(*) FROM notes WHERE body = 'after the backup'"))).toEqual([[0n]]);
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM notes'))).toEqual([[301n]]);
  });

  it('applies migrations the backup predates', async () => {
    const { bytes } = await backup('tenants/origin');
    await t.client.call('SchemaService', 'ApplyMigration', { migration_id: 'add-tags', sql: 'CREATE TABLE tags (name TEXT PRIMARY KEY)' }, admin());
    const restored = await restore('migrated', bytes);
    expect(restored.schema_version).toBe('1');
    expect(rowsOf(await t.sql(await keyFor('migrated'), 'SELECT count(*) FROM tags'))).toEqual([[0n]]);
  });

  describe('a bad backup never costs a tenant its data', () => {
    let good: Buffer;
    beforeAll(async () => {
      good = (await backup('tenants/origin')).bytes;
      await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/origin' }, admin());
    });
    afterAll(async () => {
      await t.client.call('TenantService', 'ActivateTenant', { name: 'tenants/origin' }, admin());
      // After every refusal below the tenant still has all its rows, and the temporary files are gone.
      expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM notes'))).toEqual([[301n]]);
      expect(readdirSync(join(t.dataDir, 'tmp'))).toEqual([]);
    });

    it('refuses bytes that are not a SQLite database', async () => {
      const failure = await restoreFailure(restoreMessages('origin', Buffer.from('definitely not a database, just some text '.repeat(200))));
      expect(failure.code).toBe(status.INVALID_ARGUMENT);
      expect(failure.reason).toBe('NOT_A_DATABASE');
    });

    it('refuses a database that fails integrity_check', async () => {
      // A sound file, then the root page of its index overwritten with zeros.
      const file = join(scratch, 'corrupt.sqlite');
      writeFileSync(file, good);
      const db = new Database(file);
      db.pragma('journal_mode = DELETE');
      const root = db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = 'notes_n'").pluck().get() as number;
      const pageSize = db.pragma('page_size', { simple: true }) as number;
      db.close();
      const bytes = readFileSync(file);
      bytes.fill(0, (root - 1) * pageSize, root * pageSize);
      const failure = await restoreFailure(restoreMessages('origin', bytes));
      expect(failure.code).toBe(status.INVALID_ARGUMENT);
      expect(['BACKUP_CORRUPT', 'BACKUP_UNUSABLE']).toContain(failure.reason);
    });

    it('refuses bytes whose SHA-256 is not the header’s', async () => {
      const failure = await restoreFailure(restoreMessages('origin', good, { sha256: sha256(Buffer.from('something else')) }));
      expect(failure.code).toBe(status.INVALID_ARGUMENT);
      expect(failure.reason).toBe('CHECKSUM_MISMATCH');
      expect(failure.fieldViolations.map((f) => f.field)).toEqual(['header.sha256']);
    });

    it('refuses a stream without a header first, or with two', async () => {
      const missing = await restoreFailure([{ chunk: good.subarray(0, 100) }]);
      expect(missing.code).toBe(status.INVALID_ARGUMENT);
      expect(missing.reason).toBe('RESTORE_HEADER_MISSING');
      const messages = restoreMessages('origin', good);
      const twice = await restoreFailure([messages[0]!, ...messages]);
      expect(twice.reason).toBe('RESTORE_HEADER_REPEATED');
    });

    it('refuses a header with bad tenant fields and creates nothing', async () => {
      const failure = await restoreFailure(restoreMessages('badplan', good, { tenant: { plan: 'platinum' } }));
      expect(failure.code).toBe(status.INVALID_ARGUMENT);
      expect(failure.reason).toBe('UNKNOWN_PLAN');
      expect(failure.fieldViolations.map((f) => f.field)).toEqual(['header.tenant.plan']);
      expect((await t.client.failure('TenantService', 'GetTenant', { name: 'tenants/badplan' }, admin())).code).toBe(status.NOT_FOUND);
    });

    it('refuses a backup larger than the tenant’s storage quota', async () => {
      const failure = await restoreFailure(restoreMessages('tiny', good, { tenant: { quotas: { storage_bytes: '8192' } } }));
      expect(failure.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(failure.reason).toBe('QUOTA_EXCEEDED');
      expect(failure.quotaViolations[0]).toMatchObject({ subject: 'tenants/tiny' });
      expect((await t.client.failure('TenantService', 'GetTenant', { name: 'tenants/tiny' }, admin())).code).toBe(status.NOT_FOUND);
    });
  });
});

describe('RunMaintenance', () => {
  it('checks one tenant and reports it sound', async () => {
    const lines = await t.client.stream('TenantService', 'RunMaintenance', { name: 'tenants/origin', operation: 'INTEGRITY_CHECK' }, admin());
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ tenant: 'tenants/origin', ok: true, message: 'ok', done: '1', total: '1' });
  });

  it('vacuums every tenant, a line each as it finishes', async () => {
    const before = (await t.client.call('TenantService', 'GetTenantUsage', { name: 'tenants/copy' }, admin())).storage_bytes;
    const lines = await t.client.stream('TenantService', 'RunMaintenance', { name: 'tenants/-', operation: 'VACUUM' }, admin());
    const tenants = lines.map((l: { tenant: string }) => l.tenant).sort();
    expect(tenants).toEqual(['tenants/copy', 'tenants/migrated', 'tenants/origin']);
    expect(lines.every((l: { ok: boolean }) => l.ok)).toBe(true);
    expect(lines.map((l: { done: string }) => Number(l.done)).sort()).toEqual([1, 2, 3]);
    // "copy" had every row deleted: VACUUM gave the space back, and its usage says so.
    const after = (await t.client.call('TenantService', 'GetTenantUsage', { name: 'tenants/copy' }, admin())).storage_bytes;
    expect(Number(after)).toBeLessThan(Number(before));
  });

  it('refuses an unknown operation and a tenant key', async () => {
    const bad = await t.client.stream('TenantService', 'RunMaintenance', { name: 'tenants/origin', operation: 'OPERATION_UNSPECIFIED' }, admin()).catch((e: RpcError) => e.status);
    expect((bad as DecodedStatus).code).toBe(status.INVALID_ARGUMENT);
    const tenantKey = await t.client.stream('TenantService', 'RunMaintenance', { name: 'tenants/-', operation: 'ANALYZE' }, { key }).catch((e: RpcError) => e.status);
    expect((tenantKey as DecodedStatus).code).toBe(status.PERMISSION_DENIED);
  });
});

describe('a restore cut short by a crash', () => {
  it('is repaired at the next start: the old database comes back unless the new one was in place', async () => {
    const dataDir = freshDataDir();
    const first = await startTestServer({ dataDir, shards: 1 }, { keepDataDir: true });
    const oldKey = await first.createTenant('crashed-before');
    await first.sql(oldKey, 'CREATE TABLE v (x)');
    await first.sql(oldKey, "INSERT INTO v VALUES ('old')");
    const newKey = await first.createTenant('crashed-after');
    await first.sql(newKey, 'CREATE TABLE v (x)');
    await first.sql(newKey, "INSERT INTO v VALUES ('new')");
    await first.stop();

    // The states a crash can leave: the old directory set aside and the new one empty,
    // or the new database already in place with the old directory still aside.
    const tenants = join(dataDir, 'tenants');
    mkdirSync(join(dataDir, 'replaced'));
    renameSync(join(tenants, 'crashed-before'), replacedDir(dataDir, 'crashed-before'));
    mkdirSync(join(tenants, 'crashed-before'));
    cpSync(join(tenants, 'crashed-after'), replacedDir(dataDir, 'crashed-after'), { recursive: true });
    // And a discarded directory the crash left in the trash before it was unlinked.
    cpSync(join(tenants, 'crashed-after'), join(trashDir(dataDir), 'crashed-after-1234'), { recursive: true });

    const second = await startTestServer({ dataDir, shards: 1 });
    try {
      expect(rowsOf(await second.sql(oldKey, 'SELECT x FROM v'))).toEqual([['old']]);
      expect(rowsOf(await second.sql(newKey, 'SELECT x FROM v'))).toEqual([['new']]);
      expect(readdirSync(join(dataDir, 'replaced'))).toEqual([]);
      expect(existsSync(trashDir(dataDir))).toBe(false);
      // Set aside at once and unlinked in the background.
      const left = () => readdirSync(dataDir).filter((name) => name.startsWith('trash'));
      for (let waited = 0; left().length > 0 && waited < 5_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
      expect(left()).toEqual([]);
    } finally {
      await second.stop();
    }
  });
});
