/** What a data call may do in its shard, as the front end decides it. */
import { status as Status } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import type { CallLimits } from '../protocol.ts';
import type { TenantCall } from './access.ts';
import { remainingMs } from './handlers.ts';

/** Without a query_timeout_ms quota, a statement still may not run forever. */
const UNLIMITED_QUERY_MS = 3_600_000;

/** The call's limits: the tenant's query_timeout_ms capped by the client's deadline, its storage quota, its role. */
export function callLimits(call: TenantCall, grpcCall: { getDeadline(): Date | number }): CallLimits {
  const quota = call.tenant.quotas.queryTimeoutMs;
  const left = remainingMs(grpcCall);
  if (left <= 0) {
    throw new TenantdError(Status.DEADLINE_EXCEEDED, 'DEADLINE_EXCEEDED', 'the call reached its deadline before it ran');
  }
  return {
    readOnly: call.readOnly,
    timeoutMs: Math.max(1, Math.floor(Math.min(quota < 0 ? UNLIMITED_QUERY_MS : quota, left))),
    storageLimitBytes: call.tenant.quotas.storageBytes,
    slot: call.tenant.slot.slot,
    shareMs: call.tenant.quotas.shardMsPerSecond,
  };
}
