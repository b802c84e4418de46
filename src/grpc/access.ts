/**
 * Who may call what: admin calls need an admin key; tenant calls run for the
 * key's own tenant, which must exist and be active. `x-tenant-id`, when sent,
 * must name that tenant: it is a routing hint, never a way to pick a tenant.
 * An admin key may act on any tenant, and then names it with `x-tenant-id`.
 */
import { status as Status, type Metadata } from '@grpc/grpc-js';
import { TenantdError, invalidArgument, notFound } from '../errors.ts';
import type { Authenticator } from '../auth/authenticator.ts';
import type { Principal } from '../auth/principal.ts';
import type { LiveTenant, TenantRegistry } from '../tenants/registry.ts';
import { unreadableFields } from './unreadableMetadata.ts';

/**
 * Refuses a call whose `authorization` or `x-tenant-id` was sent but could
 * not be read (grpc-js dropped the value), or an `x-tenant-id` sent more than
 * once: either way the call does not say unambiguously who it is or which
 * tenant it names.
 */
function readable(metadata: Metadata): void {
  for (const field of unreadableFields(metadata)) {
    throw invalidArgument(field, 'sent with a value that cannot be read: only printable ASCII (space to ~) is allowed', 'UNREADABLE_METADATA');
  }
  // (Two authorization values are the authenticator's to refuse: UNAUTHENTICATED.)
  if (metadata.get('x-tenant-id').length > 1) throw invalidArgument('x-tenant-id', 'sent more than once', 'UNREADABLE_METADATA');
}

export interface TenantCall {
  principal: Principal;
  tenant: LiveTenant;
  readOnly: boolean;
  /** The server's --max-query-timeout-ms. */
  maxQueryTimeoutMs: number;
}

export class Access {
  constructor(
    private readonly auth: Authenticator,
    private readonly registry: TenantRegistry,
    /** True while a tenant's writes are fenced (it is being moved to another node): its calls run as READ_ONLY. */
    private readonly writeFenced: (tenantId: string) => boolean = () => false,
  ) {}

  admin(metadata: Metadata): Principal {
    readable(metadata);
    const principal = this.auth.authenticate(metadata);
    if (principal.role !== 'ADMIN') {
      throw new TenantdError(Status.PERMISSION_DENIED, 'ADMIN_KEY_REQUIRED', 'this method needs an admin key');
    }
    return principal;
  }

  /**
   * An admin call about `tenantId`: when it carries `x-tenant-id` (as it must
   * behind the cluster proxy, which routes on it), the header has to name
   * that tenant, or the call would have reached the wrong node.
   */
  sameTenant(metadata: Metadata, tenantId: string): string {
    readable(metadata);
    const header = metadata.get('x-tenant-id');
    if (header.length > 0 && String(header[0]) !== tenantId) {
      throw new TenantdError(
        Status.PERMISSION_DENIED,
        'TENANT_MISMATCH',
        `x-tenant-id names ${JSON.stringify(String(header[0]).slice(0, 64))} but the request is about tenants/${tenantId}`,
        { metadata: { x_tenant_id: String(header[0]).slice(0, 64), tenant: tenantId } },
      );
    }
    return tenantId;
  }

  tenant(metadata: Metadata): TenantCall {
    readable(metadata);
    const principal = this.auth.authenticate(metadata);
    const header = metadata.get('x-tenant-id');
    const named = header.length > 0 ? String(header[0]) : null;
    let tenantId: string;
    if (principal.tenantId !== null) {
      if (named !== null && named !== principal.tenantId) {
        throw new TenantdError(
          Status.PERMISSION_DENIED,
          'TENANT_MISMATCH',
          'x-tenant-id does not name the tenant of this API key',
          { metadata: { x_tenant_id: named.slice(0, 64) } },
        );
      }
      tenantId = principal.tenantId;
    } else {
      if (named === null) throw invalidArgument('x-tenant-id', 'an admin key must name the tenant in x-tenant-id', 'TENANT_REQUIRED');
      tenantId = named;
    }
    const tenant = this.registry.get(tenantId);
    if (!tenant || tenant.deleting) throw notFound(`tenants/${tenantId.slice(0, 64)}`, 'TENANT_NOT_FOUND');
    if (tenant.record.state !== 'ACTIVE') {
      throw new TenantdError(Status.FAILED_PRECONDITION, 'TENANT_SUSPENDED', `tenants/${tenantId} is suspended`, {
        metadata: { tenant: tenantId },
      });
    }
    return { principal, tenant, readOnly: principal.role === 'READ_ONLY' || this.writeFenced(tenantId), maxQueryTimeoutMs: this.registry.maxQueryTimeoutMs };
  }
}
