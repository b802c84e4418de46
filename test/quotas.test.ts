import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { status } from '@grpc/grpc-js';
import { kBytesPerSlot } from '../src/quota/layout.ts';
import { shardOf } from '../src/routing/shardRouter.ts';
import { rowsOf, startTestServer, v, type TestServer } from './support/server.ts';

let t: TestServer;
const admin = () => ({ key: t.adminKey });
const SLOW = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c';

beforeAll(async () => {
  t = await startTestServer({
    plans: {
      ...(await import('../src/config.ts')).defaultConfig().plans,
      tiny: {
        requestsPerSecond: 5,
        writeBytesPerSecond: 1000,
        concurrentRequests: 2,
        storageBytes: 256 * 1024,
        queryTimeoutMs: 5000,
        eventRetentionHours: 24,
        shardMsPerSecond: -1,
        transactionTimeoutMs: 30_000,
        concurrentTransactions: 4,
      },
    },
  });
});
afterAll(() => t.stop());

function usage(tenantId: string) {
  return t.client.call('TenantService', 'GetTenantUsage', { name: `tenants/${tenantId}` }, admin());
}

function quota(u: any, name: string): { current: string; limit: string; utilization_percent: number } {
  return u.quotas.find((q: { quota: string }) => q.quota === name);
}

/** Polls usage (up to 5 s) until the tenant has no calls in flight. */
async function untilNoneInFlight(tenantId: string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (quota(await usage(tenantId), 'concurrent_requests').current === '0') return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until the next 100 ms bucket boundary plus a little, so a burst lands in one window. */
async function alignToBucket(): Promise<void> {
  await new Promise((r) => setTimeout(r, 100 - (Date.now() % 100) + 5));
}

describe('requests_per_second', () => {
  it('admits N calls in a window, refuses the next with all three details, and admits again once the window slides', async () => {
    const key = await t.createTenant('rate', { plan: 'tiny' });
    await alignToBucket();
    for (let i = 0; i < 5; i++) await t.sql(key, 'SELECT 1');
    const refused = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key });
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.reason).toBe('QUOTA_EXCEEDED');
    expect(refused.errorMetadata).toMatchObject({ quota: 'requests_per_second', current: '5', limit: '5' });
    expect(refused.quotaViolations).toHaveLength(1);
    expect(refused.quotaViolations[0]).toMatchObject({ quota_id: 'requests_per_second', quota_value: '5', subject: 'tenants/rate' });
    expect(refused.retryDelayMs).toBeGreaterThan(0);
    expect(refused.retryDelayMs).toBeLessThanOrEqual(1000);

    await new Promise((r) => setTimeout(r, refused.retryDelayMs! + 20));
    await t.sql(key, 'SELECT 1');
  });

  it('reports the remaining budget in trailing metadata', async () => {
    const key = await t.createTenant('trailers', { plan: 'tiny' });
    await alignToBucket();
    const first = await t.client.callWithTrailers('SqlService', 'Execute', { sql: 'SELECT 1' }, { key });
    expect(first.trailers['x-ratelimit-limit']).toBe('5');
    expect(first.trailers['x-ratelimit-remaining']).toBe('4');
    const second = await t.client.callWithTrailers('SqlService', 'Execute', { sql: 'SELECT 1' }, { key });
    expect(second.trailers['x-ratelimit-remaining']).toBe('3');
    expect(Number(second.trailers['x-ratelimit-reset-ms'])).toBeGreaterThan(0);
    expect(Number(second.trailers['x-ratelimit-reset-ms'])).toBeLessThanOrEqual(1000);
  });

  it('does not let one tenant’s flood change another tenant’s admissions', async () => {
    const flooder = await t.createTenant('flooder', { plan: 'tiny' });
    const quiet = await t.createTenant('quiet', { plan: 'tiny' });
    await alignToBucket();
    const flood = await Promise.allSettled(Array.from({ length: 40 }, () => t.sql(flooder, 'SELECT 1')));
    expect(flood.filter((r) => r.status === 'fulfilled').length).toBeLessThanOrEqual(5);
    for (let i = 0; i < 5; i++) await t.sql(quiet, 'SELECT 1');
  });
});

describe('write_bytes_per_second', () => {
  it('counts SQL and parameter bytes and refuses a call that would pass the budget', async () => {
    const key = await t.createTenant('writer', { plan: 'tiny', quotas: { requests_per_second: '-1' } });
    await t.sql(key, 'CREATE TABLE w (b)');
    await new Promise((r) => setTimeout(r, 1100));
    await t.sql(key, 'INSERT INTO w VALUES (?)', [v.blob(Buffer.alloc(600))]);
    const refused = await t.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO w VALUES (?)', params: [v.blob(Buffer.alloc(600))] }, { key });
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.errorMetadata.quota).toBe('write_bytes_per_second');
    expect(refused.retryDelayMs).not.toBeNull();
    // A call larger than the whole budget can never pass: no RetryInfo.
    const never = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT ?', params: [v.blob(Buffer.alloc(5000))] }, { key });
    expect(never.errorMetadata.quota).toBe('write_bytes_per_second');
    expect(never.retryDelayMs).toBeNull();
  });
});

