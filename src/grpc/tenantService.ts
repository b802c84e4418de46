/** tenantd.v1.TenantService: admin calls on tenants and their keys. */
import type { ServerUnaryCall } from '@grpc/grpc-js';
import { invalidArgument } from '../errors.ts';
import type { KeyRole, TenantState } from '../catalog/catalog.ts';
import type { Catalog } from '../catalog/catalog.ts';
import type { TenantManager } from '../tenants/manager.ts';
import type { Access } from './access.ts';
import { unary, type Handlers } from './handlers.ts';
import type { ServiceObserver } from './rpcObserver.ts';
import {
  decodePageToken,
  encodePageToken,
  fieldsFromProto,
  keyToProto,
  pageSize,
  parseKeyName,
  parseTenantName,
  tenantToProto,
  type ProtoApiKey,
  type ProtoTenant,
} from './tenantMessages.ts';

type Call<Req> = ServerUnaryCall<Req, unknown>;

function role(value: string): KeyRole {
  if (value === 'READ_ONLY') return 'READ_ONLY';
  if (value === 'READ_WRITE' || value === 'ROLE_UNSPECIFIED' || value === '') return 'READ_WRITE';
  throw invalidArgument('api_key.role', `unknown role ${JSON.stringify(value)}`);
}

function stateFilter(value: string): TenantState | null {
  if (value === 'ACTIVE' || value === 'SUSPENDED') return value;
  return null;
}

/** The mutable fields that AIP-134 replaces when no update_mask is sent. */
const ALL_UPDATABLE = ['display_name', 'labels', 'plan', 'quotas'];

export function tenantService(access: Access, manager: TenantManager, catalog: Catalog, service: ServiceObserver): Handlers {
  return {
    CreateTenant: unary(
      service,
      'CreateTenant',
      async (call: Call<{ tenant_id: string; tenant: ProtoTenant | null; source_tenant: string }>) => {
        access.admin(call.metadata);
        const { tenant_id, tenant, source_tenant } = call.request;
        const source = source_tenant === '' ? null : parseTenantName(source_tenant, 'source_tenant');
        const created = await manager.create(access.sameTenant(call.metadata, tenant_id), fieldsFromProto(tenant), source);
        return { tenant: tenantToProto(created.tenant), api_key: keyToProto(created.key, created.secret) };
      },
    ),

    GetTenant: unary(service, 'GetTenant', (call: Call<{ name: string }>) => {
      access.admin(call.metadata);
      return tenantToProto(manager.get(access.sameTenant(call.metadata, parseTenantName(call.request.name))));
    }),

    ListTenants: unary(service, 'ListTenants', (call: Call<{ page_size: number; page_token: string; state: string }>) => {
      access.admin(call.metadata);
      const size = pageSize(call.request.page_size);
      const after = decodePageToken(call.request.page_token);
      // One extra row tells whether another page exists.
      const records = catalog.listTenants(after, size + 1, stateFilter(call.request.state));
      const page = records.slice(0, size);
      return {
        tenants: page.map((r) => tenantToProto(manager.get(r.tenantId))),
        next_page_token: records.length > size ? encodePageToken(page[page.length - 1]!.tenantId) : '',
      };
    }),

    UpdateTenant: unary(
      service,
      'UpdateTenant',
      (call: Call<{ tenant: ProtoTenant | null; update_mask: { paths: string[] } | null }>) => {
        access.admin(call.metadata);
        const { tenant, update_mask } = call.request;
        if (!tenant) throw invalidArgument('tenant', 'required');
        const tenantId = access.sameTenant(call.metadata, parseTenantName(tenant.name, 'tenant.name'));
        const paths = update_mask && update_mask.paths.length > 0 ? update_mask.paths : ALL_UPDATABLE;
        return tenantToProto(manager.update(tenantId, tenant.etag, paths, fieldsFromProto(tenant)));
      },
    ),

    SuspendTenant: unary(service, 'SuspendTenant', async (call: Call<{ name: string }>) => {
      access.admin(call.metadata);
      return tenantToProto(await manager.setState(access.sameTenant(call.metadata, parseTenantName(call.request.name)), 'SUSPENDED'));
    }),

    ActivateTenant: unary(service, 'ActivateTenant', async (call: Call<{ name: string }>) => {
      access.admin(call.metadata);
      return tenantToProto(await manager.setState(access.sameTenant(call.metadata, parseTenantName(call.request.name)), 'ACTIVE'));
    }),

    DeleteTenant: unary(service, 'DeleteTenant', async (call: Call<{ name: string; force: boolean; etag: string }>) => {
      access.admin(call.metadata);
      await manager.delete(access.sameTenant(call.metadata, parseTenantName(call.request.name)), call.request.force, call.request.etag);
      return {};
    }),

    CreateApiKey: unary(service, 'CreateApiKey', (call: Call<{ parent: string; api_key: ProtoApiKey | null }>) => {
      access.admin(call.metadata);
      const tenantId = access.sameTenant(call.metadata, parseTenantName(call.request.parent, 'parent'));
      const input = call.request.api_key;
      const created = manager.createKey(tenantId, role(input?.role ?? ''), input?.display_name ?? '');
      return keyToProto(created.key, created.secret);
    }),

    ListApiKeys: unary(
      service,
      'ListApiKeys',
      (call: Call<{ parent: string; page_size: number; page_token: string; show_revoked: boolean }>) => {
        access.admin(call.metadata);
        const tenantId = access.sameTenant(call.metadata, parseTenantName(call.request.parent, 'parent'));
        const size = pageSize(call.request.page_size);
        const keys = manager.listKeys(tenantId, decodePageToken(call.request.page_token), size + 1, call.request.show_revoked);
        const page = keys.slice(0, size);
        return {
          api_keys: page.map((k) => keyToProto(k)),
          next_page_token: keys.length > size ? encodePageToken(page[page.length - 1]!.keyId) : '',
        };
      },
    ),

    RevokeApiKey: unary(service, 'RevokeApiKey', (call: Call<{ name: string }>) => {
      access.admin(call.metadata);
      const [tenantId, keyId] = parseKeyName(call.request.name);
      access.sameTenant(call.metadata, tenantId);
      return keyToProto(manager.revokeKey(tenantId, keyId));
    }),
  };
}
