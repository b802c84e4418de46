/**
 * Every message that crosses between the front end and a shard worker.
 *
 * Messages go over the worker's own port with structured clone, so SQL values
 * keep their JS types: integers are bigint (exact over the whole int64
 * range), reals number, text string, blobs Uint8Array, NULL null.
 */
import type { WireError } from './errors.ts';
import type { SyncFlushMode, SyncMode } from './config.ts';
import type { QuotaPageBuffers } from './quota/layout.ts';

export type SqlValue = null | bigint | number | string | Uint8Array;

export interface StatementInput {
  sql: string;
  params: SqlValue[];
  /** Keys without the `:`/`@`/`$` prefix; null when there are none. */
  named: Record<string, SqlValue> | null;
}

export interface ColumnInfo {
  name: string;
  declType: string;
}

export interface ExecuteResult {
  columns: ColumnInfo[];
  rows: SqlValue[][];
  rowsAffected: number;
  lastInsertRowid: bigint;
}

/** What the front end decided about the caller, carried with each data call. */
export interface CallLimits {
  readOnly: boolean;
  /** Interrupt the statement after this long; already capped by the client's deadline. */
  timeoutMs: number;
  /** The database may not grow past this many bytes; -1 is unlimited. */
  storageLimitBytes: number;
  /** The tenant's slot in the shared quota pages, where the shard records rows and storage. */
  slot: number;
  /** shard_ms_per_second: past it the shard gives the tenant's turns after the others' (shareLanes.ts); absent or -1 is unlimited. */
  shareMs?: number;
  /** Set by the shard as the call arrives (callIdOf): what a cancel of the call names to the guard. */
  callId?: number;
}

/** More shards than this per process are not supported (call ids would collide). */
export const kMaxShards = 4096;

/** A call's id in the whole process, for the guard's cancel: its shard's request id, made unique across shards. */
export function callIdOf(requestId: number, shardIndex: number): number {
  return requestId * kMaxShards + shardIndex;
}

/** An event as the log keeps it. `time` is epoch ms. */
export interface LogEvent {
  position: bigint;
  type: string;
  data: Uint8Array;
  metadata: Record<string, string>;
  time: number;
}

export type NewEvent = Omit<LogEvent, 'position'>;

export type MaintenanceOperation = 'VACUUM' | 'ANALYZE' | 'OPTIMIZE' | 'INTEGRITY_CHECK';
/** The operations that rewrite the live database; INTEGRITY_CHECK reads a snapshot. */
export type RewriteOperation = Exclude<MaintenanceOperation, 'INTEGRITY_CHECK'>;

export interface MigrationStep {
  version: number;
  migrationId: string;
  sql: string;
  /** The step's time limit (--migration-timeout-ms); 60000 when absent. */
  timeoutMs?: number;
}

interface RequestBase {
  /** Unique per shard handle; the response carries it back. */
  id: number;
  tenantId: string;
  /**
   * W3C trace context (`traceparent`, maybe `tracestate`) of the front-end
   * span the call belongs to. Present only when that span is sampled: it
   * tells the worker to report a ShardSpan before the answer.
   */
  trace?: Record<string, string>;
}

/** How an interactive transaction begins (SqlService.Transaction). */
export type TransactionMode = 'DEFERRED' | 'IMMEDIATE' | 'READ_ONLY';

/** What a transaction's statement or batch answered: a result, or a failure that may have ended the transaction. */
export type TransactionStepResult =
  | { ok: true; result: ExecuteResult | ExecuteResult[] }
  | { ok: false; error: WireError; open: boolean };

