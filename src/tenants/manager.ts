/**
 * Tenant lifecycle and keys: the one place that changes the catalog, the
 * in-memory registry, the shards' files and the key cache together, in an
 * order that leaves no half-created or half-deleted tenant behind.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { QUOTA_FIELDS, snakeCase } from '../config.ts';
import { TenantdError, invalidArgument, notFound } from '../errors.ts';
import { tenantDbPath } from '../protocol.ts';
import type { Catalog, KeyRecord, KeyRole, QuotaOverrides, TenantRecord, TenantState } from '../catalog/catalog.ts';
import type { Authenticator } from '../auth/authenticator.ts';
import { generateKey } from '../auth/keys.ts';
import type { ShardRouter } from '../routing/shardRouter.ts';
import type { LiveTenant, TenantRegistry } from './registry.ts';
import type { EventHub } from '../events/hub.ts';
import type { FileChecks } from './fileChecks.ts';
import { toSteps } from '../schema/migrator.ts';

export const TENANT_ID_PATTERN = /^[a-z][a-z0-9_-]{0,62}$/;

/** How long DeleteTenant waits for the tenant's calls in flight. */
const DELETE_WAIT_MS = 30_000;
/** How long SuspendTenant waits for them before answering anyway. */
const SUSPEND_WAIT_MS = 10_000;

export interface TenantFields {
  displayName: string;
  labels: Record<string, string>;
  plan: string;
  quotas: QuotaOverrides;
}

export type TenantField = 'display_name' | 'labels' | 'plan' | `quotas.${string}` | 'quotas';

/** A key whose secret the operator chose; only its hash is kept. */
export interface ProvidedKey {
  keyId: string;
  hash: Buffer;
  role: KeyRole;
}

export function emptyOverrides(): QuotaOverrides {
  return {
    requestsPerSecond: 0,
    writeBytesPerSecond: 0,
    concurrentRequests: 0,
    storageBytes: 0,
    queryTimeoutMs: 0,
    eventRetentionHours: 0,
    shardMsPerSecond: 0,
    transactionTimeoutMs: 0,
    concurrentTransactions: 0,
  };
}

export function checkTenantId(tenantId: string, field: string): void {
  if (!TENANT_ID_PATTERN.test(tenantId)) {
    throw invalidArgument(
      field,
      `${JSON.stringify(tenantId.slice(0, 80))} is not a tenant id: 1-63 characters, a lowercase letter then lowercase letters, digits, "_" or "-"`,
      'INVALID_TENANT_ID',
    );
  }
}

function newEtag(): string {
  return randomBytes(8).toString('hex');
}

/** The catalog record of a tenant that starts now, ACTIVE, at `schemaVersion`. */
function newRecord(tenantId: string, fields: TenantFields, schemaVersion: number): TenantRecord {
  const now = Date.now();
  return { tenantId, ...fields, state: 'ACTIVE', createTime: now, updateTime: now, etag: newEtag(), schemaVersion };
}

export class TenantManager {
  /** Ids being created right now, so two concurrent creates cannot both win. */
  private readonly creating = new Set<string>();

  /** A deleted tenant's files could not be removed now (they go at the next start). */
  onOrphan: ((tenantId: string, error: unknown) => void) | null = null;

  constructor(
    private readonly catalog: Catalog,
    private readonly registry: TenantRegistry,
    private readonly router: ShardRouter,
    private readonly auth: Authenticator,
    private readonly dataDir: string,
    /** Where a restore's upload is checked and migrated, off the shards. */
    private readonly fileChecks: FileChecks,
    /** Event subscriptions, ended when their tenant is suspended or deleted. */
    private readonly hub: EventHub | null = null,
  ) {}

  get(tenantId: string): LiveTenant {
    const live = this.registry.get(tenantId);
    if (!live || live.deleting) throw notFound(`tenants/${tenantId}`, 'TENANT_NOT_FOUND');
    return live;
  }

