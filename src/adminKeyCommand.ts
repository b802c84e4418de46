/**
 * `tenantd admin-key rotate [--data-dir ./data]`: for a server that keeps its
 * own admin key in `<data-dir>/admin.key` (no --admin-key-file). Makes a new
 * key, revokes every other admin key and replaces admin.key, offline: it
 * takes the data directory's lock (dataDirLock.ts) and the catalog's
 * exclusive SQLite lock, so it fails while a server runs (stop the server,
 * rotate, start it) and keeps a server from starting meanwhile.
 *
 * With --admin-key-file (a cluster's shared secret) there is nothing to run:
 * put a new key in that file and restart each node; a start revokes every
 * admin key but the one it was given.
 *
 * The new key goes to stdout only when stdout is a terminal; otherwise the
 * command prints where it is.
 */
import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Catalog } from './catalog/catalog.ts';
import { DataDirLockedError, lockDataDir, type DataDirLock } from './dataDirLock.ts';
import { generateKey } from './auth/keys.ts';
import { revokeOtherAdminKeys } from './auth/adminKey.ts';

export const ADMIN_KEY_USAGE = `usage: tenantd admin-key rotate [--data-dir ./data]
  Makes a new admin key, revokes every other one and rewrites <data-dir>/admin.key.
  Run it with the server stopped. With --admin-key-file, write a new key to that file and restart instead.`;

/** Writes `text` to `path` by way of a fsynced temporary file and a rename: the file is whole, old or new. */
function replaceFile(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } catch (error) {
    rmSync(tmp, { force: true });
    throw error;
  }
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

export function rotateAdminKey(dataDir: string): { key: string; keyId: string; path: string; revoked: string[] } {
  const catalogPath = join(dataDir, 'catalog.db');
  if (!existsSync(catalogPath)) throw new Error(`no catalog at ${catalogPath}: start tenantd once with --data-dir ${dataDir} first`);
  // The data directory's lock (dataDirLock.ts), as a server takes it: no server runs or starts meanwhile.
  let dirLock: DataDirLock;
  try {
    dirLock = lockDataDir(dataDir);
  } catch (error) {
    if (error instanceof DataDirLockedError) {
      throw new Error(`${dataDir} is in use by a running tenantd (${error.message}): stop it, rotate, start it again`);
    }
    throw error;
  }
  let catalog: Catalog;
  try {
    // And SQLite's exclusive lock on the catalog, which also holds against a server too old to take the directory lock.
    catalog = new Catalog(catalogPath, { exclusive: true });
  } catch (error) {
    dirLock.release();
    if ((error as { code?: string }).code === 'SQLITE_BUSY') {
      throw new Error(`${dataDir} is in use by a running tenantd (its catalog is locked): stop it, rotate, start it again`);
    }
    throw error;
  }
  try {
    const created = generateKey('admin');
    const path = join(dataDir, 'admin.key');
    // The file first: a crash before the catalog update leaves a key the next start adopts
    // (and then revokes the others), never an admin.key that names a revoked key.
    replaceFile(path, `${created.key}\n`);
    const revoked = catalog.transaction(() => {
      catalog.insertKey({
        keyId: created.keyId,
        tenantId: null,
        role: 'ADMIN',
        displayName: 'admin.key',
        hash: created.hash,
        createTime: Date.now(),
        revokeTime: null,
      });
      return revokeOtherAdminKeys(catalog, created.keyId);
    });
    return { key: created.key, keyId: created.keyId, path, revoked };
  } finally {
    catalog.close();
    dirLock.release();
  }
}

export function adminKeyCommand(argv: string[], env: NodeJS.ProcessEnv = process.env): number {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: { 'data-dir': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (error) {
    process.stderr.write(`tenantd admin-key: ${(error as Error).message}\n${ADMIN_KEY_USAGE}\n`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(`${ADMIN_KEY_USAGE}\n`);
    return 0;
  }
  if (parsed.positionals.length !== 1 || parsed.positionals[0] !== 'rotate') {
    process.stderr.write(`tenantd admin-key: expected \`rotate\`\n${ADMIN_KEY_USAGE}\n`);
    return 2;
  }
  if (env.TENANTD_ADMIN_KEY_FILE) {
    process.stderr.write(
      'tenantd admin-key: TENANTD_ADMIN_KEY_FILE is set: the admin key is that file; write a new key to it and restart the server (a start revokes every other admin key)\n',
    );
    return 2;
  }
  const dataDir = resolve(parsed.values['data-dir'] ?? env.TENANTD_DATA_DIR ?? './data');
  let rotated;
  try {
    rotated = rotateAdminKey(dataDir);
  } catch (error) {
    process.stderr.write(`tenantd admin-key: ${(error as Error).message}\n`);
    return 1;
  }
  process.stderr.write(
    `${JSON.stringify({ audit: true, action: 'RotateAdminKey', principal: rotated.keyId, revoked: rotated.revoked, result: 'OK' })}\n`,
  );
  process.stdout.write(
    process.stdout.isTTY
      ? `New admin key (revoked ${rotated.revoked.length} other${rotated.revoked.length === 1 ? '' : 's'}; also saved to ${rotated.path}):\n\n  ${rotated.key}\n\n`
      : `New admin key saved to ${rotated.path} (mode 0600); ${rotated.revoked.length} other admin key(s) revoked\n`,
  );
  return 0;
}
