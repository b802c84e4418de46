/**
 * What the docs promise about configuration is what happens: `serve --help`
 * lists every flag, a YAML plan states what it inherits, a tenant keeps the
 * plan it was created with, and a tenants file leaves existing tenants alone.
 */
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { CONFIG_FLAGS, DEFAULT_PLANS, loadConfig, serveUsage } from '../src/config.ts';
import { freshDataDir, startTestServer } from './support/server.ts';

const dir = mkdtempSync(join(tmpdir(), 'tenantd-docs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('serve --help', () => {
  it('lists every flag the server takes, each with what it does', () => {
    const ran = spawnSync(process.execPath, [fileURLToPath(new URL('../bin/tenantd.js', import.meta.url)), 'serve', '--help'], { encoding: 'utf8', timeout: 120_000 });
    expect(ran.status, ran.stderr).toBe(0);
    expect(ran.stdout).toBe(`${serveUsage()}\n`);
    for (const flag of CONFIG_FLAGS) expect(ran.stdout).toContain(`--${flag} `);
    for (const flag of ['admin-key-file', 'default-plan', 'drain-timeout-ms', 'group-commit']) {
      expect(ran.stdout).toMatch(new RegExp(`--${flag} \\S+\\n {6}\\w`));
    }
  }, 130_000);
});

describe('plans in the YAML file', () => {
  it('inherit what they name in `extends`, and nothing else: unset quotas of a new plan are unlimited', () => {
    const path = file(
      'plans.yaml',
      'plans:\n  gold:\n    requests_per_second: 5000\n  silver:\n    extends: free\n    requests_per_second: 300\n  bronze:\n    extends: silver\n    storage_bytes: 1024\n  pro:\n    query_timeout_ms: 20000\n',
    );
    const { plans } = loadConfig(['--config', path], {});
    // Before: gold silently got the free plan's query_timeout_ms 5000 and shard_ms_per_second 200.
    expect(plans.gold).toMatchObject({ requestsPerSecond: 5000, queryTimeoutMs: -1, shardMsPerSecond: -1, storageBytes: -1 });
    expect(plans.silver).toEqual({ ...DEFAULT_PLANS.free, requestsPerSecond: 300 });
    expect(plans.bronze).toEqual({ ...DEFAULT_PLANS.free, requestsPerSecond: 300, storageBytes: 1024 });
    // A built-in name without `extends` starts from its documented values.
    expect(plans.pro).toEqual({ ...DEFAULT_PLANS.pro, queryTimeoutMs: 20000 });
  });

  it('refuses an `extends` that names no plan, or a cycle', () => {
    expect(() => loadConfig(['--config', file('bad-extends.yaml', 'plans:\n  gold:\n    extends: platinum\n')], {})).toThrow(/plans.gold.extends": expected the name of another plan/);
    expect(() => loadConfig(['--config', file('cycle.yaml', 'plans:\n  a:\n    extends: b\n  b:\n    extends: a\n')], {})).toThrow(/a cycle/);
  });
});

describe('a tenant created without a plan', () => {
  it('stores the default plan resolved at creation: a restart with another --default-plan leaves its quotas alone', async () => {
    const plans = { ...structuredClone(DEFAULT_PLANS), gold: { ...DEFAULT_PLANS.enterprise! } };
    const dataDir = freshDataDir();
    const first = await startTestServer({ dataDir, plans, defaultPlan: 'free' }, { keepDataDir: true });
    try {
      await first.createTenant('planless');
      const tenant = await first.client.call('TenantService', 'GetTenant', { name: 'tenants/planless' }, { key: first.adminKey });
      expect(tenant.plan).toBe('free');
    } finally {
      await first.stop();
    }
    const second = await startTestServer({ dataDir, plans, defaultPlan: 'gold' });
    try {
      const tenant = await second.client.call('TenantService', 'GetTenant', { name: 'tenants/planless' }, { key: second.adminKey });
      expect(tenant.plan).toBe('free');
      expect(tenant.effective_quotas.requests_per_second).toBe(String(DEFAULT_PLANS.free!.requestsPerSecond));
    } finally {
      await second.stop();
    }
  }, 60_000);
});

describe('a tenants file', () => {
  it('leaves an existing tenant alone: a key added to the file later does not open it', async () => {
    const keyA = randomBytes(32).toString('base64');
    const keyB = randomBytes(32).toString('base64');
    const dataDir = freshDataDir();
    const before = file('tenants-before.yaml', `tenants:\n  - id: kept\n    plan: pro\n    keys:\n      - key: "${keyA}"\n`);
    const first = await startTestServer({ dataDir, tenantsFile: before }, { keepDataDir: true });
    await first.stop();
    const after = file('tenants-after.yaml', `tenants:\n  - id: kept\n    plan: free\n    keys:\n      - key: "${keyA}"\n      - key: "${keyB}"\n`);
    const second = await startTestServer({ dataDir, tenantsFile: after });
    try {
      await second.sql(keyA, 'SELECT 1');
      const refused = await second.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: keyB });
      expect(refused.code).toBe(16); // UNAUTHENTICATED
      const tenant = await second.client.call('TenantService', 'GetTenant', { name: 'tenants/kept' }, { key: second.adminKey });
      expect(tenant.plan).toBe('pro');
    } finally {
      await second.stop();
    }
  }, 60_000);
});
