import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../src/log.ts';
import { tenantDbPath } from '../src/protocol.ts';
import { freshDataDir, RpcError, startTestServer, type TestServer } from './support/server.ts';

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A small tmpfs of its own, so the test fills a disk without touching the host's (needs root). */
function smallDisk(sizeMiB: number): string | null {
  const dir = mkdtempSync(join(tmpdir(), 'tenantd-test-disk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m`, 'tmpfs', dir], { stdio: 'ignore' });
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  cleanups.push(() => {
    execFileSync('umount', ['-l', dir]);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}
const canMount = (() => {
  const probe = mkdtempSync(join(tmpdir(), 'tenantd-test-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], { stdio: 'ignore' });
    execFileSync('umount', [probe]);
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
})();

async function failure(promise: Promise<unknown>): Promise<RpcError['status']> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof RpcError) return error.status;
    throw error;
  }
  throw new Error('the call succeeded');
}

const unlimited = { requests_per_second: '-1', write_bytes_per_second: '-1', shard_ms_per_second: '-1' };

describe('errors blame the right party', () => {
  it.skipIf(!canMount)('a full host disk is UNAVAILABLE DISK_FULL with an error log, not the tenant storage quota', async () => {
    const disk = smallDisk(6)!;
    const lines: string[] = [];
    const t = await startTestServer({ dataDir: disk, logLevel: 'info' }, { keepDataDir: true, logger: createLogger('info', (line) => void lines.push(line)) });
    cleanups.push(() => t.stop());
    // A quota far above what the disk has: the disk runs out first.
    const key = await t.createTenant('filler', { quotas: { ...unlimited, storage_bytes: String(512 * 1024 * 1024) } });
    const small = await t.createTenant('small', { quotas: { ...unlimited, storage_bytes: String(64 * 1024) } });
    await t.sql(key, 'CREATE TABLE blobs (b BLOB)');
    await t.sql(small, 'CREATE TABLE blobs (b BLOB)');
    // The quota still reads as the quota while the disk has room.
    const quota = await failure(t.sql(small, 'INSERT INTO blobs VALUES (zeroblob(200000))'));
    expect(quota.reason).toBe('STORAGE_QUOTA_EXCEEDED');

    let refused: RpcError['status'] | null = null;
    for (let i = 0; i < 100 && refused === null; i++) {
      try {
        await t.sql(key, 'INSERT INTO blobs VALUES (zeroblob(262144))');
      } catch (error) {
        if (!(error instanceof RpcError)) throw error;
        refused = error.status;
      }
    }
    expect(refused).not.toBeNull();
    expect(refused!.code).toBe(Status.UNAVAILABLE);
    expect(refused!.reason).toBe('DISK_FULL');
    expect(refused!.quotaViolations).toEqual([]);
    const logged = lines.map((line) => JSON.parse(line) as Record<string, unknown>).find((l) => l.msg === 'storage fault');
    expect(logged).toMatchObject({ level: 'error', reason: 'DISK_FULL', tenant: 'filler' });
  }, 120_000);

  it('a damaged tenant file is DATA_LOSS with the SQLite code as reason, never INVALID_ARGUMENT', async () => {
    const dataDir = freshDataDir();
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    let t: TestServer = await startTestServer({ dataDir }, { keepDataDir: true });
    const keys: Record<string, string> = {};
    for (const id of ['header', 'pages']) {
      keys[id] = await t.createTenant(id, { quotas: unlimited });
      await t.sql(keys[id]!, 'CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)');
      await t.sql(keys[id]!, 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20) INSERT INTO t (body) SELECT hex(zeroblob(1000)) FROM c');
    }
    await t.stop();

    // Garbage over the header: not a database any more.
    const header = tenantDbPath(dataDir, 'header');
    let fd = openSync(header, 'r+');
    writeSync(fd, Buffer.alloc(100, 0xab), 0, 100, 0);
    closeSync(fd);
    // Garbage over every page but the first: the schema reads, the table does not.
    const pages = tenantDbPath(dataDir, 'pages');
    const size = statSync(pages).size;
    fd = openSync(pages, 'r+');
    writeSync(fd, Buffer.alloc(size - 4096, 0x5a), 0, size - 4096, 4096);
    closeSync(fd);

    t = await startTestServer({ dataDir }, { keepDataDir: true });
    cleanups.push(() => t.stop());
    const notADb = await failure(t.sql(keys.header!, 'SELECT count(*) FROM t'));
    expect(notADb.code).toBe(Status.DATA_LOSS);
    expect(notADb.reason).toBe('SQLITE_NOTADB');
    const corrupt = await failure(t.sql(keys.pages!, 'SELECT sum(length(body)) FROM t'));
    expect(corrupt.code).toBe(Status.DATA_LOSS);
    expect(corrupt.reason).toMatch(/^SQLITE_CORRUPT/);
  }, 120_000);
});
