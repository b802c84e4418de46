/**
 * Schema migrations for every tenant. A migration is appended to the catalog
 * as the next version, then applied tenant by tenant in the background, each
 * shard working through its own tenants in parallel with the others. A
 * tenant called before its turn is migrated first. A migration that fails on
 * one tenant rolls back there alone (each step is its own transaction in the
 * shard) and is recorded; the other tenants go on.
 */
import Database from 'better-sqlite3';
import { status as Status } from '@grpc/grpc-js';
import { TenantdError, invalidArgument } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { MigrationStep } from '../protocol.ts';
import type { Catalog, MigrationRecord } from '../catalog/catalog.ts';
import type { ShardRouter } from '../routing/shardRouter.ts';
import type { LiveTenant, TenantRegistry } from '../tenants/registry.ts';

export const MIGRATION_ID_PATTERN = /^[a-z][a-z0-9_-]{0,62}$/;

export class Migrator {
  private steps: MigrationStep[];
  /** One migration run per tenant at a time, shared by the background pass and lazy callers. */
  private readonly running = new Map<string, Promise<void>>();
  /** `${tenant}@${version}` that failed: not retried on every call, only by the next pass. */
  private readonly failed = new Set<string>();
  private pass: Promise<void> = Promise.resolve();
  private stopping = false;

  constructor(
    private readonly catalog: Catalog,
    private readonly registry: TenantRegistry,
    private readonly router: ShardRouter,
    private readonly logger: Logger,
  ) {
    this.steps = toSteps(catalog.migrations());
  }

  get latest(): number {
    return this.steps.at(-1)?.version ?? 0;
  }

  allSteps(): MigrationStep[] {
    return this.steps;
  }

  /** Runs every migration and then the new one on a scratch database; throws INVALID_ARGUMENT with SQLite's message. */
  validate(migrationId: string, sql: string): void {
    if (!MIGRATION_ID_PATTERN.test(migrationId)) {
      throw invalidArgument('migration_id', `expected ${MIGRATION_ID_PATTERN}, got ${JSON.stringify(migrationId.slice(0, 80))}`, 'INVALID_MIGRATION_ID');
    }
    if (sql.trim() === '') throw invalidArgument('sql', 'the migration is empty', 'INVALID_SQL');
    if (this.steps.some((s) => s.migrationId === migrationId)) {
      throw new TenantdError(Status.ALREADY_EXISTS, 'MIGRATION_EXISTS', `migrations/${migrationId} already exists`);
    }
    const scratch = new Database(':memory:');
    try {
      for (const step of this.steps) scratch.exec(step.sql);
      scratch.exec('BEGIN');
      scratch.exec(sql);
      scratch.exec('ROLLBACK');
    } catch (error) {
      throw invalidArgument('sql', `the migration fails on a scratch database: ${(error as Error).message}`, 'MIGRATION_INVALID');
    } finally {
      scratch.close();
    }
  }

  /** Appends the migration and starts applying it; returns at once. */
  apply(migrationId: string, sql: string): MigrationRecord {
    this.validate(migrationId, sql);
    const record = this.catalog.appendMigration(migrationId, sql, Date.now());
    this.steps = toSteps(this.catalog.migrations());
    // Safe to leave: a pass catches and logs its own failure, and stopped() awaits it at shutdown.
    void this.startPass();
    return record;
  }

  /** Brings every tenant up to the latest version, shard by shard. */
  startPass(): Promise<void> {
    const target = this.latest;
    if (target === 0) return this.pass;
    this.pass = this.pass.then(async () => {
      const behind: string[] = [];
      // The registry holds every tenant's record: no catalog scan at start.
      for (const live of this.registry.all()) if (live.record.schemaVersion < target) behind.push(live.record.tenantId);
      await this.router.eachByShard(behind, async (tenantId) => {
        if (this.stopping) return;
        const live = this.registry.get(tenantId);
        if (live && !live.deleting) await this.migrate(live, true);
      });
      if (behind.length > 0) this.logger.info('migration pass done', { version: target });
    }).catch((error: unknown) => {
      // The next ApplyMigration or restart starts another pass; calls still migrate lazily.
      this.logger.error('migration pass stopped', { version: target, error: (error as Error).message });
    });
    return this.pass;
  }

  /** Settles when the pass in progress (if any) has finished; used at shutdown. */
  async stopped(): Promise<void> {
    this.stopping = true;
    await this.pass.catch(() => undefined);
  }

  /** Before a tenant's call: migrate it first if its turn has not come yet. */
  async ensureCurrent(live: LiveTenant): Promise<void> {
    if (live.record.schemaVersion >= this.latest) return;
    if (this.failed.has(`${live.record.tenantId}@${this.latest}`)) return;
    await this.migrate(live, false);
  }

  private migrate(live: LiveTenant, retryFailed: boolean): Promise<void> {
    const tenantId = live.record.tenantId;
    const existing = this.running.get(tenantId);
    if (existing) return existing;
    if (!retryFailed && this.failed.has(`${tenantId}@${this.latest}`)) return Promise.resolve();
    const steps = this.steps.filter((s) => s.version > live.record.schemaVersion);
    const run = this.router
      .forTenant(tenantId)
      .call({ op: 'migrate', tenantId, migrations: steps })
      .then(
        ({ schemaVersion }) => this.reached(live, schemaVersion),
        (error: unknown) => {
          const wire = error instanceof TenantdError ? error : null;
          const reached = Number(wire?.details.metadata?.reached_version ?? live.record.schemaVersion);
          const failedVersion = Number(wire?.details.metadata?.failed_version ?? steps[0]?.version ?? this.latest);
          this.reached(live, reached);
          this.catalog.recordMigrationFailure(failedVersion, tenantId, wire?.message ?? String(error), Date.now());
          this.failed.add(`${tenantId}@${this.latest}`);
          this.logger.warn('migration failed for tenant', { tenant: tenantId, version: failedVersion, error: wire?.message });
        },
      )
      .finally(() => this.running.delete(tenantId));
    this.running.set(tenantId, run);
    return run;
  }

  private reached(live: LiveTenant, version: number): void {
    if (version === live.record.schemaVersion || !this.registry.get(live.record.tenantId)) return;
    this.catalog.setSchemaVersion(live.record.tenantId, version);
    this.registry.put({ ...live.record, schemaVersion: version });
  }
}

/** The catalog's migrations as a shard applies them. */
export function toSteps(records: MigrationRecord[]): MigrationStep[] {
  return records.map((m) => ({ version: m.version, migrationId: m.migrationId, sql: m.sql }));
}
