/**
 * The open databases of one shard: at most `maxOpen` connections, the least
 * recently used closed first. Only this shard's thread ever opens these
 * files, so closing one never races with another thread.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { fsyncDir, renameDurably } from '../src/durableFs.ts';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import type { SyncMode } from '../src/config.ts';
import { tenantDbPath, type EventSweep } from '../src/protocol.ts';
import { replacedDir, trashDir } from '../src/tenants/restoreFiles.ts';
import { ShardError } from './shardError.ts';
import { TenantDb } from './tenantDb.ts';

/** When a closed tenant's oldest event expires: at oldest + retentionMs. */
type SweepNote = Omit<EventSweep, 'tenantId'>;

export class DbPool {
  private readonly open = new Map<string, TenantDb>();
  /** Tenants whose connection must not be closed to make room: a snapshot is reading it. */
  private readonly pinned = new Map<string, number>();
  /**
   * Closed tenants with events that will expire: the oldest event's time and
   * the retention, noted as the connection closed, so that sweepClosed
   * removes them without waiting for the tenant's next call.
   */
  private readonly closedSweeps = new Map<string, SweepNote>();
  /**
   * What the catalog holds of these notes, as far as this shard told it
   * (the shard posts takeSweepChanges() to the front end), so that a
   * restarted shard starts from them. A note stays there while its tenant is
   * open: should the process die, sweeping it once too often costs nothing.
   */
  private readonly kept = new Map<string, SweepNote>();
  private readonly changed = new Set<string>();
  /**
   * Tenants with interactive transactions: their connections open in
   * NORMAL locking mode, so that each transaction's connection can share
   * the file (workers/transactions.ts).
   */
  private readonly shared = new Set<string>();
  /** Called before a tenant's connection is closed for good (its files go, or the shard stops): its transactions end. */
  beforeForget: (tenantId: string) => void = () => {};

  constructor(
    private readonly dataDir: string,
    private readonly sync: SyncMode,
    private readonly maxOpen: number,
    closedSweeps: readonly EventSweep[] = [],
  ) {
    for (const { tenantId, oldest, retentionMs } of closedSweeps) {
      this.closedSweeps.set(tenantId, { oldest, retentionMs });
      this.kept.set(tenantId, { oldest, retentionMs });
    }
  }

  /** Notes (or, with null, drops) what the tenant's events need swept while it is closed. */
  private noteSweep(tenantId: string, sweep: SweepNote | null): void {
    if (sweep) this.closedSweeps.set(tenantId, sweep);
    else this.closedSweeps.delete(tenantId);
    const kept = this.kept.get(tenantId);
    const same = sweep === null ? kept === undefined : kept !== undefined && kept.oldest === sweep.oldest && kept.retentionMs === sweep.retentionMs;
    if (same) this.changed.delete(tenantId);
    else this.changed.add(tenantId);
  }

