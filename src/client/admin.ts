/**
 * The admin calls (an admin key): tenants, keys, usage, backups, maintenance
 * and migrations. Answers are the wire messages as grpc-js gives them
 * (snake_case fields, int64 as strings, enums as names): the CLI prints them
 * as canonical JSON, and they keep every field the server sends.
 */
import type { ClientWritableStream } from '@grpc/grpc-js';
import type { CallOptions, Channel, ServerStream } from './channel.ts';

/** A message as it came off the wire. */
export type Message = Record<string, any>;

export interface TenantSpec {
  plan?: string;
  display_name?: string;
  labels?: Record<string, string>;
  quotas?: Record<string, string | number>;
}

export type MaintenanceOperation = 'VACUUM' | 'ANALYZE' | 'OPTIMIZE' | 'INTEGRITY_CHECK';

const tenantName = (id: string) => (id.startsWith('tenants/') ? id : `tenants/${id}`);
const tenantIdOf = (id: string) => (id.startsWith('tenants/') ? id.slice('tenants/'.length) : id);

export class Admin {
  constructor(private readonly channel: Channel) {}

  /** Calls about one tenant name it in `x-tenant-id` too: a cluster proxy routes on it. */
  private about(id: string, options: CallOptions): CallOptions {
    return { tenant: tenantIdOf(id), ...options };
  }

  private tenantCall(method: string, request: Message, id: string, options: CallOptions): Promise<Message> {
    return this.channel.unary<Message>('TenantService', method, request, this.about(id, options));
  }

  createTenant(id: string, tenant: TenantSpec = {}, options: CallOptions = {}): Promise<{ tenant: Message; api_key: Message }> {
    return this.tenantCall('CreateTenant', { tenant_id: id, tenant }, id, options) as Promise<{ tenant: Message; api_key: Message }>;
  }

  getTenant(id: string, options: CallOptions = {}): Promise<Message> {
    return this.tenantCall('GetTenant', { name: tenantName(id) }, id, options);
  }

  /** Every tenant, page by page. */
  async *listTenants(state: '' | 'ACTIVE' | 'SUSPENDED' = '', options: CallOptions = {}): AsyncGenerator<Message> {
    let token = '';
    do {
      const page = await this.channel.unary<{ tenants: Message[]; next_page_token: string }>(
        'TenantService',
        'ListTenants',
        { page_size: 1000, page_token: token, state: state || 'STATE_UNSPECIFIED' },
        options,
      );
      yield* page.tenants;
      token = page.next_page_token;
    } while (token !== '');
  }

  updateTenant(id: string, tenant: TenantSpec, paths: string[], options: CallOptions = {}): Promise<Message> {
    return this.tenantCall('UpdateTenant', { tenant: { ...tenant, name: tenantName(id) }, update_mask: { paths } }, id, options);
  }

  suspendTenant(id: string, options: CallOptions = {}): Promise<Message> {
    return this.tenantCall('SuspendTenant', { name: tenantName(id) }, id, options);
  }

  activateTenant(id: string, options: CallOptions = {}): Promise<Message> {
    return this.tenantCall('ActivateTenant', { name: tenantName(id) }, id, options);
  }

  async deleteTenant(id: string, force = false, options: CallOptions = {}): Promise<void> {
    await this.tenantCall('DeleteTenant', { name: tenantName(id), force }, id, options);
  }

  createKey(id: string, role: 'READ_WRITE' | 'READ_ONLY' = 'READ_WRITE', options: CallOptions & { displayName?: string } = {}): Promise<Message> {
    return this.tenantCall('CreateApiKey', { parent: tenantName(id), api_key: { role, display_name: options.displayName ?? '' } }, id, options);
  }

  async listKeys(id: string, showRevoked = false, options: CallOptions = {}): Promise<Message[]> {
    const keys: Message[] = [];
    let token = '';
    do {
      const page = await this.tenantCall('ListApiKeys', { parent: tenantName(id), page_size: 1000, page_token: token, show_revoked: showRevoked }, id, options);
      keys.push(...page.api_keys);
      token = page.next_page_token;
    } while (token !== '');
    return keys;
  }

  /** `keyId`: the key's id, or its full name `tenants/<id>/apiKeys/<key_id>`. */
  revokeKey(id: string, keyId: string, options: CallOptions = {}): Promise<Message> {
    const name = keyId.includes('/') ? keyId : `${tenantName(id)}/apiKeys/${keyId}`;
    return this.tenantCall('RevokeApiKey', { name }, id, options);
  }

  usage(id: string, options: CallOptions = {}): Promise<Message> {
    return this.tenantCall('GetTenantUsage', { name: tenantName(id) }, id, options);
  }

  watchUsage(id: string, intervalMs = 1000, options: CallOptions = {}): ServerStream<Message> {
    return this.channel.serverStream('TenantService', 'WatchUsage', { name: tenantName(id), interval_ms: intervalMs }, this.about(id, options));
  }

  /** The backup's chunks: `data`, `offset`, `total_size`, and `sha256` on the last. */
  backup(id: string, options: CallOptions = {}): ServerStream<{ data: Buffer; offset: string; total_size: string; sha256: string }> {
    return this.channel.serverStream('TenantService', 'BackupTenant', { name: tenantName(id) }, this.about(id, options));
  }

  /**
   * Opens a restore: write `{ chunk }` messages to `call`, then `{ sha256 }`
   * (the trailer the server checks the bytes against), then end it.
   */
  restore(id: string, tenant: TenantSpec | null = null, options: CallOptions = {}): { call: ClientWritableStream<unknown>; response: Promise<Message> } {
    const opened = this.channel.clientStream<Message>('TenantService', 'RestoreTenant', this.about(id, options));
    opened.call.write({ header: { tenant_id: tenantIdOf(id), tenant, sha256: '' } });
    return opened;
  }

  /** `id` '-' runs it on every tenant of the node. */
  maintain(id: string, operation: MaintenanceOperation, options: CallOptions = {}): ServerStream<Message> {
    const scoped = id === '-' ? options : this.about(id, options);
    return this.channel.serverStream('TenantService', 'RunMaintenance', { name: tenantName(id), operation }, scoped);
  }

  applyMigration(migrationId: string, sql: string, validateOnly = false, options: CallOptions = {}): Promise<Message> {
    return this.channel.unary('SchemaService', 'ApplyMigration', { migration_id: migrationId, sql, validate_only: validateOnly }, options);
  }

  getMigration(migrationId: string, options: CallOptions = {}): Promise<Message> {
    const name = migrationId.startsWith('migrations/') ? migrationId : `migrations/${migrationId}`;
    return this.channel.unary('SchemaService', 'GetMigration', { name }, options);
  }

  /** Runs a migration again on the tenants it failed on. */
  retryMigration(migrationId: string, options: CallOptions = {}): Promise<Message> {
    const name = migrationId.startsWith('migrations/') ? migrationId : `migrations/${migrationId}`;
    return this.channel.unary('SchemaService', 'RetryMigration', { name }, options);
  }

  async listMigrations(options: CallOptions = {}): Promise<Message[]> {
    const all: Message[] = [];
    let token = '';
    do {
      const page = await this.channel.unary<{ migrations: Message[]; next_page_token: string }>('SchemaService', 'ListMigrations', { page_size: 1000, page_token: token }, options);
      all.push(...page.migrations);
      token = page.next_page_token;
    } while (token !== '');
    return all;
  }
}
