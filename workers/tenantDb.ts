/**
 * One tenant's database connection inside its shard: the guard, the
 * statement cache, and running tenant SQL under the guard.
 *
 * Invariant: tenant SQL is only ever prepared or stepped between
 * `guard.arm()` and `guard.disarm()`, so the authorizer sees every tenant
 * statement (also when SQLite re-prepares one after a schema change), and
 * our own statements (transactions, pragmas, `_tenantd_meta`) run with the
 * guard off.
 */
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import type { SyncMode } from '../src/config.ts';
import type {
  CallLimits,
  ColumnInfo,
  LogEvent,
  NewEvent,
  ExecuteResult,
  MigrationStep,
  QueryChunk,
  RewriteOperation,
  SqlValue,
  StatementInput,
} from '../src/protocol.ts';
import { Guard } from './guard.ts';
import { storageFullCause, toWireError, type FailureContext } from './sqlErrors.ts';
import { fsyncDir } from '../src/durableFs.ts';
import { ShardError } from './shardError.ts';
import { WireWriter } from './resultWire.ts';
import { EventLog, type LoggedAppend } from './eventLog.ts';
import { RequestLog } from './requestLog.ts';
import { CREATE_META_SQL, serviceSchemaProblem } from './serviceSchema.ts';
import { MAX_EXPANSION, statementExpansion, viewExpansions, type Views } from './expansion.ts';


const STATEMENT_CACHE_SIZE = 128;
/**
 * After a checkpoint the WAL file is cut back to this size, and to zero when
 * the connection closes: a tenant at rest keeps an empty -wal file, not up to
 * the 4 MB that the default auto-checkpoint lets it reach.
 */
const WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024;
/** Execute answers in one message; past this the client must use Query. */
const MAX_EXECUTE_RESULT_BYTES = 3 * 1024 * 1024;
const MAX_CHUNK_BYTES = 1024 * 1024;
/**
 * A Query's whole result. The shard produces chunks faster than a slow
 * client reads them and the front end buffers the difference, so one call
 * must not be able to fill the process's memory.
 */
const MAX_QUERY_RESULT_BYTES = 256 * 1024 * 1024;
/**
 * Pages a snapshot copies per step: ~1 ms of work, so a neighbour's call
 * waits at most about that long behind a backup (a 100 MB copy measured
 * 2.6-3.1 ms as the longest pause, against 313 ms for VACUUM INTO at once).
 */
const SNAPSHOT_STEP_BYTES = 1024 * 1024;
/** A snapshot's copy is flushed to disk in the background after every this many bytes. */
const SNAPSHOT_FLUSH_BYTES = 8 * 1024 * 1024;
/** The file format's write and read versions (header bytes 18 and 19): 1 for a rollback journal, 2 for WAL. */
const FILE_FORMAT_OFFSET = 18;
const ROLLBACK_JOURNAL_MODE = Buffer.from([1, 1]);
/**
 * SQLITE_LIMIT_LENGTH of a tenant call: the largest string or blob its SQL
 * can make (zeroblob, printf, ||, group_concat, ...), also bounded by the
 * tenant's storage limit. A value larger than a gRPC message cannot be
 * returned anyway; stored values of a few MiB stay possible.
 */
const MAX_VALUE_BYTES = 10 * 1024 * 1024;
const MIN_VALUE_BYTES = 1024 * 1024;
/**
 * The most a result row may take while SQLite builds it. SQLite computes
 * every value of a row, each up to the length limit, before better-sqlite3
 * copies the row out: 2,000 columns of 10 MiB would be 20 GB. So a
 * statement that returns rows runs with the call's length limit shared
 * between its columns (a row over 16 MiB could not be sent anyway: that is
 * the largest gRPC message).
 */
export const ROW_BUILD_BYTES = 32 * 1024 * 1024;
/** A migration step's time limit when the step carries none (the server's --migration-timeout-ms default). */
export const DEFAULT_MIGRATION_TIMEOUT_MS = 60_000;

/** SQLite's own ceiling for max_page_count. */
const UNLIMITED_PAGES = 4_294_967_294;

/** A rough wire size of a value, to keep messages under gRPC's 4 MiB default. */
function valueSize(value: SqlValue): number {
  if (value === null) return 2;
  if (typeof value === 'string') return value.length * 3 + 4;
  if (typeof value === 'object') return value.byteLength + 4;
  return 11;
}

function rowSize(row: SqlValue[]): number {
  let size = 4;
  for (const value of row) size += valueSize(value);
  return size;
}

function bindable(value: SqlValue): unknown {
  // Structured clone turns Buffers into plain Uint8Arrays, which
  // better-sqlite3 does not bind as blobs.
  if (value instanceof Uint8Array && !Buffer.isBuffer(value)) {
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  }
  return value;
}

