/**
 * Keys and secrets (issue 12.3): one admin key at a time, `tenantd admin-key
 * rotate`, operator keys held to the strength of generated ones, and an audit
 * line per admin action that names the key id, never the key. On 011b252 a
 * new --admin-key-file left the old admin key valid, and `aaaa…` (43+
 * characters) was accepted in a tenants file.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { keyWeakness } from '../src/auth/keys.ts';
import { createLogger } from '../src/log.ts';
import { freshDataDir, startTestServer } from './support/server.ts';

const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));
const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function dir(): string {
  const d = freshDataDir();
  dirs.push(d);
  return d;
}

function collector() {
  const lines: any[] = [];
  return { lines, logger: createLogger('info', (line) => lines.push(JSON.parse(line))) };
}

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const childEnv: NodeJS.ProcessEnv = { ...process.env };
    delete childEnv.TENANTD_ADMIN_KEY_FILE;
    Object.assign(childEnv, env);
    const child = spawn(process.execPath, [BIN, ...args], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('one admin key at a time', () => {
  it('a start with a new --admin-key-file revokes the previous admin key, and says so', async () => {
    const dataDir = dir();
    const first = join(dataDir, '..', `${dataDir.split('/').pop()}-k1`);
    const second = join(dataDir, '..', `${dataDir.split('/').pop()}-k2`);
    dirs.push(first, second);
    const k1 = randomBytes(32).toString('base64');
    const k2 = randomBytes(32).toString('base64');
    writeFileSync(first, `${k1}\n`, { mode: 0o600 });
    writeFileSync(second, `${k2}\n`, { mode: 0o600 });

    const a = await startTestServer({ dataDir, adminKeyFile: first }, { keepDataDir: true });
    await a.client.call('TenantService', 'ListTenants', {}, { key: k1 });
    await a.stop();

    const log = collector();
    const b = await startTestServer({ dataDir, adminKeyFile: second }, { keepDataDir: true, logger: log.logger });
    try {
      expect((await b.client.failure('TenantService', 'ListTenants', {}, { key: k1 })).code).toBe(status.UNAUTHENTICATED);
      await b.client.call('TenantService', 'ListTenants', {}, { key: k2 });
      const line = log.lines.find((l) => l.action === 'RevokeAdminKeys');
      expect(line).toMatchObject({ level: 'warn', audit: true, principal: b.server.adminKey.keyId, result: 'OK' });
      expect(line.revoked).toHaveLength(1);
      expect(JSON.stringify(log.lines)).not.toContain(k1);
      expect(JSON.stringify(log.lines)).not.toContain(k2);
    } finally {
      await b.stop();
    }
    // A revoked key stays revoked: pointing the file back at it stops the start.
    await expect(startTestServer({ dataDir, adminKeyFile: first }, { keepDataDir: true })).rejects.toThrow(/not an active admin key/);
  }, 60_000);
});

describe('tenantd admin-key rotate', () => {
  it('makes a new key, revokes the old one, rewrites admin.key, and refuses while a server runs', async () => {
    const dataDir = dir();
    const t = await startTestServer({ dataDir }, { keepDataDir: true });
    const old = t.adminKey;
    const busy = await run(['admin-key', 'rotate', '--data-dir', dataDir]);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toMatch(/in use by a running tenantd/);
    expect(readFileSync(join(dataDir, 'admin.key'), 'utf8').trim()).toBe(old);
    await t.stop();

    const rotated = await run(['admin-key', 'rotate', '--data-dir', dataDir]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const fresh = readFileSync(join(dataDir, 'admin.key'), 'utf8').trim();
    expect(fresh).not.toBe(old);
    expect(fresh).toMatch(/^tda_/);
    // Piped stdout: the path, never the key.
    expect(rotated.stdout).toContain(join(dataDir, 'admin.key'));
    expect(rotated.stdout).not.toContain(fresh);
    expect(JSON.parse(rotated.stderr.trim().split('\n').pop()!)).toMatchObject({ audit: true, action: 'RotateAdminKey', result: 'OK', revoked: [expect.any(String)] });

    const after = await startTestServer({ dataDir }, { keepDataDir: true });
    try {
      expect((await after.client.failure('TenantService', 'ListTenants', {}, { key: old })).code).toBe(status.UNAUTHENTICATED);
      await after.client.call('TenantService', 'ListTenants', {}, { key: fresh });
    } finally {
      await after.stop();
    }
    const usage = await run(['admin-key', 'rotate', '--data-dir', dataDir, '--bogus']);
    expect(usage.code).toBe(2);
    const shared = await run(['admin-key', 'rotate', '--data-dir', dataDir], { TENANTD_ADMIN_KEY_FILE: '/run/secrets/admin_key' });
    expect(shared.code).toBe(2);
  }, 150_000);
});

describe('operator-supplied keys', () => {
  const weak = ['a'.repeat(50), 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ', 'password123password123password123password123', 'short'];
  it('are held to the strength of generated ones (length, alphabet, entropy)', () => {
    for (const key of weak) expect(keyWeakness(key), key).not.toBeNull();
    expect(keyWeakness(`${randomBytes(32).toString('base64').slice(0, 43)} x`)).toMatch(/contains " "/);
    for (let i = 0; i < 500; i++) {
      expect(keyWeakness(randomBytes(32).toString('base64'))).toBeNull();
      expect(keyWeakness(randomBytes(32).toString('hex'))).toBeNull();
      expect(keyWeakness(randomBytes(32).toString('base64url'))).toBeNull();
    }
  });

  it('a weak key in a tenants file or an admin key file stops the start, naming where', async () => {
    const dataDir = dir();
    const tenantsFile = join(dataDir, 'tenants.yaml');
    writeFileSync(tenantsFile, `tenants:\n  - id: acme\n    keys:\n      - { key: "${'a'.repeat(50)}" }\n`);
    await expect(startTestServer({ dataDir, tenantsFile }, { keepDataDir: true })).rejects.toThrow(/tenants\[0\]\.keys\[0\]\.key: refused, it looks far from random/);
    const keyFile = join(dataDir, 'weak.key');
    writeFileSync(keyFile, `${'abcd'.repeat(12)}\n`);
    await expect(startTestServer({ dataDir: dir(), adminKeyFile: keyFile })).rejects.toThrow(/--admin-key-file .* does not hold a strong key/);
  }, 60_000);
});

describe('the audit log', () => {
  it('has one line per admin action: key id, tenant, action, result; never a key', async () => {
    const log = collector();
    const t = await startTestServer({}, { logger: log.logger });
    try {
      const key = await t.createTenant('audited');
      await t.client.call('TenantService', 'CreateApiKey', { parent: 'tenants/audited', api_key: {} }, { key: t.adminKey });
      await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/audited' }, { key: t.adminKey });
      await t.client.call('TenantService', 'ActivateTenant', { name: 'tenants/audited' }, { key: t.adminKey });
      // Refused: a tenant key on an admin method is audited too, with its own key id.
      await t.client.failure('TenantService', 'SuspendTenant', { name: 'tenants/audited' }, { key });
      await t.client.failure('TenantService', 'DeleteTenant', { name: 'tenants/audited' }, { key: 'tda_nope_nope' });
      await t.client.call('TenantService', 'DeleteTenant', { name: 'tenants/audited', force: true }, { key: t.adminKey });
      // Reads are not audited.
      await t.client.call('TenantService', 'ListTenants', {}, { key: t.adminKey });
      const audit = log.lines.filter((l) => l.audit === true && l.msg === 'audit');
      const adminId = t.server.adminKey.keyId;
      expect(audit.map((l) => [l.action.split('/')[1], l.principal === adminId ? 'admin' : l.principal === null ? null : 'other', l.tenant, l.result])).toEqual([
        ['CreateTenant', 'admin', 'audited', 'OK'],
        ['CreateApiKey', 'admin', 'audited', 'OK'],
        ['SuspendTenant', 'admin', 'audited', 'OK'],
        ['ActivateTenant', 'admin', 'audited', 'OK'],
        ['SuspendTenant', 'other', 'audited', 'PERMISSION_DENIED'],
        ['DeleteTenant', null, 'audited', 'UNAUTHENTICATED'],
        ['DeleteTenant', 'admin', 'audited', 'OK'],
      ]);
      expect(audit[4].principal).toBe(key.split('_')[1]);
      const text = JSON.stringify(log.lines);
      expect(text).not.toContain(t.adminKey);
      expect(text).not.toContain(key);
    } finally {
      await t.stop();
    }
  }, 60_000);
});
