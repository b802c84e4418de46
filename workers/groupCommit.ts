/**
 * Group commit: when several writes for one tenant are queued at a shard,
 * they run in one transaction, each in its own savepoint, and share one
 * commit (one fsync under --sync full). Every call still gets its own
 * result: a failing call undoes only its own savepoint. No call is answered
 * before the commit that holds its data has returned.
 */
import { status as Status } from '@grpc/grpc-js';
import type { WireError } from '../src/errors.ts';
import type { ExecuteResult, ShardRequest } from '../src/protocol.ts';
import { ShardError } from './shardError.ts';
import type { TenantDb } from './tenantDb.ts';
import { runInTransaction } from './writeCall.ts';

export type WriteRequest = Extract<ShardRequest, { op: 'execute' | 'batch' }>;

/** Most calls one commit may carry, and how long a group may keep taking more. */
const MAX_GROUP = 128;
const MAX_GROUP_MS = 50;

export interface Outcome {
  request: WriteRequest;
  result?: ExecuteResult | ExecuteResult[];
  error?: unknown;
}

export function isWrite(request: ShardRequest): request is WriteRequest {
  return request.op === 'execute' || request.op === 'batch';
}

export function sameGroup(a: WriteRequest, b: ShardRequest): b is WriteRequest {
  return isWrite(b) && b.tenantId === a.tenantId;
}

function runCall(db: TenantDb, request: WriteRequest): ExecuteResult | ExecuteResult[] {
  // A call with a request_id finds or leaves its record in its own savepoint too (writeCall.ts).
  return db.inSavepoint(() => runInTransaction(db, request));
}

const GROUP_LOST: WireError = {
  code: Status.ABORTED,
  reason: 'GROUP_ROLLED_BACK',
  message: 'another call of this tenant was interrupted and SQLite rolled back the shared transaction; nothing was written, retry the call',
};

/**
 * Runs `first`, `second` and whatever more writes of the same tenant
 * `next()` yields (in their order), then commits once. Returns each call's
 * outcome.
 */
export function runGroup(db: TenantDb, first: WriteRequest, second: WriteRequest, next: () => WriteRequest | undefined): { outcomes: Outcome[] } {
  const started = Date.now();
  const outcomes: Outcome[] = [];
  let restarted = false;

  db.beginGroup();
  const run = (request: WriteRequest): void => {
    const outcome: Outcome = { request };
    outcomes.push(outcome);
    try {
      outcome.result = runCall(db, request);
    } catch (error) {
      outcome.error = error;
      if (!db.inTransaction) rerunAfterLoss();
    }
  };
  // An interrupted write makes SQLite roll back the whole transaction, taking
  // the earlier calls' savepoints with it. Nothing was answered yet, so they
  // run again in a fresh transaction, once; a second loss aborts them.
  const rerunAfterLoss = (): void => {
    const survivors = outcomes.filter((o) => o.error === undefined);
    if (restarted) {
      for (const o of survivors) o.error = new ShardError(GROUP_LOST);
      return;
    }
    restarted = true;
    db.beginGroup();
    for (const o of survivors) {
      try {
        o.result = runCall(db, o.request);
      } catch (error) {
        o.error = error;
        if (!db.inTransaction) {
          for (const s of survivors) if (s.error === undefined) s.error = new ShardError(GROUP_LOST);
          db.beginGroup();
          return;
        }
      }
    }
  };

  run(first);
  run(second);
  while (outcomes.length < MAX_GROUP && Date.now() - started < MAX_GROUP_MS) {
    const request = next();
    if (request === undefined) break;
    run(request);
  }

  try {
    if (db.inTransaction) db.commitGroup(first.limits);
  } catch (error) {
    db.rollbackGroup();
    for (const o of outcomes) if (o.error === undefined) o.error = error;
  }
  return { outcomes };
}
