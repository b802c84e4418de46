/**
 * The server's instruments. A call records twice (duration and count), with
 * attribute objects built once per method and status code, never per call
 * (except the opt-in per-tenant one). Calls in flight are a plain number per
 * method that an observable up-down counter reads at collection: a
 * synchronous one would cost two more records per call.
 *
 * The meter is taken when a server starts, not when this module loads: the
 * metrics API has no proxy provider (unlike the tracer), so instruments made
 * before the entry point installs the SDK would stay no-ops for good.
 */
import { metrics, type Attributes, type BatchObservableCallback, type Counter, type Histogram, type Meter, type Observable } from '@opentelemetry/api';
import {
  ATTR_QUOTA,
  ATTR_RPC_GRPC_STATUS_CODE,
  ATTR_RPC_METHOD,
  ATTR_RPC_SERVICE,
  ATTR_RPC_SYSTEM,
  ATTR_SHARD,
  ATTR_SOURCE,
  ATTR_SYNC_KIND,
  ATTR_TENANT_ID,
  DURATION_BUCKETS_MS,
  METRIC_INTERNAL_ERRORS,
  METRIC_QUOTA_REFUSALS,
  METRIC_RPC_CALLS,
  METRIC_RPC_IN_FLIGHT,
  METRIC_RPC_SERVER_DURATION,
  METRIC_SHARD_BUSY_TIME,
  METRIC_SHARD_COMMITS,
  METRIC_SHARD_COMMITTED_CALLS,
  METRIC_SHARD_SYNCS,
  METRIC_SHARD_OPEN_DATABASES,
  METRIC_SHARD_QUEUE_DEPTH,
  METRIC_STORAGE_BYTES,
  METRIC_STORAGE_FAULTS,
  ATTR_FAULT_REASON,
} from './semconv.ts';
import { INTERNAL_ERROR_SOURCES, internalErrorCount } from './internalErrors.ts';

/** What the observable instruments read from a shard, on each collection only. */
export interface ObservedShard {
  readonly index: number;
  readonly inFlight: number;
  /** Cumulative ms its threads have run, across restarts. */
  busyMs(): number;
  /** null until the worker has reported it. */
  readonly openDatabases: number | null;
  /** Durable commits of writes, and the calls they carried, across restarts. */
  readonly commits: number;
  readonly committedCalls: number;
  readonly syncs: number;
  /** Of `syncs`, those that were a syncfs of the whole filesystem. */
  readonly filesystemSyncs: number;
}

export interface MetricSources {
  shards: readonly ObservedShard[];
  storageBytes(): number;
}

/** Calls ended with one set of attributes, counted here and observed when the metrics are collected. */
interface EndedCount {
  readonly attributes: Attributes;
  count: number;
}

/** The attributes of one method, and of its end with each status code; its calls in flight. */
export class MethodAttributes {
  readonly base: Attributes;
  inFlight = 0;
  /** By status code, and by tenant and code for the calls counted per tenant. */
  readonly byCode: EndedCount[] = [];
  readonly byTenant = new Map<string, EndedCount[]>();

  constructor(service: string, method: string) {
    this.base = { [ATTR_RPC_SYSTEM]: 'grpc', [ATTR_RPC_SERVICE]: service, [ATTR_RPC_METHOD]: method };
  }

  /** Counts a call ended with `code`, as `tenantId`'s when given; returns the code's attributes (no tenant). */
  ended(code: number, tenantId: string | null): Attributes {
    const byCode = (this.byCode[code] ??= { attributes: { ...this.base, [ATTR_RPC_GRPC_STATUS_CODE]: code }, count: 0 });
    if (tenantId === null) {
      byCode.count++;
    } else {
      let counts = this.byTenant.get(tenantId);
      if (!counts) this.byTenant.set(tenantId, (counts = []));
      (counts[code] ??= { attributes: { ...byCode.attributes, [ATTR_TENANT_ID]: tenantId }, count: 0 }).count++;
    }
    return byCode.attributes;
  }

  /** Every series counted so far (a series once seen is reported from then on). */
  *counted(): Iterable<EndedCount> {
    for (const ended of this.byCode) if (ended && ended.count > 0) yield ended;
    for (const counts of this.byTenant.values()) for (const ended of counts) if (ended) yield ended;
  }
}

export class ServerMetrics {
  private readonly duration: Histogram;
  private readonly methods: MethodAttributes[] = [];
  private readonly refusals: Counter;
  private readonly refusalAttributes = new Map<string, Attributes>();
  private readonly faults: Counter;
  private readonly faultAttributes = new Map<string, Attributes>();
  private readonly observables: Observable[];
  private readonly observe: BatchObservableCallback;
  private readonly meter: Meter;
  private closed = false;

