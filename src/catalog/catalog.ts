/**
 * catalog.db: tenants, key hashes, migrations. Owned by the front end (main
 * thread); every write is a small synchronous transaction, durable before
 * the admin call that made it is answered.
 */
import Database from 'better-sqlite3';
import type { QuotaValues } from '../config.ts';
import type { EventSweep } from '../protocol.ts';

export type TenantState = 'ACTIVE' | 'SUSPENDED';
export type KeyRole = 'ADMIN' | 'READ_WRITE' | 'READ_ONLY';

/** Per-tenant overrides: 0 inherits the plan's value, -1 is unlimited. */
export type QuotaOverrides = QuotaValues;

export interface TenantRecord {
  tenantId: string;
  displayName: string;
  labels: Record<string, string>;
  plan: string;
  quotas: QuotaOverrides;
  state: TenantState;
  createTime: number;
  updateTime: number;
  etag: string;
  schemaVersion: number;
}

export interface KeyRecord {
  keyId: string;
  /** null for admin keys. */
  tenantId: string | null;
  role: KeyRole;
  displayName: string;
  hash: Buffer;
  createTime: number;
  revokeTime: number | null;
}

export interface MigrationFailureRecord {
  version: number;
  tenantId: string;
  error: string;
  time: number;
}

export interface MigrationRecord {
  version: number;
  migrationId: string;
  sql: string;
  createTime: number;
}

interface TenantRow {
  tenant_id: string;
  display_name: string;
  labels: string;
  plan: string;
  quotas: string;
  state: TenantState;
  create_time: number;
  update_time: number;
  etag: string;
  schema_version: number;
}

