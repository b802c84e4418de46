/**
 * `--tenants-file tenants.yaml`: tenants and keys an operator provisions at
 * start. Tenants that do not exist are created with the listed keys; existing
 * tenants are left alone, keys included. A key listed twice, or already
 * held by another tenant, stops the start with a message naming both places.
 *
 *   tenants:
 *     - id: acme
 *       display_name: Acme Corp
 *       plan: pro
 *       labels: { region: eu }
 *       quotas: { requests_per_second: 500 }
 *       keys:
 *         - { key: "<at least 43 characters>", role: READ_WRITE }
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ConfigError, QUOTA_FIELDS, snakeCase } from '../config.ts';
import type { Catalog, KeyRole } from '../catalog/catalog.ts';
import { hashKey, keyWeakness, newKeyId } from '../auth/keys.ts';
import type { Logger } from '../log.ts';
import { emptyOverrides, TENANT_ID_PATTERN, type ProvidedKey, type TenantManager } from './manager.ts';

interface FileTenant {
  id?: unknown;
  display_name?: unknown;
  plan?: unknown;
  labels?: unknown;
  quotas?: unknown;
  keys?: unknown;
}

export async function bootstrapTenants(path: string, manager: TenantManager, catalog: Catalog, logger: Logger): Promise<void> {
  let doc: { tenants?: unknown };
  try {
    doc = (parseYaml(readFileSync(path, 'utf8')) ?? {}) as { tenants?: unknown };
  } catch (error) {
    throw new ConfigError(`--tenants-file ${path}: ${(error as Error).message}`);
  }
  if (!Array.isArray(doc.tenants)) throw new ConfigError(`--tenants-file ${path}: expected a "tenants" list`);
  const seen = new Map<string, string>();
  const plan: { id: string; entry: FileTenant; keys: ProvidedKey[] }[] = [];
  doc.tenants.forEach((raw: FileTenant, i: number) => {
    const where = `--tenants-file ${path}: tenants[${i}]`;
    if (typeof raw.id !== 'string' || !TENANT_ID_PATTERN.test(raw.id)) {
      throw new ConfigError(`${where}.id: expected a tenant id matching ${TENANT_ID_PATTERN}, got ${JSON.stringify(raw.id)}`);
    }
    const keys: ProvidedKey[] = [];
    const list = raw.keys ?? [];
    if (!Array.isArray(list)) throw new ConfigError(`${where}.keys: expected a list`);
    list.forEach((k: { key?: unknown; role?: unknown }, j: number) => {
      const at = `${where}.keys[${j}]`;
      if (typeof k.key !== 'string') throw new ConfigError(`${at}.key: expected a string (32 random bytes, base64)`);
      // As strict as the keys tenantd makes: length, alphabet and entropy (auth/keys.ts).
      const weakness = keyWeakness(k.key);
      if (weakness !== null) throw new ConfigError(`${at}.key: refused, ${weakness}`);
      const role = (k.role ?? 'READ_WRITE') as KeyRole;
      if (role !== 'READ_WRITE' && role !== 'READ_ONLY') throw new ConfigError(`${at}.role: expected READ_WRITE or READ_ONLY`);
      const hash = hashKey(k.key);
      const hex = hash.toString('hex');
      const first = seen.get(hex);
      if (first) throw new ConfigError(`${at}.key: duplicate key, already given at ${first}`);
      seen.set(hex, at);
      const owner = catalog.keyByHash(hash);
      if (owner && owner.tenantId !== raw.id) {
        throw new ConfigError(`${at}.key: duplicate key, already held by ${owner.tenantId ? `tenants/${owner.tenantId}` : 'an admin key'}`);
      }
      if (!owner) keys.push({ keyId: newKeyId(), hash, role });
    });
    plan.push({ id: raw.id, entry: raw, keys });
  });

  for (const { id, entry, keys } of plan) {
    const existing = catalog.getTenant(id);
    if (existing) {
      // Left alone, keys included: the file provisions, the API manages. A key
      // the file adds later must not quietly open an existing tenant.
      if (keys.length) logger.warn('tenants file: tenant exists, its keys in the file were not added', { tenant: id, keys: keys.length });
      continue;
    }
    const quotas = emptyOverrides();
    const rawQuotas = (entry.quotas ?? {}) as Record<string, unknown>;
    for (const field of QUOTA_FIELDS) {
      const value = rawQuotas[snakeCase(field)];
      if (value !== undefined) quotas[field] = Number(value);
    }
    await manager.create(
      id,
      {
        displayName: typeof entry.display_name === 'string' ? entry.display_name : '',
        labels: (entry.labels ?? {}) as Record<string, string>,
        plan: typeof entry.plan === 'string' ? entry.plan : '',
        quotas,
      },
      null,
      keys,
    );
    logger.info('tenants file: tenant created', { tenant: id, keys: keys.length });
  }
}
