import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { PACKAGE_ROOT } from '../src/paths.ts';

/**
 * Absolute path of the compiled guard extension (`build/tenantd_guard.so`),
 * produced by `scripts/build-guard.mjs` during `npm install`.
 */
export const GUARD_LIBRARY_PATH: string = join(PACKAGE_ROOT, 'build', 'tenantd_guard.so');

const ENTRY_POINT = 'sqlite3_tenantdguard_init';

/** Connections that Guard.load has loaded the extension into. */
const loaded = new WeakSet<Database.Database>();

type LoadExtension = (this: Database.Database, path: string, entryPoint?: string) => Database.Database;

/** Longest deadline the extension accepts; larger values are clamped there too. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * How often a control statement is retried after SQLITE_INTERRUPT. An
 * overdue connection is re-interrupted by the watchdog (every 10 ms) until
 * it is disarmed, and an interrupt landing between the start of the control
 * statement and its function call aborts it before it did anything; the
 * next attempt starts with the flag cleared again.
 */
const INTERRUPT_RETRIES = 5;

/** Flags of tenantd_arm_call (tenantd_guard.c). */
const ARM_TENANT_POLICY = 0x01;
const ARM_RESET_SESSION = 0x02;

/**
 * Per-connection guard around tenant SQL, backed by the `tenantd_guard`
 * SQLite extension.
 *
 * Loading the extension permanently tightens the connection (limits,
 * DEFENSIVE, no further extension loading, ATTACH limited to the one that
 * VACUUM needs). While armed, an authorizer refuses what tenant SQL must not
 * do (ATTACH, transactions, most PRAGMAs, `_tenantd*` objects, temporary
 * objects, ...) and an optional deadline interrupts the running statement.
 *
 * The guard can only be driven with a random 128-bit token that never
 * leaves this object, so tenant SQL calling the control functions directly
 * gets "tenantd: not permitted".
 */
export class Guard {
  private readonly armStmt: Database.Statement<[Buffer, number], number>;
  private readonly armIdStmt: Database.Statement<[Buffer, number, number], number>;
  private armCallIdStmt: Database.Statement<[Buffer, number, number, number, number], number> | null = null;
  private readonly disarmStmt: Database.Statement<[Buffer], number>;
  private readonly lastDenialStmt: Database.Statement<[Buffer], string | null>;
  private armCallStmt: Database.Statement<[Buffer, number, number, number], number> | null = null;
  private policyStmt: Database.Statement<[Buffer, number], number> | null = null;
  private lengthStmt: Database.Statement<[Buffer, number], number> | null = null;

  private constructor(
    private readonly db: Database.Database,
    private readonly token: Buffer,
  ) {
    // safeIntegers(false): the caller may turn on db.defaultSafeIntegers(),
    // which would otherwise make these return BigInt.
    this.armStmt = db.prepare<[Buffer, number], number>('SELECT tenantd_arm(?, ?)').pluck().safeIntegers(false);
    this.armIdStmt = db.prepare<[Buffer, number, number], number>('SELECT tenantd_arm(?, ?, ?)').pluck().safeIntegers(false);
    this.disarmStmt = db.prepare<[Buffer], number>('SELECT tenantd_disarm(?)').pluck().safeIntegers(false);
    this.lastDenialStmt = db
      .prepare<[Buffer], string | null>('SELECT tenantd_last_denial(?)')
      .pluck()
      .safeIntegers(false);
  }

