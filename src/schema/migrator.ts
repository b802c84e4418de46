/**
 * Schema migrations for every tenant. A migration is appended to the catalog
 * as the next version, then applied tenant by tenant in the background, each
 * shard working through its own tenants in parallel with the others. A
 * tenant called before its turn is migrated first. A migration that fails on
 * one tenant rolls back there alone (each step is its own transaction in the
 * shard) and is recorded; the other tenants go on.
 *
 * A tenant stays at the version before the one that failed on it: it is
 * failed for that migration and for every later one ("behind failed
 * migration m1"), and no pass or call tries it again, until an operator
 * retries it (RetryMigration) once it is repaired. So every migration
 * reaches a final state: each tenant is done, failed, or on its way in the
 * pass running now.
 *
 * Progress is answered from memory (the registry's count of tenants per
 * version and the failures here); results reach the catalog in batches
 * (migrationWrites.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ShardActivity } from '../quota/shardActivity.ts';
import { status as Status } from '@grpc/grpc-js';
import { TenantdError, invalidArgument } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { MigrationStep } from '../protocol.ts';
import type { Catalog, MigrationRecord } from '../catalog/catalog.ts';
import { MigrationWrites } from './migrationWrites.ts';
import type { ShardRouter } from '../routing/shardRouter.ts';
import type { LiveTenant, TenantRegistry } from '../tenants/registry.ts';
import type { FileChecks } from '../tenants/fileChecks.ts';

export const MIGRATION_ID_PATTERN = /^[a-z][a-z0-9_-]{0,62}$/;

/** Failures a Migration lists; the count covers all of them. */
const MAX_LISTED_FAILURES = 100;

export interface MigrationProgress {
  state: 'RUNNING' | 'SUCCEEDED' | 'FAILED';
  done: number;
  pending: number;
  failed: number;
  failures: { tenantId: string; error: string }[];
}

interface Blocked {
  /** The version that failed; the tenant stays at the one before. */
  version: number;
  error: string;
}

/**
 * The share of a shard's time a migration pass takes while tenants are
 * calling that shard: after each tenant's migration the pass waits as long
 * again. Measured over 100,000 tenants on 2 cores (bench:migration), a pass
 * flat out raised a reader's p99 2.95x; the bound is 2x.
 */
const PASS_SHARE = 0.5;

export class Migrator {
  private steps: MigrationStep[];
  /** One migration run per tenant at a time, shared by the background pass and lazy callers. */
  private readonly running = new Map<string, Promise<void>>();
  /** Tenants held at the version before one that failed on them, until retried. */
  private readonly blocked = new Map<string, Blocked>();
  private pass: Promise<void> = Promise.resolve();
  private passRunning = false;
  private stopping = false;
  private readonly writes: MigrationWrites;
  private failuresLoaded = false;

  constructor(
    private readonly catalog: Catalog,
    private readonly registry: TenantRegistry,
    private readonly router: ShardRouter,
    private readonly logger: Logger,
    /** Where validation runs: the file-task pool, off the main thread. */
    private readonly fileChecks: FileChecks,
    /** Each step's time limit on a tenant, and the validation's (--migration-timeout-ms). */
    private readonly timeoutMs: number,
    /** Which shards tenants are calling: the pass gives way on those (PASS_SHARE). */
    private readonly activity: ShardActivity | null = null,
  ) {
    this.steps = toSteps(catalog.migrations(), timeoutMs);
    this.writes = new MigrationWrites(catalog, (error) => this.logger.error('could not record migration results', { error: String(error) }));
  }

  /**
   * The recorded failures that still hold their tenant (at the version just
   * before), read once the registry is loaded; the others were repaired.
   */
  private loadFailures(): void {
    if (this.failuresLoaded) return;
    this.failuresLoaded = true;
    for (const f of this.catalog.migrationFailures()) {
      const live = this.registry.get(f.tenantId);
      if (live && live.record.schemaVersion < f.version && !this.blocked.has(f.tenantId)) this.blocked.set(f.tenantId, { version: f.version, error: f.error });
    }
  }

