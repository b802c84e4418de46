/**
 * Runs a tenant's data call inside its quotas: admitted (or refused with
 * RESOURCE_EXHAUSTED) before it reaches a worker, counted in flight until it
 * ends whichever way it ends, and recorded in the tenant's usage. Every
 * refusal, the shard's storage_bytes ones included, is counted here.
 */
import { performance } from 'node:perf_hooks';
import { status as Status, type Metadata } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import type { SqlValue } from '../protocol.ts';
import { isRefusal, type Admitter } from '../quota/admission.ts';
import { quotaExceeded } from '../quota/refusal.ts';
import type { ShardActivity } from '../quota/shardActivity.ts';
import { shardOf } from '../routing/shardRouter.ts';
import type { ServerMetrics } from '../telemetry/serverMetrics.ts';
import type { TenantRegistry } from '../tenants/registry.ts';
import type { TenantCall } from './access.ts';

export type Admit = <T>(call: TenantCall, writeBytes: number, trailer: Metadata | null, fn: () => Promise<T>) => Promise<T>;

/** `metrics` is null when telemetry is off; `activity` null refuses shard time as if a neighbour were always there. */
export function createAdmit(admitter: Admitter, registry: TenantRegistry, metrics: ServerMetrics | null = null, activity: { shards: number; tracker: ShardActivity } | null = null): Admit {
  return async (call, writeBytes, trailer, fn) => {
    const live = call.tenant;
    const now = Date.now();
    const neighbourActive = activity === null || activity.tracker.touch(shardOf(live.record.tenantId, activity.shards), live.slot.slot, now);
    const admission = admitter.admit(live.slot, writeBytes, now, live.quotas.shardMsPerSecond, neighbourActive);
    live.shardMicrosTotal += admitter.lastChargedUs;
    if (isRefusal(admission)) {
      registry.refused(live, 'RESOURCE_EXHAUSTED');
      metrics?.quotaRefused(admission.quota);
      throw quotaExceeded(live.record.tenantId, admission);
    }
    if (trailer && admission.remaining >= 0) {
      trailer.set('x-ratelimit-limit', String(live.quotas.requestsPerSecond));
      trailer.set('x-ratelimit-remaining', String(admission.remaining));
      trailer.set('x-ratelimit-reset', String(Math.ceil(admission.resetMs / 1000)));
      trailer.set('x-ratelimit-reset-ms', String(admission.resetMs));
    }
    const started = performance.now();
    let code = 'OK';
    try {
      return await fn();
    } catch (error) {
      code = Status[error instanceof TenantdError ? error.code : Status.INTERNAL];
      // The one quota a shard enforces: the database hit storage_bytes.
      if (error instanceof TenantdError && error.reason === 'STORAGE_QUOTA_EXCEEDED') metrics?.quotaRefused('storage_bytes');
      throw error;
    } finally {
      registry.finish(live, code, performance.now() - started);
    }
  };
}

/** What a call writes, for write_bytes_per_second: SQL text and parameter bytes. */
export function writeBytesOf(sql: string, params: readonly SqlValue[], named: Record<string, SqlValue> | null): number {
  let bytes = Buffer.byteLength(sql);
  const add = (value: SqlValue) => {
    if (typeof value === 'string') bytes += Buffer.byteLength(value);
    else if (value instanceof Uint8Array) bytes += value.byteLength;
    else if (value !== null) bytes += 8;
  };
  for (const value of params) add(value);
  if (named) for (const value of Object.values(named)) add(value);
  return bytes;
}
