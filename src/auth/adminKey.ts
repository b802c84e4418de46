/**
 * The admin key: created on first start, printed once, kept in
 * `<data-dir>/admin.key` (mode 0600) and as a hash in the catalog. Later
 * starts read the file and make sure the catalog still knows its hash.
 */
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Catalog } from '../catalog/catalog.ts';
import { generateKey, hashKey, keyWeakness, newKeyId } from './keys.ts';

export interface AdminKey {
  key: string;
  keyId: string;
  /** Ids of the admin keys this start revoked: any but this one (a rotated --admin-key-file, an old admin.key). */
  revoked: string[];
  /** True when this start created it: the caller prints it once. */
  created: boolean;
  path: string;
}

/**
 * With `keyFile` (--admin-key-file), the key in that file is the admin key;
 * the file must exist and hold a strong key. Without it, `<data-dir>/admin.key`,
 * created on first start.
 */
export function ensureAdminKey(catalog: Catalog, dataDir: string, keyFile: string | null = null): AdminKey {
  if (keyFile !== null && !existsSync(keyFile)) throw new Error(`--admin-key-file ${keyFile} does not exist`);
  const path = keyFile ?? join(dataDir, 'admin.key');
  if (existsSync(path)) {
    const key = readFileSync(path, 'utf8').trim();
    if (key === '') throw new Error(`${path} is empty; delete it to create a new admin key`);
    const weakness = keyFile !== null ? keyWeakness(key) : null;
    if (weakness !== null) {
      throw new Error(`--admin-key-file ${path} does not hold a strong key: ${weakness}`);
    }
    // A shared secret mounted read-only is the operator's to protect; our own file we keep 0600.
    if (keyFile === null && (statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    const hash = hashKey(key);
    const known = catalog.keyByHash(hash);
    let keyId = known?.keyId ?? newKeyId();
    if (!known) {
      catalog.insertKey({
        keyId,
        tenantId: null,
        role: 'ADMIN',
        displayName: 'admin.key',
        hash,
        createTime: Date.now(),
        revokeTime: null,
      });
    } else if (known.role !== 'ADMIN' || known.revokeTime !== null) {
      throw new Error(`${path} holds a key that is not an active admin key`);
    }
    return { key, keyId, revoked: revokeOtherAdminKeys(catalog, keyId), created: false, path };
  }
  const created = generateKey('admin');
  catalog.insertKey({
    keyId: created.keyId,
    tenantId: null,
    role: 'ADMIN',
    displayName: 'admin.key',
    hash: created.hash,
    createTime: Date.now(),
    revokeTime: null,
  });
  writeFileSync(path, `${created.key}\n`, { mode: 0o600, flag: 'wx' });
  return { key: created.key, keyId: created.keyId, revoked: revokeOtherAdminKeys(catalog, created.keyId), created: true, path };
}

/**
 * One admin key at a time: the one this start was given. Rotating the key
 * file (or replacing admin.key) must not leave the previous key working.
 */
export function revokeOtherAdminKeys(catalog: Catalog, keepKeyId: string): string[] {
  const now = Date.now();
  const revoked: string[] = [];
  for (const other of catalog.activeAdminKeys()) {
    if (other.keyId !== keepKeyId && catalog.revokeKey(other.keyId, now)) revoked.push(other.keyId);
  }
  return revoked;
}