  validateFields(fields: TenantFields, prefix: string): void {
    if (!this.registry.planExists(fields.plan)) {
      throw invalidArgument(`${prefix}.plan`, `unknown plan ${JSON.stringify(fields.plan)}`, 'UNKNOWN_PLAN');
    }
    for (const field of QUOTA_FIELDS) {
      const value = fields.quotas[field];
      if (!Number.isSafeInteger(value) || value < -1) {
        throw invalidArgument(
          `${prefix}.quotas.${snakeCase(field)}`,
          `expected -1 (unlimited), 0 (the plan's value) or a positive integer, got ${value}`,
          'INVALID_QUOTA',
        );
      }
    }
    if (fields.displayName.length > 200) {
      throw invalidArgument(`${prefix}.display_name`, 'at most 200 characters');
    }
    const labels = Object.entries(fields.labels);
    if (labels.length > 64) throw invalidArgument(`${prefix}.labels`, 'at most 64 labels');
    for (const [key, value] of labels) {
      if (!/^[a-z][a-z0-9_.-]{0,62}$/.test(key) || value.length > 256) {
        throw invalidArgument(
          `${prefix}.labels`,
          `label ${JSON.stringify(key.slice(0, 80))}: keys are 1-63 lowercase characters, values at most 256`,
        );
      }
    }
  }

  async create(
    tenantId: string,
    fields: TenantFields,
    sourceTenantId: string | null,
    providedKeys: readonly ProvidedKey[] = [],
  ): Promise<{ tenant: LiveTenant; key: KeyRecord; secret: string }> {
    checkTenantId(tenantId, 'tenant_id');
    this.validateFields(fields, 'tenant');
    if (this.registry.get(tenantId)) {
      throw new TenantdError(Status.ALREADY_EXISTS, 'TENANT_EXISTS', `tenants/${tenantId} already exists`, {
        metadata: { tenant: tenantId },
      });
    }
    // Not ALREADY_EXISTS: the other creation (or restore) may still fail, and
    // a client that takes ALREADY_EXISTS as "it is there" would use a tenant
    // that is not. Retrying tells which way it went.
    if (this.creating.has(tenantId)) {
      throw new TenantdError(Status.ABORTED, 'TENANT_BUSY', `tenants/${tenantId} is being created or restored; retry`, {
        metadata: { tenant: tenantId },
      });
    }
    const source = sourceTenantId === null ? null : this.get(sourceTenantId);
    this.creating.add(tenantId);
    const path = tenantDbPath(this.dataDir, tenantId);
    const shard = this.router.forTenant(tenantId);
    try {
      if (source) {
        rmSync(dirname(path), { recursive: true, force: true });
        mkdirSync(dirname(path), { recursive: true });
        // The source's own shard writes the copy: only it may read that file.
        await this.router.forTenant(source.record.tenantId).call({ op: 'snapshot', tenantId: source.record.tenantId, file: path });
      }
      const { schemaVersion } = await shard.call({
        op: 'create',
        tenantId,
        adoptExisting: source !== null,
        migrations: toSteps(this.catalog.migrations()),
      });
      const record = newRecord(tenantId, { ...fields, plan: this.registry.resolvePlan(fields.plan) }, schemaVersion);
      // An operator's tenants.yaml brings its own keys; otherwise one is made.
      const newKey = providedKeys.length === 0 ? generateKey('tenant') : null;
      const keys: KeyRecord[] = (newKey ? [{ hash: newKey.hash, role: 'READ_WRITE' as KeyRole, keyId: newKey.keyId }] : providedKeys).map(
        (k) => ({
          keyId: k.keyId,
          tenantId,
          role: k.role,
          displayName: newKey ? 'first key' : 'tenants file',
          hash: k.hash,
          createTime: record.createTime,
          revokeTime: null,
        }),
      );
      const key = keys[0]!;
      try {
        this.catalog.transaction(() => {
          this.catalog.insertTenant(record);
          for (const k of keys) this.catalog.insertKey(k);
        });
      } catch (error) {
        await shard.call({ op: 'drop', tenantId }).catch(() => undefined);
        throw error;
      }
      return { tenant: this.registry.put(record), key, secret: newKey?.key ?? '' };
    } catch (error) {
      if (source) rmSync(dirname(path), { recursive: true, force: true });
      throw error;
    } finally {
      this.creating.delete(tenantId);
    }
  }

