/**
 * Where the package's own files are. Sources run from `src/` and `workers/`
 * (tsx, vitest) or from their compiled copies under `dist/`; walking up to the
 * directory that holds package.json gives the same answer for both.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findPackageRoot(): string {
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; ) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) return dirname(start);
    dir = parent;
  }
}

export const PACKAGE_ROOT: string = findPackageRoot();