describe('shard_ms_per_second', () => {
  it('charges a heavy query to its tenant: the next call is refused with RetryInfo until the bucket refills, a neighbour is not', async () => {
    // How long the heavy query takes on this machine, on a tenant without the limit.
    // 30 s statements: on a loaded host the heavy query passed the free plan's 5 s.
    const calibrate = await t.createTenant('calibrate', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1', query_timeout_ms: '30000' } });
    let heavyMs = Infinity;
    for (let run = 0; run < 2; run++) {
      const started = performance.now();
      await t.sql(calibrate, SLOW);
      heavyMs = Math.min(heavyMs, performance.now() - started);
    }
    // A limit well under one query's time (other test files share the cores, so
    // runs vary): one query puts the tenant behind by more than a second's worth.
    const limit = Math.max(20, Math.round(heavyMs / 3));

    const hog = await t.createTenant('hog', { quotas: { requests_per_second: '-1', shard_ms_per_second: String(limit), query_timeout_ms: '30000' } });
    const neighbourId = ['neighbour', 'neighbour-1', 'neighbour-2', 'next-door'].find((id) => shardOf(id, 2) === shardOf('hog', 2))!;
    const neighbour = await t.createTenant(neighbourId, { quotas: { requests_per_second: '-1' } });
    await t.sql(hog, SLOW);
    // The quota is work-conserving: it refuses the hog only while a neighbour
    // wants the shard (shardShare.test.ts has the tenant alone).
    await t.sql(neighbour, 'SELECT 1');
    const refused = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: hog });
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.reason).toBe('QUOTA_EXCEEDED');
    expect(refused.errorMetadata).toMatchObject({ quota: 'shard_ms_per_second', limit: String(limit) });
    expect(Number(refused.errorMetadata.current)).toBeGreaterThanOrEqual(limit);
    expect(refused.quotaViolations[0]).toMatchObject({ quota_id: 'shard_ms_per_second', quota_value: String(limit), subject: 'tenants/hog' });
    // Behind by about one query less what refilled since: (heavy - limit) / limit seconds to wait.
    expect(refused.retryDelayMs).toBeGreaterThan(0);
    expect(refused.retryDelayMs).toBeLessThan(15_000);

    // The shard time is the hog's alone: its neighbour is admitted at once.
    expect(rowsOf(await t.sql(neighbour, 'SELECT 1'))).toEqual([[1n]]);

    const usage = await t.client.call('TenantService', 'GetTenantUsage', { name: 'tenants/hog' }, admin());
    const shardQuota = usage.quotas.find((q: { quota: string }) => q.quota === 'shard_ms_per_second');
    expect(Number(shardQuota.limit)).toBe(limit);
    expect(shardQuota.utilization_percent).toBeGreaterThanOrEqual(100);
    expect(usage.shard_ms_total).toBeGreaterThanOrEqual(limit);

    await new Promise((r) => setTimeout(r, refused.retryDelayMs! + 20));
    expect(rowsOf(await t.sql(hog, 'SELECT 1'))).toEqual([[1n]]);
  }, 30_000);
});

describe('concurrent_requests', () => {
  it('refuses calls past the limit and never drifts across successes, errors, cancellations and a dead worker', async () => {
    const key = await t.createTenant('conc', { plan: 'tiny', quotas: { requests_per_second: '-1', write_bytes_per_second: '-1' } });
    const slow = [t.sql(key, SLOW), t.sql(key, SLOW)];
    await t.untilCallsInFlight(2);
    const refused = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key });
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.errorMetadata).toMatchObject({ quota: 'concurrent_requests', current: '2', limit: '2' });
    expect(refused.retryDelayMs).toBeNull();
    await Promise.all(slow);

    // Errors and client cancellations release their place too.
    await t.client.failure('SqlService', 'Execute', { sql: 'NOT SQL' }, { key });
    await t.client.failure('SqlService', 'Execute', { sql: SLOW }, { key, deadlineMs: 20 });
    await t.client.failure('SqlService', 'Execute', { sql: SLOW }, { key, deadlineMs: 20 });

    // The cancelled calls leave as the server sees the cancellations (later, on a loaded host).
    await untilNoneInFlight('conc');
    expect(quota(await usage('conc'), 'concurrent_requests').current).toBe('0');

    // A worker that dies with the tenant's calls in flight releases them as well.
    const { shardOf } = await import('../src/routing/shardRouter.ts');
    const shard = t.server.router.shards[shardOf('conc', t.server.router.shards.length)]!;
    const crash = shard.call({ op: 'crash', tenantId: '' }).catch(() => undefined);
    const lost = t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key });
    expect((await lost).code).toBe(status.UNAVAILABLE);
    await crash;

    await untilNoneInFlight('conc');
    expect(quota(await usage('conc'), 'concurrent_requests').current).toBe('0');
    // And the full limit is available again.
    let answered = false;
    for (let attempt = 0; attempt < 50 && !answered; attempt++) {
      answered = await Promise.all([t.sql(key, 'SELECT 1'), t.sql(key, 'SELECT 1')]).then(() => true, () => false);
      if (!answered) await new Promise((r) => setTimeout(r, 100));
    }
    expect(answered).toBe(true);
  });
});

