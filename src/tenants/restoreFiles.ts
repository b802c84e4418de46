/**
 * Where a restore sets a tenant's old directory aside while it swaps in the
 * new one: `<data-dir>/replaced/<tenant_id>`, outside `tenants/`, so the
 * start-up repair lists a directory that is empty but for a crash, not one
 * entry per tenant. Shared by the shard that does the swap and the start-up
 * that repairs a swap a crash cut short. Only file names: nothing here opens
 * a database.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, renameDurably } from '../durableFs.ts';

const TRASH = 'trash';

/**
 * Where a shard moves a tenant directory it is done with (deleted, or
 * replaced by a restore): renaming is instant, and the files, which may be
 * gigabytes, are then unlinked in the background instead of on the shard's
 * thread. Emptied at start for what a crash left.
 */
export function trashDir(dataDir: string): string {
  return join(dataDir, TRASH);
}

/**
 * Removes what a previous run left in the trash, in the background: the
 * trash is renamed out of the way at once (a crash may have left gigabytes
 * in it, and start-up need not wait for them), then unlinked. Runs at start.
 */
export function emptyTrash(dataDir: string): void {
  for (const name of readdirSync(dataDir)) {
    if (name !== TRASH && !name.startsWith(`${TRASH}-`)) continue;
    let doomed = join(dataDir, name);
    if (name === TRASH) {
      const renamed = join(dataDir, `${TRASH}-${randomUUID()}`);
      renameSync(doomed, renamed);
      doomed = renamed;
    }
    // What is left after a failure here goes at the next start.
    rm(doomed, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** The set-aside directory of `tenantId`'s old files during a restore. */
export function replacedDir(dataDir: string, tenantId: string): string {
  return join(dataDir, 'replaced', tenantId);
}

/**
 * Repairs what a crash in the middle of a restore's swap left: with the new
 * database in place the old directory goes, without it the old one comes
 * back. Runs at start, before any shard opens a tenant. Returns the tenant
 * directories it repaired.
 */
export function recoverInterruptedRestores(dataDir: string): string[] {
  const asideRoot = join(dataDir, 'replaced');
  const repaired: string[] = [];
  if (!existsSync(asideRoot)) return repaired;
  for (const tenantId of readdirSync(asideRoot)) {
    const aside = join(asideRoot, tenantId);
    const dir = join(dataDir, 'tenants', tenantId);
    if (existsSync(join(dir, 'db.sqlite'))) {
      rmSync(aside, { recursive: true, force: true });
      fsyncDir(asideRoot);
    } else {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(join(dataDir, 'tenants'), { recursive: true });
      renameDurably(aside, dir);
    }
    repaired.push(dir);
  }
  return repaired;
}

/**
 * Moves to the trash the tenant directories the catalog does not list: a
 * create or restore that a crash cut short before its catalog row was
 * written, or a delete cut short after the row went (DeleteTenant removes
 * the row first, so a crash never leaves a listed tenant without its files).
 * Runs at start, before any shard opens a tenant, after
 * recoverInterruptedRestores. Returns the tenant ids it set aside.
 */
export function trashOrphans(dataDir: string, listed: (tenantId: string) => boolean): string[] {
  const tenantsRoot = join(dataDir, 'tenants');
  if (!existsSync(tenantsRoot)) return [];
  const orphans = readdirSync(tenantsRoot).filter((tenantId) => !listed(tenantId));
  if (orphans.length === 0) return orphans;
  mkdirSync(trashDir(dataDir), { recursive: true });
  for (const tenantId of orphans) renameSync(join(tenantsRoot, tenantId), join(trashDir(dataDir), `${tenantId}-${randomUUID()}`));
  fsyncDir(tenantsRoot);
  fsyncDir(trashDir(dataDir));
  return orphans;
}