interface KeyRow {
  key_id: string;
  tenant_id: string | null;
  role: KeyRole;
  display_name: string;
  hash: Buffer;
  create_time: number;
  revoke_time: number | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS tenants (
  tenant_id      TEXT PRIMARY KEY,
  display_name   TEXT NOT NULL DEFAULT '',
  labels         TEXT NOT NULL DEFAULT '{}',
  plan           TEXT NOT NULL,
  quotas         TEXT NOT NULL,
  state          TEXT NOT NULL CHECK (state IN ('ACTIVE', 'SUSPENDED')),
  create_time    INTEGER NOT NULL,
  update_time    INTEGER NOT NULL,
  etag           TEXT NOT NULL,
  schema_version INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS api_keys (
  key_id       TEXT PRIMARY KEY,
  tenant_id    TEXT REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  role         TEXT NOT NULL CHECK (role IN ('ADMIN', 'READ_WRITE', 'READ_ONLY')),
  display_name TEXT NOT NULL DEFAULT '',
  hash         BLOB NOT NULL UNIQUE,
  create_time  INTEGER NOT NULL,
  revoke_time  INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id, create_time);
CREATE TABLE IF NOT EXISTS migrations (
  version      INTEGER PRIMARY KEY,
  migration_id TEXT NOT NULL UNIQUE,
  sql          TEXT NOT NULL,
  create_time  INTEGER NOT NULL
) STRICT;
-- Closed tenants whose events expire at oldest + retention_ms: the shards'
-- notes, kept here so that a restarted shard still sweeps them (workers/dbPool.ts).
CREATE TABLE IF NOT EXISTS event_sweeps (
  tenant_id    TEXT PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  oldest       INTEGER NOT NULL,
  retention_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS migration_failures (
  version   INTEGER NOT NULL REFERENCES migrations (version),
  tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  error     TEXT NOT NULL,
  time      INTEGER NOT NULL,
  PRIMARY KEY (version, tenant_id)
) STRICT;
`;

/**
 * Most tenants have no labels and no quota overrides: they share these (the
 * registry holds every tenant's record, so 100,000 empty objects add up).
 * Frozen, because records are replaced on update, never changed in place.
 */
const NO_LABELS: Record<string, string> = Object.freeze({}) as Record<string, string>;
const NO_OVERRIDES: QuotaOverrides = Object.freeze({}) as QuotaOverrides;

/** Plan names and states repeat across every row: one string each, not one per tenant. */
const shared = new Map<string, string>();
function sharedString<T extends string>(value: T): T {
  const known = shared.get(value);
  if (known !== undefined) return known as T;
  if (shared.size < 1_000) shared.set(value, value);
  return value;
}

function toTenant(row: TenantRow): TenantRecord {
  return {
    tenantId: row.tenant_id,
    displayName: row.display_name,
    labels: row.labels === '{}' ? NO_LABELS : (JSON.parse(row.labels) as Record<string, string>),
    plan: sharedString(row.plan),
    quotas: row.quotas === '{}' ? NO_OVERRIDES : (JSON.parse(row.quotas) as QuotaOverrides),
    state: sharedString(row.state),
    createTime: row.create_time,
    updateTime: row.update_time,
    etag: row.etag,
    schemaVersion: row.schema_version,
  };
}

function toKey(row: KeyRow): KeyRecord {
  return {
    keyId: row.key_id,
    tenantId: row.tenant_id,
    role: row.role,
    displayName: row.display_name,
    hash: row.hash,
    createTime: row.create_time,
    revokeTime: row.revoke_time,
  };
}

export class Catalog {
  private readonly db: Database.Database;
  private readonly statements;

  /**
   * `exclusive`: for offline tools (`tenantd admin-key rotate`). Holds
   * SQLite's exclusive lock from the start, so it fails at once (SQLITE_BUSY)
   * while a server has the catalog open, and a server cannot start meanwhile.
   */
  constructor(path: string, options: { exclusive?: boolean } = {}) {
    this.db = new Database(path, options.exclusive ? { timeout: 0, fileMustExist: true } : {});
    if (options.exclusive) {
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.exec('BEGIN EXCLUSIVE; COMMIT');
    }
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    // The front end reads the catalog rarely after start-up (keys are cached):
    // 2 MiB of page cache, not SQLite's default 16 MiB here.
    this.db.pragma('cache_size = -2048');
    this.db.exec(SCHEMA);
    const db = this.db;
    this.statements = {
      getTenant: db.prepare<[string], TenantRow>('SELECT * FROM tenants WHERE tenant_id = ?'),
      listTenants: db.prepare<[string, string | null, string | null, number], TenantRow>(
        'SELECT * FROM tenants WHERE tenant_id > ? AND (? IS NULL OR state = ?) ORDER BY tenant_id LIMIT ?',
      ),
      allTenants: db.prepare<[], TenantRow>('SELECT * FROM tenants ORDER BY tenant_id'),
      insertTenant: db.prepare(
        `INSERT INTO tenants (tenant_id, display_name, labels, plan, quotas, state, create_time, update_time, etag, schema_version)
         VALUES (@tenant_id, @display_name, @labels, @plan, @quotas, @state, @create_time, @update_time, @etag, @schema_version)`,
      ),
      updateTenant: db.prepare(
        `UPDATE tenants SET display_name = @display_name, labels = @labels, plan = @plan, quotas = @quotas,
           state = @state, update_time = @update_time, etag = @etag, schema_version = @schema_version
         WHERE tenant_id = @tenant_id`,
      ),
      deleteTenant: db.prepare<[string]>('DELETE FROM tenants WHERE tenant_id = ?'),
      eventSweeps: db.prepare<[], { tenant_id: string; oldest: number; retention_ms: number }>('SELECT * FROM event_sweeps'),
      // A tenant deleted meanwhile has no row to hang the note on: nothing is kept.
      noteEventSweep: db.prepare<[string, number, number, string]>(
        `INSERT INTO event_sweeps (tenant_id, oldest, retention_ms) SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM tenants WHERE tenant_id = ?)
         ON CONFLICT (tenant_id) DO UPDATE SET oldest = excluded.oldest, retention_ms = excluded.retention_ms`,
      ),
      clearEventSweep: db.prepare<[string]>('DELETE FROM event_sweeps WHERE tenant_id = ?'),
      insertKey: db.prepare(
        `INSERT INTO api_keys (key_id, tenant_id, role, display_name, hash, create_time, revoke_time)
         VALUES (@key_id, @tenant_id, @role, @display_name, @hash, @create_time, @revoke_time)`,
      ),
      keyByHash: db.prepare<[Buffer], KeyRow>('SELECT * FROM api_keys WHERE hash = ?'),
      keyById: db.prepare<[string], KeyRow>('SELECT * FROM api_keys WHERE key_id = ?'),
      listKeys: db.prepare<[string, string, number, number], KeyRow>(
        `SELECT * FROM api_keys WHERE tenant_id = ? AND key_id > ? AND (? OR revoke_time IS NULL)
         ORDER BY key_id LIMIT ?`,
      ),
      revokeKey: db.prepare<[number, string]>('UPDATE api_keys SET revoke_time = ? WHERE key_id = ? AND revoke_time IS NULL'),
      adminKeys: db.prepare<[], KeyRow>("SELECT * FROM api_keys WHERE role = 'ADMIN' AND revoke_time IS NULL"),
      migrations: db.prepare<[], { version: number; migration_id: string; sql: string; create_time: number }>(
        'SELECT * FROM migrations ORDER BY version',
      ),
      insertMigration: db.prepare<[number, string, string, number]>(
        'INSERT INTO migrations (version, migration_id, sql, create_time) VALUES (?, ?, ?, ?)',
      ),
      setSchemaVersion: db.prepare<[number, string]>('UPDATE tenants SET schema_version = ? WHERE tenant_id = ?'),
      recordFailure: db.prepare<[number, string, string, number]>(
        `INSERT INTO migration_failures (version, tenant_id, error, time) VALUES (?, ?, ?, ?)
         ON CONFLICT (version, tenant_id) DO UPDATE SET error = excluded.error, time = excluded.time`,
      ),
      clearFailures: db.prepare<[string, number]>('DELETE FROM migration_failures WHERE tenant_id = ? AND version <= ?'),
      allFailures: db.prepare<[], { version: number; tenant_id: string; error: string }>('SELECT version, tenant_id, error FROM migration_failures'),
    };
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Runs `fn` in one transaction. */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  getTenant(tenantId: string): TenantRecord | undefined {
    const row = this.statements.getTenant.get(tenantId);
    return row && toTenant(row);
  }

  /** Tenants after `afterId` in id order (keyset paging). */
  listTenants(afterId: string, limit: number, state: TenantState | null): TenantRecord[] {
    return this.statements.listTenants.all(afterId, state, state, limit).map(toTenant);
  }

  /** Every tenant, one at a time: no array of 100,000 rows at start-up. */
  *eachTenant(): Generator<TenantRecord> {
    for (const row of this.statements.allTenants.iterate()) yield toTenant(row);
  }

  /** The shards' notes of closed tenants with events to sweep. */
  eventSweeps(): EventSweep[] {
    return this.statements.eventSweeps.all().map((row) => ({ tenantId: row.tenant_id, oldest: row.oldest, retentionMs: row.retention_ms }));
  }

  /** Keeps what a shard reported of its notes (one transaction). */
  saveEventSweeps(noted: readonly EventSweep[], cleared: readonly string[]): void {
    this.transaction(() => {
      for (const sweep of noted) this.statements.noteEventSweep.run(sweep.tenantId, Math.floor(sweep.oldest), Math.floor(sweep.retentionMs), sweep.tenantId);
      for (const tenantId of cleared) this.statements.clearEventSweep.run(tenantId);
    });
  }

  /** Hands the page cache back after a full scan (start-up reads every tenant once). */
  shrinkMemory(): void {
    this.db.pragma('shrink_memory');
  }

  insertTenant(tenant: TenantRecord): void {
    this.statements.insertTenant.run(tenantParams(tenant));
  }

  updateTenant(tenant: TenantRecord): void {
    this.statements.updateTenant.run(tenantParams(tenant));
  }

  deleteTenant(tenantId: string): void {
    this.statements.deleteTenant.run(tenantId);
  }

  insertKey(key: KeyRecord): void {
    this.statements.insertKey.run({
      key_id: key.keyId,
      tenant_id: key.tenantId,
      role: key.role,
      display_name: key.displayName,
      hash: key.hash,
      create_time: key.createTime,
      revoke_time: key.revokeTime,
    });
  }

  keyByHash(hash: Buffer): KeyRecord | undefined {
    const row = this.statements.keyByHash.get(hash);
    return row && toKey(row);
  }

  keyById(keyId: string): KeyRecord | undefined {
    const row = this.statements.keyById.get(keyId);
    return row && toKey(row);
  }

  listKeys(tenantId: string, afterKeyId: string, limit: number, showRevoked: boolean): KeyRecord[] {
    return this.statements.listKeys.all(tenantId, afterKeyId, showRevoked ? 1 : 0, limit).map(toKey);
  }

  revokeKey(keyId: string, time: number): boolean {
    return this.statements.revokeKey.run(time, keyId).changes === 1;
  }

  activeAdminKeys(): KeyRecord[] {
    return this.statements.adminKeys.all().map(toKey);
  }

  appendMigration(migrationId: string, sql: string, time: number): MigrationRecord {
    return this.transaction(() => {
      const last = this.migrations().at(-1);
      const version = (last?.version ?? 0) + 1;
      this.statements.insertMigration.run(version, migrationId, sql, time);
      return { version, migrationId, sql, createTime: time };
    });
  }

  /**
   * What migration passes found, many tenants in one transaction
   * (migrationWrites.ts): each tenant's schema version, which clears its
   * failures up to it, and the failures.
   */
  writeMigrationResults(versions: readonly { tenantId: string; version: number }[], failures: readonly MigrationFailureRecord[]): void {
    this.transaction(() => {
      for (const { tenantId, version } of versions) {
        this.statements.setSchemaVersion.run(version, tenantId);
        this.statements.clearFailures.run(tenantId, version);
      }
      for (const f of failures) this.statements.recordFailure.run(f.version, f.tenantId, f.error.slice(0, 2000), f.time);
    });
  }

  /** Every recorded migration failure (read once at start; the migrator keeps them in memory). */
  migrationFailures(): { version: number; tenantId: string; error: string }[] {
    return this.statements.allFailures.all().map((f) => ({ version: f.version, tenantId: f.tenant_id, error: f.error }));
  }

  migrations(): MigrationRecord[] {
    return this.statements.migrations.all().map((row) => ({
      version: row.version,
      migrationId: row.migration_id,
      sql: row.sql,
      createTime: row.create_time,
    }));
  }
}

function tenantParams(tenant: TenantRecord) {
  return {
    tenant_id: tenant.tenantId,
    display_name: tenant.displayName,
    labels: JSON.stringify(tenant.labels),
    plan: tenant.plan,
    quotas: JSON.stringify(tenant.quotas),
    state: tenant.state,
    create_time: tenant.createTime,
    update_time: tenant.updateTime,
    etag: tenant.etag,
    schema_version: tenant.schemaVersion,
  };
}
