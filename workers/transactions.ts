/**
 * Interactive transactions (SqlService.Transaction) inside a shard.
 *
 * Each open transaction has its own connection to the tenant's database, so
 * the tenant's other calls, on its main connection, read the committed
 * state, and the shard's thread never waits for a client: between a
 * transaction's requests it runs whatever else is queued. While a tenant
 * has transaction connections, all its connections share the file in WAL
 * mode with NORMAL locking (DbPool.share); a tenant without transactions
 * goes back to the faster EXCLUSIVE mode once its spare connections are
 * closed (tick()).
 *
 * SQLite lets one connection write at a time. A writer that finds the write
 * lock held by a transaction (SQLITE_BUSY; busy_timeout is 0 everywhere) is
 * parked here, not spun on: the shard goes on, and the writer is retried
 * when a transaction of its tenant ends, or fails ABORTED
 * TRANSACTION_CONFLICT, with RetryInfo, once it has waited CONFLICT_WAIT_MS
 * (or its own timeout, if shorter). That holds for the tenant's plain calls
 * and for a transaction's own statements, so no writer waits forever. A
 * transaction whose snapshot went stale (SQLITE_BUSY_SNAPSHOT: it read, and
 * another transaction committed since) cannot succeed by waiting: it gets
 * TRANSACTION_CONFLICT at once.
 *
 * Time limits (idle, total, deadline) are the front end's
 * (src/grpc/transaction.ts): it sends txRollback when one passes.
 */
import { status as Status } from '@grpc/grpc-js';
import type { WireError } from '../src/errors.ts';
import type { CallLimits, ExecuteResult, ShardRequest, ShardResponse, TransactionMode } from '../src/protocol.ts';
import type { DbPool } from './dbPool.ts';
import { afterCommit, requestHash } from './requestLog.ts';
import { ShardError } from './shardError.ts';
import type { TenantDb } from './tenantDb.ts';
import { requestWindowMs } from './writeCall.ts';

export type TransactionRequest = Extract<ShardRequest, { op: 'txBegin' | 'txStep' | 'txCommit' | 'txRollback' }>;

export function isTransactionOp(request: ShardRequest): request is TransactionRequest {
  return request.op === 'txBegin' || request.op === 'txStep' || request.op === 'txCommit' || request.op === 'txRollback';
}

/** The longest a writer waits for a transaction's write lock (capped by the call's own timeout). */
export const CONFLICT_WAIT_MS = 2_000;
/** A transaction's connection is kept this long after it ends, for the tenant's next transaction. */
const SPARE_IDLE_MS = 2_000;
const TICK_MS = 1_000;

interface Transaction {
  id: number;
  tenantId: string;
  db: TenantDb;
  mode: TransactionMode;
  requestId: string | null;
  /** May hold the write lock: began IMMEDIATE or ran a statement that writes. */
  writer: boolean;
  /** A request of this transaction waits for the write lock; the ones after it wait in `queue`. */
  parked: boolean;
  queue: Exclude<TransactionRequest, { op: 'txBegin' }>[];
}

interface Waiter {
  retry(): void;
  fail(wire: WireError): void;
  /** When it stops waiting (Date.now() ms). */
  deadline: number;
  timer: NodeJS.Timeout;
  owner: Transaction | null;
}

interface TenantTransactions {
  open: Map<number, Transaction>;
  spare: { db: TenantDb; since: number }[];
  /** Writers waiting for the write lock, in arrival order. */
  waiters: Waiter[];
}

export interface TransactionHost {
  pool: DbPool;
  post(response: ShardResponse): void;
  /** A step ran: record its rows and the database's size in the tenant's usage slot. */
  ran(db: TenantDb, limits: CallLimits, result: ExecuteResult | ExecuteResult[]): void;
  /** A transaction committed; `wrote`: it wrote (one durable commit). */
  committed(db: TenantDb, limits: CallLimits, wrote: boolean): void;
  toWire(request: ShardRequest, error: unknown): WireError;
}

