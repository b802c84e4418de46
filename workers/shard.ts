/**
 * The shard worker: owns its tenants' databases outright and runs their calls
 * one at a time: each tenant's in the order the front end sent them, the
 * tenants taking turns (one call, or one group commit, a turn), so a tenant
 * with many calls queued does not make the others wait for all of them.
 * Every request gets exactly one final answer (`ok` or `error`); a Query
 * also sends chunks first.
 *
 * The front end posts the calls of one of its event-loop turns as one array;
 * Executes cross in packed form (protocol.ts). Writes for one tenant that are
 * already queued behind each other are committed together (groupCommit.ts):
 * the worker pulls more of the port with receiveMessageOnPort, and never
 * changes the order of a tenant's calls. Answers of quick reads go back
 * together too.
 */
import { performance } from 'node:perf_hooks';
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { status as Status } from '@grpc/grpc-js';
import type { WireError } from '../src/errors.ts';
import {
  callIdOf,
  packResult,
  unpackExecute,
  type EncodedMessage,
  type ExecuteResult,
  type PackedResult,
  type ShardInbound,
  type ShardRequest,
  type ShardResponse,
  type ShardResults,
  type ShardWorkerData,
} from '../src/protocol.ts';
import { addRows, addShardTime, kSlotsPerPage, storeStoragePages, viewPage, kStoragePageBytes, type QuotaPage } from '../src/quota/layout.ts';
import { DbPool } from './dbPool.ts';
import { isWrite, runGroup, sameGroup, type Outcome, type WriteRequest } from './groupCommit.ts';
import { Replies } from './replies.ts';
import { encodeBatchResponse, encodeExecuteResponse } from './resultWire.ts';
import { SharedFlush } from './sharedFlush.ts';
import { countCommit, countSync, reportGroupSpans, reportSpanSince, reportStats, reportSweeps, setSyncPerCommit, shardClock, withShardSpan } from './telemetry.ts';
import { ShardError } from './shardError.ts';
import { diskFull, hostFault } from './sqlErrors.ts';
import Database from 'better-sqlite3';
import { ShareLedger, TurnLine } from './shareLanes.ts';
import type { TenantDb } from './tenantDb.ts';
import { CONFLICT_WAIT_MS, isTransactionOp, Transactions } from './transactions.ts';
import { loggedAppend, runLogged, setRequestWindow } from './writeCall.ts';
import { afterCommit } from './requestLog.ts';

const data = workerData as ShardWorkerData;
const port = parentPort!;
/**
 * --sync full --sync-flush shared: one sync for the commits of a turn's tenants before their answers
 * (sharedFlush.ts), the tenants' connections committing with synchronous=NORMAL; where that cannot
 * work, and by default, a sync per commit.
 */
const sharedFlush = data.sync === 'full' && data.syncFlush === 'shared' ? SharedFlush.open(data.dataDir) : null;
if (sharedFlush !== null && sharedFlush.flush === null) {
  process.stderr.write(
    `${JSON.stringify({ level: 'warn', msg: 'shared flush unavailable: a sync per commit instead', shard: data.shardIndex, reason: sharedFlush.reason })}\n`,
  );
}
const flush = sharedFlush?.flush ?? null;
setSyncPerCommit(data.sync === 'full' && flush === null);
const pool = new DbPool(data.dataDir, flush === null ? data.sync : 'normal', data.maxOpenDbs, data.closedSweeps);

/**
 * Before anything leaves for the front end: every commit so far durable. A sync that fails leaves
 * commits that a power loss may undo: none of them may be acknowledged, so the shard stops here and
 * the front end answers its calls UNAVAILABLE (as for any shard that dies) and starts it again.
 */
function beforeAnswer(): void {
  if (flush === null) return;
  try {
    const synced = flush.beforeAnswer();
    if (synced !== null) countSync(synced);
  } catch (error) {
    process.stderr.write(
      `${JSON.stringify({ level: 'fatal', msg: 'shared flush failed: the shard stops without answering', shard: data.shardIndex, error: (error as Error).message })}\n`,
    );
    process.exit(70);
  }
}
const quotaPages: QuotaPage[] = data.quotaPages.map(viewPage);
setRequestWindow(data.idempotencyWindowMs);

