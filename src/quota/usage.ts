/** A tenant's usage and quota utilization, read from its shared slot. */
import { statSync } from 'node:fs';
import type { LiveTenant } from '../tenants/registry.ts';
import type { Admitter } from './admission.ts';
import type { QuotaTable } from './quotaTable.ts';

export interface QuotaUse {
  quota: string;
  current: number;
  limit: number;
  utilizationPercent: number;
}

export interface Usage {
  time: number;
  quotas: QuotaUse[];
  requestsTotal: bigint;
  errorsTotal: bigint;
  errorsByCode: Record<string, number>;
  rowsReadTotal: bigint;
  rowsWrittenTotal: bigint;
  /** Events appended since the server started (kept by the front end, not persisted). */
  eventsTotal: number;
  storageBytes: number;
  /** Shard time the tenant's calls took since the server started, in ms. */
  shardMsTotal: number;
  latencyMs: { p50: number; p95: number; p99: number };
}

function use(quota: string, current: number, limit: number): QuotaUse {
  return { quota, current, limit, utilizationPercent: limit > 0 ? Math.round((current / limit) * 10_000) / 100 : 0 };
}

export function tenantUsage(live: LiveTenant, table: QuotaTable, admitter: Admitter, dbPath: string, now = Date.now()): Usage {
  const window = admitter.window(live.slot, now);
  const totals = table.totals(live.slot);
  // The shard records the size after writes; before the first one since start, the file tells.
  let storageBytes = table.storageBytes(live.slot);
  if (storageBytes === 0) {
    try {
      storageBytes = statSync(dbPath).size;
    } catch {
      storageBytes = 0;
    }
  }
  const q = live.quotas;
  const [p50, p95, p99] = live.latency ? live.latency.percentiles([50, 95, 99], now) : [0, 0, 0];
  return {
    time: now,
    quotas: [
      use('requests_per_second', window.requests, q.requestsPerSecond),
      use('write_bytes_per_second', window.writeBytes, q.writeBytesPerSecond),
      use('concurrent_requests', table.inFlight(live.slot), q.concurrentRequests),
      use('storage_bytes', storageBytes, q.storageBytes),
      // How far its shard-time bucket is drawn down (refused at 100 %).
      use('shard_ms_per_second', Math.ceil(admitter.shardDebtUs(live.slot, q.shardMsPerSecond, now) / 1000), q.shardMsPerSecond),
    ],
    requestsTotal: totals.requests,
    errorsTotal: totals.errors,
    errorsByCode: Object.fromEntries(live.errorsByCode ?? []),
    rowsReadTotal: totals.rowsRead,
    rowsWrittenTotal: totals.rowsWritten,
    eventsTotal: live.eventsTotal,
    storageBytes,
    shardMsTotal: (live.shardMicrosTotal + admitter.pendingShardUs(live.slot)) / 1000,
    latencyMs: { p50: p50!, p95: p95!, p99: p99! },
  };
}