type Busy = 'busy' | 'snapshot' | null;

/** Whether an error is SQLite's "the write lock is taken" (busy) or "your snapshot is stale" (snapshot). */
function busyKind(error: unknown): Busy {
  const code = error instanceof ShardError ? error.wire.reason : (error as { code?: unknown } | null)?.code;
  if (code === 'SQLITE_BUSY') return 'busy';
  if (code === 'SQLITE_BUSY_SNAPSHOT') return 'snapshot';
  return null;
}

/** A short, jittered wait, so that retries of many conflicting clients spread out. */
function retryDelayMs(): number {
  return 10 + Math.floor(Math.random() * 40);
}

export function conflict(tenantId: string, message: string): WireError {
  return { code: Status.ABORTED, reason: 'TRANSACTION_CONFLICT', message, metadata: { tenant: tenantId }, retryDelayMs: retryDelayMs() };
}

function gone(txId: number, why: string): WireError {
  return { code: Status.ABORTED, reason: 'TRANSACTION_ABORTED', message: `transaction ${txId} is no longer open: ${why}; begin a new one`, retryDelayMs: 0 };
}

export class Transactions {
  private readonly tenants = new Map<string, TenantTransactions>();
  private readonly byId = new Map<number, Transaction>();

  constructor(private readonly host: TransactionHost) {
    setInterval(() => this.tick(), TICK_MS).unref();
  }

  /** Whether a transaction of the tenant may hold the write lock: its other writes then run one by one, not in a group commit. */
  hasWriter(tenantId: string): boolean {
    const state = this.tenants.get(tenantId);
    if (state === undefined) return false;
    for (const txn of state.open.values()) if (txn.writer) return true;
    return false;
  }

  /**
   * A plain call (Execute, Batch, Append...) of `tenantId` failed with
   * `error`: when that is SQLITE_BUSY and a transaction of the tenant is
   * open, parks it until one ends (then `retry`) or until its bound
   * (then `fail` with TRANSACTION_CONFLICT), and returns true.
   */
  parkCall(tenantId: string, error: unknown, timeoutMs: number, since: number, retry: () => void, fail: (wire: WireError) => void): boolean {
    if (busyKind(error) !== 'busy') return false;
    return this.park(tenantId, null, Math.min(CONFLICT_WAIT_MS, timeoutMs), since, retry, fail);
  }

  handle(request: TransactionRequest): void {
    if (request.op === 'txBegin') return this.begin(request, Date.now());
    const txn = this.byId.get(request.txId);
    if (txn === undefined) return this.answerMissing(request, gone(request.txId, 'it was rolled back (time limit, shard restart, or the tenant was closed)'));
    if (request.op === 'txRollback') return this.rollback(txn, request);
    if (txn.parked) {
      txn.queue.push(request);
      return;
    }
    this.run(txn, request, Date.now());
  }

  /** Rolls back every transaction of the tenant and closes its connections: its files are about to go (delete, restore). */
  closeTenant(tenantId: string): void {
    const state = this.tenants.get(tenantId);
    if (state === undefined) return;
    for (const txn of [...state.open.values()]) {
      this.abandon(txn, gone(txn.id, `the database of tenant ${tenantId} was closed (deleted, restored, or the server is stopping)`));
      txn.db.close();
      this.finish(txn, false);
    }
    this.closeSpares(tenantId);
  }

  /** Every tenant's transactions, rolled back: the shard is stopping. */
  closeAll(): void {
    for (const tenantId of [...this.tenants.keys()]) this.closeTenant(tenantId);
  }

  /** Closes the tenant's spare transaction connections (before another thread takes its file: maintenance). */
  closeSpares(tenantId: string): void {
    const state = this.tenants.get(tenantId);
    if (state === undefined) return;
    for (const { db } of state.spare) db.close();
    state.spare = [];
  }

