/**
 * Bulk seeding for bench/scale.ts, when creating every tenant through
 * CreateTenant would not fit the time budget. Run only while no server has
 * the data directory open. It writes exactly what CreateTenant leaves behind:
 * a copy of a database file that the server itself created (through
 * CreateTenant, so it carries the same `_tenantd_meta` and schema version),
 * and in one catalog transaction per chunk the tenant's row and the SHA-256
 * of a freshly generated key, through the server's own Catalog class.
 */
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Catalog, type KeyRecord, type TenantRecord } from '../../src/catalog/catalog.ts';
import { generateKey } from '../../src/auth/keys.ts';
import { tenantDbPath } from '../../src/protocol.ts';
import { emptyOverrides } from '../../src/tenants/manager.ts';

export interface SeedSpec {
  dataDir: string;
  /** Indexes of the tenants to seed. */
  indexes: number[];
  idOf(i: number): string;
  planOf(i: number): string;
  /** The tenant whose database file is copied for index i. */
  templateOf(i: number): string;
  onProgress?(done: number): void;
}

/** Seeds the tenants; returns their keys by index. */
export function seedTenants(spec: SeedSpec): Map<number, string> {
  const catalog = new Catalog(join(spec.dataDir, 'catalog.db'));
  const keys = new Map<number, string>();
  try {
    const schemaVersions = new Map<string, number>();
    const versionOf = (templateId: string) => {
      let v = schemaVersions.get(templateId);
      if (v === undefined) {
        const t = catalog.getTenant(templateId);
        if (!t) throw new Error(`template tenant ${templateId} is not in the catalog`);
        v = t.schemaVersion;
        schemaVersions.set(templateId, v);
      }
      return v;
    };
    const CHUNK = 5_000;
    for (let start = 0; start < spec.indexes.length; start += CHUNK) {
      const chunk = spec.indexes.slice(start, start + CHUNK);
      const rows: { record: TenantRecord; key: KeyRecord }[] = [];
      for (const i of chunk) {
        const tenantId = spec.idOf(i);
        const template = spec.templateOf(i);
        const path = tenantDbPath(spec.dataDir, tenantId);
        mkdirSync(dirname(path), { recursive: true });
        copyFileSync(tenantDbPath(spec.dataDir, template), path);
        const now = Date.now();
        const created = generateKey('tenant');
        keys.set(i, created.key);
        rows.push({
          record: {
            tenantId,
            displayName: `scale tenant ${i}`,
            labels: { bench: 'scale' },
            plan: spec.planOf(i),
            quotas: emptyOverrides(),
            state: 'ACTIVE',
            createTime: now,
            updateTime: now,
            etag: randomBytes(8).toString('hex'),
            schemaVersion: versionOf(template),
          },
          key: {
            keyId: created.keyId,
            tenantId,
            role: 'READ_WRITE',
            displayName: 'first key',
            hash: created.hash,
            createTime: now,
            revokeTime: null,
          },
        });
      }
      catalog.transaction(() => {
        for (const { record, key } of rows) {
          catalog.insertTenant(record);
          catalog.insertKey(key);
        }
      });
      spec.onProgress?.(start + chunk.length);
    }
  } finally {
    catalog.close();
  }
  return keys;
}