/** Records what a call did in the tenant's shared usage slot. */
function record(db: TenantDb, slot: number, rowsRead: number, rowsWritten: number): void {
  const page = quotaPages[Math.floor(slot / kSlotsPerPage)];
  if (!page) return;
  const index = slot % kSlotsPerPage;
  addRows(page, index, rowsRead, rowsWritten);
  // The size changes only when something was written (or on first open).
  if (db.takeSizeChanged()) storeStoragePages(page, index, Math.ceil(db.sizeBytes() / kStoragePageBytes));
}

/**
 * Charges a call's time on this thread to its tenant (shard_ms_per_second;
 * the front end takes it at the tenant's next admission). Only the tenant's
 * own calls carry limits; an operator's work is not charged.
 */
function chargeTime(request: ShardRequest, ms: number): void {
  if (!('limits' in request)) return;
  ledger.charge(request.tenantId, request.limits.shareMs, ms, performance.now());
  const slot = request.limits.slot;
  const page = quotaPages[Math.floor(slot / kSlotsPerPage)];
  if (page) addShardTime(page, slot % kSlotsPerPage, ms * 1000);
}

function recordResults(db: TenantDb, slot: number, result: ExecuteResult | ExecuteResult[]): void {
  let read = 0;
  let written = 0;
  for (const r of Array.isArray(result) ? result : [result]) {
    read += r.rows.length;
    written += r.rowsAffected;
  }
  record(db, slot, read, written);
}

/**
 * What handle() runs: every request but those taken care of as they arrive
 * (quotaPage, retention, release) or in runTurn (hold, and snapshot, which
 * spans turns of the event loop).
 */
type Call = Exclude<ShardRequest, { op: 'quotaPage' | 'retention' | 'release' | 'hold' | 'snapshot' | 'cancel' | 'txBegin' | 'txStep' | 'txCommit' | 'txRollback' }>;

function handle(request: Call): ShardResults[Call['op']] {
  switch (request.op) {
    case 'execute': {
      const db = pool.get(request.tenantId);
      const result = request.requestId === undefined ? db.execute(request.statement, request.limits) : (runLogged(db, request) as ExecuteResult);
      recordResults(db, request.limits.slot, result);
      return encodeExecuteResponse(result);
    }
    case 'batch': {
      const db = pool.get(request.tenantId);
      const results = request.requestId === undefined ? db.batch(request.statements, request.limits) : (runLogged(db, request) as ExecuteResult[]);
      recordResults(db, request.limits.slot, results);
      return encodeBatchResponse(results);
    }
    case 'query': {
      const id = request.id;
      const db = pool.get(request.tenantId);
      // Transferred, not copied: the chunk's bytes exist once on each side of the port.
      const rowCount = db.query(request.statement, request.limits, request.rowsPerChunk, (chunk) => replies.postChunk({ id, kind: 'chunk', chunk }));
      record(db, request.limits.slot, rowCount, 0);
      return { rowCount };
    }
    case 'create': {
      const db = pool.create(request.tenantId, request.adoptExisting);
      try {
        return { schemaVersion: db.migrate(request.migrations) };
      } catch (error) {
        // A broken migration must not stop tenants being created: the tenant
        // starts at the last version that applied, and the failure is
        // recorded when the migrator retries it.
        if (error instanceof ShardError) return { schemaVersion: Number(error.wire.metadata?.reached_version ?? 0) };
        throw error;
      }
    }
    case 'migrate':
      return { schemaVersion: pool.get(request.tenantId).migrate(request.migrations) };
    case 'restore':
      return { replaced: pool.restore(request.tenantId, request.file) };
    case 'appendEvents': {
      const db = pool.get(request.tenantId);
      const appended = db.appendEvents(request.events, request.expectedPosition, request.retentionMs, request.limits, loggedAppend(db, request));
      if (!appended.replayed) {
        record(db, request.limits.slot, 0, appended.positions.length);
        countCommit(1);
      }
      afterCommit(request.requestId);
      return appended;
    }
    case 'readEvents': {
      const db = pool.get(request.tenantId);
      const read = db.readEvents(request.fromPosition, request.limit, request.types, request.retentionMs, request.limits);
      record(db, request.limits.slot, read.events.length, 0);
      return read;
    }
    case 'drop':
      return { removed: pool.remove(request.tenantId, request.keepAs) };
    case 'shutdown': {
      transactions.closeAll();
      const closed = pool.closeAll();
      // Posted ahead of this answer: the front end keeps them before it closes the catalog.
      reportSweeps(pool);
      return { closed };
    }
    case 'crash':
      // Reaches here only when fault injection is off (runTurn throws first otherwise).
      throw new ShardError({ code: Status.PERMISSION_DENIED, reason: 'FAULT_INJECTION_DISABLED', message: 'crash is not a call' });
  }
}

