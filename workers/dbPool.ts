/**
 * The open databases of one shard: at most `maxOpen` connections, the least
 * recently used closed first. Only this shard's thread ever opens these
 * files, so closing one never races with another thread.
 */
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import type { SyncMode } from '../src/config.ts';
import { tenantDbPath, type MigrationStep } from '../src/protocol.ts';
import { ShardError, TenantDb } from './tenantDb.ts';

export class DbPool {
  private readonly open = new Map<string, TenantDb>();

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
   * Puts `file` (a database under the data directory) in the tenant's place,
   * checks it and brings it to the latest schema. The tenant's current files,
   * if any, are set aside first and put back if anything fails, so a bad
   * backup never costs the tenant its data. Returns the schema version.
   */
  restore(tenantId: string, file: string, migrations: readonly MigrationStep[]): number {
    const path = tenantDbPath(this.dataDir, tenantId);
    const dir = dirname(path);
    this.open.get(tenantId)?.close();
    this.open.delete(tenantId);
    const aside = existsSync(dir) ? `${dir}.replaced-${process.pid}-${Date.now()}` : null;
    if (aside) renameSync(dir, aside);
    try {
      mkdirSync(dir, { recursive: true });
      renameSync(file, path);
      const db = openRestored(path, tenantId, this.sync);
      let version: number;
      try {
        const problems = db.integrityProblems();
        if (problems.length > 0) {
          throw new ShardError({
            code: Status.INVALID_ARGUMENT,
            reason: 'BACKUP_CORRUPT',
            message: `the backup fails integrity_check: ${problems.slice(0, 5).join('; ')}`,
          });
        }
        version = db.migrate(migrations);
      } catch (error) {
        db.close();
        if (error instanceof ShardError) throw error;
        throw new ShardError({
          code: Status.INVALID_ARGUMENT,
          reason: 'BACKUP_UNUSABLE',
          message: `the backup is not a database tenantd can use: ${(error as Error).message}`,
        });
      }
      this.add(db);
      if (aside) rmSync(aside, { recursive: true, force: true });
      return version;
    } catch (error) {
      rmSync(dir, { recursive: true, force: true });
      if (aside) renameSync(aside, dir);
      throw error;
    }
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

  closeAll(): number {
    const count = this.open.size;
    for (const db of this.open.values()) db.close();
    this.open.clear();
    return count;
  }

  private add(db: TenantDb): TenantDb {
    this.open.set(db.tenantId, db);
    while (this.open.size > this.maxOpen) {
      const [oldest, victim] = this.open.entries().next().value!;
      victim.close();
      this.open.delete(oldest);
    }
    return db;
  }
}

/** Opens a restored file; anything SQLite cannot open as a database is the caller's bad input. */
function openRestored(path: string, tenantId: string, sync: SyncMode): TenantDb {
  try {
    return TenantDb.open({ path, tenantId, sync, create: false });
  } catch (error) {
    if (error instanceof ShardError) throw error;
    throw new ShardError({
      code: Status.INVALID_ARGUMENT,
      reason: 'NOT_A_DATABASE',
      message: `the backup cannot be opened as a SQLite database: ${(error as Error).message}`,
    });
  }
}