  constructor(
    sources: MetricSources,
    private readonly perTenant: boolean,
  ) {
    const meter = (this.meter = metrics.getMeter('tenantd'));
    this.duration = meter.createHistogram(METRIC_RPC_SERVER_DURATION, {
      description: 'Duration of inbound RPCs',
      unit: 'ms',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS_MS },
    });
    // Counted per method and code in MethodAttributes and observed at collection: a counter's add()
    // hashes its attributes on every call, which showed in the hot path's profile.
    const calls = meter.createObservableCounter(METRIC_RPC_CALLS, { description: 'RPCs ended, by status code', unit: '{call}' });
    const inFlight = meter.createObservableUpDownCounter(METRIC_RPC_IN_FLIGHT, { description: 'RPCs started and not yet ended', unit: '{call}' });
    this.refusals = meter.createCounter(METRIC_QUOTA_REFUSALS, { description: 'Calls refused by a tenant quota', unit: '{call}' });
    this.faults = meter.createCounter(METRIC_STORAGE_FAULTS, {
      description: 'Calls failed by the host or a damaged file (disk full, I/O, corruption, memory), by reason',
      unit: '{call}',
    });
    const queueDepth = meter.createObservableGauge(METRIC_SHARD_QUEUE_DEPTH, {
      description: 'Calls posted to the shard and not yet answered',
      unit: '{call}',
    });
    const busyTime = meter.createObservableCounter(METRIC_SHARD_BUSY_TIME, {
      description: "Time the shard's thread spent running rather than waiting for calls",
      unit: 'ms',
    });
    const openDatabases = meter.createObservableGauge(METRIC_SHARD_OPEN_DATABASES, {
      description: 'Database connections the shard holds open',
      unit: '{database}',
    });
    const commits = meter.createObservableCounter(METRIC_SHARD_COMMITS, {
      description: 'Transactions that wrote and committed (one sync each under --sync full)',
      unit: '{commit}',
    });
    const committedCalls = meter.createObservableCounter(METRIC_SHARD_COMMITTED_CALLS, {
      description: 'Calls whose writes those commits carried; committed_calls / commits is the mean group-commit size',
      unit: '{call}',
    });
    const syncs = meter.createObservableCounter(METRIC_SHARD_SYNCS, {
      description:
        'Syncs that made commits durable: one per commit, or one shared by the commits before an answer (the shared flush); ' +
        'kind "file" is one tenant file\'s fsync, kind "filesystem" a syncfs of the data directory\'s filesystem',
      unit: '{sync}',
    });
    const storage = meter.createObservableGauge(METRIC_STORAGE_BYTES, {
      description: 'Size of all tenant databases, as the shards last measured them',
      unit: 'By',
    });
    const internalErrors = meter.createObservableCounter(METRIC_INTERNAL_ERRORS, {
      description: 'Errors no code expected: a handler failure answered INTERNAL, an unhandled rejection, an uncaught exception',
      unit: '{error}',
    });
    const sourceAttributes = INTERNAL_ERROR_SOURCES.map((source) => [source, { [ATTR_SOURCE]: source }] as const);
    const shardAttributes = sources.shards.map((shard) => ({ [ATTR_SHARD]: shard.index }));
    const syncAttributes = sources.shards.map((shard) => ({
      file: { [ATTR_SHARD]: shard.index, [ATTR_SYNC_KIND]: 'file' },
      filesystem: { [ATTR_SHARD]: shard.index, [ATTR_SYNC_KIND]: 'filesystem' },
    }));
    this.observe = (result) => {
      try {
        for (const method of this.methods) {
          result.observe(inFlight, method.inFlight, method.base);
          for (const ended of method.counted()) result.observe(calls, ended.count, ended.attributes);
        }
        sources.shards.forEach((shard, i) => {
          const attributes = shardAttributes[i]!;
          result.observe(queueDepth, shard.inFlight, attributes);
          result.observe(busyTime, shard.busyMs(), attributes);
          if (shard.openDatabases !== null) result.observe(openDatabases, shard.openDatabases, attributes);
          result.observe(commits, shard.commits, attributes);
          result.observe(committedCalls, shard.committedCalls, attributes);
          result.observe(syncs, shard.syncs - shard.filesystemSyncs, syncAttributes[i]!.file);
          if (shard.filesystemSyncs > 0) result.observe(syncs, shard.filesystemSyncs, syncAttributes[i]!.filesystem);
        });
        result.observe(storage, sources.storageBytes());
        for (const [source, attributes] of sourceAttributes) result.observe(internalErrors, internalErrorCount(source), attributes);
      } catch {
        // Telemetry never throws; a missed observation shows as a gap.
      }
    };
    this.observables = [inFlight, calls, queueDepth, busyTime, openDatabases, commits, committedCalls, syncs, storage, internalErrors];
    meter.addBatchObservableCallback(this.observe, this.observables);
  }

  /** The method's attributes, its calls in flight observed from now on. */
  method(service: string, name: string): MethodAttributes {
    const method = new MethodAttributes(service, name);
    this.methods.push(method);
    return method;
  }

  started(method: MethodAttributes): void {
    method.inFlight++;
  }

  ended(method: MethodAttributes, code: number, durationMs: number, tenantId: string | null): void {
    const attributes = method.ended(code, this.perTenant ? tenantId : null);
    method.inFlight--;
    this.duration.record(durationMs, attributes);
  }

  quotaRefused(quota: string): void {
    let attributes = this.refusalAttributes.get(quota);
    if (!attributes) this.refusalAttributes.set(quota, (attributes = { [ATTR_QUOTA]: quota }));
    this.refusals.add(1, attributes);
  }

  storageFault(reason: string): void {
    let attributes = this.faultAttributes.get(reason);
    if (!attributes) this.faultAttributes.set(reason, (attributes = { [ATTR_FAULT_REASON]: reason }));
    this.faults.add(1, attributes);
  }

  /** Stops the observable callbacks reading this server (another may start in the same process). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.meter.removeBatchObservableCallback(this.observe, this.observables);
  }
}
