/**
 * The one google.rpc.Status decoder: every failed call, from the CLI, the
 * tests, the benches or an application, becomes a TenantdError carrying the
 * gRPC code, the ErrorInfo reason and the other details the server attached.
 */
import * as grpc from '@grpc/grpc-js';
import { rpcTypes } from '../protoRoot.ts';

export interface FieldViolation {
  field: string;
  description: string;
}

export interface QuotaViolation {
  /** The quota's name, e.g. `requests_per_second`. */
  quotaId: string;
  /** Its limit, int64 as a decimal string. */
  quotaValue: string;
  /** `tenants/<id>`. */
  subject: string;
  description: string;
}

export interface TenantdErrorInit {
  code: grpc.status;
  message: string;
  reason?: string;
  domain?: string;
  metadata?: Record<string, string>;
  fieldViolations?: FieldViolation[];
  quotaViolations?: QuotaViolation[];
  retryAfterMs?: number | null;
}

/** A call that failed: `code` and `reason` say why, the rest says what to do about it. */
export class TenantdError extends Error {
  override name = 'TenantdError';
  /** The gRPC status code. */
  readonly code: grpc.status;
  /** The ErrorInfo reason (e.g. `TENANT_NOT_FOUND`); '' when the server sent none. */
  readonly reason: string;
  readonly domain: string;
  /** The ErrorInfo metadata: for quota refusals `quota`, `current`, `limit`. */
  readonly metadata: Record<string, string>;
  /** The quota that refused the call (`requests_per_second`...), or null. */
  readonly quota: string | null;
  readonly quotaViolations: QuotaViolation[];
  /** When to retry, from RetryInfo; null when the server gave no advice. */
  readonly retryAfterMs: number | null;
  /** BadRequest: which request fields were wrong. */
  readonly fieldViolations: FieldViolation[];
  /** The status message alone, without code and reason. */
  readonly details: string;

  constructor(init: TenantdErrorInit) {
    super(`${grpc.status[init.code] ?? init.code}${init.reason ? ` ${init.reason}` : ''}: ${init.message}`);
    this.code = init.code;
    this.details = init.message;
    this.reason = init.reason ?? '';
    this.domain = init.domain ?? '';
    this.metadata = init.metadata ?? {};
    this.fieldViolations = init.fieldViolations ?? [];
    this.quotaViolations = init.quotaViolations ?? [];
    this.retryAfterMs = init.retryAfterMs ?? null;
    this.quota = this.metadata.quota ?? this.quotaViolations[0]?.quotaId ?? null;
  }

  /** The name of the code, e.g. `NOT_FOUND`. */
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }

  /** `CODE REASON: message`, then one indented line per field violation: what the CLI prints. */
  describe(): string {
    return [this.message, ...this.fieldViolations.map((v) => `  ${v.field}: ${v.description}`)].join('\n');
  }
}

interface AnyDetail {
  type_url: string;
  value: Uint8Array;
}

function durationMs(duration: { seconds?: unknown; nanos?: unknown } | null | undefined): number | null {
  if (!duration) return null;
  return Number(duration.seconds ?? 0) * 1000 + Number(duration.nanos ?? 0) / 1e6;
}

/**
 * A grpc-js error -> TenantdError, from `grpc-status-details-bin`. Details that
 * cannot be decoded are skipped: the status line is still right without them.
 */
export function fromServiceError(error: grpc.ServiceError): TenantdError {
  const init: TenantdErrorInit = { code: error.code, message: error.details ?? error.message };
  const raw = error.metadata?.get('grpc-status-details-bin')[0];
  if (!(raw instanceof Uint8Array)) return new TenantdError(init);
  let details: AnyDetail[];
  const root = rpcTypes();
  try {
    const statusType = root.lookupType('google.rpc.Status');
    details = (statusType.toObject(statusType.decode(raw)) as { details?: AnyDetail[] }).details ?? [];
  } catch {
    return new TenantdError(init);
  }
  for (const any of details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    let detail: Record<string, any>;
    try {
      const type = root.lookupType(typeName);
      detail = type.toObject(type.decode(any.value), { longs: String, defaults: true });
    } catch {
      continue;
    }
    if (typeName === 'google.rpc.ErrorInfo') {
      init.reason = detail.reason;
      init.domain = detail.domain;
      init.metadata = detail.metadata ?? {};
    } else if (typeName === 'google.rpc.BadRequest') {
      init.fieldViolations = (detail.field_violations ?? []).map((v: FieldViolation) => ({ field: v.field, description: v.description }));
    } else if (typeName === 'google.rpc.QuotaFailure') {
      init.quotaViolations = (detail.violations ?? []).map(
        (v: { subject: string; description: string; quota_id: string; quota_value: string }) => ({
          quotaId: v.quota_id,
          quotaValue: String(v.quota_value),
          subject: v.subject,
          description: v.description,
        }),
      );
    } else if (typeName === 'google.rpc.RetryInfo') {
      init.retryAfterMs = durationMs(detail.retry_delay);
    }
  }
  return new TenantdError(init);
}

/** Anything a call rejected with -> TenantdError (grpc-js errors) or the error itself. */
export function asTenantdError(error: unknown): unknown {
  if (error instanceof TenantdError) return error;
  if (error instanceof Error && typeof (error as grpc.ServiceError).code === 'number' && 'metadata' in error) {
    return fromServiceError(error as grpc.ServiceError);
  }
  return error;
}
