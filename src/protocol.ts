/**
 * Every message that crosses between the front end and a shard worker.
 *
 * Messages go over the worker's own port with structured clone, so SQL values
 * keep their JS types: integers are bigint (exact over the whole int64
 * range), reals number, text string, blobs Uint8Array, NULL null.
 */
import type { WireError } from './errors.ts';
import type { SyncMode } from './config.ts';
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
}

export interface MigrationStep {
  version: number;
  migrationId: string;
  sql: string;
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

export type ShardRequest =
  | (RequestBase & { op: 'execute'; limits: CallLimits; statement: StatementInput })
  | (RequestBase & { op: 'batch'; limits: CallLimits; statements: StatementInput[] })
  | (RequestBase & { op: 'query'; limits: CallLimits; statement: StatementInput; rowsPerChunk: number })
  /** Creates the tenant's database, or adopts the copy that a `snapshot` left at its path. */
  | (RequestBase & { op: 'create'; adoptExisting: boolean; migrations: MigrationStep[] })
  /** Applies schema migrations above the database's version. */
  | (RequestBase & { op: 'migrate'; migrations: MigrationStep[] })
  /** Writes a consistent copy of the tenant's database to `file` (which must not exist). */
  | (RequestBase & { op: 'snapshot'; file: string })
  | (RequestBase & { op: 'drop' })
  /** Closes every database; the worker is terminated after it answers. */
  | (RequestBase & { op: 'shutdown' })
  /** A new page of shared quota state; no answer is sent. */
  | (RequestBase & { op: 'quotaPage'; pageIndex: number; buffers: QuotaPageBuffers })
  /** Fault injection for tests: the worker dies of an uncaught exception. Refused unless enabled. */
  | (RequestBase & { op: 'crash' });

export interface QueryChunk {
  columns: ColumnInfo[] | null;
  rows: SqlValue[][];
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
  | { id: number; kind: 'stats'; openDatabases: number };

/** Results by op, for the typed call helpers on the front end. */
export interface ShardResults {
  execute: ExecuteResult;
  batch: ExecuteResult[];
  query: { rowCount: number };
  create: { schemaVersion: number };
  snapshot: { bytes: number };
  migrate: { schemaVersion: number };
  drop: { removed: boolean };
  shutdown: { closed: number };
  crash: never;
  quotaPage: never;
}

/** Given to each worker at start. */
export interface ShardWorkerData {
  entry: string;
  shardIndex: number;
  dataDir: string;
  sync: SyncMode;
  maxOpenDbs: number;
  /** The shared quota pages that exist when the worker starts. */
  quotaPages: QuotaPageBuffers[];
  /** Let queued writes of one tenant share a commit. */
  groupCommit: boolean;
  /** Accept the `crash` op (tests only). */
  faultInjection: boolean;
}

/** Where a tenant's database lives under the data directory. */
export function tenantDbPath(dataDir: string, tenantId: string): string {
  return `${dataDir}/tenants/${tenantId}/db.sqlite`;
}
