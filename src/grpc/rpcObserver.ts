/**
 * What every RPC leaves behind: a SERVER span (continuing the caller's trace
 * when it sent `traceparent`), the call metrics, an access log line, and a
 * request id that the client gets back as `x-request-id` trailing metadata.
 * The handler wrappers in handlers.ts start one ObservedCall per call and
 * end it exactly once, whichever way the call ends.
 *
 * Telemetry never throws: a failure here must not turn into the call's status.
 */
import type { CancelSignal } from './cancelSignal.ts';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import {
  context,
  INVALID_SPAN_CONTEXT,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Span,
  type TextMapGetter,
} from '@opentelemetry/api';
import { status as Status, type Metadata, type ServiceError } from '@grpc/grpc-js';
import { TenantdError, toServiceError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { AUDITED_METHODS, auditedTenant, writeAudit } from './audit.ts';
import { OpenCalls } from './openCalls.ts';
import { MethodAttributes, type ServerMetrics } from '../telemetry/serverMetrics.ts';
import { ATTR_REQUEST_ID, ATTR_RPC_GRPC_STATUS_CODE, ATTR_SHARD, ATTR_TENANT_ID, isServerFault } from '../telemetry/semconv.ts';

const tracer = trace.getTracer('tenantd');
/** Stands in for the span until one is started (and if starting one failed); it records nothing. */
const UNOBSERVED: Span = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/** SQL text goes to debug logs only, and only this much of it. */
const MAX_LOGGED_SQL = 200;

function loggedSql(sql: string | (() => string)): string {
  const text = typeof sql === 'string' ? sql : sql();
  return text.length > MAX_LOGGED_SQL ? `${text.slice(0, MAX_LOGGED_SQL)}…` : text;
}

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (metadata) => Object.keys(metadata.getMap()),
  get: (metadata, key) => {
    const values = metadata.get(key);
    return values.length === 0 ? undefined : values.map(String);
  },
};

/** The server-wide half: where metrics and logs go. */
export class RpcObserver {
  /** Every call the handler adapters have open (shutdown ends and cancels them). */
  readonly calls = new OpenCalls();

  constructor(
    readonly metrics: ServerMetrics | null,
    readonly logger: Logger,
    /** The key id behind a call's credentials, for audit lines (grpc/audit.ts); null: unknown. */
    readonly identify: (metadata: Metadata) => string | null = () => null,
  ) {}

  service(name: string): ServiceObserver {
    return new ServiceObserver(this, name);
  }
}

export class ServiceObserver {
  constructor(
    readonly observer: RpcObserver,
    readonly name: string,
  ) {}

  method(name: string): MethodObserver {
    return new MethodObserver(this, name);
  }
}

export class MethodObserver {
  readonly attributes: MethodAttributes;
  /** `tenantd.v1.SqlService/Execute`: the span name the RPC conventions ask for. */
  readonly fullName: string;

  constructor(
    readonly service: ServiceObserver,
    readonly name: string,
  ) {
    this.attributes = service.observer.metrics?.method(service.name, name) ?? new MethodAttributes(service.name, name);
    this.fullName = `${service.name}/${name}`;
  }

  start(metadata: Metadata, peer: () => string, request?: unknown): ObservedCall {
    return new ObservedCall(this, metadata, peer, request);
  }
}

/** One call, from the handler's start to its status. */
export class ObservedCall {
  readonly requestId = randomUUID();
  /** Aborted when the call is cancelled (client or shutdown); handlers.ts sets it as the call starts. */
  signal: CancelSignal | undefined = undefined;
  private readonly startedAt = performance.now();
  private readonly span: Span = UNOBSERVED;
  private readonly parent: Context = ROOT_CONTEXT;
  private tenantId: string | null = null;
  private shard: number | null = null;
  /** The SQL text, or how to make it: a Batch's statements are joined only if a debug line is written. */
  private sql: string | (() => string) | null = null;
  private ended = false;

