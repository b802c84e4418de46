import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { RpcError, startTestServer, rowsOf, type TestServer } from './support/server.ts';

let t: TestServer;
const admin = () => ({ key: t.adminKey });

beforeAll(async () => {
  t = await startTestServer();
});
afterAll(() => t.stop());

describe('tenant lifecycle', () => {
  it('creates a tenant with a first key that can run SQL at once', async () => {
    const response = await t.client.call(
      'TenantService',
      'CreateTenant',
      { tenant_id: 'life', tenant: { display_name: 'Life Inc', labels: { region: 'eu' }, plan: 'pro', quotas: { requests_per_second: '50' } } },
      admin(),
    );
    expect(response.tenant.name).toBe('tenants/life');
    expect(response.tenant.state).toBe('ACTIVE');
    expect(response.tenant.labels).toEqual({ region: 'eu' });
    expect(response.tenant.effective_quotas.requests_per_second).toBe('50');
    expect(response.tenant.effective_quotas.storage_bytes).toBe(String(t.config.plans.pro!.storageBytes));
    expect(response.api_key.key).toMatch(/^tdk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
    expect(response.api_key.role).toBe('READ_WRITE');
    const result = await t.sql(response.api_key.key, 'SELECT 40 + 2');
    expect(rowsOf(result)).toEqual([[42n]]);
  });

  it('refuses a second tenant with the same id', async () => {
    await t.createTenant('twice');
    const failure = await t.client.failure('TenantService', 'CreateTenant', { tenant_id: 'twice' }, admin());
    expect(failure.code).toBe(status.ALREADY_EXISTS);
    expect(failure.reason).toBe('TENANT_EXISTS');
  });

  it('answers creations of an id being created TENANT_BUSY (retryable), not ALREADY_EXISTS, and ALREADY_EXISTS once it exists', async () => {
    // Sent together: the first one is still making the database file when the others arrive.
    const attempts = await Promise.all(
      Array.from({ length: 4 }, () =>
        t.client.call('TenantService', 'CreateTenant', { tenant_id: 'racing' }, admin()).then(
          () => 'OK',
          (error: RpcError) => `${status[error.status.code]} ${error.status.reason}`,
        ),
      ),
    );
    expect(attempts.filter((a) => a === 'OK')).toHaveLength(1);
    expect(attempts).toContain('ABORTED TENANT_BUSY');
    for (const a of attempts) expect(['OK', 'ABORTED TENANT_BUSY', 'ALREADY_EXISTS TENANT_EXISTS']).toContain(a);
    const retried = await t.client.failure('TenantService', 'CreateTenant', { tenant_id: 'racing' }, admin());
    expect(retried.code).toBe(status.ALREADY_EXISTS);
    expect(retried.reason).toBe('TENANT_EXISTS');
  });

  it('refuses ids that are not safe directory names', async () => {
    for (const id of ['../x', 'A', '', '1abc', 'a'.repeat(64), 'a/b', 'a b', 'é']) {
      const failure = await t.client.failure('TenantService', 'CreateTenant', { tenant_id: id }, admin());
      expect(failure.code, id).toBe(status.INVALID_ARGUMENT);
      expect(failure.reason, id).toBe('INVALID_TENANT_ID');
      expect(failure.fieldViolations[0]?.field).toBe('tenant_id');
    }
  });

  it('refuses an unknown plan and quotas below -1', async () => {
    const plan = await t.client.failure('TenantService', 'CreateTenant', { tenant_id: 'badplan', tenant: { plan: 'gold' } }, admin());
    expect(plan.code).toBe(status.INVALID_ARGUMENT);
    expect(plan.fieldViolations[0]?.field).toBe('tenant.plan');
    const quota = await t.client.failure(
      'TenantService',
      'CreateTenant',
      { tenant_id: 'badquota', tenant: { quotas: { storage_bytes: '-5' } } },
      admin(),
    );
    expect(quota.fieldViolations[0]?.field).toBe('tenant.quotas.storage_bytes');
  });

  it('gets and lists tenants in pages, filtered by state', async () => {
    for (const id of ['page-a', 'page-b', 'page-c', 'page-d']) await t.createTenant(id);
    await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/page-c' }, admin());
    const got = await t.client.call('TenantService', 'GetTenant', { name: 'tenants/page-b' }, admin());
    expect(got.tenant_id).toBe('page-b');

    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await t.client.call('TenantService', 'ListTenants', { page_size: 2, page_token: token }, admin());
      expect(page.tenants.length).toBeLessThanOrEqual(2);
      seen.push(...page.tenants.map((x: { tenant_id: string }) => x.tenant_id));
      token = page.next_page_token;
      pages++;
    } while (token !== '' && pages < 50);
    expect(seen).toEqual([...seen].sort());
    expect(seen).toEqual(expect.arrayContaining(['page-a', 'page-b', 'page-c', 'page-d']));

    const suspended = await t.client.call('TenantService', 'ListTenants', { state: 'SUSPENDED' }, admin());
    expect(suspended.tenants.map((x: { tenant_id: string }) => x.tenant_id)).toContain('page-c');
    expect(suspended.tenants.every((x: { state: string }) => x.state === 'SUSPENDED')).toBe(true);

    const bad = await t.client.failure('TenantService', 'ListTenants', { page_token: 'garbage!' }, admin());
    expect(bad.reason).toBe('INVALID_PAGE_TOKEN');
  });

  it('updates only the fields in the mask and checks the etag', async () => {
    await t.createTenant('upd', { display_name: 'Before', labels: { a: '1' } });
    const before = await t.client.call('TenantService', 'GetTenant', { name: 'tenants/upd' }, admin());
    const after = await t.client.call(
      'TenantService',
      'UpdateTenant',
      {
        tenant: { name: 'tenants/upd', display_name: 'After', labels: { b: '2' }, quotas: { query_timeout_ms: '1234' }, etag: before.etag },
        update_mask: { paths: ['display_name', 'quotas.query_timeout_ms'] },
      },
      admin(),
    );
    expect(after.display_name).toBe('After');
    expect(after.labels).toEqual({ a: '1' });
    expect(after.effective_quotas.query_timeout_ms).toBe('1234');
    expect(after.etag).not.toBe(before.etag);

    const stale = await t.client.failure(
      'TenantService',
      'UpdateTenant',
      { tenant: { name: 'tenants/upd', display_name: 'Lost', etag: before.etag }, update_mask: { paths: ['display_name'] } },
      admin(),
    );
    expect(stale.code).toBe(status.ABORTED);
    expect(stale.reason).toBe('ETAG_MISMATCH');

    const badPath = await t.client.failure(
      'TenantService',
      'UpdateTenant',
      { tenant: { name: 'tenants/upd' }, update_mask: { paths: ['state'] } },
      admin(),
    );
    expect(badPath.reason).toBe('INVALID_UPDATE_MASK');
  });

  it('fails data calls of a suspended tenant and serves them again once activated', async () => {
    const key = await t.createTenant('sleepy');
    await t.sql(key, 'CREATE TABLE t (x)');
    await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/sleepy' }, admin());
    const failure = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT * FROM t' }, { key });
    expect(failure.code).toBe(status.FAILED_PRECONDITION);
    expect(failure.reason).toBe('TENANT_SUSPENDED');
    await t.client.call('TenantService', 'ActivateTenant', { name: 'tenants/sleepy' }, admin());
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM t'))).toEqual([[0n]]);
  });

  it('deletes only suspended tenants unless forced, and removes their files and keys', async () => {
    const key = await t.createTenant('doomed');
    await t.sql(key, 'CREATE TABLE t (x)');
    const active = await t.client.failure('TenantService', 'DeleteTenant', { name: 'tenants/doomed' }, admin());
    expect(active.code).toBe(status.FAILED_PRECONDITION);
    expect(active.reason).toBe('TENANT_ACTIVE');

    await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/doomed' }, admin());
    await t.client.call('TenantService', 'DeleteTenant', { name: 'tenants/doomed' }, admin());
    const { existsSync, readdirSync } = await import('node:fs');
    expect(existsSync(`${t.dataDir}/tenants/doomed`)).toBe(false);
    // Moved to the trash at once, its files unlinked in the background.
    const inTrash = () => (existsSync(`${t.dataDir}/trash`) ? readdirSync(`${t.dataDir}/trash`).filter((name) => name.startsWith('doomed-')) : []);
    for (let waited = 0; inTrash().length > 0 && waited < 5_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    expect(inTrash()).toEqual([]);
    const gone = await t.client.failure('TenantService', 'GetTenant', { name: 'tenants/doomed' }, admin());
    expect(gone.code).toBe(status.NOT_FOUND);
    const keyGone = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key });
    expect(keyGone.code).toBe(status.UNAUTHENTICATED);

    // The id is free again, with a fresh empty database.
    const again = await t.createTenant('doomed');
    const tables = await t.sql(again, "SELECT count(*) FROM sqlite_master WHERE name = 't'");
    expect(rowsOf(tables)).toEqual([[0n]]);

    await t.createTenant('forced');
    await t.client.call('TenantService', 'DeleteTenant', { name: 'tenants/forced', force: true }, admin());
    expect((await t.client.failure('TenantService', 'GetTenant', { name: 'tenants/forced' }, admin())).code).toBe(status.NOT_FOUND);
  });

  it('lets calls in flight finish before a forced delete removes the database', async () => {
    const key = await t.createTenant('inflight');
    await t.sql(key, 'CREATE TABLE t (x)');
    const slow = t.sql(key, 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) FROM c');
    const deletion = t.client.call('TenantService', 'DeleteTenant', { name: 'tenants/inflight', force: true }, admin());
    expect(rowsOf(await slow)).toEqual([[300000n]]);
    await deletion;
  });

  it('starts a tenant as a copy of a template tenant', async () => {
    const key = await t.createTenant('template');
    await t.sql(key, 'CREATE TABLE plans (name TEXT)');
    await t.sql(key, "INSERT INTO plans VALUES ('basic'), ('plus')");
    const response = await t.client.call('TenantService', 'CreateTenant', { tenant_id: 'copy', source_tenant: 'tenants/template' }, admin());
    const copied = await t.sql(response.api_key.key, 'SELECT name FROM plans ORDER BY name');
    expect(rowsOf(copied)).toEqual([['basic'], ['plus']]);
    // The copy is independent of its template.
    await t.sql(response.api_key.key, "INSERT INTO plans VALUES ('copy-only')");
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM plans'))).toEqual([[2n]]);
    const missing = await t.client.failure('TenantService', 'CreateTenant', { tenant_id: 'copy2', source_tenant: 'tenants/nope' }, admin());
    expect(missing.code).toBe(status.NOT_FOUND);
  });
});

