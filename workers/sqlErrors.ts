/**
 * Turns what better-sqlite3 throws into a WireError with the contract's
 * status code. SQLite's extended result code is the ErrorInfo reason, so
 * clients can switch on e.g. SQLITE_CONSTRAINT_UNIQUE.
 */
import { status as Status } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import type { WireError } from '../src/errors.ts';

export interface FailureContext {
  /** The field the statement came from, e.g. `sql` or `statements[2].sql`. */
  field: string;
  tenantId: string;
  /** Why the guard refused the statement, if it did. */
  denial: string | null;
  /** The watchdog interrupted the statement. */
  timedOut: boolean;
  timeoutMs: number;
  storageLimitBytes: number;
}

function wire(code: Status, reason: string, message: string, ctx: FailureContext, bad = false): WireError {
  const error: WireError = { code, reason, message };
  if (bad) error.fieldViolations = [{ field: ctx.field, description: message }];
  return error;
}

export function toWireError(error: unknown, ctx: FailureContext): WireError {
  if (error instanceof Database.SqliteError) {
    const code = error.code;
    const text = error.message;
    if (code === 'SQLITE_AUTH' || ctx.denial) {
      const reason = ctx.denial ?? text;
      return {
        ...wire(Status.PERMISSION_DENIED, 'SQL_NOT_ALLOWED', `statement not allowed: ${reason}`, ctx, true),
        metadata: { denied: reason },
      };
    }
    if (code === 'SQLITE_INTERRUPT') {
      return wire(
        Status.DEADLINE_EXCEEDED,
        ctx.timedOut ? 'QUERY_TIMEOUT' : 'SQLITE_INTERRUPT',
        `statement interrupted after ${ctx.timeoutMs} ms (query_timeout_ms or the call's deadline)`,
        ctx,
      );
    }
    if (code === 'SQLITE_FULL') {
      return {
        code: Status.RESOURCE_EXHAUSTED,
        reason: 'STORAGE_QUOTA_EXCEEDED',
        message: `database is full: storage_bytes limit is ${ctx.storageLimitBytes}`,
        quotaViolations: [
          {
            quota: 'storage_bytes',
            current: ctx.storageLimitBytes,
            limit: ctx.storageLimitBytes,
            subject: `tenants/${ctx.tenantId}`,
          },
        ],
      };
    }
    if (code.startsWith('SQLITE_CONSTRAINT')) return wire(Status.FAILED_PRECONDITION, code, text, ctx);
    // SQLITE_BUSY_SNAPSHOT too: an interactive transaction's snapshot is stale (transactions.ts makes it a conflict).
    if (code.startsWith('SQLITE_BUSY') || code === 'SQLITE_LOCKED' || code.startsWith('SQLITE_IOERR')) {
      return wire(Status.UNAVAILABLE, code, text, ctx);
    }
    if (code === 'SQLITE_CORRUPT' || code === 'SQLITE_NOTADB') return wire(Status.DATA_LOSS, code, text, ctx);
    if (code === 'SQLITE_TOOBIG' || code === 'SQLITE_RANGE' || code === 'SQLITE_MISMATCH' || code === 'SQLITE_ERROR') {
      return wire(Status.INVALID_ARGUMENT, code, text, ctx, true);
    }
    if (code === 'SQLITE_READONLY') return wire(Status.PERMISSION_DENIED, code, text, ctx);
    return wire(Status.INVALID_ARGUMENT, code, text, ctx, true);
  }
  // better-sqlite3 raises RangeError/TypeError for what it checks before SQLite
  // sees the statement: statement count, parameter count and types.
  if (error instanceof RangeError || error instanceof TypeError) {
    const message = error.message;
    const reason = /statement/i.test(message) && !/parameter/i.test(message) ? 'INVALID_SQL' : 'INVALID_PARAMETERS';
    return wire(Status.INVALID_ARGUMENT, reason, message, ctx, true);
  }
  throw error;
}