describe('storage_bytes', () => {
  it('stops the database growing past the limit; the tenant can still read and delete', async () => {
    const key = await t.createTenant('full', { plan: 'tiny', quotas: { requests_per_second: '-1', write_bytes_per_second: '-1' } });
    await t.sql(key, 'CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)');
    let refused = null;
    for (let i = 0; i < 100 && !refused; i++) {
      try {
        await t.sql(key, 'INSERT INTO blobs (b) VALUES (?)', [v.blob(Buffer.alloc(16 * 1024, i))]);
      } catch (error: any) {
        refused = error.status;
      }
    }
    expect(refused).not.toBeNull();
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.reason).toBe('STORAGE_QUOTA_EXCEEDED');
    expect(refused.quotaViolations[0]).toMatchObject({ quota_id: 'storage_bytes', quota_value: String(256 * 1024) });

    const u = await usage('full');
    const storage = quota(u, 'storage_bytes');
    expect(Number(storage.current)).toBeGreaterThan(200 * 1024);
    expect(Number(storage.current)).toBeLessThanOrEqual(256 * 1024);
    expect(storage.utilization_percent).toBeGreaterThan(75);

    const count = Number(rowsOf(await t.sql(key, 'SELECT count(*) FROM blobs'))[0]![0]);
    expect(count).toBeGreaterThan(5);
    await t.sql(key, 'DELETE FROM blobs WHERE id % 2 = 0');
    await t.sql(key, 'INSERT INTO blobs (b) VALUES (?)', [v.blob(Buffer.alloc(16 * 1024))]);
  });

  it('raises the limit on the next call after UpdateTenant', async () => {
    const key = await t.createTenant('grow', { plan: 'tiny', quotas: { requests_per_second: '-1', write_bytes_per_second: '-1', storage_bytes: '65536' } });
    await t.sql(key, 'CREATE TABLE blobs (b BLOB)');
    const big = () => t.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO blobs VALUES (?)', params: [v.blob(Buffer.alloc(100 * 1024))] }, { key });
    expect((await big()).reason).toBe('STORAGE_QUOTA_EXCEEDED');
    await t.client.call('TenantService', 'UpdateTenant', { tenant: { name: 'tenants/grow', quotas: { storage_bytes: '-1' } }, update_mask: { paths: ['quotas.storage_bytes'] } }, admin());
    await t.sql(key, 'INSERT INTO blobs VALUES (?)', [v.blob(Buffer.alloc(100 * 1024))]);
  });
});

describe('plans and overrides', () => {
  it('inherits the plan with 0, overrides with a value, and lifts the limit with -1', async () => {
    const response = await t.client.call(
      'TenantService',
      'CreateTenant',
      { tenant_id: 'plans', tenant: { plan: 'tiny', quotas: { requests_per_second: '0', concurrent_requests: '7', storage_bytes: '-1' } } },
      admin(),
    );
    const q = response.tenant.effective_quotas;
    expect(q.requests_per_second).toBe('5');
    expect(q.concurrent_requests).toBe('7');
    expect(q.storage_bytes).toBe('-1');

    const changed = await t.client.call(
      'TenantService',
      'UpdateTenant',
      { tenant: { name: 'tenants/plans', plan: 'pro' }, update_mask: { paths: ['plan'] } },
      admin(),
    );
    expect(changed.effective_quotas.requests_per_second).toBe(String(t.config.plans.pro!.requestsPerSecond));
    expect(changed.effective_quotas.concurrent_requests).toBe('7');
  });

  it('applies a lowered rate on the next call', async () => {
    const key = await t.createTenant('lowered', { quotas: { requests_per_second: '-1' } });
    await alignToBucket();
    for (let i = 0; i < 3; i++) await t.sql(key, 'SELECT 1');
    await t.client.call('TenantService', 'UpdateTenant', { tenant: { name: 'tenants/lowered', quotas: { requests_per_second: '3' } }, update_mask: { paths: ['quotas.requests_per_second'] } }, admin());
    expect((await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key })).errorMetadata.quota).toBe('requests_per_second');
  });
});

