/**
 * The front end's handle on one shard worker. Calls are posted to the worker
 * in order and answered by id. If the worker dies, every call it had is
 * failed UNAVAILABLE and a new worker is started; other shards never notice.
 * A call made under a recording span carries its trace context and gets a
 * child span (shardSpans.ts).
 *
 * Calls made in one event-loop turn go to the worker as one message (an
 * array), flushed from setImmediate: a port message costs the main thread
 * more than the structured clone of a small request, and gRPC hands us the
 * calls that arrived together in one turn (bench/dispatch.ts measures it).
 */
import type { CancelSignal } from '../grpc/cancelSignal.ts';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { status as Status } from '@grpc/grpc-js';
import { isStorageFault, TenantdError, unavailable } from '../errors.ts';
import {
  callIdOf,
  packExecute,
  unpackResult,
  type EventSweep,
  type PackedExecute,
  type PackedResult,
  type QueryChunk,
  type ShardOutbound,
  type ShardRequest,
  type ShardResponse,
  type ShardResults,
  type ShardStats,
  type ShardWorkerData,
} from '../protocol.ts';
import type { QuotaPageBuffers } from '../quota/layout.ts';
import type { ObservedShard } from '../telemetry/serverMetrics.ts';
import { PACKAGE_ROOT } from '../paths.ts';
import type { CallCanceller } from '../../workers/guard.ts';
import { queuedBytesOf, type ShardQueueBudget } from './shardQueueBudget.ts';
import { endShardSpan, traceShardCall, type TracedCall } from './shardSpans.ts';

/** A request as callers write it: the handle assigns the id. */
export type RequestWithoutId = ShardRequest extends infer R ? (R extends ShardRequest ? Omit<R, 'id'> : never) : never;

interface Pending {
  resolve(result: unknown): void;
  reject(error: TenantdError): void;
  onChunk: ((chunk: QueryChunk) => void) | undefined;
  /** Set when the call is traced. */
  traced: TracedCall | undefined;
  tenantId: string;
  /** Taken from the queue budget (0: not counted). */
  queuedBytes: number;
}

function cancelledError(): TenantdError {
  return new TenantdError(Status.CANCELLED, 'CALL_CANCELLED', 'the call was cancelled');
}

