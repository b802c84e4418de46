/**
 * The serve entry's process-level handlers: what slipped past every handler
 * is logged at error level and counted, and the process carries on.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

const SCRIPT = `
import { installProcessGuard } from './src/processGuard.ts';
import { createLogger } from './src/log.ts';
import { internalErrorCount } from './src/telemetry/internalErrors.ts';
installProcessGuard(createLogger('info'));
Promise.reject(new Error('a rejection nobody handled'));
setTimeout(() => { throw new Error('an exception nobody caught'); }, 10);
setTimeout(() => {
  process.stdout.write(JSON.stringify({
    rejections: internalErrorCount('unhandled_rejection'),
    exceptions: internalErrorCount('uncaught_exception'),
  }));
}, 200);
`;

describe('the process guard', () => {
  it('logs and counts an unhandled rejection and an uncaught exception, and the process lives on', () => {
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', SCRIPT], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    expect(child.status, child.stderr).toBe(0);
    expect(JSON.parse(child.stdout)).toEqual({ rejections: 1, exceptions: 1 });
    const lines = child.stderr.trim().split('\n').map((line) => JSON.parse(line) as { level: string; msg: string; error: string });
    expect(lines.map((l) => l.level)).toEqual(['error', 'error']);
    expect(lines[0]!.error).toContain('a rejection nobody handled');
    expect(lines[1]!.error).toContain('an exception nobody caught');
  });
});
