/**
 * How long a durable commit takes on this disk, measured two ways in a
 * directory of the same file system tenantd writes to:
 *   - fdatasync of a 4 KiB append (what a WAL commit under --sync full waits for);
 *   - an autocommit INSERT through better-sqlite3 with tenantd's pragmas
 *     (WAL, locking_mode EXCLUSIVE, synchronous FULL): one commit per write,
 *     which is what a tenant's writes cost without group commit.
 * `node --import tsx bench/scenarios/fsync.ts [dir]` prints both.
 */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';

export interface SyncLatency {
  fdatasyncP50Us: number;
  fdatasyncP99Us: number;
  commitP50Us: number;
  commitP99Us: number;
  /** Autocommit INSERTs per second, one connection, one at a time. */
  commitsPerSecond: number;
}

function quantile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export function measureSyncLatency(parent = tmpdir(), samples = 300): SyncLatency {
  const dir = mkdtempSync(join(parent, 'tenantd-fsync-'));
  try {
    const fd = openSync(join(dir, 'probe'), 'w');
    const page = Buffer.alloc(4096, 7);
    const sync = new Float64Array(samples);
    for (let i = 0; i < samples; i++) {
      writeSync(fd, page, 0, page.length, i * page.length);
      const t0 = process.hrtime.bigint();
      fdatasyncSync(fd);
      sync[i] = Number(process.hrtime.bigint() - t0) / 1000;
    }
    closeSync(fd);

    const db = new Database(join(dir, 'probe.db'));
    db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.exec('CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)');
    const insert = db.prepare('INSERT INTO events (payload) VALUES (?)');
    const commit = new Float64Array(samples);
    const wall0 = performance.now();
    for (let i = 0; i < samples; i++) {
      const t0 = process.hrtime.bigint();
      insert.run('x'.repeat(64));
      commit[i] = Number(process.hrtime.bigint() - t0) / 1000;
    }
    const wallMs = performance.now() - wall0;
    db.close();
    sync.sort();
    commit.sort();
    return {
      fdatasyncP50Us: quantile(sync, 0.5),
      fdatasyncP99Us: quantile(sync, 0.99),
      commitP50Us: quantile(commit, 0.5),
      commitP99Us: quantile(commit, 0.99),
      commitsPerSecond: samples / (wallMs / 1000),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function describeSyncLatency(s: SyncLatency): string {
  return (
    `fdatasync of 4 KiB p50 ${s.fdatasyncP50Us.toFixed(0)} µs / p99 ${s.fdatasyncP99Us.toFixed(0)} µs; ` +
    `SQLite WAL+FULL autocommit INSERT p50 ${s.commitP50Us.toFixed(0)} µs / p99 ${s.commitP99Us.toFixed(0)} µs ` +
    `(${s.commitsPerSecond.toFixed(0)} commits/s on one connection)`
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.stdout.write(`${describeSyncLatency(measureSyncLatency(process.argv[2]))}\n`);
}
