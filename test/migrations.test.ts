import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { rmSync } from 'node:fs';
import { freshDataDir, rowsOf, startTestServer, type TestServer } from './support/server.ts';

let t: TestServer;
const admin = () => ({ key: t.adminKey });

beforeAll(async () => {
  t = await startTestServer({ shards: 2 });
});
afterAll(() => t.stop());

async function waitForMigration(name: string): Promise<any> {
  for (let i = 0; i < 100; i++) {
    const m = await t.client.call('SchemaService', 'GetMigration', { name }, admin());
    if (m.state !== 'RUNNING') return m;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${name} still running`);
}

describe('schema migrations', () => {
  it('validates a migration on a scratch database without recording it', async () => {
    const ok = await t.client.call('SchemaService', 'ApplyMigration', { migration_id: 'dry', sql: 'CREATE TABLE x (y)', validate_only: true }, admin());
    expect(ok.state).toBe('VALIDATED');
    const bad = await t.client.failure('SchemaService', 'ApplyMigration', { migration_id: 'dry', sql: 'CREATE TABLE', validate_only: true }, admin());
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.reason).toBe('MIGRATION_INVALID');
    const listed = await t.client.call('SchemaService', 'ListMigrations', {}, admin());
    expect(listed.migrations).toEqual([]);
  });

  it('applies a migration to every tenant in the background, and to new tenants at creation', async () => {
    const keys: string[] = [];
    for (let i = 0; i < 6; i++) keys.push(await t.createTenant(`mig-${i}`));
    const applied = await t.client.call(
      'SchemaService',
      'ApplyMigration',
      { migration_id: 'add-accounts', sql: 'CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL DEFAULT 0); CREATE INDEX accounts_balance ON accounts (balance);' },
      admin(),
    );
    expect(applied.version).toBe('1');
    const done = await waitForMigration('migrations/add-accounts');
    expect(done.state).toBe('SUCCEEDED');
    expect(Number(done.tenants_done)).toBeGreaterThanOrEqual(6);
    for (const key of keys) expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM accounts'))).toEqual([[0n]]);
    const tenant = await t.client.call('TenantService', 'GetTenant', { name: 'tenants/mig-0' }, admin());
    expect(tenant.schema_version).toBe('1');

    const later = await t.createTenant('mig-late');
    expect(rowsOf(await t.sql(later, 'SELECT count(*) FROM accounts'))).toEqual([[0n]]);
    const again = await t.client.failure('SchemaService', 'ApplyMigration', { migration_id: 'add-accounts', sql: 'SELECT 1' }, admin());
    expect(again.code).toBe(status.ALREADY_EXISTS);
  });

  it('rolls back a failing migration on that tenant alone and reports it', async () => {
    const odd = await t.createTenant('mig-odd');
    // This tenant already has a table the migration will try to create.
    await t.sql(odd, 'CREATE TABLE audit (x)');
    const normal = await t.createTenant('mig-normal');
    await t.client.call('SchemaService', 'ApplyMigration', { migration_id: 'add-audit', sql: 'CREATE TABLE audit (at INTEGER, what TEXT); INSERT INTO audit VALUES (1, \'created\');' }, admin());
    const done = await waitForMigration('migrations/add-audit');
    expect(done.state).toBe('FAILED');
    expect(done.tenants_failed).toBe('1');
    expect(done.failures).toEqual([{ tenant: 'tenants/mig-odd', error: expect.stringContaining('already exists') }]);
    expect(rowsOf(await t.sql(normal, 'SELECT what FROM audit'))).toEqual([['created']]);
    // The failed tenant is untouched: its own table, no half-applied rows.
    expect(rowsOf(await t.sql(odd, 'SELECT count(*) FROM audit'))).toEqual([[0n]]);
    expect(rowsOf(await t.sql(odd, "SELECT name FROM pragma_table_info('audit')"))).toEqual([['x']]);
    const tenant = await t.client.call('TenantService', 'GetTenant', { name: 'tenants/mig-odd' }, admin());
    expect(tenant.schema_version).toBe('1');
  });

  it('lists migrations in pages and finds them by name', async () => {
    const page = await t.client.call('SchemaService', 'ListMigrations', { page_size: 1 }, admin());
    expect(page.migrations.map((m: { migration_id: string }) => m.migration_id)).toEqual(['add-accounts']);
    const next = await t.client.call('SchemaService', 'ListMigrations', { page_size: 1, page_token: page.next_page_token }, admin());
    expect(next.migrations.map((m: { migration_id: string }) => m.migration_id)).toEqual(['add-audit']);
    const missing = await t.client.failure('SchemaService', 'GetMigration', { name: 'migrations/nope' }, admin());
    expect(missing.code).toBe(status.NOT_FOUND);
    const tenantKey = await t.createTenant('mig-nosy');
    expect((await t.client.failure('SchemaService', 'ListMigrations', {}, { key: tenantKey })).code).toBe(status.PERMISSION_DENIED);
  });
});

describe('a tenant behind a failed migration', () => {
  it('counts as failed for every later migration, which reaches a final state; a retry after repair finishes both, and it all holds across a restart', async () => {
    const dataDir = freshDataDir();
    let s = await startTestServer({ shards: 2, dataDir }, { keepDataDir: true });
    try {
      const get = async (server: TestServer, name: string) => {
        for (let i = 0; i < 200; i++) {
          const m = await server.client.call('SchemaService', 'GetMigration', { name }, { key: server.adminKey });
          if (m.state !== 'RUNNING') return m;
          await new Promise((r) => setTimeout(r, 50));
        }
        throw new Error(`${name} still running`);
      };
      const odd = await s.createTenant('behind-odd');
      await s.sql(odd, 'CREATE TABLE audit (x)');
      const normal = await s.createTenant('behind-normal');
      await s.client.call('SchemaService', 'ApplyMigration', { migration_id: 'm1', sql: 'CREATE TABLE audit (at INTEGER)' }, { key: s.adminKey });
      expect((await get(s, 'migrations/m1')).state).toBe('FAILED');
      await s.client.call('SchemaService', 'ApplyMigration', { migration_id: 'm2', sql: 'CREATE TABLE later (y)' }, { key: s.adminKey });
      // On 011b252 m2 stayed RUNNING for good: tenants_pending 1.
      const m2 = await get(s, 'migrations/m2');
      expect(m2).toMatchObject({ state: 'FAILED', tenants_done: '1', tenants_pending: '0', tenants_failed: '1' });
      expect(m2.failures).toEqual([{ tenant: 'tenants/behind-odd', error: 'behind failed migration m1' }]);
      expect(rowsOf(await s.sql(normal, 'SELECT count(*) FROM later'))).toEqual([[0n]]);
      // Its calls are served at the version it has, and do not retry the migration each time.
      expect(rowsOf(await s.sql(odd, "SELECT count(*) FROM pragma_table_info('audit')"))).toEqual([[1n]]);
      expect((await s.client.call('TenantService', 'GetTenant', { name: 'tenants/behind-odd' }, { key: s.adminKey })).schema_version).toBe('0');

      // The failures reach the catalog (in batches; all of them by the end of shutdown): the same after a restart.
      await s.stop();
      s = await startTestServer({ shards: 2, dataDir }, { keepDataDir: true });
      const again = await get(s, 'migrations/m2');
      expect(again).toMatchObject({ state: 'FAILED', tenants_failed: '1' });
      expect(again.failures).toEqual([{ tenant: 'tenants/behind-odd', error: 'behind failed migration m1' }]);
      expect((await get(s, 'migrations/m1')).failures).toEqual([{ tenant: 'tenants/behind-odd', error: expect.stringContaining('already exists') }]);

      // Repaired by its owner, retried by the operator: both migrations succeed.
      await s.sql(odd, 'DROP TABLE audit');
      const retried = await s.client.call('SchemaService', 'RetryMigration', { name: 'migrations/m1' }, { key: s.adminKey });
      expect(retried.migration_id).toBe('m1');
      expect(await get(s, 'migrations/m1')).toMatchObject({ state: 'SUCCEEDED', tenants_failed: '0', failures: [] });
      expect(await get(s, 'migrations/m2')).toMatchObject({ state: 'SUCCEEDED', tenants_done: '2', tenants_failed: '0' });
      expect(rowsOf(await s.sql(odd, 'SELECT count(*) FROM later'))).toEqual([[0n]]);
      expect((await s.client.call('TenantService', 'GetTenant', { name: 'tenants/behind-odd' }, { key: s.adminKey })).schema_version).toBe('2');
      const missing = await s.client.failure('SchemaService', 'RetryMigration', { name: 'migrations/nope' }, { key: s.adminKey });
      expect(missing.code).toBe(status.NOT_FOUND);
    } finally {
      await s.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  it('migrates a tenant called before its turn in the pass first', async () => {
    const s = await startTestServer({ shards: 1 });
    try {
      const keys: string[] = [];
      for (let i = 0; i < 60; i++) keys.push(await s.createTenant(`lazy-${i}`));
      await s.client.call('SchemaService', 'ApplyMigration', { migration_id: 'lazy', sql: 'CREATE TABLE lazy (z); CREATE INDEX lazy_z ON lazy (z)' }, { key: s.adminKey });
      // The last tenant created is the last in the pass's order: its call comes first.
      expect(rowsOf(await s.sql(keys.at(-1)!, 'SELECT count(*) FROM lazy'))).toEqual([[0n]]);
      const m = await s.client.call('SchemaService', 'GetMigration', { name: 'migrations/lazy' }, { key: s.adminKey });
      expect(Number(m.tenants_pending)).toBeGreaterThan(0);
    } finally {
      await s.stop();
    }
  }, 60_000);
});
