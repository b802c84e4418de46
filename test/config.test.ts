import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.ts';
import { rowsOf, startTestServer } from './support/server.ts';

const dir = mkdtempSync(join(tmpdir(), 'tenantd-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('configuration', () => {
  it('has the contract’s defaults', () => {
    const config = loadConfig([], {});
    expect(config.listen).toBe('127.0.0.1:7070');
    expect(config.dataDir).toBe('./data');
    expect(config.sync).toBe('full');
    expect(config.syncFlush).toBe('per-commit');
    expect(config.metricsListen).toBe('127.0.0.1:9464');
    expect(config.shards).toBeGreaterThanOrEqual(1);
  });

  it('takes flags over the environment over the file', () => {
    const path = file('precedence.yaml', 'listen: 127.0.0.1:1111\nshards: 3\nsync: normal\nmax_open_dbs: 7\n');
    const env = { TENANTD_CONFIG: path, TENANTD_SHARDS: '5', TENANTD_LISTEN: '127.0.0.1:2222' };
    const config = loadConfig(['--listen', '127.0.0.1:3333', '--metrics-listen=off'], env);
    expect(config.listen).toBe('127.0.0.1:3333');
    expect(config.shards).toBe(5);
    expect(config.sync).toBe('normal');
    expect(config.maxOpenDbs).toBe(7);
    expect(config.metricsListen).toBeNull();
    // --sync-flush by each of the three ways.
    expect(loadConfig(['--config', file('flush.yaml', 'sync_flush: shared\n')], {}).syncFlush).toBe('shared');
    expect(loadConfig(['--config', file('flush2.yaml', 'sync_flush: shared\n')], { TENANTD_SYNC_FLUSH: 'per-commit' }).syncFlush).toBe('per-commit');
    expect(loadConfig(['--sync-flush', 'shared'], { TENANTD_SYNC_FLUSH: 'per-commit' }).syncFlush).toBe('shared');
  });

  it('names the option and the value in every complaint', () => {
    expect(() => loadConfig(['--shards', 'many'], {})).toThrow(/--shards: expected "many" to be an integer from 1 to 256/);
    expect(() => loadConfig([], { TENANTD_SYNC: 'sometimes' })).toThrow(/TENANTD_SYNC: expected "sometimes" to be one of full, normal/);
    expect(() => loadConfig(['--sync-flush', 'syncfs'], {})).toThrow(/--sync-flush: expected "syncfs" to be one of shared, per-commit/);
    expect(() => loadConfig(['--listen', 'nowhere'], {})).toThrow(/--listen: expected "nowhere" to be host:port/);
    expect(() => loadConfig(['--bogus', '1'], {})).toThrow(/unknown flag --bogus/);
    expect(() => loadConfig(['--config', file('bad.yaml', 'colour: blue\n')], {})).toThrow(/config file key "colour": unknown/);
    expect(() => loadConfig(['--config', file('plan.yaml', 'plans:\n  gold:\n    speed: 3\n')], {})).toThrow(/plans.gold.speed": unknown quota/);
    expect(() => loadConfig(['--default-plan', 'gold'], {})).toThrow(ConfigError);
  });

  it('reads plans from the file, merged over the built-in ones', () => {
    const path = file('plans.yaml', 'plans:\n  gold:\n    requests_per_second: 5000\n  free:\n    storage_bytes: 1024\ndefault_plan: gold\n');
    const config = loadConfig(['--config', path], {});
    expect(config.plans.gold!.requestsPerSecond).toBe(5000);
    expect(config.plans.free!.storageBytes).toBe(1024);
    expect(config.plans.free!.requestsPerSecond).toBe(100);
    expect(config.defaultPlan).toBe('gold');
  });
});

describe('tenants file', () => {
  // Operator keys must look random (auth/keys.ts keyWeakness): these are 32 random bytes.
  const keyA = randomBytes(32).toString('base64');
  const keyB = randomBytes(32).toString('base64');

  it('creates the listed tenants with the listed keys, once', async () => {
    const path = file(
      'tenants.yaml',
      `tenants:\n  - id: acme\n    display_name: Acme\n    plan: pro\n    keys:\n      - key: "${keyA}"\n      - key: "${keyB}"\n        role: READ_ONLY\n`,
    );
    const t = await startTestServer({ tenantsFile: path }, { keepDataDir: true });
    try {
      await t.sql(keyA, 'CREATE TABLE t (x)');
      const ro = await t.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (1)' }, { key: keyB });
      expect(ro.reason).toBe('READ_ONLY_KEY');
      const tenant = await t.client.call('TenantService', 'GetTenant', { name: 'tenants/acme' }, { key: t.adminKey });
      expect(tenant.plan).toBe('pro');
    } finally {
      await t.server.shutdown();
      t.client.close();
    }
    // A second start with the same file changes nothing and keeps the data.
    const again = await startTestServer({ tenantsFile: path, dataDir: t.dataDir });
    try {
      expect(rowsOf(await again.sql(keyA, 'SELECT count(*) FROM t'))).toEqual([[0n]]);
    } finally {
      await again.stop();
    }
  });

  it('refuses to start when a key is listed twice', async () => {
    const path = file(
      'dupes.yaml',
      `tenants:\n  - id: one\n    keys:\n      - key: "${keyA}"\n  - id: two\n    keys:\n      - key: "${keyA}"\n`,
    );
    await expect(startTestServer({ tenantsFile: path })).rejects.toThrow(/tenants\[1\].keys\[0\].key: duplicate key, already given at .*tenants\[0\].keys\[0\]/);
  });

  it('refuses weak keys', async () => {
    const path = file('weak.yaml', 'tenants:\n  - id: weak\n    keys:\n      - key: "password"\n');
    await expect(startTestServer({ tenantsFile: path })).rejects.toThrow(/at least 43 characters/);
  });
});

describe('--admin-key-file', () => {
  it('uses the key in the file as the admin key, and writes none of its own', async () => {
    const key = randomBytes(32).toString('base64');
    const keyFile = file('shared-admin.key', `${key}\n`);
    expect(loadConfig(['--admin-key-file', keyFile], {}).adminKeyFile).toBe(keyFile);
    const t = await startTestServer({ adminKeyFile: keyFile });
    try {
      expect(t.adminKey).toBe(key);
      const tenant = await t.client.call('TenantService', 'CreateTenant', { tenant_id: 'shared-key' }, { key });
      expect(tenant.tenant.name).toBe('tenants/shared-key');
      expect(existsSync(join(t.dataDir, 'admin.key'))).toBe(false);
    } finally {
      await t.stop();
    }
  });

  it('refuses to start with a missing file or a weak key', async () => {
    await expect(startTestServer({ adminKeyFile: join(dir, 'absent.key') })).rejects.toThrow(/admin-key-file .* does not exist/);
    await expect(startTestServer({ adminKeyFile: file('weak.key', 'password123\n') })).rejects.toThrow(/does not hold a strong key/);
  });
});