  // ---- the requests ----

  private begin(request: Extract<TransactionRequest, { op: 'txBegin' }>, since: number): void {
    const { tenantId, limits } = request;
    const state = this.state(tenantId);
    const bound = Math.min(CONFLICT_WAIT_MS, limits.timeoutMs);
    const retry = () => this.begin(request, since);
    const fail = (wire: WireError) => this.host.post({ id: request.id, kind: 'error', error: wire });
    if (request.requestId !== null) {
      // The first try of this request may still be open: its retry waits for its outcome.
      for (const other of state.open.values()) {
        if (other.requestId === request.requestId && this.park(tenantId, null, limits.timeoutMs, since, retry, fail)) return;
      }
    }
    let db: TenantDb | undefined;
    try {
      this.host.pool.share(tenantId);
      db = this.connection(state, tenantId);
      db.begin(request.mode === 'IMMEDIATE' ? 'IMMEDIATE' : 'DEFERRED');
    } catch (error) {
      if (db !== undefined) this.putBack(state, db);
      if (busyKind(error) === 'busy' && this.park(tenantId, null, bound, since, retry, fail)) return;
      return fail(this.host.toWire(request, error));
    }
    if (request.requestId !== null && request.mode !== 'READ_ONLY') {
      try {
        const recorded = db.requests.lookup(request.requestId, 'Transaction', requestHash('Transaction', request.mode), requestWindowMs());
        if (recorded !== undefined) {
          db.rollbackGroup();
          this.putBack(state, db);
          this.host.post({ id: request.id, kind: 'ok', result: { replayed: true } });
          return;
        }
      } catch (error) {
        db.rollbackGroup();
        this.putBack(state, db);
        return fail(this.host.toWire(request, error));
      }
    }
    const txn: Transaction = {
      id: request.txId,
      tenantId,
      db,
      mode: request.mode,
      requestId: request.requestId,
      writer: request.mode === 'IMMEDIATE',
      parked: false,
      queue: [],
    };
    state.open.set(txn.id, txn);
    this.byId.set(txn.id, txn);
    // The main connection stays open (and shared) while transactions are.
    this.host.pool.pin(tenantId);
    this.host.post({ id: request.id, kind: 'ok', result: { replayed: false } });
  }

  private run(txn: Transaction, request: Exclude<TransactionRequest, { op: 'txBegin' | 'txRollback' }>, since: number): void {
    if (request.op === 'txStep') this.step(txn, request, since);
    else this.commit(txn, request, since);
  }

  private step(txn: Transaction, request: Extract<TransactionRequest, { op: 'txStep' }>, since: number): void {
    const { db } = txn;
    const answer = (result: ShardResponse) => this.host.post(result);
    if (!db.inTransaction) {
      answer({ id: request.id, kind: 'ok', result: { ok: false, error: gone(txn.id, 'SQLite rolled it back after an earlier failure'), open: false } });
      return;
    }
    let result: ExecuteResult | ExecuteResult[];
    try {
      const limits = txn.mode === 'READ_ONLY' ? { ...request.limits, readOnly: true } : request.limits;
      result = request.batch ? db.inSavepoint(() => db.batchStatements(request.statements, limits)) : db.execute(request.statements[0]!, limits);
    } catch (error) {
      const wrote = db.takeWrote();
      const busy = busyKind(error);
      const fail = (wire: WireError) => answer({ id: request.id, kind: 'ok', result: { ok: false, error: wire, open: db.inTransaction } });
      if (busy === 'busy' && this.parkOwn(txn, request.limits, since, () => this.step(txn, request, since), fail)) return;
      if (wrote && busy === null) txn.writer = true;
      const wire =
        busy !== null
          ? conflict(txn.tenantId, `another transaction of tenant ${txn.tenantId} wrote since this one read (or holds the write lock); roll back and retry`)
          : this.host.toWire(request, error);
      if (!db.inTransaction) this.lockReleased(txn);
      fail(wire);
      return;
    }
    if (db.takeWrote()) txn.writer = true;
    this.host.ran(db, request.limits, result);
    answer({ id: request.id, kind: 'ok', result: { ok: true, result } });
  }