function toWire(request: ShardRequest, error: unknown): WireError {
  if (error instanceof ShardError) return error.wire;
  // A tenant's file that cannot be opened or read (damaged, disk): not a bug, and not INTERNAL.
  if (error instanceof Database.SqliteError) {
    const fault = error.code === 'SQLITE_FULL' ? diskFull(error.code) : hostFault(error.code, error.message);
    if (fault) return fault;
  }
  // A bug or an environment failure (disk, permissions): the front end
  // answers INTERNAL; the details stay in the server log.
  process.stderr.write(
    `${JSON.stringify({
      level: 'error',
      msg: 'shard request failed',
      shard: data.shardIndex,
      op: request.op,
      tenant: request.tenantId,
      error: error instanceof Error ? error.stack : String(error),
    })}\n`,
  );
  return { code: Status.INTERNAL, reason: 'INTERNAL', message: 'internal error in the shard; see the server log' };
}

const replies = new Replies(port, beforeAnswer);

const transactions = new Transactions({
  pool,
  post: (response) => replies.post(response),
  ran: (db, limits, result) => recordResults(db, limits.slot, result),
  committed: (db, limits, wrote) => {
    if (wrote) countCommit(1);
    record(db, limits.slot, 0, 0);
  },
  toWire,
});
pool.beforeForget = (tenantId) => transactions.closeTenant(tenantId);

/** When a call parked for a transaction's write lock first found it taken: its wait is bounded from there. */
const parkedSince = new WeakMap<ShardRequest, number>();

function answer(request: Call): void {
  const start = performance.now();
  let result: unknown;
  try {
    result = withShardSpan(request, () => handle(request));
  } catch (error) {
    const ms = performance.now() - start;
    chargeTime(request, ms);
    replies.ran(pool.peek(request.tenantId), ms);
    // A write that found an interactive transaction holding the lock waits for it, elsewhere: the shard goes on.
    const since = parkedSince.get(request) ?? Date.now();
    const timeoutMs = 'limits' in request ? request.limits.timeoutMs : CONFLICT_WAIT_MS;
    const parked = transactions.parkCall(
      request.tenantId,
      error,
      timeoutMs,
      since,
      () => {
        parkedSince.set(request, since);
        requeue(request);
      },
      (wire) => replies.post({ id: request.id, kind: 'error', error: wire }),
    );
    if (parked) return;
    replies.post({ id: request.id, kind: 'error', error: toWire(request, error) });
    return;
  }
  const db = pool.peek(request.tenantId);
  const ms = performance.now() - start;
  chargeTime(request, ms);
  replies.ran(db, ms);
  // An Execute or Batch that wrote committed on its own (no group around it).
  const wrote = db !== undefined && isWrite(request) && db.takeWrote();
  if (wrote) countCommit(1);
  if (request.op !== 'execute') replies.post({ id: request.id, kind: 'ok', result });
  // With the shared flush a write's answer waits too, for the one sync that covers the turn's writes.
  else if ((wrote && flush === null) || db === undefined) replies.post(packResult(request.id, result as EncodedMessage));
  else replies.hold(packResult(request.id, result as EncodedMessage));
}

/**
 * A group's answers: the group committed (or not) as a whole, so they go at once; with the shared
 * flush they wait with the turn's other answers for the one sync that covers them all.
 */
