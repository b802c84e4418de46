/**
 * The open databases of one shard: at most `maxOpen` connections, the least
 * recently used closed first. Only this shard's thread ever opens these
 * files, so closing one never races with another thread.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import type { SyncMode } from '../src/config.ts';
import { tenantDbPath } from '../src/protocol.ts';
import { replacedDir, trashDir } from '../src/tenants/restoreFiles.ts';
import { ShardError } from './shardError.ts';
import { TenantDb } from './tenantDb.ts';

export class DbPool {
  private readonly open = new Map<string, TenantDb>();
  /** Tenants whose connection must not be closed to make room: a snapshot is reading it. */
  private readonly pinned = new Map<string, number>();
  /**
   * Closed tenants with events that will expire: the oldest event's time and
   * the retention, noted as the connection closed, so that sweepClosed
   * removes them without waiting for the tenant's next call. In memory only:
   * after a restart a closed tenant's expired events go at its next events
   * call (reads never show them before).
   */
  private readonly closedSweeps = new Map<string, { oldest: number; retentionMs: number }>();

  constructor(
    private readonly dataDir: string,
    private readonly sync: SyncMode,
    private readonly maxOpen: number,
  ) {}

  get size(): number {
    return this.open.size;
  }

  /** The open connections, least recently used first. */
  openDatabases(): IterableIterator<TenantDb> {
    return this.open.values();
  }

  /** The tenant's connection if it is open; does not count as a use. */
  peek(tenantId: string): TenantDb | undefined {
    return this.open.get(tenantId);
  }

  /** The tenant's connection, opened if needed. The database must exist. */
  get(tenantId: string): TenantDb {
    const cached = this.open.get(tenantId);
    if (cached) {
      // Re-inserting moves it to the young end of the Map's order.
      this.open.delete(tenantId);
      this.open.set(tenantId, cached);
      return cached;
    }
    const path = tenantDbPath(this.dataDir, tenantId);
    if (!existsSync(path)) {
      throw new ShardError({
        code: Status.NOT_FOUND,
        reason: 'TENANT_DATABASE_MISSING',
        message: `the database of tenant ${tenantId} does not exist`,
      });
    }
    const db = TenantDb.open({ path, tenantId, sync: this.sync, create: false });
    const sweep = this.closedSweeps.get(tenantId);
    if (sweep) {
      // Open again: the shard's sweep of open tenants takes it from here.
      db.setEventRetention(sweep.retentionMs);
      this.closedSweeps.delete(tenantId);
    }
    return this.add(db);
  }

  /** Creates the tenant's database (or opens the copy already at its path). */
  create(tenantId: string, adoptExisting: boolean): TenantDb {
    const path = tenantDbPath(this.dataDir, tenantId);
    if (existsSync(path) && !adoptExisting) {
      // Left over from a crash between creating the files and the catalog row.
      this.remove(tenantId);
    }
    return this.add(TenantDb.open({ path, tenantId, sync: this.sync, create: true }));
  }

  /**
   * Puts `file` (a database under the data directory, checked and migrated
   * already: workers/fileTasks.ts) in the tenant's place: the directories
   * are swapped by rename, the tenant's old one set aside
   * (restoreFiles.ts) until the new one is in place. A crash in between is
   * repaired at the next start (src/tenants/restoreFiles.ts). Returns whether
   * the tenant had a database that was replaced.
   */
  restore(tenantId: string, file: string): boolean {
    const path = tenantDbPath(this.dataDir, tenantId);
    const dir = dirname(path);
    this.forget(tenantId);
    const aside = replacedDir(this.dataDir, tenantId);
    rmSync(aside, { recursive: true, force: true });
    mkdirSync(dirname(aside), { recursive: true });
    const replacing = existsSync(dir);
    if (replacing) renameSync(dir, aside);
    mkdirSync(dir, { recursive: true });
    renameSync(file, path);
    if (replacing) this.discard(aside, tenantId);
    return replacing;
  }

  /** Closes the tenant's connection, if open; false while a snapshot needs it (pinned). */
  close(tenantId: string): boolean {
    if (this.pinned.has(tenantId)) return false;
    const db = this.open.get(tenantId);
    if (db) this.closeConnection(tenantId, db);
    return true;
  }

  /** Closes the tenant's connection and deletes its directory. */
  remove(tenantId: string): boolean {
    this.forget(tenantId);
    const dir = dirname(tenantDbPath(this.dataDir, tenantId));
    const existed = existsSync(dir);
    if (existed) this.discard(dir, tenantId);
    return existed;
  }

  /** Closes the tenant's connection and forgets what it knew of its files: they are about to go. */
  private forget(tenantId: string): void {
    this.open.get(tenantId)?.close();
    this.open.delete(tenantId);
    this.closedSweeps.delete(tenantId);
  }

  /** Moves a directory to the trash at once and unlinks its files in the background. */
  private discard(dir: string, tenantId: string): void {
    const trash = join(trashDir(this.dataDir), `${tenantId}-${randomUUID()}`);
    mkdirSync(dirname(trash), { recursive: true });
    renameSync(dir, trash);
    rm(trash, { recursive: true, force: true }).catch((error: unknown) => {
      process.stderr.write(`${JSON.stringify({ level: 'warn', msg: 'could not remove a discarded tenant directory', dir: trash, error: String(error) })}\n`);
    });
  }

  /** Keeps the tenant's connection open (unless removed, restored or shut down) until unpin. */
  pin(tenantId: string): void {
    this.pinned.set(tenantId, (this.pinned.get(tenantId) ?? 0) + 1);
  }

  unpin(tenantId: string): void {
    const count = (this.pinned.get(tenantId) ?? 0) - 1;
    if (count > 0) this.pinned.set(tenantId, count);
    else this.pinned.delete(tenantId);
  }

  closeAll(): number {
    const count = this.open.size;
    for (const db of this.open.values()) db.close();
    this.open.clear();
    return count;
  }

  private add(db: TenantDb): TenantDb {
    this.open.set(db.tenantId, db);
    // The least recently used first; pinned ones are passed over, so the
    // pool may hold more than maxOpen while snapshots run.
    for (const [tenantId, victim] of this.open) {
      if (this.open.size <= this.maxOpen) break;
      if (this.pinned.has(tenantId) || victim === db) continue;
      this.closeConnection(tenantId, victim);
    }
    return db;
  }

  /** Closes a connection, first noting what its events need swept while it is closed. */
  private closeConnection(tenantId: string, db: TenantDb): void {
    try {
      const sweep = db.eventSweepState();
      if (sweep) this.closedSweeps.set(tenantId, sweep);
    } catch {
      // A database that cannot be read now has nothing the sweep could do either.
    }
    db.close();
    this.open.delete(tenantId);
  }

  /** A tenant's new event retention (UpdateTenant): for its open connection, or for the sweep of it closed. */
  setEventRetention(tenantId: string, retentionMs: number): void {
    this.open.get(tenantId)?.setEventRetention(retentionMs);
    const sweep = this.closedSweeps.get(tenantId);
    if (sweep && retentionMs > 0) sweep.retentionMs = retentionMs;
    else if (sweep) this.closedSweeps.delete(tenantId);
  }

  /**
   * Opens closed tenants whose oldest event has expired, at most `limit` of
   * them, outside the pool (no open tenant is closed for this), removes their
   * expired events and closes them again. `skip`: tenants whose file the
   * shard must not open now (held for the file-task pool). A tenant whose
   * sweep fails is reported to `failed` and left to its next events call.
   */
  sweepClosed(now: number, skip: (tenantId: string) => boolean, limit: number, failed: (tenantId: string, error: unknown) => void): number {
    let swept = 0;
    for (const [tenantId, sweep] of this.closedSweeps) {
      if (swept >= limit) break;
      if (sweep.oldest + sweep.retentionMs > now || skip(tenantId)) continue;
      swept++;
      this.closedSweeps.delete(tenantId);
      let db: TenantDb | null = null;
      try {
        db = TenantDb.open({ path: tenantDbPath(this.dataDir, tenantId), tenantId, sync: this.sync, create: false });
        db.setEventRetention(sweep.retentionMs);
        db.sweepExpiredEvents();
        const next = db.eventSweepState();
        if (next) this.closedSweeps.set(tenantId, next);
      } catch (error) {
        failed(tenantId, error);
      } finally {
        db?.close();
      }
    }
    return swept;
  }
}
