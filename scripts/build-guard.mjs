#!/usr/bin/env node
// Builds build/tenantd_guard.so, the SQLite extension behind workers/guard.ts.
// Runs as the package's postinstall, so it must work from any cwd and stay
// quiet and fast when there is nothing to do.
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const scriptPath = fileURLToPath(import.meta.url);
const root = dirname(dirname(scriptPath));
const source = join(root, 'workers', 'guard', 'tenantd_guard.c');
const output = join(root, 'build', 'tenantd_guard.so');
const show = (p) => {
  const rel = relative(process.cwd(), p);
  return rel && !rel.startsWith('..') ? rel : p;
};

function mtimeMs(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return null;
  }
}

const outTime = mtimeMs(output);
const srcTime = mtimeMs(source);
if (srcTime === null) {
  console.error(`build-guard: source not found: ${source}`);
  process.exit(1);
}
if (outTime !== null && outTime > srcTime && outTime > mtimeMs(scriptPath)) {
  console.log(`build-guard: ${show(output)} is up to date`);
  process.exit(0);
}

// Compile against the exact SQLite that better-sqlite3 embeds: the extension
// calls it through sqlite3_api, so the headers must match that build.
const require = createRequire(import.meta.url);
const includeDir = join(dirname(require.resolve('better-sqlite3/package.json')), 'deps', 'sqlite3');

mkdirSync(dirname(output), { recursive: true });
// Build beside the target and rename: a process that already has the old
// library mapped keeps its inode, and concurrent builds never see a partial file.
const tmp = `${output}.${process.pid}.tmp`;
const args = [
  '-O2', '-fPIC', '-shared', '-pthread',
  '-Wall', '-Wextra', '-Werror',
  // SQLite dlclose()s an extension when the connection that loaded it closes;
  // the process-wide watchdog thread runs this library's code forever after.
  '-Wl,-z,nodelete',
  // Every SQLite call must go through sqlite3_api; a direct reference would
  // only fail at dlopen() time, with SQLite reporting a misleading "*.so.so".
  '-Wl,-z,defs',
  '-I', includeDir,
  '-o', tmp, source,
];
const cc = process.env.CC || 'cc';
const result = spawnSync(cc, args, { encoding: 'utf8' });
if (result.error || result.status !== 0) {
  rmSync(tmp, { force: true });
  console.error(`build-guard: ${cc} ${args.join(' ')} failed`);
  if (result.error) console.error(String(result.error));
  if (result.stdout) process.stderr.write(result.stdout);
  if (result.stderr) process.stderr.write(result.stderr);
  process.exit(1);
}
if (result.stderr) process.stderr.write(result.stderr);
renameSync(tmp, output);
console.log(`build-guard: compiled ${show(output)} from ${show(source)}`);
