/**
 * The per-tenant latency window that GetTenantUsage reports from, and the
 * registry dropping the windows of tenants idle for two minutes: in-memory
 * pieces, driven with explicit times (the registry through a faked clock).
 * Their end-to-end use is in quotas.test.ts (usage matches what the calls did).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { defaultConfig } from '../src/config.ts';
import { LatencyWindow } from '../src/quota/latency.ts';
import { QuotaTable } from '../src/quota/quotaTable.ts';
import { TenantRegistry } from '../src/tenants/registry.ts';

const MINUTE = 60_000;
const T0 = 1_800_000_000_000;

describe('LatencyWindow', () => {
  it('answers percentiles to within a bucket (20 %) over the last one to two minutes', () => {
    const w = new LatencyWindow(T0);
    for (let i = 1; i <= 100; i++) w.record(i, T0 + i); // 1 ms .. 100 ms
    const [p50, p99] = w.percentiles([50, 99], T0 + 1_000);
    expect(p50).toBeGreaterThanOrEqual(50);
    expect(p50).toBeLessThan(50 * 1.2);
    expect(p99).toBeGreaterThanOrEqual(99);
    expect(p99).toBeLessThan(99 * 1.2);
  });

  it("keeps a minute's calls through the next minute, then forgets them", () => {
    const w = new LatencyWindow(T0);
    w.record(10, T0);
    // The next minute: the first minute's call is the previous window's.
    w.record(1, T0 + MINUTE + 5);
    expect(w.percentiles([99], T0 + MINUTE + 10)[0]).toBeGreaterThanOrEqual(10);
    // Two minutes on, the 10 ms call has left the window; the 1 ms one has not.
    const p99 = w.percentiles([99], T0 + 2 * MINUTE + 10)[0]!;
    expect(p99).toBeGreaterThanOrEqual(1);
    expect(p99).toBeLessThan(1.2);
    expect(w.percentiles([50], T0 + 4 * MINUTE)).toEqual([0]);
  });

  it('expires two minutes after its last call, when no call of it is reported any more', () => {
    const w = new LatencyWindow(T0);
    const last = T0 + 30_000;
    w.record(3, last);
    // A call is reported for one to two minutes, depending on where in its minute it fell.
    expect(w.percentiles([50], last + MINUTE - 1)[0]).toBeGreaterThan(0);
    expect(w.expired(last + 2 * MINUTE - 1)).toBe(false);
    expect(w.expired(last + 2 * MINUTE)).toBe(true);
    expect(w.percentiles([50], last + 2 * MINUTE)).toEqual([0]);
  });
});

describe('TenantRegistry latency windows', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  function registryWith(ids: string[]) {
    const registry = new TenantRegistry(defaultConfig(), new QuotaTable(() => {}));
    for (const tenantId of ids) {
      registry.put({
        tenantId,
        displayName: '',
        labels: {},
        plan: 'free',
        quotas: {},
        state: 'ACTIVE',
        createTime: T0,
        updateTime: T0,
        etag: 'e',
        schemaVersion: 0,
      } as Parameters<TenantRegistry['put']>[0]);
    }
    return registry;
  }

  /** What an admitted call does: enters its slot, then finish() records it. */
  function call(registry: TenantRegistry, tenantId: string, ms: number) {
    const live = registry.get(tenantId)!;
    registry.table.enter(live.slot);
    registry.finish(live, 'OK', ms);
  }

  it('drops the windows of tenants without a call for two minutes, and makes one anew at their next call', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(T0);
    const registry = registryWith(['busy', 'idle']);
    expect(registry.latencyWindows).toBe(0);
    call(registry, 'busy', 2);
    call(registry, 'idle', 7);
    expect(registry.latencyWindows).toBe(2);

    // 'busy' keeps calling; 'idle' stops. Sweeps run from finish(), at most once a minute.
    for (let minute = 1; minute <= 3; minute++) {
      vi.setSystemTime(T0 + minute * MINUTE + 1);
      call(registry, 'busy', 2);
    }
    expect(registry.get('idle')!.latency).toBeNull();
    expect(registry.get('busy')!.latency).not.toBeNull();
    expect(registry.latencyWindows).toBe(1);

    call(registry, 'idle', 7);
    expect(registry.latencyWindows).toBe(2);
    expect(registry.get('idle')!.latency!.percentiles([50])[0]).toBeGreaterThanOrEqual(7);
  });

  it("forgets a removed tenant's window", () => {
    const registry = registryWith(['gone']);
    call(registry, 'gone', 1);
    expect(registry.latencyWindows).toBe(1);
    registry.remove('gone');
    expect(registry.latencyWindows).toBe(0);
  });
});
