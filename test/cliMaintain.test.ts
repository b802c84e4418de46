/**
 * `tenantd maintain - <operation>` runs the operation on every tenant and
 * exits 1 when any tenant failed (0 when none did), as a script checks it.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { tenantDbPath } from '../src/protocol.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));

function tenantd(t: TestServer, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args, '--address', `127.0.0.1:${t.server.port}`], {
    env: { ...process.env, TENANTD_ADMIN_KEY: t.adminKey },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
}

describe('tenantd maintain -', () => {
  it('exits 0 when every tenant passes, and 1 when any tenant failed, with a line for each tenant', async () => {
    // One open database: a call of one tenant closes the other's.
    const t = await startTestServer({ shards: 1, maxOpenDbs: 1 });
    try {
      const key = await t.createTenant('dented');
      const soundKey = await t.createTenant('sound');
      await t.sql(key, 'CREATE TABLE notes (id INTEGER PRIMARY KEY, n INTEGER)');
      await t.sql(key, 'CREATE INDEX notes_n ON notes (n)');
      await t.sql(key, 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) INSERT INTO notes (n) SELECT x FROM c');
      const healthy = await tenantd(t, ['maintain', '-', 'INTEGRITY_CHECK']);
      expect(healthy.code, healthy.stderr).toBe(0);
      // Closed (checkpointed) by a call of the other tenant; then its index's root page overwritten with zeros.
      await t.sql(soundKey, 'SELECT 1');
      const file = tenantDbPath(t.dataDir, 'dented');
      const db = new Database(file, { readonly: true });
      const root = db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = 'notes_n'").pluck().get() as number;
      const pageSize = db.pragma('page_size', { simple: true }) as number;
      db.close();
      const bytes = readFileSync(file);
      bytes.fill(0, (root - 1) * pageSize, root * pageSize);
      writeFileSync(file, bytes);
      const damaged = await tenantd(t, ['maintain', '-', 'INTEGRITY_CHECK']);
      expect(damaged.code, damaged.stdout).toBe(1);
      expect(damaged.stdout).toContain('tenants/dented');
      expect(damaged.stdout).toContain('tenants/sound');
    } finally {
      await t.stop();
    }
  }, 90_000);
});