  private commit(txn: Transaction, request: Extract<TransactionRequest, { op: 'txCommit' }>, since: number): void {
    const { db } = txn;
    const fail = (wire: WireError) => this.host.post({ id: request.id, kind: 'error', error: wire });
    if (!db.inTransaction) {
      this.finish(txn, true);
      return fail(gone(txn.id, 'SQLite rolled it back after an earlier failure; nothing was committed'));
    }
    try {
      if (txn.requestId !== null && txn.mode !== 'READ_ONLY') {
        db.requests.record(txn.requestId, 'Transaction', requestHash('Transaction', txn.mode), { replayed: false });
        txn.writer = true;
      }
      db.commitGroup(request.limits);
    } catch (error) {
      const busy = busyKind(error);
      if (busy === 'busy' && this.parkOwn(txn, request.limits, since, () => this.commit(txn, request, since), (wire) => this.failCommit(txn, fail, wire))) return;
      const wire =
        busy !== null
          ? conflict(txn.tenantId, `another transaction of tenant ${txn.tenantId} wrote since this one read; it was rolled back, retry it`)
          : this.host.toWire(request, error);
      return this.failCommit(txn, fail, wire);
    }
    const wrote = txn.writer || db.takeWrote();
    this.finish(txn, true);
    afterCommit(txn.requestId);
    this.host.committed(db, request.limits, wrote);
    this.host.post({ id: request.id, kind: 'ok', result: { replayed: false } });
  }

  private failCommit(txn: Transaction, fail: (wire: WireError) => void, wire: WireError): void {
    try {
      txn.db.rollbackGroup();
    } catch {
      // The connection is finished with below either way.
    }
    this.finish(txn, true);
    fail(wire);
  }

  private rollback(txn: Transaction, request: Extract<TransactionRequest, { op: 'txRollback' }>): void {
    this.abandon(txn, gone(txn.id, 'it was rolled back'));
    let clean = true;
    try {
      txn.db.rollbackGroup();
    } catch {
      clean = false;
      txn.db.close();
    }
    this.finish(txn, clean);
    this.host.post({ id: request.id, kind: 'ok', result: { rolledBack: true } });
  }

  /** Answers what the transaction still had waiting (a parked request, pipelined ones) with `wire`. */
  private abandon(txn: Transaction, wire: WireError): void {
    // The pipelined requests first: failing the parked one would otherwise run them.
    for (const request of txn.queue.splice(0)) this.answerMissing(request, wire);
    const state = this.tenants.get(txn.tenantId);
    if (state !== undefined && txn.parked) {
      const mine = state.waiters.filter((w) => w.owner === txn);
      state.waiters = state.waiters.filter((w) => w.owner !== txn);
      for (const waiter of mine) {
        clearTimeout(waiter.timer);
        waiter.fail(wire);
      }
    }
    txn.parked = false;
  }

  private answerMissing(request: Exclude<TransactionRequest, { op: 'txBegin' }>, wire: WireError): void {
    if (request.op === 'txStep') this.host.post({ id: request.id, kind: 'ok', result: { ok: false, error: wire, open: false } });
    else if (request.op === 'txRollback') this.host.post({ id: request.id, kind: 'ok', result: { rolledBack: false } });
    else this.host.post({ id: request.id, kind: 'error', error: wire });
  }

  // ---- connections ----

  private state(tenantId: string): TenantTransactions {
    let state = this.tenants.get(tenantId);
    if (state === undefined) {
      state = { open: new Map(), spare: [], waiters: [] };
      this.tenants.set(tenantId, state);
    }
    return state;
  }