  update(tenantId: string, etag: string, paths: readonly string[], fields: TenantFields): LiveTenant {
    const live = this.get(tenantId);
    this.checkEtag(live, etag);
    const next: TenantRecord = { ...live.record, quotas: { ...live.record.quotas } };
    for (const path of paths) {
      if (path === 'display_name') next.displayName = fields.displayName;
      else if (path === 'labels') next.labels = fields.labels;
      else if (path === 'plan') next.plan = this.registry.resolvePlan(fields.plan);
      else if (path === 'quotas') next.quotas = { ...fields.quotas };
      else if (path.startsWith('quotas.')) {
        const field = QUOTA_FIELDS.find((f) => snakeCase(f) === path.slice('quotas.'.length));
        if (!field) throw invalidArgument('update_mask', `unknown quota in path ${JSON.stringify(path)}`, 'INVALID_UPDATE_MASK');
        next.quotas[field] = fields.quotas[field];
      } else {
        throw invalidArgument(
          'update_mask',
          `path ${JSON.stringify(path)} cannot be updated; updatable: display_name, labels, plan, quotas, quotas.<quota>`,
          'INVALID_UPDATE_MASK',
        );
      }
    }
    this.validateFields(next, 'tenant');
    next.updateTime = Date.now();
    next.etag = newEtag();
    this.catalog.updateTenant(next);
    const retentionBefore = live.quotas.eventRetentionHours;
    const updated = this.registry.put(next);
    const hours = updated.quotas.eventRetentionHours;
    // The shard sweeps expired events in the background with the retention it
    // knows, which must not stay longer than the tenant's new one.
    if (hours !== retentionBefore) this.router.forTenant(tenantId).setEventRetention(tenantId, hours > 0 ? hours * 3_600_000 : 0);
    return updated;
  }

  /**
   * Suspending refuses new calls at once and then waits (up to
   * SUSPEND_WAIT_MS) for the calls in flight, so that when it returns the
   * tenant is quiet, e.g. for a backup or restore.
   */
  async setState(tenantId: string, state: TenantState): Promise<LiveTenant> {
    const live = this.get(tenantId);
    if (live.record.state !== state) {
      const next: TenantRecord = { ...live.record, state, updateTime: Date.now(), etag: newEtag() };
      this.catalog.updateTenant(next);
      this.registry.put(next);
    }
    if (state === 'SUSPENDED') {
      this.hub?.endAll('suspended', tenantId);
      await this.registry.waitIdle(live, SUSPEND_WAIT_MS);
    }
    return live;
  }

  /**
   * The storage_bytes a restore into `tenantId` may bring: the tenant's own
   * quota when it exists, else what `fields` would give a new tenant; -1 is
   * unlimited.
   */
  restoreLimit(tenantId: string, fields: TenantFields | null): number {
    const live = this.registry.get(tenantId);
    if (live && !live.deleting) return live.quotas.storageBytes;
    return this.registry.effectiveQuotas({ plan: fields?.plan ?? '', quotas: fields?.quotas ?? emptyOverrides() }).storageBytes;
  }

