/**
 * What a restore leaves in `tenants/` while it swaps a tenant's directory,
 * shared by the shard that does the swap and the start-up that repairs a
 * swap a crash cut short. Only file names: nothing here opens a database.
 */
import { existsSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/** Marks a tenant directory set aside by a restore that has not finished swapping. */
export const REPLACED_SUFFIX = '.replaced';

/**
 * Repairs what a crash in the middle of a restore's swap left: with the new
 * database in place the old directory goes, without it the old one comes
 * back. Runs at start, before any shard opens a tenant.
 */
export function recoverInterruptedRestores(tenantsDir: string): string[] {
  const repaired: string[] = [];
  if (!existsSync(tenantsDir)) return repaired;
  for (const name of readdirSync(tenantsDir)) {
    if (!name.endsWith(REPLACED_SUFFIX)) continue;
    const aside = join(tenantsDir, name);
    const dir = join(tenantsDir, name.slice(0, -REPLACED_SUFFIX.length));
    if (existsSync(join(dir, 'db.sqlite'))) {
      rmSync(aside, { recursive: true, force: true });
    } else {
      rmSync(dir, { recursive: true, force: true });
      renameSync(aside, dir);
    }
    repaired.push(dir);
  }
  return repaired;
}