  constructor(
    private readonly method: MethodObserver,
    private readonly metadata: Metadata,
    private readonly peer: () => string,
    /** The request (unary and server-streaming calls), for the tenant an audit line names. */
    private readonly request?: unknown,
  ) {
    try {
      this.parent = propagation.extract(ROOT_CONTEXT, metadata, metadataGetter);
      this.span = tracer.startSpan(method.fullName, { kind: SpanKind.SERVER }, this.parent);
      // Built only for a span that records: with no tracer installed this is the common case.
      if (this.span.isRecording()) this.span.setAttributes({ ...method.attributes.base, [ATTR_REQUEST_ID]: this.requestId });
      method.service.observer.metrics?.started(method.attributes);
    } catch {
      // Telemetry never throws: the call goes on unobserved by whatever failed.
    }
  }

  /** Runs the handler with this call's span active, so shard calls it makes become its children. */
  run<T>(fn: () => T): T {
    if (!this.span.isRecording()) return fn();
    return context.with(trace.setSpan(this.parent, this.span), fn);
  }

  /** The tenant the call acts for and the shard that serves it, once the handler knows them. */
  routed(tenantId: string, shard: number): void {
    this.tenantId = tenantId;
    this.shard = shard;
    this.span.setAttribute(ATTR_TENANT_ID, tenantId);
    this.span.setAttribute(ATTR_SHARD, shard);
  }

  /** The statement, for debug logs (never its parameters). */
  statement(sql: string | (() => string)): void {
    this.sql = sql;
  }

  /** Ends the call OK; `trailer` gets the request id. */
  succeed(trailer: Metadata): void {
    trailer.set('x-request-id', this.requestId);
    this.end(Status.OK, null);
  }

  /** Maps the error to a status (the one place: toServiceError), ends the call with it. */
  fail(error: unknown, cancelled = false): Partial<ServiceError> {
    const serviceError = toServiceError(error, { method: this.method.name, ...(this.tenantId ? { tenantId: this.tenantId } : {}) });
    serviceError.metadata?.set('x-request-id', this.requestId);
    this.end(cancelled ? Status.CANCELLED : serviceError.code ?? Status.UNKNOWN, error instanceof TenantdError ? error.reason : 'INTERNAL');
    return serviceError;
  }

  private end(code: Status, reason: string | null): void {
    if (this.ended) return;
    this.ended = true;
    try {
      const durationMs = performance.now() - this.startedAt;
      const { observer } = this.method.service;
      observer.metrics?.ended(this.method.attributes, code, durationMs, this.tenantId);
      const traceId = this.span.isRecording() ? this.span.spanContext().traceId : null;
      if (traceId !== null) {
        this.span.setAttribute(ATTR_RPC_GRPC_STATUS_CODE, code);
        if (isServerFault(code)) this.span.setStatus({ code: SpanStatusCode.ERROR, message: reason ?? Status[code] });
      }
      this.span.end();
      this.log(observer.logger, code, reason, durationMs, traceId);
      if (AUDITED_METHODS.has(this.method.fullName)) {
        writeAudit(observer.logger, {
          request_id: this.requestId,
          action: this.method.fullName,
          principal: observer.identify(this.metadata),
          tenant: this.tenantId ?? auditedTenant(this.request, this.metadata),
          result: Status[code],
          ...(reason === null ? {} : { reason }),
          peer: this.peer(),
        });
      }
    } catch {
      // Telemetry never throws.
    }
  }

  /** The access log: debug for successes, info for failures. Keys and parameters are never in it. */
  private log(logger: Logger, code: Status, reason: string | null, durationMs: number, traceId: string | null): void {
    const level = code === Status.OK ? 'debug' : 'info';
    if (!logger.enabled(level)) return;
    logger[level]('rpc', {
      request_id: this.requestId,
      method: this.method.fullName,
      tenant: this.tenantId ?? undefined,
      shard: this.shard ?? undefined,
      code: Status[code],
      ...(reason === null ? {} : { reason }),
      duration_ms: Math.round(durationMs * 1000) / 1000,
      peer: this.peer(),
      ...(traceId === null ? {} : { trace_id: traceId }),
      ...(this.sql !== null && logger.enabled('debug') ? { sql: loggedSql(this.sql) } : {}),
    });
  }
}
