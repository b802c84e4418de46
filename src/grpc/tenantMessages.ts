/** Tenant and key records <-> their tenantd.v1 protobuf messages. */
import { QUOTA_FIELDS, snakeCase, type QuotaValues } from '../config.ts';
import { invalidArgument } from '../errors.ts';
import type { KeyRecord, QuotaOverrides } from '../catalog/catalog.ts';
import type { LiveTenant } from '../tenants/registry.ts';
import { checkTenantId, emptyOverrides, type TenantFields } from '../tenants/manager.ts';

export type ProtoQuotas = Record<string, string>;

export interface ProtoTimestamp {
  seconds: string;
  nanos: number;
}

export interface ProtoTenant {
  name: string;
  tenant_id: string;
  display_name: string;
  labels: Record<string, string>;
  plan: string;
  quotas: ProtoQuotas | null;
  state: string;
  effective_quotas: ProtoQuotas | null;
  create_time: ProtoTimestamp | null;
  update_time: ProtoTimestamp | null;
  etag: string;
  schema_version: string;
}

export interface ProtoApiKey {
  name: string;
  key_id: string;
  role: string;
  display_name: string;
  key: string;
  create_time: ProtoTimestamp | null;
  revoke_time: ProtoTimestamp | null;
}

export function timestamp(ms: number): ProtoTimestamp {
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

export function quotasToProto(quotas: QuotaValues): ProtoQuotas {
  const out: ProtoQuotas = {};
  for (const field of QUOTA_FIELDS) out[snakeCase(field)] = String(quotas[field]);
  return out;
}

export function quotasFromProto(quotas: ProtoQuotas | null | undefined, field: string): QuotaOverrides {
  const out = emptyOverrides();
  if (!quotas) return out;
  for (const name of QUOTA_FIELDS) {
    const raw = quotas[snakeCase(name)];
    if (raw === undefined) continue;
    const value = Number(raw);
    if (!Number.isSafeInteger(value)) {
      throw invalidArgument(`${field}.${snakeCase(name)}`, `${raw} is out of range`, 'INVALID_QUOTA');
    }
    out[name] = value;
  }
  return out;
}

export function tenantToProto(live: LiveTenant): ProtoTenant {
  const r = live.record;
  return {
    name: `tenants/${r.tenantId}`,
    tenant_id: r.tenantId,
    display_name: r.displayName,
    labels: r.labels,
    plan: r.plan,
    quotas: quotasToProto(r.quotas),
    state: r.state,
    effective_quotas: quotasToProto(live.quotas),
    create_time: timestamp(r.createTime),
    update_time: timestamp(r.updateTime),
    etag: r.etag,
    schema_version: String(r.schemaVersion),
  };
}

export function fieldsFromProto(tenant: Partial<ProtoTenant> | null | undefined): TenantFields {
  return {
    displayName: tenant?.display_name ?? '',
    labels: { ...(tenant?.labels ?? {}) },
    plan: tenant?.plan ?? '',
    quotas: quotasFromProto(tenant?.quotas, 'tenant.quotas'),
  };
}

export function keyToProto(key: KeyRecord, secret = ''): ProtoApiKey {
  return {
    name: `tenants/${key.tenantId}/apiKeys/${key.keyId}`,
    key_id: key.keyId,
    role: key.role,
    display_name: key.displayName,
    key: secret,
    create_time: timestamp(key.createTime),
    revoke_time: key.revokeTime === null ? null : timestamp(key.revokeTime),
  };
}

/** `tenants/{id}` -> id. */
export function parseTenantName(name: string, field = 'name'): string {
  if (!name.startsWith('tenants/')) {
    throw invalidArgument(field, `expected "tenants/{tenant_id}", got ${JSON.stringify(name.slice(0, 80))}`, 'INVALID_NAME');
  }
  const id = name.slice('tenants/'.length);
  checkTenantId(id, field);
  return id;
}

/** `tenants/{id}/apiKeys/{key_id}` -> [id, key_id]. */
export function parseKeyName(name: string): [string, string] {
  const match = /^tenants\/([^/]+)\/apiKeys\/([0-9a-f]{1,32})$/.exec(name);
  if (!match) {
    throw invalidArgument('name', `expected "tenants/{tenant_id}/apiKeys/{key_id}", got ${JSON.stringify(name.slice(0, 80))}`, 'INVALID_NAME');
  }
  checkTenantId(match[1]!, 'name');
  return [match[1]!, match[2]!];
}

/** Page tokens are opaque to clients: the last id of the previous page. */
export function encodePageToken(lastId: string): string {
  return Buffer.from(JSON.stringify({ after: lastId })).toString('base64url');
}

export function decodePageToken(token: string): string {
  if (token === '') return '';
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { after?: unknown };
    if (typeof parsed.after === 'string') return parsed.after;
  } catch {
    // fall through to the error below
  }
  throw invalidArgument('page_token', 'not a page token returned by this API', 'INVALID_PAGE_TOKEN');
}

export function pageSize(requested: number, field = 'page_size'): number {
  if (requested < 0) throw invalidArgument(field, 'must not be negative');
  return requested === 0 ? 100 : Math.min(requested, 1000);
}