function answerGroup(db: TenantDb, outcomes: Outcome[]): void {
  const succeeded = outcomes.filter((o) => o.error === undefined).length;
  if (db.takeWrote() && succeeded > 0) countCommit(succeeded);
  const answers = outcomes.map(({ request, result, error }): PackedResult | ShardResponse => {
    if (error !== undefined) return { id: request.id, kind: 'error', error: toWire(request, error) };
    recordResults(db, request.limits.slot, result!);
    return request.op === 'execute'
      ? packResult(request.id, encodeExecuteResponse(result as ExecuteResult))
      : { id: request.id, kind: 'ok', result: encodeBatchResponse(result as ExecuteResult[]) };
  });
  if (flush === null) replies.postAll(answers);
  else replies.holdAll(answers);
}

/**
 * A snapshot (BackupTenant, a copy for CreateTenant or an integrity check)
 * copies the database a step per turn of the event loop
 * (TenantDb.snapshot): the shard runs its other calls in between and
 * answers this one when the copy is done. The connection stays open until
 * then unless the tenant is removed or restored or the shard stops, which
 * ends the snapshot with ABORTED.
 */
function startSnapshot(request: Extract<ShardRequest, { op: 'snapshot' }>): void {
  const startMs = shardClock();
  let db: TenantDb;
  try {
    db = pool.get(request.tenantId);
  } catch (error) {
    replies.post({ id: request.id, kind: 'error', error: toWire(request, error) });
    return;
  }
  pool.pin(request.tenantId);
  db.snapshot(request.file).then(
    () => {
      pool.unpin(request.tenantId);
      reportSpanSince(request, startMs);
      replies.post({ id: request.id, kind: 'ok', result: { bytes: 0 } });
    },
    (error: unknown) => {
      pool.unpin(request.tenantId);
      reportSpanSince(request, startMs);
      const wire: WireError = db.isOpen
        ? toWire(request, error)
        : {
            code: Status.ABORTED,
            reason: 'SNAPSHOT_INTERRUPTED',
            message: `the database of tenant ${request.tenantId} was closed (deleted, restored or the server is stopping) before its snapshot was complete; retry`,
            metadata: { tenant: request.tenantId },
          };
      replies.post({ id: request.id, kind: 'error', error: wire });
    },
  );
}

/**
 * Received calls wait in one queue per tenant, and the shard takes turns
 * between the tenants that have calls waiting: a tenant with many calls
 * queued (heavy ones, say) gets one turn, then every other tenant that was
 * waiting gets one, before its next. A tenant's own calls keep their order.
 * Only a group commit takes more than one call in a turn: the writes queued
 * right behind each other, which share one commit.
 */
/** A request that waits for its tenant's turn: all but the control messages, which apply as they arrive. */
type Queued = Exclude<ShardRequest, { op: 'quotaPage' | 'retention' | 'release' | 'cancel' }>;
const queues = new Map<string, Queued[]>();
/**
 * Tenants with calls waiting, in the order of their next turn: those within
 * their shard_ms_per_second first, and only when none of them waits, those
 * past it (shareLanes.ts), so that the shard serves a tenant over its share
 * when it would otherwise idle, and never ahead of one within it.
 */
const turns = new TurnLine();
const overShareTurns = new TurnLine();
const ledger = new ShareLedger();

/** Puts a tenant with calls waiting in line for its next turn. */
function lineUp(tenantId: string): void {
  if (ledger.overShare(tenantId, performance.now())) overShareTurns.push(tenantId);
  else turns.push(tenantId);
}
/**
 * Tenants whose database file another thread has to itself (VACUUM and the
 * like, in the file-task pool): their calls stay queued, and they get no
 * turn, until `release`. The shard's other tenants go on.
 */
const held = new Set<string>();
/** A turn that ran this long lets the calls received meanwhile in before the same tenant's next turn. */
const LONG_TURN_MS = 1;

function enqueue(message: ShardInbound): void {
  if (!Array.isArray(message)) return receive(message);
  for (const entry of message) receive(Array.isArray(entry) ? unpackExecute(entry) : entry);
}