  private connection(state: TenantTransactions, tenantId: string): TenantDb {
    for (let spare = state.spare.pop(); spare !== undefined; spare = state.spare.pop()) {
      if (spare.db.isOpen) return spare.db;
    }
    return this.host.pool.openSecondary(tenantId);
  }

  private putBack(state: TenantTransactions, db: TenantDb): void {
    if (db.isOpen && !db.inTransaction) state.spare.push({ db, since: Date.now() });
    else db.close();
  }

  /** The transaction is over (committed, rolled back, or its connection closed): its connection and the write lock are free. */
  private finish(txn: Transaction, reuse: boolean): void {
    if (!this.byId.delete(txn.id)) return;
    const state = this.tenants.get(txn.tenantId)!;
    state.open.delete(txn.id);
    this.host.pool.unpin(txn.tenantId);
    if (reuse) this.putBack(state, txn.db);
    else txn.db.close();
    this.lockReleased(txn);
  }

  // ---- waiting for the write lock ----

  /** A transaction's own request found the lock taken: it waits, and its later requests wait behind it. */
  private parkOwn(txn: Transaction, limits: CallLimits, since: number, retry: () => void, fail: (wire: WireError) => void): boolean {
    const state = this.tenants.get(txn.tenantId)!;
    // Only another transaction can hold the lock between turns; without one the BUSY is not ours to wait out.
    if (![...state.open.values()].some((other) => other !== txn)) return false;
    txn.parked = true;
    const resume = () => {
      while (!txn.parked && txn.queue.length > 0) {
        const next = txn.queue.shift()!;
        if (next.op === 'txRollback') return this.rollback(txn, next);
        this.run(txn, next, Date.now());
      }
    };
    const parked = this.park(
      txn.tenantId,
      txn,
      Math.min(CONFLICT_WAIT_MS, limits.timeoutMs),
      since,
      () => {
        txn.parked = false;
        retry();
        if (!txn.parked) resume();
      },
      (wire) => {
        txn.parked = false;
        fail(wire);
        resume();
      },
    );
    if (!parked) txn.parked = false;
    return parked;
  }

  private park(tenantId: string, owner: Transaction | null, boundMs: number, since: number, retry: () => void, fail: (wire: WireError) => void): boolean {
    const state = this.tenants.get(tenantId);
    if (state === undefined || state.open.size === 0) return false;
    const deadline = since + boundMs;
    const left = deadline - Date.now();
    const message = `waited ${boundMs} ms for a transaction of tenant ${tenantId} to release the write lock; retry`;
    if (left <= 0) {
      fail(conflict(tenantId, message));
      return true;
    }
    const waiter: Waiter = {
      retry,
      fail,
      deadline,
      owner,
      timer: setTimeout(() => {
        state.waiters = state.waiters.filter((w) => w !== waiter);
        fail(conflict(tenantId, message));
      }, left),
    };
    state.waiters.push(waiter);
    return true;
  }

  /** A transaction of the tenant ended or lost its transaction: the waiting writers try again, in order. */
  private lockReleased(txn: Transaction): void {
    const state = this.tenants.get(txn.tenantId);
    if (state === undefined || state.waiters.length === 0) return;
    const waiters = state.waiters;
    state.waiters = [];
    for (const waiter of waiters) {
      clearTimeout(waiter.timer);
      waiter.retry();
    }
  }

  /** Closes spare connections idle past SPARE_IDLE_MS; a tenant left with none goes back to EXCLUSIVE locking. */
  private tick(): void {
    const now = Date.now();
    for (const [tenantId, state] of this.tenants) {
      state.spare = state.spare.filter(({ db, since }) => {
        if (now - since < SPARE_IDLE_MS) return true;
        db.close();
        return false;
      });
      if (state.open.size === 0 && state.spare.length === 0 && state.waiters.length === 0) {
        this.tenants.delete(tenantId);
        this.host.pool.unshare(tenantId);
      }
    }
  }
}