  get latest(): number {
    return this.steps.at(-1)?.version ?? 0;
  }

  allSteps(): MigrationStep[] {
    return this.steps;
  }

  /**
   * Runs every migration and then the new one on a scratch database, in the
   * file-task pool under the guard's tenant rules and the migration time
   * limit; throws INVALID_ARGUMENT with SQLite's (or the guard's) message.
   */
  async validate(migrationId: string, sql: string): Promise<void> {
    if (!MIGRATION_ID_PATTERN.test(migrationId)) {
      throw invalidArgument('migration_id', `expected ${MIGRATION_ID_PATTERN}, got ${JSON.stringify(migrationId.slice(0, 80))}`, 'INVALID_MIGRATION_ID');
    }
    if (sql.trim() === '') throw invalidArgument('sql', 'the migration is empty', 'INVALID_SQL');
    if (this.steps.some((s) => s.migrationId === migrationId)) {
      throw new TenantdError(Status.ALREADY_EXISTS, 'MIGRATION_EXISTS', `migrations/${migrationId} already exists`);
    }
    await this.fileChecks.validateMigration(this.steps, { version: this.latest + 1, migrationId, sql, timeoutMs: this.timeoutMs });
  }

  /** Appends the migration and starts applying it; returns once it is recorded. */
  async apply(migrationId: string, sql: string): Promise<MigrationRecord> {
    await this.validate(migrationId, sql);
    // Another ApplyMigration may have landed while this one was validated.
    if (this.steps.some((s) => s.migrationId === migrationId)) {
      throw new TenantdError(Status.ALREADY_EXISTS, 'MIGRATION_EXISTS', `migrations/${migrationId} already exists`);
    }
    const record = this.catalog.appendMigration(migrationId, sql, Date.now());
    this.steps = toSteps(this.catalog.migrations(), this.timeoutMs);
    // Safe to leave: a pass catches and logs its own failure, and stopped() awaits it at shutdown.
    void this.startPass();
    return record;
  }

  /**
   * Brings every tenant up to the latest version, shard by shard: all behind
   * it but those held by a failure, and, when `retry` is given, those of
   * them (they are released first).
   */
  startPass(retry: (tenantId: string, blocked: Blocked) => boolean = () => false): Promise<void> {
    this.loadFailures();
    const target = this.latest;
    if (target === 0) return this.pass;
    for (const [tenantId, blocked] of this.blocked) if (retry(tenantId, blocked)) this.blocked.delete(tenantId);
    this.passRunning = true;
    this.pass = this.pass.then(async () => {
      this.passRunning = true;
      const behind: string[] = [];
      // The registry holds every tenant's record: no catalog scan at start.
      for (const live of this.registry.all()) {
        if (live.record.schemaVersion < target && !this.blocked.has(live.record.tenantId)) behind.push(live.record.tenantId);
      }
      await this.router.eachByShard(behind, async (tenantId) => {
        if (this.stopping) return;
        const live = this.registry.get(tenantId);
        if (!live || live.deleting) return;
        const started = performance.now();
        await this.migrate(live);
        // On a shard tenants are calling, the pass takes about PASS_SHARE of its time and
        // leaves the rest to them; on an idle one it runs flat out.
        const shard = this.router.forTenant(tenantId).index;
        if (this.activity?.calledRecently(shard, Date.now())) {
          const tookMs = performance.now() - started;
          await sleep((tookMs * (1 - PASS_SHARE)) / PASS_SHARE);
        }
      });
      if (behind.length > 0) this.logger.info('migration pass done', { version: target });
    }).catch((error: unknown) => {
      // The next ApplyMigration or restart starts another pass; calls still migrate lazily.
      this.logger.error('migration pass stopped', { version: target, error: (error as Error).message });
    }).finally(() => {
      this.passRunning = false;
    });
    return this.pass;
  }

