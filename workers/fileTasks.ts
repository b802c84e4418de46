/**
 * Work on a whole database file that may take seconds: run by a small
 * piscina pool beside the shards (src/tenants/fileChecks.ts), never on a
 * shard thread, so the shard's other tenants do not wait for it. The file is
 * a restore's upload before it is swapped in, a snapshot copy of a live
 * tenant, or a live tenant's database while its shard holds the tenant's
 * calls (op `hold`) and has closed it. Failures come back as values (a WireError),
 * not as thrown errors, which would lose their fields crossing threads.
 */
import { rmSync } from 'node:fs';
import { status as Status } from '@grpc/grpc-js';
import type { SyncMode } from '../src/config.ts';
import type { WireError } from '../src/errors.ts';
import type { MigrationStep, RewriteOperation } from '../src/protocol.ts';
import { ShardError } from './shardError.ts';
import { TenantDb } from './tenantDb.ts';

/** Lines of integrity_check reported at most. */
const MAX_PROBLEMS = 20;

export type FileTask =
  /** A restore's upload: sound, usable, and migrated to `migrations`, where it lies. */
  | { op: 'checkRestore'; file: string; tenantId: string; sync: SyncMode; migrations: MigrationStep[]; integrity: boolean }
  /** A copy of a live database: what integrity_check finds in it. */
  | { op: 'integrity'; file: string; tenantId: string; callId: number }
  /** A live database that its shard has closed and holds the calls of. */
  | { op: 'rewrite'; file: string; tenantId: string; sync: SyncMode; operation: RewriteOperation; callId: number }
  /** A new migration, run after every earlier one on a scratch database, as a tenant would run it. */
  | { op: 'validateMigration'; steps: MigrationStep[]; step: MigrationStep };

export type FileTaskResult =
  | { ok: true; schemaVersion: number }
  | { ok: true; problems: string[] }
  | { ok: true; message: string }
  | { ok: false; error: WireError };

export default function run(task: FileTask): FileTaskResult {
  try {
    switch (task.op) {
      case 'checkRestore':
        return checkRestore(task);
      case 'integrity':
        return { ok: true, problems: integrityProblems(task.file, task.tenantId, task.callId) };
      case 'rewrite':
        return { ok: true, message: rewrite(task) };
      case 'validateMigration':
        return { ok: true, schemaVersion: validateMigration(task.steps, task.step) };
    }
  } catch (error) {
    if (error instanceof ShardError) return { ok: false, error: error.wire };
    return { ok: false, error: { code: Status.INTERNAL, reason: 'INTERNAL', message: `file check failed: ${(error as Error).message}` } };
  }
}

/**
 * Runs the migrations on an empty in-memory tenant database, under the same
 * guard and deadline as on a tenant, off the main thread: a migration that
 * loops or escapes fails here, not while the server waits for it.
 */
function validateMigration(steps: MigrationStep[], step: MigrationStep): number {
  const scratch = TenantDb.open({ path: ':memory:', tenantId: 'migration-validation', sync: 'normal', create: false });
  try {
    scratch.migrate(steps);
    try {
      return scratch.migrate([step]);
    } catch (error) {
      const message = error instanceof ShardError ? error.wire.message : (error as Error).message;
      throw new ShardError({
        code: Status.INVALID_ARGUMENT,
        reason: 'MIGRATION_INVALID',
        message: `sql: the migration fails on a scratch database: ${message.replace(/^migration .*? failed on tenant migration-validation: /, '')}`,
        fieldViolations: [{ field: 'sql', description: 'the migration fails on a scratch database' }],
      });
    }
  } finally {
    scratch.close();
  }
}

/**
 * Opens the upload as the shard would open a tenant (the guard's limits and
 * DEFENSIVE mode apply to this untrusted file too), runs integrity_check
 * (unless the caller checked these bytes already) and the migrations it
 * predates, and closes it, which checkpoints everything into the file itself.
 * Returns its schema version.
 */
function checkRestore(task: Extract<FileTask, { op: 'checkRestore' }>): FileTaskResult {
  const staged = openRestored(task.file, task.tenantId, task.sync);
  try {
    const problems = task.integrity ? staged.integrityProblems(MAX_PROBLEMS) : [];
    if (problems.length > 0) {
      throw new ShardError({
        code: Status.INVALID_ARGUMENT,
        reason: 'BACKUP_CORRUPT',
        message: `the backup fails integrity_check: ${problems.slice(0, 5).join('; ')}`,
      });
    }
    return { ok: true, schemaVersion: staged.migrate(task.migrations) };
  } catch (error) {
    throw badBackup(error, 'BACKUP_UNUSABLE', 'the backup is not a database tenantd can use');
  } finally {
    staged.close();
    rmSync(`${task.file}-wal`, { force: true });
  }
}

/** Anything SQLite cannot open as a database is the caller's bad input. */
function openRestored(path: string, tenantId: string, sync: SyncMode): TenantDb {
  try {
    return TenantDb.open({ path, tenantId, sync, create: false });
  } catch (error) {
    throw badBackup(error, 'NOT_A_DATABASE', 'the backup cannot be opened as a SQLite database');
  }
}

/** A ShardError as it is; anything else SQLite threw is the caller's bad backup, with `reason`. */
function badBackup(error: unknown, reason: string, what: string): ShardError {
  if (error instanceof ShardError) return error;
  return new ShardError({ code: Status.INVALID_ARGUMENT, reason, message: `${what}: ${(error as Error).message}` });
}

/** Opens `path` as a shard opens a tenant, runs `body`, and closes it (which checkpoints it into the file). */
function withTenantDb<T>(path: string, tenantId: string, sync: SyncMode, body: (db: TenantDb) => T): T {
  const db = TenantDb.open({ path, tenantId, sync, create: false });
  try {
    return body(db);
  } finally {
    db.close();
  }
}

/**
 * The copy is ours alone, but its schema is the tenant's (CHECK expressions
 * run during the check): opened like a tenant, under the guard's limits.
 */
function integrityProblems(file: string, tenantId: string, callId: number): string[] {
  return withTenantDb(file, tenantId, 'normal', (copy) => copy.integrityProblems(MAX_PROBLEMS, callId));
}

/** VACUUM, ANALYZE or OPTIMIZE of the live file, which its shard has closed. */
function rewrite(task: Extract<FileTask, { op: 'rewrite' }>): string {
  return withTenantDb(task.file, task.tenantId, task.sync, (db) => db.maintain(task.operation, task.callId).message);
}
