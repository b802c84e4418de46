/**
 * Runs an Execute or Batch as a write call: on its own, or as one call of a
 * group commit, and, when it carries a request_id, through the tenant's
 * request log (requestLog.ts), in the same transaction as its writes.
 */
import type { ExecuteResult, ShardRequest } from '../src/protocol.ts';
import type { LoggedAppend } from './eventLog.ts';
import type { WriteRequest } from './groupCommit.ts';
import { afterCommit, requestHash } from './requestLog.ts';
import { ShardError } from './shardError.ts';
import { toWireError } from './sqlErrors.ts';
import type { TenantDb } from './tenantDb.ts';

/** How long a request_id's response is kept; the shard sets it from its workerData. */
let windowMs = 24 * 3_600_000;

export function setRequestWindow(ms: number): void {
  windowMs = ms;
}

export function requestWindowMs(): number {
  return windowMs;
}

type Result = ExecuteResult | ExecuteResult[];

function body(db: TenantDb, request: WriteRequest): Result {
  return request.op === 'execute' ? db.execute(request.statement, request.limits) : db.batchStatements(request.statements, request.limits);
}

/**
 * The call's statements, inside a transaction the caller owns: for a call
 * with a request_id, the recorded response instead if there is one, else
 * the statements and then the record of their response.
 */
export function runInTransaction(db: TenantDb, request: WriteRequest): Result {
  const requestId = request.requestId;
  if (requestId === undefined) return body(db, request);
  const method = request.op === 'execute' ? 'Execute' : 'Batch';
  const hash = requestHash(method, request.op === 'execute' ? request.statement : request.statements);
  const recorded = db.requests.lookup(requestId, method, hash, windowMs);
  if (recorded) return recorded.response as Result;
  const result = body(db, request);
  try {
    db.requests.record(requestId, method, hash, result);
  } catch (error) {
    throw new ShardError(
      toWireError(error, { field: 'request_id', tenantId: db.tenantId, denial: null, timedOut: false, timeoutMs: request.limits.timeoutMs, storageLimitBytes: request.limits.storageLimitBytes }),
    );
  }
  return result;
}

/** An Append's request_id, for EventLog.append; undefined without one. The events' times are left out of the hash: the server fills in the ones a client leaves out. */
export function loggedAppend(db: TenantDb, request: Extract<ShardRequest, { op: 'appendEvents' }>): LoggedAppend | undefined {
  const requestId = request.requestId;
  if (requestId === undefined) return undefined;
  const hash = requestHash('Append', [request.events.map((e) => [e.type, e.data, e.metadata]), request.expectedPosition]);
  return {
    lookup: () => db.requests.lookup(requestId, 'Append', hash, windowMs)?.response as bigint[] | undefined,
    record: (positions) => db.requests.record(requestId, 'Append', hash, positions),
  };
}

/** A call with a request_id on its own: one transaction around the lookup, the statements and the record. */
export function runLogged(db: TenantDb, request: WriteRequest): Result {
  db.beginGroup();
  let committed = false;
  try {
    const result = runInTransaction(db, request);
    db.commitGroup(request.limits);
    committed = true;
    afterCommit(request.requestId);
    return result;
  } finally {
    if (!committed) db.rollbackGroup();
  }
}