  /**
   * Puts a backup (`file`, a database under the data directory, taken over
   * by the shard) in place: a new tenant with `fields` and no API key yet, or
   * the database of a SUSPENDED tenant, whose record, keys and quotas stay.
   * The file is checked (integrity_check) and migrated off the shards
   * (fileChecks.ts) before the tenant's shard swaps it in; if anything
   * fails, an existing tenant keeps its database.
   */
  async restore(tenantId: string, fields: TenantFields | null, file: string): Promise<LiveTenant> {
    checkTenantId(tenantId, 'header.tenant_id');
    if (this.creating.has(tenantId)) {
      throw new TenantdError(Status.ABORTED, 'TENANT_BUSY', `tenants/${tenantId} is being created or restored; retry`, {
        metadata: { tenant: tenantId },
      });
    }
    const existing = this.registry.get(tenantId);
    const shard = this.router.forTenant(tenantId);
    this.creating.add(tenantId);
    try {
      if (existing && !existing.deleting) {
        if (existing.record.state !== 'SUSPENDED') {
          throw new TenantdError(
            Status.FAILED_PRECONDITION,
            'TENANT_ACTIVE',
            `tenants/${tenantId} is active; suspend it before restoring over it`,
            { metadata: { tenant: tenantId } },
          );
        }
        const schemaVersion = await this.fileChecks.checkRestore(file, tenantId, toSteps(this.catalog.migrations()));
        await this.registry.waitIdle(existing, SUSPEND_WAIT_MS);
        await shard.call({ op: 'restore', tenantId, file });
        const next: TenantRecord = { ...existing.record, schemaVersion, updateTime: Date.now(), etag: newEtag() };
        this.catalog.updateTenant(next);
        return this.registry.put(next);
      }
      if (existing) throw new TenantdError(Status.ABORTED, 'TENANT_BUSY', `tenants/${tenantId} is being deleted; retry`);
      const newFields = fields ?? { displayName: '', labels: {}, plan: '', quotas: emptyOverrides() };
      this.validateFields(newFields, 'header.tenant');
      const schemaVersion = await this.fileChecks.checkRestore(file, tenantId, toSteps(this.catalog.migrations()));
      await shard.call({ op: 'restore', tenantId, file });
      const record = newRecord(tenantId, { ...newFields, plan: this.registry.resolvePlan(newFields.plan) }, schemaVersion);
      try {
        this.catalog.insertTenant(record);
      } catch (error) {
        await shard.call({ op: 'drop', tenantId }).catch(() => undefined);
        throw error;
      }
      return this.registry.put(record);
    } finally {
      this.creating.delete(tenantId);
    }
  }

  async delete(tenantId: string, force: boolean, etag: string): Promise<void> {
    const live = this.get(tenantId);
    this.checkEtag(live, etag);
    if (this.creating.has(tenantId)) {
      throw new TenantdError(Status.ABORTED, 'TENANT_BUSY', `tenants/${tenantId} is being restored; retry`, { metadata: { tenant: tenantId } });
    }
    if (live.record.state === 'ACTIVE' && !force) {
      throw new TenantdError(
        Status.FAILED_PRECONDITION,
        'TENANT_ACTIVE',
        `tenants/${tenantId} is active; suspend it first or set force`,
        { metadata: { tenant: tenantId } },
      );
    }
    // From here on new calls are refused. Calls already sent to the shard are
    // ahead of the drop in its queue, so they finish first; waiting for the
    // counter also covers calls still between admission and dispatch.
    live.deleting = true;
    this.auth.evictTenant(tenantId);
    this.hub?.endAll('deleted', tenantId);
    await this.registry.waitIdle(live, DELETE_WAIT_MS);
    // The catalog row goes first: a crash after it leaves files that the next
    // start removes (restoreFiles.ts trashOrphans), never a tenant without them.
    this.catalog.deleteTenant(tenantId);
    this.registry.remove(tenantId);
    try {
      await this.router.forTenant(tenantId).call({ op: 'drop', tenantId });
    } catch (error) {
      // The tenant is gone either way; its files go at the next start, or when its id is created again.
      this.onOrphan?.(tenantId, error);
    }
  }

  /**
   * The catalog rows that travel with a tenant moved to another node: its
   * record and every key (hashes only; revoked ones too, so a revoked key
   * stays revoked there).
   */
  exportRows(tenantId: string): { record: TenantRecord; keys: KeyRecord[] } {
    const live = this.get(tenantId);
    return { record: live.record, keys: this.catalog.listKeys(tenantId, '', 1_000_000, true) };
  }

