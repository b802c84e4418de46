/**
 * The audit trail: one structured `audit` line (info) for every admin action
 * that changes something or moves data out (create, update, suspend,
 * activate, delete, keys, backup, restore, migrations, maintenance), with
 * the principal as a key id (never the key), the tenant, the action and the
 * result (gRPC code and reason). Reads (Get/List/Usage) are in the access log.
 */
import type { Metadata } from '@grpc/grpc-js';
import type { Logger } from '../log.ts';

export const AUDITED_METHODS = new Set([
  'tenantd.v1.TenantService/CreateTenant',
  'tenantd.v1.TenantService/UpdateTenant',
  'tenantd.v1.TenantService/SuspendTenant',
  'tenantd.v1.TenantService/ActivateTenant',
  'tenantd.v1.TenantService/DeleteTenant',
  'tenantd.v1.TenantService/CreateApiKey',
  'tenantd.v1.TenantService/RevokeApiKey',
  'tenantd.v1.TenantService/BackupTenant',
  'tenantd.v1.TenantService/RestoreTenant',
  'tenantd.v1.TenantService/RunMaintenance',
  'tenantd.v1.SchemaService/ApplyMigration',
  'tenantd.v1.SchemaService/RetryMigration',
]);

/** The tenant a request is about: `tenant_id`, or the id in `name`/`parent` (`tenants/acme[/...]`), else `x-tenant-id`. */
export function auditedTenant(request: unknown, metadata: Metadata): string | null {
  if (request && typeof request === 'object') {
    const r = request as Record<string, unknown>;
    if (typeof r.tenant_id === 'string' && r.tenant_id !== '') return r.tenant_id.slice(0, 64);
    for (const field of ['name', 'parent', 'tenant']) {
      const value = r[field];
      const match = typeof value === 'string' ? /^tenants\/([^/]+)/.exec(value) : null;
      if (match) return match[1]!.slice(0, 64);
    }
  }
  const header = metadata.get('x-tenant-id');
  return header.length > 0 ? String(header[0]).slice(0, 64) : null;
}

export interface AuditEntry {
  request_id: string;
  action: string;
  /** The key id of the credentials the call carried; null when they named no active key. */
  principal: string | null;
  tenant: string | null;
  result: string;
  reason?: string;
  peer: string;
}

export function writeAudit(logger: Logger, entry: AuditEntry): void {
  logger.info('audit', { audit: true, ...entry });
}
