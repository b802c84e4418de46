/**
 * The README's client examples, run as written against a real server: the
 * TypeScript one through `tenantd/client` (pointed at src/client), the
 * Python one with stubs generated from proto/ (Debian's python3-grpcio and
 * python3-grpc-tools, as in interop.test.ts; TENANTD_SKIP_INTEROP=1 skips it).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './support/server.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const dir = mkdtempSync(join(tmpdir(), 'tenantd-readme-'));
let t: TestServer;

/** The fenced block that follows `<!-- example:<name>`. */
function example(name: string): string {
  const match = new RegExp(`<!-- example:${name}[^>]*-->\\s*\`\`\`\\w+\\n([\\s\\S]*?)\`\`\``).exec(README);
  if (!match) throw new Error(`README.md has no example:${name} block`);
  return match[1]!;
}

function run(command: string, args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

beforeAll(async () => {
  t = await startTestServer();
});
afterAll(async () => {
  await t.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the README examples', { timeout: 180_000 }, () => {
  it('TypeScript: tenantd/client runs as written', async () => {
    const key = await t.createTenant('readme-ts', { plan: 'pro' });
    const file = join(dir, 'example.mts'); // ESM: the example awaits at the top level
    writeFileSync(file, example('typescript').replace("from 'tenantd/client'", `from ${JSON.stringify(join(ROOT, 'src/client/index.ts'))}`));
    const ran = await run(join(ROOT, 'node_modules/.bin/tsx'), [file], { TENANTD_ADDRESS: `127.0.0.1:${t.server.port}`, TENANTD_KEY: key });
    expect(ran.code, ran.stderr).toBe(0);
    expect(ran.stdout.split('\n'), ran.stdout).toEqual(['1n hello 4611686018427387904n', '2n a null', '3n b null', 'INVALID_ARGUMENT SQLITE_ERROR', '3n', '']);
  });

  it.skipIf(process.env.TENANTD_SKIP_INTEROP === '1')('Python: generated stubs run as written', async () => {
    const key = await t.createTenant('readme-py');
    const stubs = join(dir, 'gen');
    const generated = await run('/usr/bin/python3', ['-c', `import sys; sys.path.insert(0, ${JSON.stringify(join(ROOT, 'test/fixtures'))}); import interop_client; interop_client.generate(${JSON.stringify(stubs)})`], {});
    expect(generated.code, generated.stderr).toBe(0);
    const file = join(dir, 'example.py');
    writeFileSync(file, example('python'));
    const ran = await run('/usr/bin/python3', [file], { PYTHONPATH: stubs, PYTHONNOUSERSITE: '1', TENANTD_ADDRESS: `127.0.0.1:${t.server.port}`, TENANTD_KEY: key });
    expect(ran.code, ran.stderr).toBe(0);
    const lines = ran.stdout.trim().split('\n');
    expect(lines[0]).toBe("[1, 'from Python']");
    expect(lines[1]).toMatch(/^INVALID_ARGUMENT /);
    expect(lines.slice(2)).toEqual(['begun', 'result', 'committed', 'from Python!']);
  });
});