export type ShardRequest =
  /** `requestId`: an idempotent write (workers/requestLog.ts); such an Execute crosses unpacked. */
  | (RequestBase & { op: 'execute'; limits: CallLimits; statement: StatementInput; requestId?: string })
  | (RequestBase & { op: 'batch'; limits: CallLimits; statements: StatementInput[]; requestId?: string })
  /**
   * Interactive transactions (workers/transactions.ts). `txId` is unique in
   * the process; each transaction has its own connection to the tenant's
   * database. `txBegin` answers `{ replayed: true }` when `requestId` names
   * a transaction that already committed (and then nothing is open).
   */
  | (RequestBase & { op: 'txBegin'; limits: CallLimits; txId: number; mode: TransactionMode; requestId: string | null })
  | (RequestBase & { op: 'txStep'; limits: CallLimits; txId: number; statements: StatementInput[]; batch: boolean })
  | (RequestBase & { op: 'txCommit'; limits: CallLimits; txId: number })
  /** Rolls back (also a transaction that no longer exists); `limits` absent when the front end ends it (cancel, idle, shutdown). */
  | (RequestBase & { op: 'txRollback'; txId: number })
  | (RequestBase & { op: 'query'; limits: CallLimits; statement: StatementInput; rowsPerChunk: number })
  /** Creates the tenant's database, or adopts the copy that a `snapshot` left at its path. */
  | (RequestBase & { op: 'create'; adoptExisting: boolean; migrations: MigrationStep[] })
  /** Applies schema migrations above the database's version. */
  | (RequestBase & { op: 'migrate'; migrations: MigrationStep[] })
  /** Writes a consistent copy of the tenant's database to `file` (which must not exist). */
  | (RequestBase & { op: 'snapshot'; file: string })
  /**
   * Puts the database file `file` (a restored backup under the data
   * directory, already checked and migrated: src/tenants/fileChecks.ts) in
   * the tenant's place, replacing its current database if it has one.
   */
  | (RequestBase & { op: 'restore'; file: string })
  /**
   * Appends to the tenant's event log in one transaction; with
   * `expectedPosition`, only if the log's last position is that. Events older
   * than `retentionMs` (when > 0) are removed in the same transaction.
   */
  | (RequestBase & { op: 'appendEvents'; limits: CallLimits; events: NewEvent[]; expectedPosition: bigint | null; retentionMs: number; requestId?: string })
  /** Up to `limit` events from `fromPosition`, only `types` when not empty, none older than `retentionMs` (when > 0). */
  | (RequestBase & { op: 'readEvents'; limits: CallLimits; fromPosition: bigint; limit: number; types: string[]; retentionMs: number })
  /**
   * Closes the tenant's database and holds its calls, in order, until
   * `release`, while another thread has the file to itself (VACUUM, ANALYZE
   * or OPTIMIZE in the file-task pool). Refused while a snapshot of the
   * tenant runs.
   */
  | (RequestBase & { op: 'hold' })
  /** Runs the held calls before anything received after them; `slot` to record the database's new size. */
  | (RequestBase & { op: 'release'; slot: number })
  /** Closes the tenant's database and removes its directory; with `keepAs`, renames it there instead (a path under the data directory). */
  | (RequestBase & { op: 'drop'; keepAs?: string })
  /** Closes every database; the worker is terminated after it answers. */
  | (RequestBase & { op: 'shutdown' })
  /** The tenant's event_retention_hours changed (UpdateTenant), in ms, 0 keeps everything; no answer is sent. */
  | (RequestBase & { op: 'retention'; retentionMs: number })
  /** A new page of shared quota state; no answer is sent. */
  | (RequestBase & { op: 'quotaPage'; pageIndex: number; buffers: QuotaPageBuffers })
  /**
   * The call `target` was cancelled: dropped (answered CANCELLED) if still
   * queued; one already running is interrupted through the guard
   * (CallCanceller), not by this message. No answer of its own.
   */
  | (RequestBase & { op: 'cancel'; target: number })
  /** Fault injection for tests: the worker dies of an uncaught exception. Refused unless enabled. */
  | (RequestBase & { op: 'crash' });

/** One QueryResponse, already protobuf (workers/resultWire.ts): the columns in the first one only. */
export interface QueryChunk {
  bytes: Uint8Array;
  rows: number;
}

/**
 * When the shard ran a traced call, in epoch milliseconds (performance.timeOrigin
 * + performance.now(), comparable across threads). The front end turns it into
 * the call's child span; the worker has no tracer of its own.
 */
export interface ShardSpan {
  startMs: number;
  endMs: number;
  /** Calls that shared one commit with this one (group commit), this one included. */
  groupSize?: number;
}

export type ShardResponse =
  | { id: number; kind: 'ok'; result: unknown }
  | { id: number; kind: 'error'; error: WireError }
  | { id: number; kind: 'chunk'; chunk: QueryChunk }
  /** Sent before the final answer of a call that carried `trace`. */
  | { id: number; kind: 'span'; span: ShardSpan }
  /** The shard's gauges, sent (with id 0) whenever they change. */
  | { id: number; kind: 'stats'; stats: ShardStats }
  /**
   * Closed tenants whose events will expire, as the shard's notes of them
   * changed (with id 0): kept in the catalog, so that a restarted shard
   * still sweeps them. `cleared`: nothing of theirs left to expire.
   */
  | { id: number; kind: 'sweeps'; noted: EventSweep[]; cleared: string[] };

/** A tenant's events to sweep while its database is closed: due at oldest + retentionMs (epoch ms). */
export interface EventSweep {
  tenantId: string;
  oldest: number;
  retentionMs: number;
}

/** What a worker counts that the front end cannot see; cumulative over the worker's life. */
export interface ShardStats {
  openDatabases: number;
  /** Transactions that wrote and committed (each one sync under --sync full). */
  commits: number;
  /** Calls whose writes those commits made durable: commits < calls when group commit shares them. */
  committedCalls: number;
  /**
   * Syncs that made commits durable: under --sync full one per commit, or, with the shared flush
   * (Linux), one for all the commits before an answer: an fsync of the WAL when they all went to
   * one tenant's file, else a syncfs of the data directory's filesystem.
   */
  syncs: number;
  /** Of `syncs`, those that were a syncfs of the whole filesystem (the shared flush only). */
  filesystemSyncs: number;
  /** The worker's OS thread id (Linux; null elsewhere): its CPU time is /proc/<pid>/task/<id>/stat. */
  osThreadId: number | null;
}

