#!/usr/bin/env node
// The compiled entry (dist/, from `npm run build`) when it is at least as new
// as every source file: it starts in a fraction of the time. Otherwise the
// TypeScript entry through tsx's loader, so `npx tenantd serve` works from a
// checkout without a build step and never runs stale code.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const compiled = join(root, 'dist', 'src', 'main.js');

function newestSource(dir) {
  let newest = 0;
  if (!existsSync(dir)) return newest;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

function compiledIsCurrent() {
  if (process.env.TENANTD_FROM_SOURCE === '1' || !existsSync(compiled)) return false;
  const built = statSync(compiled).mtimeMs;
  return built >= newestSource(join(root, 'src')) && built >= newestSource(join(root, 'workers'));
}

if (compiledIsCurrent()) {
  await import(compiled);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/main.ts');
}
