/**
 * vitest globalSetup: the run's temporary files go to a directory of its own
 * (TMPDIR, which os.tmpdir() and the servers and CLIs the tests start all
 * follow), and the run fails if a test file left anything there. A shared
 * temp dir would mix in other runs' files.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let runDir = '';

export function setup(): void {
  runDir = mkdtempSync(join(tmpdir(), 'tenantd-run-'));
  process.env.TMPDIR = runDir;
}

export function teardown(): void {
  // tsx's compile cache (tsx-<uid>) is the loader's, kept on purpose: not a test's leftover.
  const left = readdirSync(runDir).filter((name) => !name.startsWith('tsx-'));
  rmSync(runDir, { recursive: true, force: true });
  if (left.length > 0) {
    // vitest reports an error thrown here but still exits 0: the exit code says it.
    process.exitCode = 1;
    throw new Error(`the tests left ${left.length} entries in the temp dir: ${left.slice(0, 10).join(', ')}`);
  }
}