  /**
   * Installs a tenant moved here from another node: `file` (a snapshot under
   * the data directory, taken over by the shard) checked and migrated like a
   * restore, then its catalog rows as they were on the source. A copy left
   * here by an earlier move is replaced: the caller has checked that this
   * node does not own the tenant yet. `checked`: the file's bytes are known
   * to be a sound snapshot already (a two-phase move checked its staged copy
   * and verified the patches), so integrity_check is not run again.
   */
  async adopt(record: TenantRecord, keys: readonly KeyRecord[], file: string, checked = false): Promise<LiveTenant> {
    checkTenantId(record.tenantId, 'header.tenant_id');
    const tenantId = record.tenantId;
    if (this.creating.has(tenantId)) {
      throw new TenantdError(Status.ABORTED, 'TENANT_BUSY', `tenants/${tenantId} is being created or restored here; retry`);
    }
    this.creating.add(tenantId);
    try {
      if (this.registry.get(tenantId)) await this.release(tenantId);
      const schemaVersion = await this.fileChecks.checkRestore(file, tenantId, toSteps(this.catalog.migrations()), !checked);
      const shard = this.router.forTenant(tenantId);
      await shard.call({ op: 'restore', tenantId, file });
      const installed: TenantRecord = { ...record, schemaVersion: Math.max(schemaVersion, record.schemaVersion) };
      try {
        this.catalog.transaction(() => {
          this.catalog.insertTenant(installed);
          for (const key of keys) this.catalog.insertKey({ ...key, tenantId });
        });
      } catch (error) {
        await shard.call({ op: 'drop', tenantId }).catch(() => undefined);
        throw error;
      }
      return this.registry.put(installed);
    } finally {
      this.creating.delete(tenantId);
    }
  }

  /**
   * Removes this node's copy of a tenant that now lives elsewhere (after a
   * move's grace period, or before adopting a newer copy): like a forced
   * delete, but its calls were already going to the new owner. With
   * `keepAs` (a path under the data directory) the files are set aside
   * there instead of removed.
   */
  async release(tenantId: string, keepAs?: string): Promise<void> {
    const live = this.registry.get(tenantId);
    if (!live) return;
    live.deleting = true;
    this.auth.evictTenant(tenantId);
    this.hub?.endAll('moved', tenantId);
    await this.registry.waitIdle(live, DELETE_WAIT_MS);
    try {
      await this.router.forTenant(tenantId).call({ op: 'drop', tenantId, ...(keepAs === undefined ? {} : { keepAs }) });
    } catch (error) {
      live.deleting = false;
      throw error;
    }
    this.catalog.deleteTenant(tenantId);
    this.registry.remove(tenantId);
  }

  createKey(tenantId: string, role: KeyRole, displayName: string): { key: KeyRecord; secret: string } {
    this.get(tenantId);
    if (displayName.length > 200) throw invalidArgument('api_key.display_name', 'at most 200 characters');
    const newKey = generateKey('tenant');
    const key: KeyRecord = {
      keyId: newKey.keyId,
      tenantId,
      role,
      displayName,
      hash: newKey.hash,
      createTime: Date.now(),
      revokeTime: null,
    };
    this.catalog.insertKey(key);
    return { key, secret: newKey.key };
  }

  listKeys(tenantId: string, afterKeyId: string, limit: number, showRevoked: boolean): KeyRecord[] {
    this.get(tenantId);
    return this.catalog.listKeys(tenantId, afterKeyId, limit, showRevoked);
  }

  revokeKey(tenantId: string, keyId: string): KeyRecord {
    this.get(tenantId);
    const key = this.catalog.keyById(keyId);
    if (!key || key.tenantId !== tenantId) throw notFound(`tenants/${tenantId}/apiKeys/${keyId}`, 'API_KEY_NOT_FOUND');
    if (key.revokeTime === null) {
      key.revokeTime = Date.now();
      this.catalog.revokeKey(keyId, key.revokeTime);
    }
    this.auth.evict(keyId);
    return key;
  }

  private checkEtag(live: LiveTenant, etag: string): void {
    if (etag !== '' && etag !== live.record.etag) {
      throw new TenantdError(
        Status.ABORTED,
        'ETAG_MISMATCH',
        `tenants/${live.record.tenantId} changed since it was read (etag ${etag}, now ${live.record.etag}); read it again`,
        { metadata: { current_etag: live.record.etag } },
      );
    }
  }
}
