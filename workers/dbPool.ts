/**
 * The open databases of one shard: at most `maxOpen` connections, the least
 * recently used closed first. Only this shard's thread ever opens these
 * files, so closing one never races with another thread.
 */
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import type { SyncMode } from '../src/config.ts';
import { tenantDbPath } from '../src/protocol.ts';
import { replacedDir } from '../src/tenants/restoreFiles.ts';
import { ShardError } from './shardError.ts';
import { TenantDb } from './tenantDb.ts';

export class DbPool {
  private readonly open = new Map<string, TenantDb>();
  /** Tenants whose connection must not be closed to make room: a snapshot is reading it. */
  private readonly pinned = new Map<string, number>();

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
    return this.add(TenantDb.open({ path, tenantId, sync: this.sync, create: false }));
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
    this.open.get(tenantId)?.close();
    this.open.delete(tenantId);
    const aside = replacedDir(this.dataDir, tenantId);
    rmSync(aside, { recursive: true, force: true });
    mkdirSync(dirname(aside), { recursive: true });
    const replacing = existsSync(dir);
    if (replacing) renameSync(dir, aside);
    mkdirSync(dir, { recursive: true });
    renameSync(file, path);
    if (replacing) rmSync(aside, { recursive: true, force: true });
    return replacing;
  }

  /** Closes the tenant's connection, if open; false while a snapshot needs it (pinned). */
  close(tenantId: string): boolean {
    if (this.pinned.has(tenantId)) return false;
    this.open.get(tenantId)?.close();
    this.open.delete(tenantId);
    return true;
  }

  /** Closes the tenant's connection and deletes its directory. */
  remove(tenantId: string): boolean {
    this.open.get(tenantId)?.close();
    this.open.delete(tenantId);
    const dir = dirname(tenantDbPath(this.dataDir, tenantId));
    const existed = existsSync(dir);
    rmSync(dir, { recursive: true, force: true });
    return existed;
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
      victim.close();
      this.open.delete(tenantId);
    }
    return db;
  }
}