  /**
   * Loads the extension into `db`. Call it right after opening the
   * connection, before anything reads the database: the extension sets the
   * connection's limits and keeps its WAL file across closes, which applies
   * only before the first access. {@link Guard.attach} loads it when this
   * has not been called.
   *
   * @throws Error when the library has not been built (run `npm install`),
   *   or when the extension cannot be loaded.
   */
  static load(db: Database.Database): void {
    if (!existsSync(GUARD_LIBRARY_PATH)) {
      throw new Error(
        `tenantd guard extension not found at ${GUARD_LIBRARY_PATH}; run \`npm install\` ` +
          '(or `node scripts/build-guard.mjs`) to build it',
      );
    }
    try {
      // better-sqlite3 accepts an entry point; @types/better-sqlite3 omits it.
      (db.loadExtension as LoadExtension).call(db, GUARD_LIBRARY_PATH, ENTRY_POINT);
    } catch (err) {
      throw new Error(`cannot load tenantd guard extension ${GUARD_LIBRARY_PATH}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    loaded.add(db);
  }

  /**
   * Gives the extension in `db` (loaded now unless {@link Guard.load} did)
   * a fresh random token and prepares the control statements. Call it once
   * per connection, before any tenant SQL: the first token set wins, and the
   * extension disables further extension loading on the connection.
   *
   * @throws Error when the extension cannot be loaded or initialised.
   */
  static attach(db: Database.Database): Guard {
    if (!loaded.has(db)) Guard.load(db);
    const token = randomBytes(16);
    db.prepare('SELECT tenantd_guard_init(?)').pluck().safeIntegers(false).get(token);
    return new Guard(db, token);
  }

  /**
   * Turns the guard on for the tenant SQL that follows and, when
   * `timeoutMs > 0`, schedules an interrupt of whatever statement is running
   * on this connection once `timeoutMs` have passed (`<= 0` or NaN: no
   * deadline; at most 2^31-1 ms). Once passed, the deadline keeps
   * interrupting every statement until {@link Guard.disarm}, so it bounds a
   * whole multi-statement call, not just the statement running at the time.
   * Clears the state reported by {@link Guard.disarm} and {@link Guard.lastDenial}.
   */
  arm(timeoutMs: number, callId = 0): void {
    // JS numbers are bound as REAL; round up so a fractional timeout never
    // becomes "no deadline".
    const ms = timeoutMs > 0 ? Math.min(Math.ceil(timeoutMs), MAX_TIMEOUT_MS) : 0;
    if (callId === 0) this.control(this.armStmt, ms);
    // BigInt: bound as INTEGER, exact.
    else this.controlCall(ms, callId);
  }

  /**
   * Arms the guard for one call: `mode` says whose SQL the top-level
   * statements are. `'tenant'` is {@link Guard.arm} with a per-call
   * SQLITE_LIMIT_LENGTH (`maxLength` bytes, <= 0: the service's 16 MiB).
   * `'service'` leaves the service's own statements unchecked but still
   * checks any trigger or view code they reach as tenant code, and bounds
   * the call by `timeoutMs` all the same: a tenant's trigger fired by the
   * service's append, or an operator's migration firing one, runs under the
   * tenant's rules and deadline.
   */
  armCall(timeoutMs: number, mode: 'tenant' | 'service', maxLength = 0, callId = 0): void {
    const ms = timeoutMs > 0 ? Math.min(Math.ceil(timeoutMs), MAX_TIMEOUT_MS) : 0;
    if (callId !== 0) {
      // The same, for a call that CallCanceller can interrupt by its id.
      this.armCallIdStmt ??= this.db
        .prepare<[Buffer, number, number, number, number], number>('SELECT tenantd_arm_call(?, ?, ?, ?, ?)')
        .pluck()
        .safeIntegers(false);
      const stmt = this.armCallIdStmt;
      const flags = mode === 'tenant' ? ARM_TENANT_POLICY | ARM_RESET_SESSION : 0;
      this.retryInterrupted(() => stmt.get(this.token, ms, flags, Math.max(0, Math.floor(maxLength)), callId));
      return;
    }
    this.armCallStmt ??= this.db
      .prepare<[Buffer, number, number, number], number>('SELECT tenantd_arm_call(?, ?, ?, ?)')
      .pluck()
      .safeIntegers(false);
    const flags = mode === 'tenant' ? ARM_TENANT_POLICY | ARM_RESET_SESSION : 0;
    this.control4(this.armCallStmt, ms, flags, Math.max(0, Math.floor(maxLength)));
  }

  /**
   * Suspends (`false`) or resumes (`true`) the tenant policy for top-level
   * SQL without touching the deadline, for the service's own statements in
   * the middle of a tenant call (a savepoint around tenant DDL, the schema
   * check after it).
   */
  setTenantPolicy(on: boolean): void {
    this.policyStmt ??= this.db.prepare<[Buffer, number], number>('SELECT tenantd_policy(?, ?)').pluck().safeIntegers(false);
    const stmt = this.policyStmt;
    this.retryInterrupted(() => stmt.get(this.token, on ? 1 : 0));
  }

  /**
   * Sets SQLITE_LIMIT_LENGTH for the rest of the armed call (clamped to
   * 1 KiB..64 MiB; {@link Guard.disarm} puts the service's own back).
   */
  setMaxLength(bytes: number): void {
    this.lengthStmt ??= this.db.prepare<[Buffer, number], number>('SELECT tenantd_length(?, ?)').pluck().safeIntegers(false);
    const stmt = this.lengthStmt;
    const limit = Math.max(0, Math.floor(bytes));
    this.retryInterrupted(() => stmt.get(this.token, limit));
  }

  /**
   * Turns the guard off and cancels the deadline. Safe after a failed
   * statement, including one that failed with SQLITE_INTERRUPT, provided no
   * other statement of this connection is still mid-iteration (SQLite only
   * clears a pending interrupt when no statement is active).
   *
   * @returns true when the deadline passed (and the connection was
   *   interrupted) since {@link Guard.arm}.
   */
  disarm(): boolean {
    return this.disarmAs() === 'timedOut';
  }

  /**
   * {@link Guard.disarm}, telling why the connection was interrupted since
   * arm: its deadline, or a cancel of its call ({@link CallCanceller}).
   */
  disarmAs(): 'ran' | 'timedOut' | 'cancelled' {
    const state = this.control(this.disarmStmt);
    return state === 2 ? 'cancelled' : state === 1 ? 'timedOut' : 'ran';
  }

  /**
   * Why the guard last refused something since {@link Guard.arm}, e.g.
   * `"ATTACH is not permitted"`, or null. Still available after
   * {@link Guard.disarm}, which is the better moment to ask once a deadline
   * may have passed.
   */
  lastDenial(): string | null {
    return this.control(this.lastDenialStmt) ?? null;
  }

  private controlCall(ms: number, callId: number): void {
    this.retryInterrupted(() => this.armIdStmt.get(this.token, ms, callId));
  }

  private control4(stmt: Database.Statement<[Buffer, number, number, number], number>, a: number, b: number, c: number): void {
    this.retryInterrupted(() => stmt.get(this.token, a, b, c));
  }

  private retryInterrupted<R>(run: () => R): R {
    for (let attempt = 0; ; attempt++) {
      try {
        return run();
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'SQLITE_INTERRUPT' || attempt >= INTERRUPT_RETRIES) throw err;
      }
    }
  }

  private control<R>(stmt: Database.Statement<[Buffer], R>): R | undefined;
  private control<R>(stmt: Database.Statement<[Buffer, number], R>, ms: number): R | undefined;
  private control<R>(stmt: Database.Statement<[Buffer] | [Buffer, number], R>, ms?: number): R | undefined {
    for (let attempt = 0; ; attempt++) {
      try {
        return ms === undefined
          ? (stmt as Database.Statement<[Buffer], R>).get(this.token)
          : (stmt as Database.Statement<[Buffer, number], R>).get(this.token, ms);
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'SQLITE_INTERRUPT' || attempt >= INTERRUPT_RETRIES) throw err;
      }
    }
  }
}

/**
 * Interrupts a tenant call's statement from another thread (the front end's):
 * the extension's globals are shared by every connection in the process, so
 * a connection of the caller's own, with the guard loaded, reaches the
 * connection that armed the call with its id (Guard.arm's `callId`). A call
 * not armed yet is interrupted as soon as it arms.
 */
export class CallCanceller {
  private readonly db: Database.Database;
  private readonly cancelStmt: Database.Statement<[Buffer, bigint], number>;
  private readonly interruptAllStmt: Database.Statement<[Buffer], number>;
  private readonly token = randomBytes(16);

  constructor() {
    this.db = new Database(':memory:');
    Guard.load(this.db);
    this.db.prepare('SELECT tenantd_guard_init(?)').pluck().safeIntegers(false).get(this.token);
    this.cancelStmt = this.db.prepare<[Buffer, bigint], number>('SELECT tenantd_cancel(?, ?)').pluck().safeIntegers(false);
    this.interruptAllStmt = this.db.prepare<[Buffer], number>('SELECT tenantd_interrupt_all(?)').pluck().safeIntegers(false);
  }

  /** True when the call was running (now interrupted); false when it has not armed yet (it will be at once). */
  cancel(callId: number): boolean {
    if (!this.db.open) return false;
    return this.cancelStmt.get(this.token, BigInt(callId)) === 1;
  }

  /** Interrupts every armed statement in the process (an exit that cannot wait); how many there were. */
  interruptAll(): number {
    if (!this.db.open) return 0;
    return this.interruptAllStmt.get(this.token) ?? 0;
  }

  close(): void {
    this.db.close();
  }
}