describe('API keys', () => {
  it('creates several keys per tenant, lists them and revokes one effective on the next call', async () => {
    const first = await t.createTenant('keys');
    const second = await t.client.call(
      'TenantService',
      'CreateApiKey',
      { parent: 'tenants/keys', api_key: { role: 'READ_WRITE', display_name: 'ci' } },
      admin(),
    );
    expect(second.key).toMatch(/^tdk_/);
    await t.sql(second.key, 'SELECT 1');

    const listed = await t.client.call('TenantService', 'ListApiKeys', { parent: 'tenants/keys' }, admin());
    expect(listed.api_keys).toHaveLength(2);
    expect(listed.api_keys.every((k: { key: string }) => k.key === '')).toBe(true);

    await t.client.call('TenantService', 'RevokeApiKey', { name: second.name }, admin());
    const revoked = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: second.key });
    expect(revoked.code).toBe(status.UNAUTHENTICATED);
    await t.sql(first, 'SELECT 1');

    const active = await t.client.call('TenantService', 'ListApiKeys', { parent: 'tenants/keys' }, admin());
    expect(active.api_keys).toHaveLength(1);
    const all = await t.client.call('TenantService', 'ListApiKeys', { parent: 'tenants/keys', show_revoked: true }, admin());
    expect(all.api_keys.find((k: { name: string }) => k.name === second.name).revoke_time).not.toBeNull();
  });

  it('keeps tenant keys off the admin API and admin-only methods off tenant keys', async () => {
    const key = await t.createTenant('nosy');
    const failure = await t.client.failure('TenantService', 'ListTenants', {}, { key });
    expect(failure.code).toBe(status.PERMISSION_DENIED);
    expect(failure.reason).toBe('ADMIN_KEY_REQUIRED');
  });

  it('refuses calls without a key, with an unknown key, or with a malformed header', async () => {
    expect((await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' })).reason).toBe('MISSING_CREDENTIALS');
    const unknown = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: `tdk_000000000000_${'A'.repeat(43)}` });
    expect(unknown.code).toBe(status.UNAUTHENTICATED);
    expect((await t.client.failure('TenantService', 'ListTenants', {}, { key: 'x'.repeat(5000) })).code).toBe(status.UNAUTHENTICATED);
  });

  it('honours x-tenant-id only when it names the key’s own tenant', async () => {
    const a = await t.createTenant('hdr-a');
    await t.createTenant('hdr-b');
    await t.client.call('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: a, tenantId: 'hdr-a' });
    const mismatch = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: a, tenantId: 'hdr-b' });
    expect(mismatch.code).toBe(status.PERMISSION_DENIED);
    expect(mismatch.reason).toBe('TENANT_MISMATCH');
    // An admin key acts on the tenant it names, and must name one.
    await t.client.call('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: t.adminKey, tenantId: 'hdr-b' });
    const unnamed = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: t.adminKey });
    expect(unnamed.code).toBe(status.INVALID_ARGUMENT);
  });
});

describe('x-tenant-id on admin calls', () => {
  it('must name the tenant the request is about, as the cluster proxy routes on it', async () => {
    await t.createTenant('routed');
    const named = { key: t.adminKey, tenantId: 'routed' };
    expect((await t.client.call('TenantService', 'GetTenant', { name: 'tenants/routed' }, named)).name).toBe('tenants/routed');
    const elsewhere = { key: t.adminKey, tenantId: 'someone-else' };
    const wrong = await t.client.failure('TenantService', 'GetTenant', { name: 'tenants/routed' }, elsewhere);
    expect(wrong.code).toBe(status.PERMISSION_DENIED);
    expect(wrong.reason).toBe('TENANT_MISMATCH');
    const create = await t.client.failure('TenantService', 'CreateTenant', { tenant_id: 'misrouted' }, elsewhere);
    expect(create.reason).toBe('TENANT_MISMATCH');
    expect((await t.client.failure('TenantService', 'GetTenant', { name: 'tenants/misrouted' }, admin())).code).toBe(status.NOT_FOUND);
  });
});
