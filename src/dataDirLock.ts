/**
 * One owner per data directory. Two servers on one directory each believe
 * they own the catalog and the tenant files: tenants created by one are
 * unknown to the other, and their writes wait on each other's locks.
 *
 * The lock is SQLite's own: `<data-dir>/LOCK` is a tiny database held in an
 * EXCLUSIVE write transaction (`locking_mode=EXCLUSIVE`), i.e. a POSIX
 * fcntl() lock. The kernel drops it when the process dies, however it dies,
 * so a SIGKILLed owner never leaves a stale lock, and SQLite tracks its
 * locks per file across the connections of one process, so a second server
 * started in the same process (tests) is refused too. Node has no flock();
 * this needs nothing beyond better-sqlite3, which the service loads anyway.
 *
 * The holder's pid goes to `<data-dir>/LOCK.pid` once the lock is held (the
 * locked database cannot be read by anyone else), only to name the holder in
 * the refusal: the lock itself never depends on that file.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';

export const kLockFile = 'LOCK';
export const kLockPidFile = 'LOCK.pid';

/** Another process (or another server in this one) holds the directory. */
export class DataDirLockedError extends Error {
  override name = 'DataDirLockedError';

  constructor(
    readonly dataDir: string,
    /** The holder's pid as it wrote it, or null when it could not be read. */
    readonly holderPid: number | null,
  ) {
    super(
      `data directory ${dataDir} is in use by another tenantd (pid ${holderPid ?? 'unknown'}); ` +
        'stop it first, or use another --data-dir',
    );
  }
}

export interface DataDirLock {
  readonly dataDir: string;
  /** Gives the directory up; safe to call twice. */
  release(): void;
}

function readHolderPid(dataDir: string): number | null {
  try {
    const pid = Number.parseInt(readFileSync(join(dataDir, kLockPidFile), 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/**
 * Takes the data directory for this process, which must exist.
 *
 * @throws DataDirLockedError when someone else holds it.
 */
export function lockDataDir(dir: string): DataDirLock {
  const dataDir = resolve(dir);
  // timeout 0: a held lock is an answer, not something to wait for.
  const db = new Database(join(dataDir, kLockFile), { timeout: 0 });
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    // Taken at once in rollback-journal mode and kept until the connection closes.
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    const code = (error as { code?: unknown }).code;
    if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') throw new DataDirLockedError(dataDir, readHolderPid(dataDir));
    throw error;
  }
  const pidFile = join(dataDir, kLockPidFile);
  const tmp = `${pidFile}.${process.pid}.tmp`;
  writeFileSync(tmp, `${process.pid}\n`);
  renameSync(tmp, pidFile);
  let held = true;
  return {
    dataDir,
    release(): void {
      if (!held) return;
      held = false;
      // The pid file stays: it names a holder only while LOCK is held, and is rewritten by the next one.
      db.close();
    },
  };
}
