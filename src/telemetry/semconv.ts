/**
 * Attribute and instrument names. The RPC ones are the semantic conventions
 * as they were before 1.39 (`rpc.server.duration` in milliseconds, the
 * `rpc.grpc.status_code` integer), which the grpc instrumentations and most
 * dashboards still read; they are copied here, as OpenTelemetry advises for
 * conventions that are not stable, so library code needs only
 * `@opentelemetry/api`.
 */

export const ATTR_RPC_SYSTEM = 'rpc.system';
export const ATTR_RPC_SERVICE = 'rpc.service';
export const ATTR_RPC_METHOD = 'rpc.method';
export const ATTR_RPC_GRPC_STATUS_CODE = 'rpc.grpc.status_code';

export const ATTR_TENANT_ID = 'tenantd.tenant_id';
export const ATTR_SHARD = 'tenantd.shard';
export const ATTR_REQUEST_ID = 'tenantd.request_id';
export const ATTR_SHARD_OP = 'tenantd.shard.op';
export const ATTR_QUOTA = 'tenantd.quota';
export const ATTR_SOURCE = 'tenantd.source';
/** What a sync made durable: `file` (one tenant file's fsync) or `filesystem` (a syncfs). */
export const ATTR_SYNC_KIND = 'tenantd.sync.kind';

/** Histogram, ms: time from the handler's start to the status being handed to grpc-js. */
export const METRIC_RPC_SERVER_DURATION = 'rpc.server.duration';
/** Counter: calls ended, by service, method and status code (and tenant, when opted in). */
export const METRIC_RPC_CALLS = 'tenantd.rpc.calls';
/** UpDownCounter: calls started and not yet ended. */
export const METRIC_RPC_IN_FLIGHT = 'tenantd.rpc.in_flight';
/** Counter: calls refused before they reached a shard, by quota. */
export const METRIC_QUOTA_REFUSALS = 'tenantd.quota.refusals';
/** Counter: calls that failed because of the host or a damaged file (disk full, I/O, corruption, memory), by reason. */
export const METRIC_STORAGE_FAULTS = 'tenantd.storage.faults';
/** Attribute: the ErrorInfo reason of a storage fault, e.g. DISK_FULL or SQLITE_IOERR_WRITE. */
export const ATTR_FAULT_REASON = 'tenantd.fault.reason';
/** Gauge: calls posted to a shard and not yet answered. */
export const METRIC_SHARD_QUEUE_DEPTH = 'tenantd.shard.queue_depth';
/** Counter, ms: time a shard's thread spent running (its event loop's active time). */
export const METRIC_SHARD_BUSY_TIME = 'tenantd.shard.busy_time';
/** Gauge: database connections a shard holds open. */
export const METRIC_SHARD_OPEN_DATABASES = 'tenantd.shard.open_databases';
/** Counter: transactions that wrote and committed in a shard (one sync each under --sync full). */
export const METRIC_SHARD_COMMITS = 'tenantd.shard.commits';
/** Counter: calls whose writes those commits carried; more than commits when group commit shares them. */
export const METRIC_SHARD_COMMITTED_CALLS = 'tenantd.shard.committed_calls';
export const METRIC_SHARD_SYNCS = 'tenantd.shard.syncs';
/** Gauge, bytes: the size of every tenant database together, as the shards last measured it. */
export const METRIC_STORAGE_BYTES = 'tenantd.storage.bytes';

/** Counter: errors no code expected (telemetry/internalErrors.ts), by source; anything but 0 is a bug. */
export const METRIC_INTERNAL_ERRORS = 'tenantd.internal_errors';

/** Sub-millisecond buckets first: a point read on a warm shard takes well under 1 ms. */
export const DURATION_BUCKETS_MS = [0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000];

/** gRPC codes that mean the server failed (span status ERROR); the others are the caller's doing. */
const SERVER_FAULTS = new Set([2, 4, 12, 13, 14, 15]); // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS

export function isServerFault(code: number): boolean {
  return SERVER_FAULTS.has(code);
}