/**
 * The hot path's compact forms. Structured clone pays for every property
 * name of every object, so an Execute and its answer cross as flat tuples:
 * about a third of the main thread's cost of the object forms (measured in
 * bench/dispatch.ts). Everything else crosses as the objects above.
 *
 * PackedExecute: [id, tenantId, sql, params, named, readOnly (0|1),
 * timeoutMs, storageLimitBytes, slot, trace, shareMs].
 */
export type PackedExecute = [
  number,
  string,
  string,
  SqlValue[],
  Record<string, SqlValue> | null,
  0 | 1,
  number,
  number,
  number,
  Record<string, string> | undefined,
  number,
];

/**
 * A protobuf message encoded in the shard, for the front end to hand to gRPC
 * as it is: bytes in a Uint8Array, or, when small, the same bytes as a
 * one-byte (latin1) string, which crosses the port far more cheaply than an
 * ArrayBuffer (workers/resultWire.ts says why).
 */
export type EncodedMessage = Uint8Array | string;

/**
 * An `ok` answer to an Execute: [id, the ExecuteResponse as protobuf bytes].
 * The shard writes the bytes (workers/resultWire.ts) and the front end
 * hands them to gRPC as they are.
 */
export type PackedResult = [number, EncodedMessage];

export function packExecute(id: number, request: Extract<ShardRequest, { op: 'execute' }>): PackedExecute {
  const { limits, statement } = request;
  return [id, request.tenantId, statement.sql, statement.params, statement.named, limits.readOnly ? 1 : 0, limits.timeoutMs, limits.storageLimitBytes, limits.slot, request.trace, limits.shareMs ?? -1];
}

export function unpackExecute(p: PackedExecute): ShardRequest {
  const request: ShardRequest = {
    op: 'execute',
    id: p[0],
    tenantId: p[1],
    statement: { sql: p[2], params: p[3], named: p[4] },
    limits: { readOnly: p[5] === 1, timeoutMs: p[6], storageLimitBytes: p[7], slot: p[8], shareMs: p[10] },
  };
  if (p[9] !== undefined) request.trace = p[9];
  return request;
}

export function packResult(id: number, response: EncodedMessage): PackedResult {
  return [id, response];
}

export function unpackResult(p: PackedResult): EncodedMessage {
  return p[1];
}

/** What the front end posts to a worker: a control message alone, or the calls of one event-loop turn. */
export type ShardInbound = ShardRequest | (ShardRequest | PackedExecute)[];

/** What a worker posts back: a response, a packed Execute answer, or several answers at once. */
export type ShardOutbound = ShardResponse | PackedResult | (ShardResponse | PackedResult)[];

/** Results by op, for the typed call helpers on the front end. */
export interface ShardResults {
  /** ExecuteResponse bytes. */
  execute: EncodedMessage;
  /** BatchResponse bytes. */
  batch: EncodedMessage;
  query: { rowCount: number };
  txBegin: { replayed: boolean };
  txStep: TransactionStepResult;
  txCommit: { replayed: boolean };
  txRollback: { rolledBack: boolean };
  create: { schemaVersion: number };
  snapshot: { bytes: number };
  restore: { replaced: boolean };
  /** `replayed`: a retry of an Append with the same request_id; nothing was written now. */
  appendEvents: { positions: bigint[]; replayed: boolean };
  /** `complete`: the read reached the end of the log (not cut by its limit or its size). */
  readEvents: { events: LogEvent[]; nextPosition: bigint; complete: boolean };
  hold: { closed: boolean };
  release: { held: number };
  migrate: { schemaVersion: number };
  drop: { removed: boolean };
  shutdown: { closed: number };
  crash: never;
  quotaPage: never;
  retention: never;
  cancel: never;
}

/** Given to each worker at start. */
export interface ShardWorkerData {
  entry: string;
  shardIndex: number;
  dataDir: string;
  sync: SyncMode;
  /** --sync-flush: with --sync full, SQLite's fsync at each commit, or the shared flush (workers/sharedFlush.ts). */
  syncFlush: SyncFlushMode;
  maxOpenDbs: number;
  /** The shared quota pages that exist when the worker starts. */
  quotaPages: QuotaPageBuffers[];
  /** Let queued writes of one tenant share a commit. */
  groupCommit: boolean;
  /** Accept the `crash` op (tests only). */
  faultInjection: boolean;
  /** How often to remove the expired events of open tenants. */
  eventSweepMs: number;
  /** How long a request_id's response is kept (ms); older ones are swept. */
  idempotencyWindowMs: number;
  /** This shard's tenants with events to sweep while closed, as the catalog kept them. */
  closedSweeps: EventSweep[];
}

/** Where a tenant's database lives under the data directory. */
export function tenantDbPath(dataDir: string, tenantId: string): string {
  return `${dataDir}/tenants/${tenantId}/db.sqlite`;
}