/** `?NNN` placeholders; better-sqlite3 binds them by name ("1", "2", ...), not by position. */
const NUMBERED_PARAM = /\?[0-9]/;

function bindArgs(input: StatementInput): unknown[] {
  const numbered = input.params.length > 0 && NUMBERED_PARAM.test(input.sql);
  const args: unknown[] = numbered ? [] : input.params.map(bindable);
  if (input.named || numbered) {
    const named: Record<string, unknown> = {};
    if (numbered) input.params.forEach((value, i) => (named[String(i + 1)] = bindable(value)));
    for (const [key, value] of Object.entries(input.named ?? {})) named[key] = bindable(value);
    args.push(named);
  }
  return args;
}

export interface OpenOptions {
  path: string;
  tenantId: string;
  sync: SyncMode;
  create: boolean;
  /**
   * Open in NORMAL locking mode (a shared-memory WAL index), so that other
   * connections can open the file too: the tenant has interactive
   * transactions, each on its own connection (transactions.ts).
   */
  shared?: boolean;
  /** A transaction's connection: the database exists and is set up; it must not write on open. */
  secondary?: boolean;
}

export class TenantDb {
  readonly tenantId: string;
  private readonly db: Database.Database;
  private readonly guard: Guard;
  private readonly cache = new Map<string, Database.Statement>();
  /** Column descriptions of cached readers; statement.columns() costs ~2.5 µs a call. */
  private columnsOf = new WeakMap<Database.Statement, ColumnInfo[]>();
  /**
   * The service's own statements, prepared on first use: a tenant that is
   * only read never needs the transaction ones, and every statement object
   * made on open is garbage the shard's GC pays for when the LRU closes it.
   */
  private readonly own = new Map<string, Database.Statement>();
  private pageBytes = 0;
  private storageLimit = Number.NaN;
  /** Set when the file may have grown or shrunk since the size was last read. */
  private sizeChanged = true;
  /** A statement that is not read-only ran since the last takeWrote(). */
  private wrote = false;
  /** Bytes of rows the current call has produced so far. */
  private resultBytes = 0;
  /** SQLITE_LIMIT_LENGTH of the call being run, and the one now in force (narrowed per statement). */
  private callLength = 0;
  private lengthInForce = 0;
  /** The request field of the statement running now, for error details. */
  private currentField: string | null = null;

  /** Opened in NORMAL locking mode: other connections may share the file (OpenOptions.shared). */
  readonly shared: boolean;

  private constructor(db: Database.Database, tenantId: string, shared: boolean) {
    this.db = db;
    this.tenantId = tenantId;
    this.shared = shared;
    this.guard = Guard.attach(db);
  }

  /** A service statement (guard off), for the service's own tables: requestLog.ts. */
  serviceStatement(sql: string): Database.Statement {
    return this.ownStatement(sql);
  }

  private ownStatement(sql: string): Database.Statement {
    let statement = this.own.get(sql);
    if (statement === undefined) {
      statement = this.db.prepare(sql);
      this.own.set(sql, statement);
    }
    return statement;
  }

  private get pageSize(): number {
    this.pageBytes ||= Number(this.ownStatement('PRAGMA page_size').pluck().get());
    return this.pageBytes;
  }

