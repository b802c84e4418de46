/** The tenantd configuration the benchmarks run: nothing in it limits the load. */
import { defaultConfig, type Config, type QuotaValues, type SyncFlushMode, type SyncMode } from '../../src/config.ts';

export const BENCH_PLAN = 'bench';

export const UNLIMITED: QuotaValues = {
  requestsPerSecond: -1,
  writeBytesPerSecond: -1,
  concurrentRequests: -1,
  storageBytes: -1,
  queryTimeoutMs: -1,
  eventRetentionHours: -1,
  shardMsPerSecond: -1,
  transactionTimeoutMs: -1,
  concurrentTransactions: -1,
};

/** The same overrides as they go on the wire in a Tenant's `quotas`. */
export const UNLIMITED_PROTO_QUOTAS = {
  requests_per_second: '-1',
  write_bytes_per_second: '-1',
  concurrent_requests: '-1',
  storage_bytes: '-1',
  query_timeout_ms: '-1',
  event_retention_hours: '-1',
  shard_ms_per_second: '-1',
  transaction_timeout_ms: '-1',
  concurrent_transactions: '-1',
};

/** A bench's --sync-flush value: the server's default (per-commit) when absent. */
export function syncFlushFlag(value: string | undefined): SyncFlushMode {
  if (value === undefined || value === 'per-commit') return 'per-commit';
  if (value === 'shared') return 'shared';
  throw new Error(`--sync-flush: shared or per-commit, not ${value}`);
}

export interface BenchServerArgs {
  dataDir: string;
  shards: number;
  sync: SyncMode;
  /** --sync-flush; the server's default (per-commit) when absent. */
  syncFlush?: SyncFlushMode;
  maxOpenDbs: number;
}

export function benchConfig(args: BenchServerArgs): Config {
  const config = defaultConfig();
  return {
    ...config,
    listen: '127.0.0.1:0',
    dataDir: args.dataDir,
    shards: args.shards,
    sync: args.sync,
    ...(args.syncFlush ? { syncFlush: args.syncFlush } : {}),
    maxOpenDbs: args.maxOpenDbs,
    // Metrics on, as deployed (serveTenantd installs the SDK); port 0 so benches never collide.
    metricsListen: '127.0.0.1:0',
    logLevel: 'warn',
    plans: { ...config.plans, [BENCH_PLAN]: { ...UNLIMITED } },
    defaultPlan: BENCH_PLAN,
    drainTimeoutMs: 5_000,
  };
}
