/**
 * vitest globalSetup: the run's temporary files go to a directory of its own
 * (TMPDIR, which os.tmpdir() and the servers and CLIs the tests start all
 * follow), and the run fails if a test file left anything there. A shared
 * temp dir would mix in other runs' files.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

let runDir = '';

export function setup(): void {
  const shared = tmpdir();
  runDir = mkdtempSync(join(shared, 'tenantd-run-'));
  // tsx compiles into <tmpdir>/tsx-<uid>: the run's child processes and
  // workers keep using the shared cache (a cold one slows every start).
  const tsxCache = join(shared, `tsx-${userInfo().uid}`);
  mkdirSync(tsxCache, { recursive: true });
  if (existsSync(tsxCache)) symlinkSync(tsxCache, join(runDir, `tsx-${userInfo().uid}`));
  // Node 22+'s module compile cache, which tsx and tenantd's own entry turn on: shared the same way.
  const compileCache = join(shared, 'node-compile-cache');
  mkdirSync(compileCache, { recursive: true });
  symlinkSync(compileCache, join(runDir, 'node-compile-cache'));
  process.env.TMPDIR = runDir;
}

export function teardown(): void {
  // tsx's compile cache (tsx-<uid>) and Node's (node-compile-cache) are the loaders', kept on purpose: not a test's leftover.
  const left = readdirSync(runDir).filter((name) => !name.startsWith('tsx-') && name !== 'node-compile-cache');
  rmSync(runDir, { recursive: true, force: true });
  if (left.length > 0) {
    // vitest reports an error thrown here but still exits 0: the exit code says it.
    process.exitCode = 1;
    throw new Error(`the tests left ${left.length} entries in the temp dir: ${left.slice(0, 10).join(', ')}`);
  }
}
