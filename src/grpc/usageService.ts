/** TenantService.GetTenantUsage and WatchUsage. */
import type { ServerUnaryCall, ServerWritableStream } from '@grpc/grpc-js';
import { invalidArgument } from '../errors.ts';
import { tenantDbPath } from '../protocol.ts';
import type { Admitter } from '../quota/admission.ts';
import type { QuotaTable } from '../quota/quotaTable.ts';
import { tenantUsage, type Usage } from '../quota/usage.ts';
import type { TenantManager } from '../tenants/manager.ts';
import type { Access } from './access.ts';
import { serverStream, unary, type Handlers } from './handlers.ts';
import type { ServiceObserver } from './rpcObserver.ts';
import { parseTenantName, timestamp } from './tenantMessages.ts';

const MIN_INTERVAL_MS = 100;
const DEFAULT_INTERVAL_MS = 1_000;

function toProto(name: string, usage: Usage) {
  return {
    name,
    time: timestamp(usage.time),
    quotas: usage.quotas.map((q) => ({
      quota: q.quota,
      current: String(q.current),
      limit: String(q.limit),
      utilization_percent: q.utilizationPercent,
    })),
    requests_total: usage.requestsTotal.toString(),
    errors_total: usage.errorsTotal.toString(),
    errors_by_code: Object.fromEntries(Object.entries(usage.errorsByCode).map(([k, v]) => [k, String(v)])),
    rows_read_total: usage.rowsReadTotal.toString(),
    rows_written_total: usage.rowsWrittenTotal.toString(),
    events_total: String(usage.eventsTotal),
    shard_ms_total: usage.shardMsTotal,
    storage_bytes: String(usage.storageBytes),
    latency_p50_ms: usage.latencyMs.p50,
    latency_p95_ms: usage.latencyMs.p95,
    latency_p99_ms: usage.latencyMs.p99,
  };
}

export function usageService(
  access: Access,
  manager: TenantManager,
  table: QuotaTable,
  admitter: Admitter,
  dataDir: string,
  service: ServiceObserver,
): Handlers {
  const usageOf = (name: string) => {
    const tenantId = parseTenantName(name);
    const live = manager.get(tenantId);
    return toProto(name, tenantUsage(live, table, admitter, tenantDbPath(dataDir, tenantId)));
  };
  return {
    GetTenantUsage: unary(service, 'GetTenantUsage', (call: ServerUnaryCall<{ name: string }, unknown>) => {
      access.admin(call.metadata);
      access.sameTenant(call.metadata, parseTenantName(call.request.name));
      return usageOf(call.request.name);
    }),

    WatchUsage: serverStream(service, 'WatchUsage', (call: ServerWritableStream<{ name: string; interval_ms: number }, unknown>) => {
      access.admin(call.metadata);
      access.sameTenant(call.metadata, parseTenantName(call.request.name));
      const requested = call.request.interval_ms;
      if (requested !== 0 && requested < MIN_INTERVAL_MS) {
        throw invalidArgument('interval_ms', `at least ${MIN_INTERVAL_MS}, or 0 for ${DEFAULT_INTERVAL_MS}`);
      }
      const interval = requested || DEFAULT_INTERVAL_MS;
      call.write(usageOf(call.request.name));
      return new Promise<void>((resolve, reject) => {
        const timer = setInterval(() => {
          try {
            call.write(usageOf(call.request.name));
          } catch (error) {
            // The tenant was deleted while watched.
            clearInterval(timer);
            reject(error);
          }
        }, interval);
        const stop = () => {
          clearInterval(timer);
          resolve();
        };
        call.on('cancelled', stop);
        call.on('close', stop);
      });
    }),
  };
}