/** Takes in one received request: control messages apply at once, calls join their tenant's queue. */
function receive(request: ShardRequest): void {
  switch (request.op) {
    case 'quotaPage':
      quotaPages[request.pageIndex] = viewPage(request.buffers);
      return;
    case 'retention':
      pool.setEventRetention(request.tenantId, request.retentionMs);
      return;
    case 'release':
      // Sent once the other thread is done with the file: the tenant's calls may run again.
      release(request);
      return;
    case 'cancel':
      dropCancelled(request.tenantId, request.target);
      return;
  }
  // What the front end's cancel of this call names to the guard.
  if ('limits' in request) request.limits.callId = callIdOf(request.id, data.shardIndex);
  const queue = queues.get(request.tenantId);
  if (queue !== undefined) {
    queue.push(request);
    return;
  }
  queues.set(request.tenantId, [request]);
  if (!held.has(request.tenantId)) lineUp(request.tenantId);
}

/** A cancelled call that has not run yet leaves its tenant's queue, answered CANCELLED. */
function dropCancelled(tenantId: string, target: number): void {
  const queue = queues.get(tenantId);
  const index = queue?.findIndex((queued) => queued.id === target) ?? -1;
  if (index < 0) return;
  queue!.splice(index, 1);
  replies.post({ id: target, kind: 'error', error: { code: Status.CANCELLED, reason: 'CALL_CANCELLED', message: 'the call was cancelled before it ran' } });
}

/** Takes in every message the port has waiting. */
function receiveWaiting(): void {
  for (let received = receiveMessageOnPort(port); received; received = receiveMessageOnPort(port)) enqueue(received.message as ShardInbound);
}

/** The next tenant's next call; undefined when no tenant has one. */
function nextTurn(): Queued | undefined {
  for (let pulled = false; ; pulled = true) {
    const request = nextOf(turns);
    if (request !== undefined) return request;
    // Only then an over-share tenant's, after what arrived meanwhile.
    if (pulled) return nextOf(overShareTurns);
    receiveWaiting();
  }
}

/** The next call of the first tenant in `line` that has one. */
function nextOf(line: TurnLine): Queued | undefined {
  for (let tenantId = line.shift(); tenantId !== undefined; tenantId = line.shift()) {
    const queue = queues.get(tenantId);
    const request = queue?.shift();
    if (request !== undefined) return request;
    if (queue !== undefined) queues.delete(tenantId);
  }
  return undefined;
}

/** A parked call's turn again (a transaction released the write lock): first in its tenant's queue. */
function requeue(request: Queued): void {
  const queue = queues.get(request.tenantId);
  if (queue !== undefined) queue.unshift(request);
  else {
    queues.set(request.tenantId, [request]);
    if (!held.has(request.tenantId)) turns.push(request.tenantId);
  }
  if (!running) setImmediate(runWaiting);
}

/** After a tenant's turn: back in line for its next one, behind whoever arrived meanwhile. */
function endTurn(tenantId: string, ms: number): void {
  if (ms >= LONG_TURN_MS) receiveWaiting();
  const queue = queues.get(tenantId);
  if (queue === undefined) return;
  if (queue.length === 0) queues.delete(tenantId);
  else if (!held.has(tenantId)) lineUp(tenantId);
}

/**
 * The write queued right behind `first` in its tenant's queue, for its group
 * commit; undefined if the next call there is not a write. The port is read
 * only when the tenant has nothing queued here.
 */
function nextWriteOf(first: WriteRequest): WriteRequest | undefined {
  if (!queues.get(first.tenantId)?.length) receiveWaiting();
  const queue = queues.get(first.tenantId);
  const next = queue?.[0];
  if (next === undefined || !sameGroup(first, next)) return undefined;
  queue!.shift();
  return next;
}

/** `hold`, in its turn: closes the tenant's database and takes it out of the turns until `release`. */
function hold(request: Extract<ShardRequest, { op: 'hold' }>): void {
  transactions.closeSpares(request.tenantId);
  if (!pool.close(request.tenantId)) {
    replies.post({
      id: request.id,
      kind: 'error',
      error: {
        code: Status.ABORTED,
        reason: 'TENANT_BUSY',
        message: `a snapshot of tenant ${request.tenantId} is being made, or it has interactive transactions open; retry when they are done`,
        metadata: { tenant: request.tenantId },
      },
    });
    return;
  }
  held.add(request.tenantId);
  replies.post({ id: request.id, kind: 'ok', result: { closed: true } });
}