  static open(options: OpenOptions): TenantDb {
    if (options.create) mkdirSync(dirname(options.path), { recursive: true });
    const db = new Database(options.path, { fileMustExist: !options.create });
    try {
      // Before the first read: the guard's limits, and a WAL file kept across closes.
      Guard.load(db);
      db.defaultSafeIntegers(true);
      // Only this connection ever opens the file (its shard owns it), so it
      // may hold the lock for good: SQLite then keeps the WAL index in heap
      // memory and skips two fcntl calls per transaction (2-5x faster point
      // reads, measured). Set before the first WAL access for that to apply.
      //
      // The guard keeps the -wal file when the connection closes;
      // journal_size_limit empties it then (and caps what it keeps after a
      // checkpoint). WAL + FULL syncs the log on every commit: an
      // acknowledged write survives power loss. NORMAL syncs only at
      // checkpoints: it survives the process dying, not the machine. One
      // connection per tenant per process: nobody else can hold the lock.
      // One exec for all of it: no statement objects to collect later.
      //
      // While the tenant has interactive transactions open, its connections
      // (this one and one per transaction) share the file in NORMAL mode
      // instead (transactions.ts); busy_timeout stays 0 there too, since the
      // shard's thread must never wait for a lock: a writer that finds the
      // lock taken is parked instead.
      const shared = options.shared === true;
      db.exec(
        `PRAGMA locking_mode = ${shared ? 'NORMAL' : 'EXCLUSIVE'}; PRAGMA journal_mode = WAL; PRAGMA journal_size_limit = ${WAL_SIZE_LIMIT_BYTES};
         PRAGMA synchronous = ${options.sync === 'full' ? 'FULL' : 'NORMAL'}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 0;
         ${options.secondary ? '' : CREATE_META_SQL}`,
      );
      // A new tenant's files and directory must exist after a crash once the
      // catalog lists it: SQLite syncs the file's contents, never the directory entries.
      if (options.create) {
        fsyncDir(dirname(options.path));
        fsyncDir(dirname(dirname(options.path)));
      }
      // tenantd's own tables, exactly: a tenant trigger on them would run
      // whenever the service writes them (the guard checks trigger code as
      // the tenant's, but a tampered file is refused outright). A
      // transaction's secondary connection opens a file its primary checked.
      const problem = options.secondary ? null : serviceSchemaProblem(db);
      if (problem !== null) {
        throw new ShardError({
          code: Status.FAILED_PRECONDITION,
          reason: 'TENANT_SCHEMA_TAMPERED',
          message: `tenant ${options.tenantId}: tenantd's own tables were changed (${problem}); restore a backup or repair the database`,
        });
      }
      return new TenantDb(db, options.tenantId, shared);
    } catch (error) {
      db.close();
      throw error;
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Whether anything but read-only statements ran since the last call of this; resets it. */
  takeWrote(): boolean {
    const wrote = this.wrote;
    this.wrote = false;
    return wrote;
  }

  /** True once after anything that may have changed the database's size. */
  takeSizeChanged(): boolean {
    const changed = this.sizeChanged;
    this.sizeChanged = false;
    return changed;
  }

  sizeBytes(): number {
    return Number(this.ownStatement('PRAGMA page_count').pluck().get()) * this.pageSize;
  }

  get schemaVersion(): number {
    const row = this.db.prepare("SELECT value FROM _tenantd_meta WHERE key = 'schema_version'").pluck().get();
    return row === undefined ? 0 : Number(row);
  }

  /**
   * Applies the steps above the database's version, each in its own
   * transaction, so a failing step leaves the tenant at the last good
   * version. A migration is the operator's SQL, but it runs under the
   * guard's tenant rules (no ATTACH, no transaction control, no reserved
   * names, the allow-lists) and its step's deadline: it runs inside every
   * tenant's database, where the tenant's own triggers and views can make it
   * do anything tenant SQL could.
   */
  migrate(steps: readonly MigrationStep[]): number {
    let version = this.schemaVersion;
    for (const step of steps) {
      if (step.version <= version) continue;
      try {
        this.migrationStep(step);
      } catch (error) {
        // An interactive transaction holds the write lock: not the migration's fault; the shard parks the call until it ends.
        if ((error as { code?: unknown }).code === 'SQLITE_BUSY') {
          throw new ShardError(toWireError(error, { field: 'sql', tenantId: this.tenantId, denial: null, timedOut: false, timeoutMs: 0, storageLimitBytes: this.storageLimit }));
        }
        throw new ShardError({
          code: Status.FAILED_PRECONDITION,
          reason: 'MIGRATION_FAILED',
          message: `migration ${step.migrationId} (version ${step.version}) failed on tenant ${this.tenantId}: ${(error as Error).message}`,
          metadata: { failed_version: String(step.version), reached_version: String(version), migration_id: step.migrationId },
        });
      }
      this.sizeChanged = true;
      this.schemaChanged();
      version = step.version;
    }
    return version;
  }

  private migrationStep(step: MigrationStep): void {
    const timeoutMs = step.timeoutMs ?? DEFAULT_MIGRATION_TIMEOUT_MS;
    const { views, cost } = this.viewInfo();
    const expansion = statementExpansion(step.sql, views, cost);
    if (expansion > MAX_EXPANSION) throw new Error(`the migration expands to about ${expansion} subqueries (at most ${MAX_EXPANSION})`);
    this.ownStatement('BEGIN IMMEDIATE').run();
    try {
      this.guard.armCall(timeoutMs, 'tenant');
      try {
        this.db.exec(step.sql);
      } catch (error) {
        const denial = this.guard.lastDenial();
        if (this.guard.disarm()) throw new Error(`ran past the migration time limit of ${timeoutMs} ms`, { cause: error });
        throw denial === null ? error : new Error(`${(error as Error).message}: ${denial}`, { cause: error });
      } finally {
        this.guard.disarm();
      }
      const problem = serviceSchemaProblem(this.db);
      if (problem !== null) throw new Error(`the reserved _tenantd namespace is not the migration's to change (${problem})`);
      const tooBig = this.expansionProblem();
      if (tooBig !== null) throw new Error(`${tooBig} (at most ${MAX_EXPANSION})`);
      this.db
        .prepare("INSERT INTO _tenantd_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .run(BigInt(step.version));
      this.ownStatement('COMMIT').run();
    } finally {
      if (this.db.inTransaction) this.ownStatement('ROLLBACK').run();
    }
  }

  // ---- idempotent writes (requestLog.ts) ----

  private requestLog: RequestLog | null = null;

  get requests(): RequestLog {
    this.requestLog ??= new RequestLog(this);
    return this.requestLog;
  }

  // ---- the event log (eventLog.ts) ----

  private events: EventLog | null = null;

  private get eventLog(): EventLog {
    this.events ??= new EventLog({
      db: this.db,
      statement: (sql) => this.ownStatement(sql),
      sizeChanged: () => {
        this.sizeChanged = true;
      },
      schemaChanged: () => this.schemaChanged(),
    });
    return this.events;
  }

  appendEvents(events: readonly NewEvent[], expected: bigint | null, retentionMs: number, limits: CallLimits, logged?: LoggedAppend): { positions: bigint[]; replayed: boolean } {
    return this.eventsCall(limits, () => this.eventLog.append(events, expected, retentionMs, logged));
  }

  readEvents(
    from: bigint,
    limit: number,
    types: readonly string[],
    retentionMs: number,
    limits: CallLimits,
  ): { events: LogEvent[]; nextPosition: bigint; complete: boolean } {
    return this.eventsCall(limits, () => this.eventLog.read(from, limit, types, retentionMs));
  }

  /** The shard's background sweep of expired events; a tenant without an events call since it opened has none to sweep. */
  sweepExpiredEvents(): number {
    return this.events?.sweep() ?? 0;
  }

  /** The retention the background sweep uses until the next events call brings one (ms; 0 keeps everything). */
  setEventRetention(ms: number): void {
    this.eventLog.retention = ms;
  }

  /**
   * What the shard must remember to sweep this tenant's events while its
   * database is closed: the oldest event's time and the retention. Null when
   * there is nothing that can expire.
   */
  eventSweepState(): { oldest: number; retentionMs: number } | null {
    const retentionMs = this.events?.retention ?? 0;
    if (retentionMs <= 0) return null;
    const oldest = this.events!.oldestTime();
    return oldest === null ? null : { oldest, retentionMs };
  }

  /**
   * The service's own statements, under the tenant's deadline: the guard
   * leaves them alone but checks any trigger or view code they reach as the
   * tenant's. The storage quota holds, SQLite errors map as for SQL.
   */
  private eventsCall<T>(limits: CallLimits, body: () => T): T {
    this.applyStorageLimit(limits.storageLimitBytes);
    const ownTransaction = !this.db.inTransaction;
    // With the call's id: a client that cancels interrupts its append or read too.
    this.guard.armCall(limits.timeoutMs, 'service', 0, limits.callId ?? 0);
    try {
      return body();
    } catch (error) {
      if (error instanceof ShardError) throw error;
      const denial = this.guard.lastDenial();
      const ended = this.guard.disarmAs();
      const failure = this.failure('events', limits, denial, ended === 'timedOut');
      failure.cancelled = ended === 'cancelled';
      throw new ShardError(toWireError(error, failure));
    } finally {
      this.guard.disarm();
      // The log's own ROLLBACK may itself have been interrupted past the deadline.
      if (ownTransaction && this.db.inTransaction) this.ownStatement('ROLLBACK').run();
    }
  }

  /** What PRAGMA integrity_check finds, at most `limit` lines; empty when the database is sound. `callId`: see {@link TenantDb.interruptible}. */
  integrityProblems(limit = 20, callId = 0): string[] {
    const rows = this.interruptible(callId, () => this.db.prepare(`PRAGMA integrity_check(${Math.max(1, Math.floor(limit))})`).pluck().all() as string[]);
    return rows.length === 1 && rows[0] === 'ok' ? [] : rows;
  }

  /**
   * An operator's maintenance, with the guard off and no deadline (it is not
   * tenant SQL), and a line to report. Run by the file-task pool
   * (fileTasks.ts) while the tenant's shard holds its calls. `callId`: see
   * {@link TenantDb.interruptible}.
   */
  maintain(operation: RewriteOperation, callId = 0): { ok: boolean; message: string } {
    return this.interruptible(callId, () => this.rewrite(operation));
  }

  /**
   * Runs one of the service's own long statements (maintenance, an integrity
   * check) armed under `callId` (0: not armed), with no deadline: a cancel of
   * that id (CallCanceller), or the interrupt of everything at exit, stops
   * it at once, and it ends CANCELLED. Trigger and view code it reaches is
   * checked as the tenant's.
   */
  private interruptible<T>(callId: number, body: () => T): T {
    if (callId === 0) return body();
    this.guard.armCall(0, 'service', 0, callId);
    try {
      return body();
    } catch (error) {
      if ((error as { code?: unknown }).code !== 'SQLITE_INTERRUPT') throw error;
      throw new ShardError({ code: Status.CANCELLED, reason: 'CALL_CANCELLED', message: 'interrupted: its call was cancelled, or the server is stopping' });
    } finally {
      this.guard.disarm();
    }
  }

  private rewrite(operation: RewriteOperation): { ok: boolean; message: string } {
    switch (operation) {
      case 'VACUUM': {
        const before = this.sizeBytes();
        this.db.exec('VACUUM');
        this.sizeChanged = true;
        return { ok: true, message: `vacuumed: ${before} -> ${this.sizeBytes()} bytes` };
      }
      case 'ANALYZE':
        this.db.exec('ANALYZE');
        this.schemaChanged();
        return { ok: true, message: 'analyzed' };
      case 'OPTIMIZE':
        this.db.exec('PRAGMA optimize');
        this.schemaChanged();
        return { ok: true, message: 'optimized' };
    }
  }

  /**
   * Copies the database to `file` (which must not exist) with SQLite's
   * online backup, about 1 MiB of pages per step and one step per turn of
   * the shard's event loop, so the shard's other calls (this tenant's too)
   * run between steps instead of waiting for the whole copy. Writes this
   * connection makes meanwhile are carried into the copy by SQLite, so the
   * file is the database as it was when the promise resolves. Rejects, and
   * leaves no file, if the connection is closed before the copy is done.
   */
  async snapshot(file: string): Promise<void> {
    const pagesPerStep = Math.max(1, Math.ceil(SNAPSHOT_STEP_BYTES / this.pageSize));
    const stepBytes = pagesPerStep * this.pageSize;
    // The copy's last step commits it, with an fsync of everything written
    // that is still dirty: 215 ms for 256 MiB here, on the shard's thread.
    // Flushing the copy as it grows, on libuv's threads, leaves ~30 ms.
    // Our descriptor is closed only after SQLite's, so its locks stay.
    const copy: { handle: FileHandle | null } = { handle: null };
    let flushing: Promise<void> | null = null;
    let unflushed = 0;
    const flush = async () => {
      copy.handle ??= await open(file, 'r');
      await copy.handle.datasync();
    };
    try {
      await this.db.backup(file, {
        progress: () => {
          unflushed += stepBytes;
          if (unflushed >= SNAPSHOT_FLUSH_BYTES && flushing === null) {
            unflushed = 0;
            // A flush that fails only leaves more to the final commit.
            flushing = flush()
              .catch(() => undefined)
              .finally(() => (flushing = null));
          }
          return pagesPerStep;
        },
      });
    } finally {
      await flushing;
      await copy.handle?.close();
    }
    // The copy has every page and no WAL, but its header still says WAL
    // mode, as the source's does: marked as a rollback-journal database, as
    // PRAGMA journal_mode = DELETE would, it opens anywhere, also read-only.
    const fd = openSync(file, 'r+');
    try {
      writeSync(fd, ROLLBACK_JOURNAL_MODE, 0, ROLLBACK_JOURNAL_MODE.length, FILE_FORMAT_OFFSET);
    } finally {
      closeSync(fd);
    }
  }

  /** False once the connection is closed (by the pool, a restore or a delete). */
  get isOpen(): boolean {
    return this.db.open;
  }

  execute(input: StatementInput, limits: CallLimits): ExecuteResult {
    return this.guarded(limits, 'sql', () => this.runOne(input, limits, 'sql'));
  }

  /** All statements in one transaction: either every one applies or none. */
  batch(inputs: readonly StatementInput[], limits: CallLimits): ExecuteResult[] {
    this.beginGroup();
    let committed = false;
    try {
      const results = this.batchStatements(inputs, limits);
      this.commitGroup(limits);
      committed = true;
      return results;
    } finally {
      if (!committed) this.rollbackGroup();
    }
  }

  /** A Batch's statements, inside a transaction the caller owns. */
  batchStatements(inputs: readonly StatementInput[], limits: CallLimits): ExecuteResult[] {
    return this.guarded(limits, 'statements', () => inputs.map((input, i) => this.runOne(input, limits, `statements[${i}].sql`)));
  }

  // ---- group commit: several calls, one transaction, one sync ----

  get inTransaction(): boolean {
    return this.db.inTransaction;
  }

  beginGroup(): void {
    this.begin('IMMEDIATE');
  }

  /**
   * Opens a transaction. SQLITE_BUSY (another connection of the tenant, an
   * interactive transaction, has the write lock) comes back as a ShardError
   * with reason SQLITE_BUSY, for the caller to park the call (transactions.ts).
   */
  begin(mode: 'DEFERRED' | 'IMMEDIATE'): void {
    try {
      this.ownStatement(mode === 'IMMEDIATE' ? 'BEGIN IMMEDIATE' : 'BEGIN DEFERRED').run();
    } catch (error) {
      throw new ShardError(toWireError(error, { field: 'sql', tenantId: this.tenantId, denial: null, timedOut: false, timeoutMs: 0, storageLimitBytes: this.storageLimit }));
    }
  }

  /** Commits the open transaction; a failure (disk full, I/O) is the status of every call in it. */
  commitGroup(limits: CallLimits): void {
    try {
      this.ownStatement('COMMIT').run();
    } catch (error) {
      throw new ShardError(toWireError(error, this.failure('statements', limits, null, false)));
    }
  }

  rollbackGroup(): void {
    if (this.db.inTransaction) this.ownStatement('ROLLBACK').run();
  }

  /**
   * Runs one call of a group in its own savepoint, so that its failure undoes
   * only its own changes. SQLite may still roll back the whole transaction
   * (an interrupted write does): the caller checks `inTransaction`.
   */
  inSavepoint<T>(fn: () => T): T {
    this.ownStatement('SAVEPOINT tenantd_call').run();
    try {
      const result = fn();
      this.ownStatement('RELEASE tenantd_call').run();
      return result;
    } catch (error) {
      if (this.db.inTransaction) {
        this.ownStatement('ROLLBACK TO tenantd_call').run();
        this.ownStatement('RELEASE tenantd_call').run();
      }
      throw error;
    }
  }

  /** Runs a query and hands its rows over in chunks; returns the row count. */
  query(input: StatementInput, limits: CallLimits, rowsPerChunk: number, emit: (chunk: QueryChunk) => void): number {
    return this.guarded(limits, 'sql', () => {
      const statement = this.prepare(input.sql, limits, 'sql');
      this.fitLength(statement);
      if (!statement.reader) {
        throw new ShardError({
          code: Status.INVALID_ARGUMENT,
          reason: 'NOT_A_QUERY',
          message: 'Query runs statements that return rows; use Execute for this one',
          fieldViolations: [{ field: 'sql', description: 'statement returns no rows' }],
        });
      }
      // Each row becomes wire bytes as it is read and is counted at its wire
      // size before it is written: a call holds at most one chunk (~1 MiB)
      // plus the row in hand, whatever its result's size.
      const writer = new WireWriter(64 * 1024);
      writer.columns(this.describe(statement));
      let sent = false;
      let rowsInChunk = 0;
      let total = 0;
      let count = 0;
      for (const row of statement.iterate(...bindArgs(input)) as IterableIterator<SqlValue[]>) {
        const size = writer.measure(row);
        total += size;
        count++;
        if (total > MAX_QUERY_RESULT_BYTES) {
          throw new ShardError({
            code: Status.RESOURCE_EXHAUSTED,
            reason: 'RESULT_TOO_LARGE',
            message: `the result is larger than ${MAX_QUERY_RESULT_BYTES} bytes; page through it with LIMIT and a key`,
            metadata: { rows_so_far: String(count) },
          });
        }
        writer.row(row);
        rowsInChunk++;
        if (rowsInChunk >= rowsPerChunk || writer.length >= MAX_CHUNK_BYTES) {
          emit({ bytes: writer.take(), rows: rowsInChunk });
          sent = true;
          rowsInChunk = 0;
        }
      }
      // The columns go even when there are no rows.
      if (rowsInChunk > 0 || !sent) emit({ bytes: writer.take(), rows: rowsInChunk });
      return count;
    });
  }

  private runOne(input: StatementInput, limits: CallLimits, field: string): ExecuteResult {
    this.currentField = field;
    const statement = this.prepare(input.sql, limits, field);
    this.fitLength(statement);
    const args = bindArgs(input);
    if (!statement.readonly) {
      this.sizeChanged = true;
      this.wrote = true;
      if (!PLAIN_DML.test(statement.source)) {
        this.schemaChanged();
        // VACUUM cannot run in a savepoint, and cannot rename anything.
        if (!VACUUM.test(statement.source)) return this.schemaChecked(() => this.runStatement(statement, args));
      }
    }
    return this.runStatement(statement, args);
  }

  /**
   * Runs tenant DDL in a savepoint and undoes it when it changed tenantd's
   * own objects: ALTER TABLE x RENAME TO _tenantd_events shows the
   * authorizer only the old name, so the result is what is checked.
   */
  private schemaChecked(run: () => ExecuteResult): ExecuteResult {
    this.guard.setTenantPolicy(false);
    this.ownStatement('SAVEPOINT tenantd_ddl').run();
    let problem: string | null = null;
    let done = false;
    try {
      this.guard.setTenantPolicy(true);
      const result = run();
      this.guard.setTenantPolicy(false);
      problem = serviceSchemaProblem(this.db);
      const tooBig = problem === null ? this.expansionProblem() : null;
      if (tooBig !== null) throw tooComplex(this.currentField ?? 'sql', `${tooBig}; nothing was changed`);
      done = problem === null;
      if (problem !== null) {
        throw new ShardError({
          code: Status.PERMISSION_DENIED,
          reason: 'RESERVED_NAME',
          message: `the _tenantd namespace is reserved for tenantd (${problem}); nothing was changed`,
          fieldViolations: [{ field: this.currentField ?? 'sql', description: 'changes a reserved _tenantd object' }],
        });
      }
      return result;
    } finally {
      this.guard.setTenantPolicy(false);
      if (!done) this.views = null;
      // An interrupted statement may have taken the whole transaction with it.
      if (this.db.inTransaction) {
        if (!done) this.runOwnDespiteDeadline('ROLLBACK TO tenantd_ddl');
        this.runOwnDespiteDeadline('RELEASE tenantd_ddl');
      }
      this.guard.setTenantPolicy(true);
    }
  }

  /**
   * One of the service's own statements while the call's deadline may have
   * passed: the watchdog interrupts every statement then (every 10 ms), so
   * a quick statement is simply tried again.
   */
  private runOwnDespiteDeadline(sql: string): void {
    for (let attempt = 0; ; attempt++) {
      try {
        this.ownStatement(sql).run();
        return;
      } catch (error) {
        if ((error as { code?: unknown }).code !== 'SQLITE_INTERRUPT' || attempt >= 5) throw error;
      }
    }
  }

  private runStatement(statement: Database.Statement, args: unknown[]): ExecuteResult {
    if (!statement.reader) {
      const info = statement.run(...args);
      return {
        columns: [],
        rows: [],
        rowsAffected: info.changes,
        lastInsertRowid: BigInt(info.lastInsertRowid),
      };
    }
    const columns = this.describe(statement);
    const rows: SqlValue[][] = [];
    for (const row of statement.iterate(...args) as IterableIterator<SqlValue[]>) {
      // Counted over the whole call, so a Batch's results together fit one message too.
      this.resultBytes += rowSize(row);
      if (this.resultBytes > MAX_EXECUTE_RESULT_BYTES) {
        // Leaving the loop early closes the iterator (its return() resets the statement).
        throw new ShardError({
          code: Status.RESOURCE_EXHAUSTED,
          reason: 'RESULT_TOO_LARGE',
          message: `the result is larger than ${MAX_EXECUTE_RESULT_BYTES} bytes; use Query to stream it`,
          metadata: { rows_so_far: String(rows.length) },
        });
      }
      rows.push(row);
    }
    if (statement.readonly) return { columns, rows, rowsAffected: 0, lastInsertRowid: 0n };
    // INSERT ... RETURNING and friends: rows and a change count.
    const [changes, rowid] = this.ownStatement('SELECT changes(), last_insert_rowid()').raw(true).get() as [bigint, bigint];
    return { columns, rows, rowsAffected: Number(changes), lastInsertRowid: rowid };
  }

  private prepare(sql: string, limits: CallLimits, field: string): Database.Statement {
    let statement = this.cache.get(sql);
    if (statement) {
      this.cache.delete(sql);
    } else {
      this.checkExpansion(sql, field);
      statement = this.db.prepare(sql);
      if (statement.reader) statement.raw(true);
    }
    this.cache.set(sql, statement);
    if (this.cache.size > STATEMENT_CACHE_SIZE) this.cache.delete(this.cache.keys().next().value!);
    if (limits.readOnly && !statement.readonly) {
      throw new ShardError({
        code: Status.PERMISSION_DENIED,
        reason: 'READ_ONLY_KEY',
        message: 'this API key is READ_ONLY and the statement writes',
        fieldViolations: [{ field, description: 'statement writes' }],
      });
    }
    return statement;
  }

  /**
   * Runs `body` with the guard armed for the call's time limit, and turns a
   * SQLite failure into the status the contract names.
   */
  private guarded<T>(limits: CallLimits, field: string, body: () => T): T {
    this.applyStorageLimit(limits.storageLimitBytes);
    this.resultBytes = 0;
    this.callLength = callMaxLength(limits);
    this.lengthInForce = this.callLength;
    this.guard.armCall(limits.timeoutMs, 'tenant', this.callLength, limits.callId ?? 0);
    let denial: string | null = null;
    try {
      return body();
    } catch (error) {
      if (error instanceof ShardError) throw error;
      denial = this.guard.lastDenial();
      const ended = this.guard.disarmAs();
      // Inside a Batch the failure names the statement that failed.
      const failure = this.failure(this.currentField ?? field, limits, denial, ended === 'timedOut');
      failure.cancelled = ended === 'cancelled';
      throw new ShardError(toWireError(error, failure));
    } finally {
      this.currentField = null;
      this.guard.disarm();
      // disarm put the service's own length limit back.
      this.callLength = 0;
      this.lengthInForce = 0;
    }
  }

  private failure(field: string, limits: CallLimits, denial: string | null, timedOut: boolean): FailureContext {
    return {
      field,
      tenantId: this.tenantId,
      denial,
      timedOut,
      timeoutMs: limits.timeoutMs,
      storageLimitBytes: limits.storageLimitBytes,
      path: this.db.name,
      valueLimitBytes: this.lengthInForce > 0 ? this.lengthInForce : undefined,
      rowLimitBytes: this.lengthInForce < this.callLength ? ROW_BUILD_BYTES : undefined,
      fullCause: () => storageFullCause(this.db.name, limits.storageLimitBytes, () => this.sizeBytes()),
    };
  }

  /**
   * After DDL, cached statements describe the old schema until SQLite
   * re-prepares them at their next step, so their columns() would be wrong:
   * prepare everything afresh.
   */
  private schemaChanged(): void {
    this.cache.clear();
    this.columnsOf = new WeakMap();
    this.views = null;
  }

  // ---- expansion of views and NOT MATERIALIZED CTEs (expansion.ts) ----

  /** The schema's views and what each expands to; null after a schema change. */
  private views: { views: Views; cost: Map<string, number> } | null = null;

  private viewInfo(): { views: Views; cost: Map<string, number> } {
    if (this.views) return this.views;
    const rows = this.ownStatement("SELECT lower(name), sql FROM sqlite_schema WHERE type = 'view'").raw(true).all() as [string, string][];
    const views = new Map(rows);
    this.views = { views, cost: viewExpansions(views) };
    return this.views;
  }

  /** Refuses, before SQLite prepares it, SQL whose views and CTEs would expand past MAX_EXPANSION. */
  private checkExpansion(sql: string, field: string): void {
    const { views, cost } = this.viewInfo();
    if (views.size === 0 && !/with/i.test(sql)) return;
    const expansion = statementExpansion(sql, views, cost);
    if (expansion > MAX_EXPANSION) throw tooComplex(field, `the statement expands to about ${expansion} subqueries`);
  }

  /** After DDL: no view or trigger may expand past MAX_EXPANSION (a trigger's body is prepared with every statement that fires it). */
  private expansionProblem(): string | null {
    this.views = null;
    const { views, cost } = this.viewInfo();
    for (const [name, n] of cost) if (n > MAX_EXPANSION) return `view ${name} expands to about ${n} subqueries`;
    if (views.size === 0) return null;
    const triggers = this.ownStatement("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger'").raw(true).all() as [string, string][];
    for (const [name, sql] of triggers) {
      const n = statementExpansion(sql, views, cost);
      if (n > MAX_EXPANSION) return `trigger ${name} expands to about ${n} subqueries`;
    }
    return null;
  }

  /** The statement's length limit: the call's, or for one that returns rows, its share of ROW_BUILD_BYTES per column when smaller. */
  private fitLength(statement: Database.Statement): void {
    const columns = statement.reader ? this.describe(statement).length : 0;
    const wanted = columns === 0 ? this.callLength : Math.min(this.callLength, rowValueLimit(columns));
    if (wanted === this.lengthInForce) return;
    this.guard.setMaxLength(wanted);
    this.lengthInForce = wanted;
  }

  private describe(statement: Database.Statement): ColumnInfo[] {
    let columns = this.columnsOf.get(statement);
    if (!columns) {
      columns = describeColumns(statement);
      this.columnsOf.set(statement, columns);
    }
    return columns;
  }

  private applyStorageLimit(limitBytes: number): void {
    if (limitBytes === this.storageLimit) return;
    const pages = limitBytes < 0 ? UNLIMITED_PAGES : Math.max(1, Math.floor(limitBytes / this.pageSize));
    this.db.exec(`PRAGMA max_page_count = ${pages}`);
    this.storageLimit = limitBytes;
  }
}

function tooComplex(field: string, what: string): ShardError {
  return new ShardError({
    code: Status.INVALID_ARGUMENT,
    reason: 'STATEMENT_TOO_COMPLEX',
    message: `${what}, more than the ${MAX_EXPANSION} tenantd prepares: SQLite expands every reference to a view or CTE, and cannot be interrupted while it does`,
    fieldViolations: [{ field, description: what }],
  });
}

/** The call's SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES, or the storage limit when smaller (never under MIN_VALUE_BYTES). */
function callMaxLength(limits: CallLimits): number {
  if (limits.storageLimitBytes < 0) return MAX_VALUE_BYTES;
  return Math.max(MIN_VALUE_BYTES, Math.min(MAX_VALUE_BYTES, limits.storageLimitBytes));
}

/** The largest value a statement returning `columns` columns may make or read. */
export function rowValueLimit(columns: number): number {
  return Math.floor(ROW_BUILD_BYTES / Math.max(1, columns));
}

/** Writes that cannot change the schema; anything else (or a leading comment) clears the column cache. */
const PLAIN_DML = /^\s*(INSERT|UPDATE|DELETE|REPLACE)\b/i;
const VACUUM = /^\s*VACUUM\b/i;

function describeColumns(statement: Database.Statement): ColumnInfo[] {
  return statement.columns().map((c) => ({ name: c.name, declType: c.type ?? '' }));
}