  /** The notes changed since the last call, for the catalog; null when none did. */
  takeSweepChanges(): { noted: EventSweep[]; cleared: string[] } | null {
    if (this.changed.size === 0) return null;
    const noted: EventSweep[] = [];
    const cleared: string[] = [];
    for (const tenantId of this.changed) {
      const sweep = this.closedSweeps.get(tenantId);
      // Opened again since: the catalog keeps what it had until the tenant closes.
      if (!sweep && this.open.has(tenantId)) continue;
      if (sweep) {
        noted.push({ tenantId, oldest: sweep.oldest, retentionMs: sweep.retentionMs });
        this.kept.set(tenantId, { oldest: sweep.oldest, retentionMs: sweep.retentionMs });
      } else {
        cleared.push(tenantId);
        this.kept.delete(tenantId);
      }
    }
    this.changed.clear();
    return { noted, cleared };
  }

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
    const db = TenantDb.open({ path, tenantId, sync: this.sync, create: false, shared: this.shared.has(tenantId) });
    const sweep = this.closedSweeps.get(tenantId);
    if (sweep) {
      // Open again: the shard's sweep of open tenants takes it from here (the catalog keeps its note).
      db.setEventRetention(sweep.retentionMs);
      this.closedSweeps.delete(tenantId);
    }
    return this.add(db);
  }

  /**
   * Makes the tenant's connections shareable: its main connection, if it is
   * open in EXCLUSIVE mode, is reopened in NORMAL mode (refused, ABORTED
   * TENANT_BUSY, while a snapshot reads it).
   */
  share(tenantId: string): void {
    this.shared.add(tenantId);
    const db = this.get(tenantId);
    if (db.shared) return;
    if (this.pinned.has(tenantId)) {
      throw new ShardError({
        code: Status.ABORTED,
        reason: 'TENANT_BUSY',
        message: `a snapshot of tenant ${tenantId} is being made; retry the transaction when it is done`,
        metadata: { tenant: tenantId },
        retryDelayMs: 100,
      });
    }
    this.closeConnection(tenantId, db);
    this.get(tenantId);
  }

  /** The tenant has no transaction connections left: its main connection goes back to EXCLUSIVE mode when it next opens (now, if it can be closed). */
  unshare(tenantId: string): void {
    if (!this.shared.delete(tenantId)) return;
    const db = this.open.get(tenantId);
    if (db?.shared && !this.pinned.has(tenantId)) this.closeConnection(tenantId, db);
  }

  /** A connection for one interactive transaction, outside the pool (its owner closes it); after share(). */
  openSecondary(tenantId: string): TenantDb {
    return TenantDb.open({ path: tenantDbPath(this.dataDir, tenantId), tenantId, sync: this.sync, create: false, shared: true, secondary: true });
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
    // Each step durable before the next: the start-up repair reads which of them happened.
    if (replacing) renameDurably(dir, aside);
    mkdirSync(dir, { recursive: true });
    renameDurably(file, path);
    fsyncDir(dirname(dir));
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
  /** Closes and removes a tenant's files; with `keepAs`, renames its directory there instead. */
  remove(tenantId: string, keepAs?: string): boolean {
    this.forget(tenantId);
    const dir = dirname(tenantDbPath(this.dataDir, tenantId));
    const existed = existsSync(dir);
    if (existed && keepAs !== undefined) {
      mkdirSync(dirname(keepAs), { recursive: true });
      renameDurably(dir, keepAs);
    } else if (existed) {
      this.discard(dir, tenantId);
    }
    return existed;
  }

  /** Closes the tenant's connection and forgets what it knew of its files: they are about to go. */
  private forget(tenantId: string): void {
    this.beforeForget(tenantId);
    this.shared.delete(tenantId);
    this.open.get(tenantId)?.close();
    this.open.delete(tenantId);
    this.noteSweep(tenantId, null);
  }

  /** Moves a directory to the trash at once and unlinks its files in the background. */
  private discard(dir: string, tenantId: string): void {
    const trash = join(trashDir(this.dataDir), `${tenantId}-${randomUUID()}`);
    mkdirSync(dirname(trash), { recursive: true });
    // Durable before the caller goes on (a delete then drops the catalog row).
    renameDurably(dir, trash);
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
    for (const [tenantId, db] of this.open) this.closeConnection(tenantId, db);
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
    let sweep: SweepNote | null = null;
    try {
      sweep = db.eventSweepState();
    } catch {
      // A database that cannot be read now has nothing the sweep could do either.
    }
    db.close();
    this.open.delete(tenantId);
    this.noteSweep(tenantId, sweep);
  }

  /** A tenant's new event retention (UpdateTenant): for its open connection, or for the sweep of it closed. */
  setEventRetention(tenantId: string, retentionMs: number): void {
    this.open.get(tenantId)?.setEventRetention(retentionMs);
    const sweep = this.closedSweeps.get(tenantId);
    if (sweep) this.noteSweep(tenantId, retentionMs > 0 ? { oldest: sweep.oldest, retentionMs } : null);
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
      let db: TenantDb | null = null;
      let next: SweepNote | null = null;
      try {
        db = TenantDb.open({ path: tenantDbPath(this.dataDir, tenantId), tenantId, sync: this.sync, create: false });
        db.setEventRetention(sweep.retentionMs);
        db.sweepExpiredEvents();
        next = db.eventSweepState();
      } catch (error) {
        failed(tenantId, error);
      } finally {
        db?.close();
      }
      this.noteSweep(tenantId, next);
    }
    return swept;
  }
}