  /**
   * Retries the tenants that failed `version` or are behind a failure
   * before it: they are released and the pass takes them again.
   * Returns how many.
   */
  retry(version: number): number {
    this.loadFailures();
    let count = 0;
    void this.startPass((_, blocked) => {
      if (blocked.version > version) return false;
      count++;
      return true;
    });
    return count;
  }

  /** Settles when the pass in progress (if any) has finished and its results are in the catalog; used at shutdown. */
  async stopped(): Promise<void> {
    this.stopping = true;
    await this.pass.catch(() => undefined);
    this.writes.flushAll();
  }

  /** Settles once the results so far are in the catalog (tests). */
  recorded(): Promise<void> {
    return this.writes.settled();
  }

  /** Where migration `version` stands, from memory. */
  progress(version: number): MigrationProgress {
    this.loadFailures();
    let done = 0;
    let total = 0;
    for (const [at, count] of this.registry.schemaVersions()) {
      total += count;
      if (at >= version) done += count;
    }
    let failed = 0;
    const failures: { tenantId: string; error: string }[] = [];
    for (const [tenantId, blocked] of this.blocked) {
      if (blocked.version > version) continue;
      const live = this.registry.get(tenantId);
      // Deleted, or brought past it another way (a restore of a current copy): it holds nothing back any more.
      if (!live || live.record.schemaVersion >= blocked.version) {
        this.blocked.delete(tenantId);
        continue;
      }
      failed++;
      const error = blocked.version === version ? blocked.error : `behind failed migration ${this.idOf(blocked.version)}`;
      failures.push({ tenantId, error });
    }
    failures.sort((a, b) => (a.tenantId < b.tenantId ? -1 : a.tenantId > b.tenantId ? 1 : 0));
    const pending = Math.max(0, total - done - failed);
    // A tenant behind with no pass to take it (created or restored behind a
    // migration that fails on it): the next pass settles it, so that every
    // migration reaches a final state.
    if (pending > 0 && !this.passRunning && this.running.size === 0 && !this.stopping) void this.startPass();
    return {
      state: pending > 0 ? 'RUNNING' : failed > 0 ? 'FAILED' : 'SUCCEEDED',
      done,
      pending,
      failed,
      failures: failures.slice(0, MAX_LISTED_FAILURES),
    };
  }

  private idOf(version: number): string {
    return this.steps.find((s) => s.version === version)?.migrationId ?? `version ${version}`;
  }

  /** Before a tenant's call: migrate it first if its turn has not come yet (not when a failure holds it). */
  async ensureCurrent(live: LiveTenant): Promise<void> {
    if (live.record.schemaVersion >= this.latest) return;
    this.loadFailures();
    if (this.blocked.has(live.record.tenantId)) return;
    await this.migrate(live);
  }

  private migrate(live: LiveTenant): Promise<void> {
    const tenantId = live.record.tenantId;
    const existing = this.running.get(tenantId);
    if (existing) return existing;
    if (this.blocked.has(tenantId)) return Promise.resolve();
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
          const message = wire?.message ?? String(error);
          if (this.registry.get(tenantId)) {
            this.blocked.set(tenantId, { version: failedVersion, error: message });
            this.writes.failure({ version: failedVersion, tenantId, error: message, time: Date.now() });
          }
          this.logger.warn('migration failed for tenant', { tenant: tenantId, version: failedVersion, error: wire?.message });
        },
      )
      .finally(() => this.running.delete(tenantId));
    this.running.set(tenantId, run);
    return run;
  }

  private reached(live: LiveTenant, version: number): void {
    const current = this.registry.get(live.record.tenantId);
    if (!current || version === current.record.schemaVersion) return;
    this.writes.version(live.record.tenantId, version);
    this.registry.put({ ...current.record, schemaVersion: version });
  }
}

/** The catalog's migrations as a shard applies them. */
export function toSteps(records: MigrationRecord[], timeoutMs?: number): MigrationStep[] {
  return records.map((m) => ({ version: m.version, migrationId: m.migrationId, sql: m.sql, ...(timeoutMs === undefined ? {} : { timeoutMs }) }));
}