const BOOTSTRAP = join(PACKAGE_ROOT, 'workers', 'bootstrap.mjs');
const SHARD_ENTRY = new URL(`../../workers/shard.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);
const RESTART_DELAY_MS = [0, 100, 500, 2_000];

export interface ShardHandleOptions extends Omit<ShardWorkerData, 'entry' | 'quotaPages' | 'closedSweeps'> {
  /** Every page of shared quota state so far, handed to each worker it starts. */
  quotaPages(): QuotaPageBuffers[];
  /** This shard's closed tenants with events to sweep (the catalog's notes), handed to each worker it starts. */
  closedSweeps(): EventSweep[];
  /** The worker's notes of them changed: the catalog keeps them for the next worker. */
  onSweeps(noted: EventSweep[], cleared: string[]): void;
  onLog(level: 'info' | 'warn' | 'error', message: string, fields: Record<string, unknown>): void;
  /** Interrupts a running call's statement on the worker's thread; null: cancels only drop queued calls. */
  canceller: CallCanceller | null;
  /** The server's bound on queued tenant calls; null: none (tests of a handle alone). */
  queueBudget: ShardQueueBudget | null;
}

export class ShardHandle implements ObservedShard {
  private worker!: Worker;
  private readonly pending = new Map<number, Pending>();
  /** Tenant calls posted and not yet answered, and their bytes (the queue budget's count for this shard). */
  private queuedCalls = 0;
  private queuedBytes = 0;
  private nextId = 1;
  private stopping = false;
  /** False between a worker's death and its replacement's start. */
  private alive = false;
  private restarts = 0;
  private lastStart = 0;
  /** Event-loop active time of the workers before this one, and of this one at the last look. */
  private retiredBusyMs = 0;
  private lastBusyMs = 0;
  /** What the live worker last reported; null until it reports. */
  private stats: ShardStats | null = null;
  /** Commit counts of the workers before this one. */
  private retiredCommits = 0;
  private retiredCommittedCalls = 0;
  private retiredSyncs = 0;
  private retiredFilesystemSyncs = 0;
  /** Requests of this event-loop turn, posted together by flush(). */
  private outbox: (ShardRequest | PackedExecute)[] = [];
  private flushScheduled = false;
  private readonly flush = (): void => {
    this.flushScheduled = false;
    const batch = this.outbox;
    if (batch.length === 0) return;
    this.outbox = [];
    this.worker.postMessage(batch);
  };

  constructor(private readonly options: ShardHandleOptions) {
    this.spawn();
  }

  get index(): number {
    return this.options.shardIndex;
  }

  /** Calls posted and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Cumulative ms the shard's threads spent running, not waiting for calls (their event loops' active time). */
  busyMs(): number {
    // A dead worker reads 0; what it did since the last look is lost, which keeps the sum monotonic.
    if (this.alive) this.lastBusyMs = this.worker.performance.eventLoopUtilization().active;
    return this.retiredBusyMs + this.lastBusyMs;
  }

  /** Connections the worker holds open, as it last reported; null until it reports. */
  get openDatabases(): number | null {
    return this.stats?.openDatabases ?? null;
  }

  /** The live worker's OS thread id, as it last reported (Linux); null until it reports, or elsewhere. */
  get osThreadId(): number | null {
    return this.stats?.osThreadId ?? null;
  }

  /** Durable commits of writes, across restarts (as of the worker's last report). */
  get commits(): number {
    return this.retiredCommits + (this.stats?.commits ?? 0);
  }

  /** Calls whose writes those commits carried; `committedCalls / commits` is the mean group size. */
  get committedCalls(): number {
    return this.retiredCommittedCalls + (this.stats?.committedCalls ?? 0);
  }

  /** Syncs that made those commits durable: one per commit, or one shared by many (the shared flush). */
  get syncs(): number {
    return this.retiredSyncs + (this.stats?.syncs ?? 0);
  }

  /** Of `syncs`, those that were a syncfs of the whole filesystem (the shared flush, commits to several tenants). */
  get filesystemSyncs(): number {
    return this.retiredFilesystemSyncs + (this.stats?.filesystemSyncs ?? 0);
  }

  get restartCount(): number {
    return this.restarts;
  }

  /** The live worker thread, for tests that need to kill one. */
  get thread(): Worker {
    return this.worker;
  }

  /**
   * Posts a call. When `signal` aborts (the client cancelled or went away,
   * or the server stops) the call is dropped if it has not run yet, and its
   * statement is interrupted if it runs: it ends CANCELLED at once.
   */
  call<R extends RequestWithoutId>(request: R, onChunk?: (chunk: QueryChunk) => void, signal?: CancelSignal): Promise<ShardResults[R['op']]> {
    if (signal?.aborted) return Promise.reject(cancelledError());
    if (this.stopping) return Promise.reject(unavailable('SHUTTING_DOWN', 'the server is shutting down'));
    if (!this.alive) {
      return Promise.reject(unavailable('SHARD_RESTARTING', 'the shard serving this tenant is restarting; retry the call'));
    }
    const queued = this.options.queueBudget === null ? null : queuedBytesOf(request);
    if (queued !== null) {
      try {
        this.options.queueBudget!.take(this.index, this.queuedCalls, this.queuedBytes, queued);
      } catch (error) {
        return Promise.reject(error as TenantdError);
      }
      this.queuedCalls++;
      this.queuedBytes += queued;
    }
    const id = this.nextId++;
    const traced = traceShardCall(request.op, request.tenantId);
    // Callers build a fresh object per call, so the id goes on it rather than on a copy.
    const full = request as unknown as ShardRequest;
    full.id = id;
    if (traced) full.trace = traced.carrier;
    // An Execute with a request_id is rare enough to cross in object form.
    const message = full.op === 'execute' && full.requestId === undefined ? packExecute(id, full) : full;
    const answered = new Promise<ShardResults[R['op']]>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (r: unknown) => void, reject, onChunk, traced: traced?.call, tenantId: request.tenantId, queuedBytes: queued ?? -1 });
      this.outbox.push(message);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(this.flush);
      }
    });
    if (signal === undefined) return answered;
    const onAbort = (): void => this.cancel(id);
    signal.addEventListener('abort', onAbort, { once: true });
    return answered.finally(() => signal.removeEventListener('abort', onAbort));
  }

  /**
   * Cancels call `id`: one still in the outbox never goes; one queued in the
   * worker is dropped there; one running has its statement interrupted by
   * the guard at once (its answer is then CANCELLED).
   */
  cancel(id: number): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    const index = this.outbox.findIndex((m) => (Array.isArray(m) ? m[0] : m.id) === id);
    if (index >= 0) {
      this.outbox.splice(index, 1);
      this.settle(id);
      if (pending.traced) endShardSpan(pending.traced, this.index, cancelledError().toWire());
      pending.reject(cancelledError());
      return;
    }
    try {
      this.options.canceller?.cancel(callIdOf(id, this.index));
    } catch (error) {
      this.options.onLog('warn', 'could not interrupt a cancelled call', { shard: this.index, error: String(error) });
    }
    if (this.alive) this.worker.postMessage({ op: 'cancel', id: 0, tenantId: pending.tenantId, target: id } satisfies ShardRequest);
  }

  /** Forgets an answered (or failed) call and gives back what it took of the queue budget. */
  private settle(id: number): Pending | undefined {
    const pending = this.pending.get(id);
    if (!pending) return undefined;
    this.pending.delete(id);
    if (pending.queuedBytes >= 0) {
      this.queuedCalls--;
      this.queuedBytes -= pending.queuedBytes;
      this.options.queueBudget?.give(pending.queuedBytes);
    }
    return pending;
  }

  /** Cancels every call in flight (shutdown, at the drain timeout). */
  cancelAll(): void {
    for (const id of [...this.pending.keys()]) this.cancel(id);
  }

  /**
   * Hands the worker a new page of quota state. Posted on the same port as
   * calls, so it arrives before any call for a tenant in that page.
   */
  addQuotaPage(pageIndex: number, buffers: QuotaPageBuffers): void {
    // Ahead of any call still in the outbox, which is also fine: a page is never needed before it exists.
    if (this.alive) this.worker.postMessage({ op: 'quotaPage', id: 0, tenantId: '', pageIndex, buffers } satisfies ShardRequest);
  }

  /**
   * Tells the shard a tenant's new event retention, for its background
   * sweep. Ahead of calls still in the outbox, which is fine: they carry it
   * too. A worker that is restarting learns it from the tenant's next events call.
   */
  setEventRetention(tenantId: string, retentionMs: number): void {
    if (this.alive) this.worker.postMessage({ op: 'retention', id: 0, tenantId, retentionMs } satisfies ShardRequest);
  }

  /** Closes every database in the shard cleanly, then ends the thread. */
  async stop(): Promise<void> {
    try {
      await this.call({ op: 'shutdown', tenantId: '' });
    } catch {
      // A worker that is already gone has nothing left to close.
    }
    this.stopping = true;
    await this.worker.terminate();
  }

  private spawn(): void {
    this.lastStart = Date.now();
    const { onLog: _onLog, onSweeps: _onSweeps, canceller: _canceller, queueBudget: _queueBudget, quotaPages, closedSweeps, ...data } = this.options;
    const workerData: ShardWorkerData = { ...data, quotaPages: quotaPages(), closedSweeps: closedSweeps(), entry: SHARD_ENTRY.href };
    const worker = new Worker(BOOTSTRAP, { workerData, name: `shard-${data.shardIndex}` });
    worker.on('message', (message: ShardOutbound) => {
      if (!Array.isArray(message)) return this.onMessage(message);
      // A packed answer starts with its id; several answers come as an array of them.
      if (typeof message[0] === 'number') return this.onPackedResult(message as PackedResult);
      for (const one of message as (ShardResponse | PackedResult)[]) {
        if (Array.isArray(one)) this.onPackedResult(one);
        else this.onMessage(one);
      }
    });
    worker.on('error', (error) => {
      this.options.onLog('error', 'shard worker failed', { shard: this.index, error: error.stack ?? String(error) });
    });
    worker.on('exit', (code) => this.onExit(worker, code));
    this.worker = worker;
    this.outbox = [];
    this.alive = true;
  }

  private onPackedResult(message: PackedResult): void {
    const id = message[0];
    const pending = this.settle(id);
    if (!pending) return;
    if (pending.traced) endShardSpan(pending.traced, this.index, null);
    pending.resolve(unpackResult(message));
  }

  private onMessage(message: ShardResponse): void {
    if (message.kind === 'stats') {
      this.stats = message.stats;
      return;
    }
    if (message.kind === 'sweeps') {
      this.options.onSweeps(message.noted, message.cleared);
      return;
    }
    const pending = this.pending.get(message.id);
    if (!pending) return;
    if (message.kind === 'chunk') {
      pending.onChunk?.(message.chunk);
      return;
    }
    if (message.kind === 'span') {
      if (pending.traced) pending.traced.ran = message.span;
      return;
    }
    this.settle(message.id);
    if (pending.traced) endShardSpan(pending.traced, this.index, message.kind === 'ok' ? null : message.error);
    if (message.kind === 'ok') pending.resolve(message.result);
    else {
      // The operator has to act (free disk, restore a damaged file): an error in the log, not just a status.
      if (isStorageFault(message.error)) {
        this.options.onLog('error', 'storage fault', { shard: this.index, tenant: pending.tenantId, reason: message.error.reason, message: message.error.message });
      }
      pending.reject(TenantdError.fromWire(message.error));
    }
  }

  private onExit(worker: Worker, code: number): void {
    if (worker !== this.worker) return;
    this.alive = false;
    this.retiredBusyMs += this.lastBusyMs;
    this.lastBusyMs = 0;
    if (this.stats !== null) {
      this.retiredCommits += this.stats.commits;
      this.retiredCommittedCalls += this.stats.committedCalls;
      this.retiredSyncs += this.stats.syncs;
      this.retiredFilesystemSyncs += this.stats.filesystemSyncs;
      this.stats = { openDatabases: 0, commits: 0, committedCalls: 0, syncs: 0, filesystemSyncs: 0, osThreadId: null };
    }
    // Calls not yet posted are in `pending` too and fail with the rest.
    this.outbox = [];
    for (const [id, pending] of this.pending) {
      this.settle(id);
      const error = new TenantdError(Status.UNAVAILABLE, 'SHARD_RESTARTING', 'the shard serving this tenant restarted; retry the call', {
        metadata: { shard: String(this.index) },
      });
      if (pending.traced) endShardSpan(pending.traced, this.index, error.toWire());
      pending.reject(error);
    }
    if (this.stopping) return;
    // Restart at once after a long healthy run, with growing delays if it keeps dying.
    if (Date.now() - this.lastStart > 60_000) this.restarts = 0;
    const delay = RESTART_DELAY_MS[Math.min(this.restarts, RESTART_DELAY_MS.length - 1)]!;
    this.restarts++;
    this.options.onLog('warn', 'shard worker exited; restarting', { shard: this.index, code, delayMs: delay });
    setTimeout(() => {
      if (!this.stopping) this.spawn();
    }, delay).unref();
  }
}
