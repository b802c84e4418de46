/**
 * Turns what better-sqlite3 throws into a WireError with the contract's
 * status code. SQLite's extended result code is the ErrorInfo reason, so
 * clients can switch on e.g. SQLITE_CONSTRAINT_UNIQUE.
 */
import { status as Status } from '@grpc/grpc-js';
import { statfsSync } from 'node:fs';
import { dirname } from 'node:path';
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
  /** The call was cancelled (its client cancelled or went away, or the server is stopping). */
  cancelled?: boolean;
  timeoutMs: number;
  storageLimitBytes: number;
  /**
   * Why SQLITE_FULL: the tenant's max_page_count (its storage_bytes quota)
   * or the host's disk. SQLite reports both the same way.
   */
  fullCause?: () => 'quota' | 'disk';
  /** The database file, to tell an I/O error on a full disk from others. */
  path?: string;
  /** SQLITE_LIMIT_LENGTH of the failed statement, and the row budget when that limit was its share of one. */
  valueLimitBytes?: number;
  rowLimitBytes?: number;
}

function wire(code: Status, reason: string, message: string, ctx: FailureContext, bad = false): WireError {
  const error: WireError = { code, reason, message };
  if (bad) error.fieldViolations = [{ field: ctx.field, description: message }];
  return error;
}

/** Bytes the host can still give the directory holding `path`; Infinity when unknown. */
function freeBytes(path: string): number {
  try {
    const fs = statfsSync(dirname(path));
    return fs.bavail * fs.bsize;
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

/**
 * Whether SQLITE_FULL came from the quota or the disk. The quota is what
 * stopped the write when the database had less room left under its
 * max_page_count than the disk has free: the page limit is reached first. A
 * write also needs WAL space on disk, so a disk with about as much free as
 * the quota's headroom reads as full, which is the safe way to err: the
 * tenant is not told to delete data the host is short of.
 */
export function storageFullCause(path: string, storageLimitBytes: number, sizeBytes: () => number): 'quota' | 'disk' {
  if (storageLimitBytes < 0) return 'disk';
  const headroom = Math.max(0, storageLimitBytes - sizeBytes());
  return freeBytes(path) > headroom + kDiskFullMarginBytes ? 'quota' : 'disk';
}

/** Free disk below the quota's headroom plus this is "the disk filled up". */
const kDiskFullMarginBytes = 256 * 1024;

/**
 * SQLite failures that are the host's or the file's, not the SQL's: disk,
 * I/O, corruption, memory, a file that cannot be opened. Null for anything
 * else. Used for statements and for what the shard does on its own (opening
 * a tenant's file), so a damaged file never reads as the client's error.
 */
export function hostFault(code: string, text: string): WireError | null {
  const fault = (status: Status, message: string): WireError => ({ code: status, reason: code, message, metadata: { sqlite_code: code } });
  if (code.startsWith('SQLITE_IOERR')) return fault(Status.UNAVAILABLE, `storage I/O error (${code}): ${text}`);
  if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') {
    return fault(Status.DATA_LOSS, `the tenant's database file is damaged (${code}): ${text}`);
  }
  if (code === 'SQLITE_NOMEM') return fault(Status.RESOURCE_EXHAUSTED, 'the server is out of memory; retry later');
  if (code.startsWith('SQLITE_CANTOPEN')) return fault(Status.UNAVAILABLE, `cannot open the tenant's database file (${code})`);
  // READONLY with an extended code is the file system or a moved file, not a READ_ONLY key.
  if (code.startsWith('SQLITE_READONLY_')) return fault(Status.UNAVAILABLE, `the tenant's database file cannot be written (${code})`);
  if (code === 'SQLITE_PROTOCOL' || code === 'SQLITE_NOLFS' || code === 'SQLITE_PERM' || code === 'SQLITE_FORMAT') {
    return fault(Status.INTERNAL, `storage failure (${code}): ${text}`);
  }
  return null;
}

/** The host's disk is full: the service's fault, retryable once an operator frees space. */
export function diskFull(code: string): WireError {
  return {
    code: Status.UNAVAILABLE,
    reason: 'DISK_FULL',
    message: "the server's disk is full; retry later",
    metadata: { sqlite_code: code },
  };
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
      if (ctx.cancelled && !ctx.timedOut) return wire(Status.CANCELLED, 'CALL_CANCELLED', 'the call was cancelled and its statement interrupted', ctx);
      return wire(
        Status.DEADLINE_EXCEEDED,
        ctx.timedOut ? 'QUERY_TIMEOUT' : 'SQLITE_INTERRUPT',
        `statement interrupted after ${ctx.timeoutMs} ms (query_timeout_ms or the call's deadline)`,
        ctx,
      );
    }
    if (code === 'SQLITE_FULL') {
      if ((ctx.fullCause?.() ?? 'quota') === 'disk') return diskFull(code);
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
    // ENOSPC can also surface as an I/O error (a WAL that cannot grow, a failed fsync).
    if (code.startsWith('SQLITE_IOERR') && ctx.path !== undefined && freeBytes(ctx.path) < kDiskFullMarginBytes) return diskFull(code);
    const fault = hostFault(code, text);
    if (fault) return fault;
    if (code.startsWith('SQLITE_CONSTRAINT')) return wire(Status.FAILED_PRECONDITION, code, text, ctx);
    // SQLITE_BUSY_SNAPSHOT too: an interactive transaction's snapshot is stale (transactions.ts makes it a conflict).
    if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) return wire(Status.UNAVAILABLE, code, text, ctx);
    if (code.startsWith('SQLITE_ABORT') || code === 'SQLITE_SCHEMA') return wire(Status.ABORTED, code, text, ctx);
    if (code === 'SQLITE_TOOBIG' && ctx.valueLimitBytes !== undefined) {
      const shared =
        ctx.rowLimitBytes === undefined
          ? ''
          : ` (a row this statement returns may take ${ctx.rowLimitBytes} bytes while it is built, shared between its columns: return fewer columns, or the large value on its own)`;
      return {
        ...wire(Status.INVALID_ARGUMENT, code, `${text}: a string or blob in this statement may take at most ${ctx.valueLimitBytes} bytes${shared}`, ctx, true),
        metadata: { limit_bytes: String(ctx.valueLimitBytes) },
      };
    }
    if (code === 'SQLITE_TOOBIG' || code === 'SQLITE_RANGE' || code === 'SQLITE_MISMATCH' || code.startsWith('SQLITE_ERROR')) {
      return wire(Status.INVALID_ARGUMENT, code, text, ctx, true);
    }
    if (code === 'SQLITE_READONLY') return wire(Status.PERMISSION_DENIED, code, text, ctx);
    // Anything not named above is not known to be the client's doing.
    return wire(Status.INTERNAL, code, text, ctx);
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
