/**
 * The README's quick start, for real: `npm start` compiles the sources to
 * dist/ and serves them with plain node (workers, guard and protos found
 * from the compiled files), and stops cleanly on SIGTERM.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { freshDataDir, rowsOf, TestClient, v } from './support/server.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dataDir = freshDataDir();
let child: ChildProcess | null = null;

afterAll(() => {
  // The whole process group: npm, its shell and node.
  if (child?.pid && child.exitCode === null) process.kill(-child.pid, 'SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
});

function waitFor(pattern: RegExp, stream: NodeJS.ReadableStream, what: () => string): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}: ${what()}`)), 90_000);
    let seen = '';
    stream.on('data', (chunk) => {
      seen += chunk;
      const match = pattern.exec(seen);
      if (match) {
        clearTimeout(timer);
        resolve(match);
      }
    });
  });
}

describe('npm start', () => {
  it('builds, serves from compiled JavaScript, and stops cleanly on SIGTERM', async () => {
    const args = ['start', '--', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--metrics-listen', '127.0.0.1:0', '--shards', '2'];
    child = spawn('npm', args, { cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child!.on('exit', (code) => resolve(code)));
    const [, port] = await waitFor(/listening on port (\d+)/, child.stdout!, () => err);

    const serverPid = serverProcess(child.pid!);
    expect(serverPid).toBeGreaterThan(0);

    const adminKey = readFileSync(`${dataDir}/admin.key`, 'utf8').trim();
    const client = new TestClient(`127.0.0.1:${port}`);
    const created = await client.call('TenantService', 'CreateTenant', { tenant_id: 'quick', tenant: { display_name: 'Quick' } }, { key: adminKey });
    const key = created.api_key.key as string;
    await client.call('SqlService', 'Execute', { sql: 'CREATE TABLE t (x INTEGER)' }, { key });
    await client.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (?)', params: [v.int(9007199254740993n)] }, { key });
    expect(rowsOf(await client.call('SqlService', 'Execute', { sql: 'SELECT x FROM t' }, { key }))).toEqual([[9007199254740993n]]);
    // The guard extension is loaded in the compiled workers too.
    const refused = await client.call('SqlService', 'Execute', { sql: "ATTACH 'x.db' AS x" }, { key }).catch((e: Error) => e);
    expect(String(refused)).toMatch(/PERMISSION_DENIED|INVALID_ARGUMENT/);
    client.close();

    // As an orchestrator stops it: SIGTERM to the server, which drains and exits 0 (and so does npm).
    process.kill(serverPid, 'SIGTERM');
    expect(await exited).toBe(0);
    child = null;
  }, 120_000);
});

/** The pid of the plain-node server that npm started in process group `group`, or 0. */
function serverProcess(group: number): number {
  const lines = execFileSync('ps', ['-o', 'pid=,args=', '-g', String(group)], { encoding: 'utf8' }).split('\n');
  const server = lines.find((l) => /^\s*\d+\s+(\S*\/)?node dist\/src\/main\.js serve\b/.test(l));
  return server ? Number(server.trim().split(/\s+/)[0]) : 0;
}