describe('usage', () => {
  it("forgets a tenant's latency window two minutes after its last call, and starts a new one at its next", async () => {
    // A server of its own: its clock (Date) jumps ahead; the shard threads keep theirs.
    const own = await startTestServer({ shards: 1 });
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const quick = { quotas: { requests_per_second: '-1' } };
      const idleKey = await own.createTenant('went-idle', quick);
      const busyKey = await own.createTenant('kept-busy', quick);
      await own.sql(idleKey, 'SELECT 1');
      await own.sql(busyKey, 'SELECT 1');
      const usageOf = (tenantId: string) => own.client.call('TenantService', 'GetTenantUsage', { name: `tenants/${tenantId}` }, { key: own.adminKey });
      expect((await usageOf('went-idle')).latency_p50_ms).toBeGreaterThan(0);
      expect(own.server.registry.latencyWindows).toBe(2);

      // Three minutes on, only one of them calls: its call sweeps the other's window away.
      vi.setSystemTime(Date.now() + 3 * 60_000);
      await own.sql(busyKey, 'SELECT 1');
      expect(own.server.registry.get('went-idle')!.latency).toBeNull();
      expect(own.server.registry.latencyWindows).toBe(1);
      expect((await usageOf('went-idle')).latency_p50_ms).toBe(0);
      expect((await usageOf('kept-busy')).latency_p50_ms).toBeGreaterThan(0);

      await own.sql(idleKey, 'SELECT 1');
      expect(own.server.registry.latencyWindows).toBe(2);
      expect((await usageOf('went-idle')).latency_p50_ms).toBeGreaterThan(0);
    } finally {
      vi.useRealTimers();
      await own.stop();
    }
  });

  it('matches what the calls did', async () => {
    const key = await t.createTenant('counted', { quotas: { requests_per_second: '-1' } });
    await t.sql(key, 'CREATE TABLE r (x)');
    await t.sql(key, 'INSERT INTO r VALUES (1), (2), (3)');
    await t.sql(key, 'UPDATE r SET x = x + 1 WHERE x > 1');
    await t.sql(key, 'SELECT * FROM r');
    await t.client.failure('SqlService', 'Execute', { sql: 'NOT SQL' }, { key });
    await t.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO nope VALUES (1)' }, { key });
    const u = await usage('counted');
    expect(u.requests_total).toBe('6');
    expect(u.errors_total).toBe('2');
    expect(u.errors_by_code).toEqual({ INVALID_ARGUMENT: '2' });
    expect(u.rows_written_total).toBe('5');
    expect(u.rows_read_total).toBe('3');
    expect(Number(u.storage_bytes)).toBeGreaterThan(0);
    expect(u.latency_p50_ms).toBeGreaterThan(0);
    expect(u.latency_p99_ms).toBeGreaterThanOrEqual(u.latency_p50_ms);
    expect(Number(quota(u, 'requests_per_second').current)).toBe(6);
  });

  it('streams usage at the requested interval with WatchUsage', async () => {
    const key = await t.createTenant('watched', { quotas: { requests_per_second: '-1' } });
    const { TestClient } = await import('./support/server.ts');
    expect(t.client).toBeInstanceOf(TestClient);
    const seen: any[] = [];
    const grpc = await import('@grpc/grpc-js');
    const { packageDefinition } = await import('../src/protos.ts');
    const pkg = (grpc.loadPackageDefinition(packageDefinition()) as any).tenantd.v1;
    const client = new pkg.TenantService(t.client.address, grpc.credentials.createInsecure());
    const stream = client.WatchUsage({ name: 'tenants/watched', interval_ms: 200 }, t.client.metadata(admin()));
    const arrived: number[] = [];
    await new Promise<void>((resolve, reject) => {
      stream.on('data', async (u: any) => {
        arrived.push(performance.now());
        seen.push(u);
        if (seen.length === 2) await t.sql(key, 'SELECT 1');
        if (seen.length >= 5) {
          stream.cancel();
          resolve();
        }
      });
      stream.on('error', (e: any) => (e.code === status.CANCELLED ? resolve() : reject(e)));
    });
    client.close();
    expect(seen[0].requests_total).toBe('0');
    expect(seen[seen.length - 1].requests_total).toBe('1');
    // The interval asked for: neither a flood nor the default. The median gap,
    // so that one late timer on a loaded host does not decide it.
    const gaps = arrived.slice(1).map((at, i) => at - arrived[i]!).sort((a, b) => a - b);
    const medianGap = gaps[Math.floor(gaps.length / 2)]!;
    expect(medianGap).toBeGreaterThanOrEqual(150);
    expect(medianGap).toBeLessThan(600);
  });

  it('keeps quota state within 128 bytes per tenant', () => {
    expect(kBytesPerSlot).toBeLessThanOrEqual(128);
  });
});
