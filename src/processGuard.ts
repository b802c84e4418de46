/**
 * The serve entry's last line of defence. Without it, one rejection nobody
 * handled ends the process (Node's default is ERR_UNHANDLED_REJECTION) and
 * with it every tenant's calls. The lint step (eslint.config.js) keeps
 * promises from floating in the first place; what slips through anyway is
 * logged at error level with its stack and counted in
 * `tenantd_internal_errors_total`, so it is seen and fixed, not hidden: the
 * test suite asserts the count stays 0.
 */
import type { Logger } from './log.ts';
import { noteInternalError } from './telemetry/internalErrors.ts';

function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

/** Installs the handlers; returns a function that removes them. */
export function installProcessGuard(logger: Logger): () => void {
  const onRejection = (reason: unknown): void => {
    noteInternalError('unhandled_rejection');
    logger.error('unhandled promise rejection (a bug: the process carries on)', { error: describe(reason) });
  };
  // A synchronous throw nobody caught. The call it belonged to is lost, but
  // the node's state lives in SQLite (transactional) and in the workers, so
  // serving the other tenants is safer than dropping all of them.
  const onException = (error: unknown): void => {
    noteInternalError('uncaught_exception');
    logger.error('uncaught exception (a bug: the process carries on)', { error: describe(error) });
  };
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return () => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  };
}
