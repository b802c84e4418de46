/**
 * The operator CLI (`tenantd <command>`) as a child process against a real
 * server: JSON answers, backups to a file and back, errors with their reason
 * and exit codes.
 */
import { spawn } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDataDir, startTestServer, type TestServer } from './support/server.ts';

const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));
let t: TestServer;
const files = freshDataDir();

beforeAll(async () => {
  t = await startTestServer({ shards: 2 });
});
afterAll(async () => {
  await t.stop();
  rmSync(files, { recursive: true, force: true });
});

/** Runs the CLI; async, because the server answering it lives in this process. */
function tenantd(args: string[], env: Record<string, string> = { TENANTD_ADMIN_KEY: t.adminKey }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args, '--address', `127.0.0.1:${t.server.port}`], {
    env: { ...process.env, TENANTD_ADMIN_KEY: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
}

describe('tenantd CLI', () => {
  it('creates a tenant, runs SQL for it, and backs it up to a file and back as another tenant', async () => {
    const created = await tenantd(['tenants', 'create', 'cli-a', '--plan', 'pro', '--display-name', 'From the CLI']);
    expect(created.code).toBe(0);
    const response = JSON.parse(created.stdout);
    expect(response.tenant).toMatchObject({ name: 'tenants/cli-a', plan: 'pro', display_name: 'From the CLI' });
    expect(response.api_key.key).toMatch(/^tdk_/);

    // The admin key acts for the tenant through x-tenant-id.
    expect((await tenantd(['sql', 'cli-a', 'CREATE TABLE t (x INTEGER)'])).code).toBe(0);
    expect((await tenantd(['sql', 'cli-a', 'INSERT INTO t VALUES (41), (42)'])).code).toBe(0);

    const file = join(files, 'cli-a.sqlite');
    const backup = await tenantd(['backup', 'cli-a', file]);
    expect(backup.code).toBe(0);
    const saved = JSON.parse(backup.stdout);
    expect(saved.bytes).toBe(statSync(file).size);
    expect(saved.sha256).toMatch(/^[0-9a-f]{64}$/);

    expect((await tenantd(['restore', 'cli-b', file])).code).toBe(0);
    const rows = await tenantd(['sql', 'cli-b', 'SELECT sum(x) FROM t']);
    expect(JSON.parse(rows.stdout).rows[0].values[0]).toMatchObject({ integer_value: '83' });

    const check = await tenantd(['maintain', '-', 'integrity_check']);
    expect(check.code).toBe(0);
    const lines = check.stdout.trim().split('\n').map((line) => JSON.parse(line));
    expect(lines.map((l) => l.tenant).sort()).toEqual(['tenants/cli-a', 'tenants/cli-b']);
    expect(lines.every((l) => l.ok)).toBe(true);
  });

  it('prints the error reason and exits 1 on a failed call, 2 on bad usage or no key', async () => {
    const missing = await tenantd(['tenants', 'get', 'nobody']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('NOT_FOUND TENANT_NOT_FOUND');
    const badId = await tenantd(['tenants', 'create', 'Not An Id']);
    expect(badId.code).toBe(1);
    expect(badId.stderr).toContain('INVALID_ARGUMENT');
    expect(badId.stderr).toContain('tenant_id:');
    // A backup that fails leaves no file behind to be mistaken for one.
    const failedBackup = join(files, 'nobody.sqlite');
    const backup = await tenantd(['backup', 'nobody', failedBackup]);
    expect(backup.code).toBe(1);
    expect(backup.stderr).toContain('NOT_FOUND TENANT_NOT_FOUND');
    expect(existsSync(failedBackup)).toBe(false);
    const usage = await tenantd(['tenants', 'frobnicate', 'x']);
    expect(usage.code).toBe(2);
    const noKey = await tenantd(['tenants', 'list', '--admin-key-file', join(files, 'absent.key')], {});
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain('no admin key');
  });
});
