/**
 * The one error type of tenantd and its mapping to a gRPC status with
 * `google.rpc.Status` details. Every handler failure passes through
 * `toServiceError`; anything that is not a TenantdError becomes INTERNAL
 * without leaking its message or stack to the client.
 */
import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import { rpcTypes } from './protos.ts';
import { noteInternalError } from './telemetry/internalErrors.ts';

export const ERROR_DOMAIN = 'tenantd';

export interface FieldViolation {
  field: string;
  description: string;
}

export interface QuotaViolation {
  /** The quota's wire name, e.g. `requests_per_second`. */
  quota: string;
  current: number;
  limit: number;
  subject: string;
}

/** What crosses from a worker to the front end when a call fails there. */
export interface WireError {
  code: Status;
  reason: string;
  message: string;
  metadata?: Record<string, string>;
  fieldViolations?: FieldViolation[];
  quotaViolations?: QuotaViolation[];
  /** When a retry may succeed (google.rpc.RetryInfo). */
  retryDelayMs?: number;
}

export interface ErrorDetails {
  metadata?: Record<string, string>;
  fieldViolations?: FieldViolation[];
  quotaViolations?: QuotaViolation[];
  /** For rate quotas: when a retry may succeed. */
  retryDelayMs?: number;
}

export class TenantdError extends Error {
  override name = 'TenantdError';

  constructor(
    readonly code: Status,
    /** Stable, UPPER_SNAKE_CASE; clients switch on it. */
    readonly reason: string,
    message: string,
    readonly details: ErrorDetails = {},
  ) {
    super(message);
  }

  static fromWire(wire: WireError): TenantdError {
    const details: ErrorDetails = {};
    if (wire.metadata) details.metadata = wire.metadata;
    if (wire.fieldViolations) details.fieldViolations = wire.fieldViolations;
    if (wire.quotaViolations) details.quotaViolations = wire.quotaViolations;
    if (wire.retryDelayMs !== undefined) details.retryDelayMs = wire.retryDelayMs;
    return new TenantdError(wire.code, wire.reason, wire.message, details);
  }

  toWire(): WireError {
    return {
      code: this.code,
      reason: this.reason,
      message: this.message,
      ...this.details,
    };
  }
}

// ---- factories for the errors the front end raises in many places ----

export function invalidArgument(field: string, description: string, reason = 'INVALID_ARGUMENT'): TenantdError {
  return new TenantdError(Status.INVALID_ARGUMENT, reason, `${field}: ${description}`, {
    fieldViolations: [{ field, description }],
  });
}

export function notFound(resource: string, reason = 'NOT_FOUND'): TenantdError {
  return new TenantdError(Status.NOT_FOUND, reason, `${resource} not found`, { metadata: { resource } });
}

export function unavailable(reason: string, message: string): TenantdError {
  return new TenantdError(Status.UNAVAILABLE, reason, message);
}

/**
 * A failure of the host or of a tenant's file rather than of the call: disk
 * full, I/O, corruption, memory. The shard marks them with the SQLite code
 * (workers/sqlErrors.ts); they are logged as errors and counted apart.
 */
export function isStorageFault(error: Pick<TenantdError, 'reason' | 'details'> | WireError): boolean {
  const metadata = 'details' in error ? error.details.metadata : error.metadata;
  return error.reason === 'DISK_FULL' || metadata?.sqlite_code !== undefined;
}

// ---- encoding ----

function any(typeName: string, payload: Record<string, unknown>): { type_url: string; value: Uint8Array } {
  const type = rpcTypes().lookupType(typeName);
  return { type_url: `type.googleapis.com/${typeName}`, value: type.encode(type.fromObject(payload)).finish() };
}

/**
 * The `google.rpc.Status` for an error as a message object (details as
 * `Any`s), for a response that carries a status in a field: the error
 * entries of SqlService.Transaction.
 */
export function statusMessage(error: unknown): { code: number; message: string; details: { type_url: string; value: Uint8Array }[] } {
  const tenantdError =
    error instanceof TenantdError ? error : new TenantdError(Status.INTERNAL, 'INTERNAL', 'internal error; the server log has the details');
  return { code: tenantdError.code, message: tenantdError.message, details: statusDetails(tenantdError) };
}

function statusDetails(error: TenantdError): { type_url: string; value: Uint8Array }[] {
  const details = [
    any('google.rpc.ErrorInfo', {
      reason: error.reason,
      domain: ERROR_DOMAIN,
      metadata: error.details.metadata ?? {},
    }),
  ];
  if (error.details.fieldViolations?.length) {
    details.push(any('google.rpc.BadRequest', { field_violations: error.details.fieldViolations }));
  }
  if (error.details.quotaViolations?.length) {
    details.push(
      any('google.rpc.QuotaFailure', {
        violations: error.details.quotaViolations.map((v) => ({
          subject: v.subject,
          description: `${v.quota}: ${v.current} of ${v.limit}`,
          quota_id: v.quota,
          quota_metric: `tenantd/${v.quota}`,
          quota_value: v.limit,
          quota_dimensions: { current: String(v.current) },
        })),
      }),
    );
  }
  if (error.details.retryDelayMs !== undefined) {
    const ms = Math.max(0, Math.ceil(error.details.retryDelayMs));
    details.push(
      any('google.rpc.RetryInfo', {
        retry_delay: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 },
      }),
    );
  }
  return details;
}

/** The `google.rpc.Status` for an error, as bytes for `grpc-status-details-bin`. */
export function encodeStatus(error: TenantdError): Buffer {
  const statusType = rpcTypes().lookupType('google.rpc.Status');
  return Buffer.from(
    statusType.encode(statusType.fromObject({ code: error.code, message: error.message, details: statusDetails(error) })).finish(),
  );
}

export interface CallContext {
  method: string;
  tenantId?: string;
}

type Logger = (message: string, fields: Record<string, unknown>) => void;

let logUnexpected: Logger = (message, fields) => {
  process.stderr.write(`${JSON.stringify({ level: 'error', msg: message, ...fields })}\n`);
};

/** Where unexpected errors are reported (the server installs its logger). */
export function setUnexpectedErrorLogger(logger: Logger): void {
  logUnexpected = logger;
}

/**
 * Maps anything thrown by a handler to what grpc-js sends. A TenantdError keeps
 * its code and details; anything else is a bug: logged with the call's
 * context and answered INTERNAL with no internals in the message.
 */
export function toServiceError(error: unknown, context: CallContext): Partial<ServiceError> {
  let tenantdError: TenantdError;
  if (error instanceof TenantdError) {
    tenantdError = error;
  } else {
    noteInternalError('handler');
    logUnexpected('unexpected error in handler', {
      method: context.method,
      tenant: context.tenantId,
      error: error instanceof Error ? error.stack ?? error.message : String(error),
    });
    tenantdError = new TenantdError(Status.INTERNAL, 'INTERNAL', 'internal error; the server log has the details');
  }
  const metadata = new Metadata();
  metadata.set('grpc-status-details-bin', encodeStatus(tenantdError));
  return { code: tenantdError.code, details: tenantdError.message, metadata };
}
