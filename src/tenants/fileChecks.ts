/**
 * The front end's side of workers/fileTasks.ts: integrity checks, a
 * restore's migrations, VACUUM, ANALYZE and OPTIMIZE, which can take seconds
 * on a large database, run in a piscina pool of their own instead of on a
 * tenant's shard, where every other tenant of that shard would wait for them. The pool is small (these
 * are an operator's occasional calls, and they must not take the cores the
 * shards need) and its threads exit when idle, so it costs nothing at rest.
 */
import type { CancelSignal } from '../grpc/cancelSignal.ts';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { SyncMode } from '../config.ts';
import { TenantdError } from '../errors.ts';
import { PACKAGE_ROOT } from '../paths.ts';
import type { MigrationStep, RewriteOperation } from '../protocol.ts';
import type { FileTask, FileTaskResult } from '../../workers/fileTasks.ts';
import type { CallCanceller } from '../../workers/guard.ts';

const BOOTSTRAP = join(PACKAGE_ROOT, 'workers', 'taskBootstrap.mjs');
const ENTRY = new URL(`../../workers/fileTasks.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url);
/** An idle thread exits after this long. */
const IDLE_TIMEOUT_MS = 30_000;
/** How long shutting down waits for a running check or VACUUM. */
const CLOSE_TIMEOUT_MS = 60_000;

export class FileChecks {
  private readonly pool: Piscina<FileTask, FileTaskResult>;
  /**
   * Ids of the interruptible tasks running (maintenance, integrity checks),
   * under which their connections are armed: negative, so they never meet a
   * shard's call ids (protocol.ts callIdOf).
   */
  private readonly running = new Set<number>();
  private lastCallId = 0;

  /**
   * `keepWarm`: keep one thread started. A cluster node does, because a
   * tenant moved to it is checked here while the tenant's writes wait, and
   * starting a thread takes a second or more on a busy host.
   */
  /** `canceller`: what stops a running maintenance task when its call is cancelled, or at shutdown. */
  constructor(
    private readonly sync: SyncMode,
    keepWarm = false,
    private readonly canceller: CallCanceller | null = null,
  ) {
    // piscina starts a thread again and again when its script is missing and the task waits for
    // ever: an install (or image) without these files must fail at start, not hang a backup.
    for (const file of [BOOTSTRAP, fileURLToPath(ENTRY)]) {
      if (!existsSync(file)) throw new Error(`the file-task worker ${file} is missing: this installation is incomplete`);
    }
    this.pool = new Piscina({
      filename: BOOTSTRAP,
      workerData: { entry: ENTRY.href },
      minThreads: keepWarm ? 1 : 0,
      maxThreads: Math.max(1, Math.floor(availableParallelism() / 4)),
      idleTimeout: IDLE_TIMEOUT_MS,
      closeTimeout: CLOSE_TIMEOUT_MS,
    });
    // close() reports a task that outlived CLOSE_TIMEOUT_MS this way; it must not throw.
    this.pool.on('error', () => undefined);
    // Loads the task module now rather than on the first task (taskBootstrap.mjs).
    if (keepWarm) this.pool.run('warm' as unknown as FileTask).catch(() => undefined);
  }

  /**
   * Checks a restore's upload (`file`, not yet any tenant's) with
   * integrity_check and migrates it where it lies; returns its schema
   * version, or throws the INVALID_ARGUMENT that says what is wrong with it.
   */
  async checkRestore(file: string, tenantId: string, migrations: MigrationStep[], integrity = true): Promise<number> {
    const result = this.settle(await this.pool.run({ op: 'checkRestore', file, tenantId, sync: this.sync, migrations, integrity }));
    return (result as { schemaVersion: number }).schemaVersion;
  }

  /** What integrity_check finds in `file`, a snapshot of `tenantId`; empty when sound. Ends CANCELLED when `signal` aborts. */
  async integrityProblems(file: string, tenantId: string, signal?: CancelSignal): Promise<string[]> {
    const result = await this.interruptible(signal, (callId) => this.pool.run({ op: 'integrity', file, tenantId, callId }));
    return (result as { problems: string[] }).problems;
  }

  /**
   * VACUUM, ANALYZE or OPTIMIZE of a tenant's database file, which its shard
   * has closed and holds the tenant's calls for; returns the line to report.
   */
  async rewrite(file: string, tenantId: string, operation: RewriteOperation, signal?: CancelSignal): Promise<string> {
    const result = await this.interruptible(signal, (callId) => this.pool.run({ op: 'rewrite', file, tenantId, sync: this.sync, operation, callId }));
    return (result as { message: string }).message;
  }

  /** Interrupts every maintenance task and integrity check running (shutdown): each ends CANCELLED. */
  interruptRunning(): void {
    for (const callId of this.running) this.canceller?.cancel(callId);
  }

  /** Runs a task whose connection is armed under a fresh call id, which `signal` and interruptRunning() cancel. */
  private async interruptible(signal: CancelSignal | undefined, run: (callId: number) => Promise<FileTaskResult>): Promise<FileTaskResult> {
    if (this.canceller === null) return this.settle(await run(0));
    const callId = -++this.lastCallId;
    const cancel = (): void => void this.canceller!.cancel(callId);
    this.running.add(callId);
    signal?.addEventListener('abort', cancel, { once: true });
    try {
      if (signal?.aborted) cancel();
      return this.settle(await run(callId));
    } finally {
      signal?.removeEventListener('abort', cancel);
      this.running.delete(callId);
    }
  }

  /** Runs `step` after `steps` on a scratch database in the pool; throws INVALID_ARGUMENT MIGRATION_INVALID when it fails. */
  async validateMigration(steps: MigrationStep[], step: MigrationStep): Promise<void> {
    this.settle(await this.pool.run({ op: 'validateMigration', steps, step }));
  }

  /**
   * Waits for the tasks running (a thread inside SQLite must not be
   * terminated: better-sqlite3 aborts the process), at most
   * CLOSE_TIMEOUT_MS, then ends the threads. Every task's work is one
   * SQLite transaction or a scratch file, so a process killed meanwhile
   * loses nothing.
   */
  close(): Promise<void> {
    return this.pool.close();
  }

  private settle(result: FileTaskResult): FileTaskResult {
    if (!result.ok) throw TenantdError.fromWire(result.error);
    return result;
  }
}