function release(request: Extract<ShardRequest, { op: 'release' }>): void {
  const wasHeld = held.delete(request.tenantId);
  try {
    // The file changed size: its usage record says so before its next call.
    record(pool.get(request.tenantId), request.slot, 0, 0);
  } catch {
    // Deleted meanwhile: nothing to record.
  }
  const waiting = queues.get(request.tenantId)?.length ?? 0;
  if (wasHeld && waiting > 0) lineUp(request.tenantId);
  replies.post({ id: request.id, kind: 'ok', result: { held: waiting } });
}

/**
 * Runs one turn: `request`, or, when it is a write with more writes of the
 * same tenant queued right behind it, all that can share its commit.
 */
function runTurn(request: Queued): void {
  if (request.op === 'crash' && data.faultInjection) {
    // Uncaught, as a real bug would be: the worker dies before it runs another call.
    throw new Error('injected shard crash');
  }
  if (request.op === 'hold') return hold(request);
  replies.beforeRun(pool.peek(request.tenantId));
  if (request.op === 'snapshot') return startSnapshot(request);
  if (isTransactionOp(request)) {
    const started = performance.now();
    transactions.handle(request);
    if (request.op !== 'txRollback') chargeTime(request, performance.now() - started);
    return;
  }
  // While a transaction may hold the tenant's write lock, its writes run one by one (and park if it does).
  if (!data.groupCommit || !isWrite(request) || transactions.hasWriter(request.tenantId)) return answer(request);
  const second = nextWriteOf(request);
  if (second === undefined) return answer(request);
  let db: TenantDb;
  try {
    db = pool.get(request.tenantId);
  } catch {
    // The database cannot be opened: each call gets that answer on its own.
    answer(request);
    answer(second);
    return;
  }
  const groupStart = shardClock();
  const { outcomes } = runGroup(db, request, second, () => nextWriteOf(request));
  // One tenant's calls, one commit: the whole group is its time.
  chargeTime(request, shardClock() - groupStart);
  replies.ran(db, shardClock() - groupStart);
  reportGroupSpans(outcomes, groupStart);
  answerGroup(db, outcomes);
}

/** Closed tenants opened per sweep tick at most, so one tick never holds up calls for long. */
const CLOSED_SWEEPS_PER_TICK = 16;

/**
 * Event retention in the background: between calls, the expired events of
 * the open tenants go (a read never shows them even before), and those of
 * closed tenants whose oldest event has expired (the pool noted it as it
 * closed them), a few per tick.
 */
function logSweepFailure(tenantId: string, error: unknown): void {
  process.stderr.write(`${JSON.stringify({ level: 'warn', msg: 'event sweep failed', shard: data.shardIndex, tenant: tenantId, error: String(error) })}\n`);
}

setInterval(() => {
  for (const db of pool.openDatabases()) {
    try {
      db.requests.sweep(data.idempotencyWindowMs);
      db.sweepExpiredEvents();
    } catch (error) {
      logSweepFailure(db.tenantId, error);
    }
  }
  pool.sweepClosed(Date.now(), (tenantId) => held.has(tenantId), CLOSED_SWEEPS_PER_TICK, logSweepFailure);
  reportSweeps(pool);
  ledger.prune(performance.now());
}, data.eventSweepMs).unref();

/** Set while the turns run, so that a call requeued meanwhile is not run from a second loop. */
let running = false;

function runWaiting(): void {
  if (running) return;
  running = true;
  try {
    for (let request = nextTurn(); request !== undefined; request = nextTurn()) {
      const started = performance.now();
      runTurn(request);
      endTurn(request.tenantId, performance.now() - started);
    }
  } catch (error) {
    // A bug (or an injected crash) ends the worker. Answers held for the turn's sync include writes
    // that committed: they go out first (after the sync), so that a committed write is never
    // reported failed. Nothing else is held outside this loop.
    replies.flush();
    throw error;
  } finally {
    running = false;
  }
  replies.flush();
  reportStats(pool.size);
  reportSweeps(pool);
}

port.on('message', (message: ShardInbound) => {
  enqueue(message);
  runWaiting();
});
