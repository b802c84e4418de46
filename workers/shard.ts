/**
 * The shard worker: owns its tenants' databases outright and runs their calls
 * one at a time, in the order the front end sent them. Every request gets
 * exactly one final answer (`ok` or `error`); a Query also sends chunks first.
 *
 * The front end posts the calls of one of its event-loop turns as one array;
 * Executes cross in packed form (protocol.ts). Writes for one tenant that are
 * already queued behind each other are committed together (groupCommit.ts):
 * the worker pulls more of the queue with receiveMessageOnPort, so the order
 * of calls is never changed. Answers of quick reads go back together too.
 */
import { performance } from 'node:perf_hooks';
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { status as Status } from '@grpc/grpc-js';
import type { WireError } from '../src/errors.ts';
import {
  packResult,
  unpackExecute,
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
import { isWrite, runGroup, sameGroup, type Outcome } from './groupCommit.ts';
import { Replies } from './replies.ts';
import { countCommit, reportGroupSpans, reportSpanSince, reportStats, shardClock, withShardSpan } from './telemetry.ts';
import { ShardError } from './shardError.ts';
import type { TenantDb } from './tenantDb.ts';

const data = workerData as ShardWorkerData;
const port = parentPort!;
const pool = new DbPool(data.dataDir, data.sync, data.maxOpenDbs);
const quotaPages: QuotaPage[] = data.quotaPages.map(viewPage);

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

function handle(request: ShardRequest): ShardResults[ShardRequest['op']] {
  switch (request.op) {
    case 'execute': {
      const db = pool.get(request.tenantId);
      const result = db.execute(request.statement, request.limits);
      recordResults(db, request.limits.slot, result);
      return result;
    }
    case 'batch': {
      const db = pool.get(request.tenantId);
      const results = db.batch(request.statements, request.limits);
      recordResults(db, request.limits.slot, results);
      return results;
    }
    case 'query': {
      const id = request.id;
      const db = pool.get(request.tenantId);
      const rowCount = db.query(request.statement, request.limits, request.rowsPerChunk, (chunk) => {
        port.postMessage({ id, kind: 'chunk', chunk } satisfies ShardResponse);
      });
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
    case 'snapshot':
      // Runs across turns of the event loop: see startSnapshot.
      throw new Error('snapshot is not run by handle()');
    case 'restore':
      return { replaced: pool.restore(request.tenantId, request.file) };
    case 'appendEvents': {
      const db = pool.get(request.tenantId);
      const positions = db.appendEvents(request.events, request.expectedPosition, request.retentionMs, request.limits);
      record(db, request.limits.slot, 0, positions.length);
      countCommit(1);
      return { positions };
    }
    case 'readEvents': {
      const db = pool.get(request.tenantId);
      const read = db.readEvents(request.fromPosition, request.limit, request.types, request.retentionMs, request.limits);
      record(db, request.limits.slot, read.events.length, 0);
      return read;
    }
    case 'hold':
    case 'release':
      // They change the order of calls: see hold().
      throw new Error(`${request.op} is not run by handle()`);
    case 'drop':
      return { removed: pool.remove(request.tenantId) };
    case 'shutdown':
      return { closed: pool.closeAll() };
    case 'crash':
    case 'quotaPage':
    case 'retention':
      throw new ShardError({ code: Status.PERMISSION_DENIED, reason: 'FAULT_INJECTION_DISABLED', message: `${request.op} is not a call` });
  }
}

function toWire(request: ShardRequest, error: unknown): WireError {
  if (error instanceof ShardError) return error.wire;
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

const replies = new Replies(port);

function answer(request: ShardRequest): void {
  const start = performance.now();
  let result: unknown;
  try {
    result = withShardSpan(request, () => handle(request));
  } catch (error) {
    const ms = performance.now() - start;
    chargeTime(request, ms);
    replies.ran(pool.peek(request.tenantId), ms);
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
  else if (wrote || db === undefined) replies.post(packResult(request.id, result as ExecuteResult));
  else replies.hold(packResult(request.id, result as ExecuteResult));
}

/** A group's answers: the group committed (or not) as a whole, so they go at once. */
function answerGroup(db: TenantDb, outcomes: Outcome[]): void {
  const succeeded = outcomes.filter((o) => o.error === undefined).length;
  if (db.takeWrote() && succeeded > 0) countCommit(succeeded);
  replies.postAll(
    outcomes.map(({ request, result, error }): PackedResult | ShardResponse => {
      if (error !== undefined) return { id: request.id, kind: 'error', error: toWire(request, error) };
      recordResults(db, request.limits.slot, result!);
      return request.op === 'execute' ? packResult(request.id, result as ExecuteResult) : { id: request.id, kind: 'ok', result: result! };
    }),
  );
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
 * Tenants whose database file another thread has to itself (VACUUM and the
 * like, in the file-task pool): their calls wait here, in arrival order,
 * until `release` puts them back at the head of the queue. The shard's other
 * tenants are not held up.
 */
const held = new Map<string, ShardRequest[]>();

/** Handles hold and release; true when `request` was one of them or was held. */
function hold(request: ShardRequest): boolean {
  const waiting = held.get(request.tenantId);
  if (request.op === 'release') {
    held.delete(request.tenantId);
    try {
      // The file changed size: its usage record says so before its next call.
      record(pool.get(request.tenantId), request.slot, 0, 0);
    } catch {
      // Deleted meanwhile: nothing to record.
    }
    if (waiting !== undefined && waiting.length > 0) {
      queue = [...waiting, ...queue.slice(queueHead)];
      queueHead = 0;
    }
    replies.post({ id: request.id, kind: 'ok', result: { held: waiting?.length ?? 0 } });
    return true;
  }
  if (waiting !== undefined) {
    waiting.push(request);
    return true;
  }
  if (request.op !== 'hold') return false;
  if (!pool.close(request.tenantId)) {
    replies.post({
      id: request.id,
      kind: 'error',
      error: {
        code: Status.ABORTED,
        reason: 'TENANT_BUSY',
        message: `a snapshot of tenant ${request.tenantId} is being made; retry when it is done`,
        metadata: { tenant: request.tenantId },
      },
    });
    return true;
  }
  held.set(request.tenantId, []);
  replies.post({ id: request.id, kind: 'ok', result: { closed: true } });
  return true;
}

/**
 * Requests received and not yet run, in arrival order. The front end posts
 * the calls of one of its event-loop turns as one array.
 */
let queue: ShardRequest[] = [];
let queueHead = 0;

function enqueue(message: ShardInbound): void {
  if (!Array.isArray(message)) {
    queue.push(message);
    return;
  }
  for (const entry of message) queue.push(Array.isArray(entry) ? unpackExecute(entry) : entry);
}

/** The next request already received, if any; control messages are applied on the way. */
function takeLocal(): ShardRequest | undefined {
  while (queueHead < queue.length) {
    const request = queue[queueHead++]!;
    if (queueHead === queue.length) {
      queue = [];
      queueHead = 0;
    }
    if (!control(request)) return request;
  }
  return undefined;
}

/** The next queued request, taken synchronously from what was received or from the port. */
function takeQueued(): ShardRequest | undefined {
  for (;;) {
    const request = takeLocal();
    if (request !== undefined) return request;
    const received = receiveMessageOnPort(port);
    if (!received) return undefined;
    enqueue(received.message as ShardInbound);
  }
}

/** Applies a message that is not a call; false when it is a call. */
function control(request: ShardRequest): boolean {
  if (request.op === 'quotaPage') {
    quotaPages[request.pageIndex] = viewPage(request.buffers);
    return true;
  }
  if (request.op === 'retention') {
    pool.setEventRetention(request.tenantId, request.retentionMs);
    return true;
  }
  if (request.op === 'crash' && data.faultInjection) {
    // Uncaught, as a real bug would be: the worker dies before it reads another message.
    throw new Error('injected shard crash');
  }
  return false;
}

/**
 * Answers `request` and, while it is a write with another write for the
 * same tenant queued right behind it, everything that can share its commit.
 */
function drain(initial: ShardRequest): void {
  let pending: ShardRequest | undefined = initial;
  while (pending !== undefined) {
    const request: ShardRequest = pending;
    pending = undefined;
    if (held.size > 0 || request.op === 'hold' || request.op === 'release') {
      if (hold(request)) continue;
    }
    replies.beforeRun(pool.peek(request.tenantId));
    if (request.op === 'snapshot') {
      startSnapshot(request);
      continue;
    }
    if (!data.groupCommit || !isWrite(request)) {
      answer(request);
      continue;
    }
    const next = takeQueued();
    if (next === undefined || !sameGroup(request, next)) {
      answer(request);
      pending = next;
      continue;
    }
    let db: TenantDb;
    try {
      db = pool.get(request.tenantId);
    } catch {
      // The database cannot be opened: each call gets that answer on its own.
      answer(request);
      pending = next;
      continue;
    }
    const groupStart = shardClock();
    const { outcomes, leftover } = runGroup(db, request, next, takeQueued);
    // One tenant's calls, one commit: the whole group is its time.
    chargeTime(request, shardClock() - groupStart);
    replies.ran(db, shardClock() - groupStart);
    reportGroupSpans(outcomes, groupStart);
    answerGroup(db, outcomes);
    pending = leftover;
  }
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
      db.sweepExpiredEvents();
    } catch (error) {
      logSweepFailure(db.tenantId, error);
    }
  }
  pool.sweepClosed(Date.now(), (tenantId) => held.has(tenantId), CLOSED_SWEEPS_PER_TICK, logSweepFailure);
}, data.eventSweepMs).unref();

port.on('message', (message: ShardInbound) => {
  enqueue(message);
  for (let request = takeLocal(); request !== undefined; request = takeLocal()) drain(request);
  replies.flush();
  reportStats(pool.size);
});
