/**
 * Errors no code expected: a handler that threw something other than a
 * TenantdError (answered INTERNAL), and what reached the process-level
 * handlers (a rejection nobody handled, an exception nobody caught). Each is
 * a bug; the count is process-wide so a test can assert that a whole run
 * made none, and `tenantd_internal_errors_total` shows it to operators.
 */

export type InternalErrorSource = 'handler' | 'unhandled_rejection' | 'uncaught_exception';

export const INTERNAL_ERROR_SOURCES: readonly InternalErrorSource[] = ['handler', 'unhandled_rejection', 'uncaught_exception'];

const counts: Record<InternalErrorSource, number> = { handler: 0, unhandled_rejection: 0, uncaught_exception: 0 };

export function noteInternalError(source: InternalErrorSource): void {
  counts[source]++;
}

/** How many of `source` (or of all sources) this process has seen. */
export function internalErrorCount(source?: InternalErrorSource): number {
  if (source !== undefined) return counts[source];
  return counts.handler + counts.unhandled_rejection + counts.uncaught_exception;
}
