/**
 * What a deployment sees: file modes under `tenantd serve` (umask 077), the
 * admin key kept off non-terminal stdout, and the image and compose files
 * (secrets out of the build context, non-root, no TypeScript toolchain at run
 * time, healthchecks, plaintext published on loopback only). On 011b252 tenant
 * directories were 0755 and databases 0644, and the key was printed to any stdout.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { freshDataDir, TestClient } from './support/server.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'tenantd.js');

let child: ChildProcess | null = null;
const dataDir = freshDataDir();
afterAll(() => {
  child?.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
});

/** Every file and directory under `dir`, with its permission bits. */
function modes(dir: string): Map<string, number> {
  const out = new Map<string, number>([[dir, statSync(dir).mode & 0o777]]);
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const path = join(entry.parentPath, entry.name);
    out.set(path, statSync(path).mode & 0o777);
  }
  return out;
}

describe('tenantd serve', () => {
  it('keeps the data private (directories 0700, files 0600) and prints the admin key path, not the key, to a pipe', async () => {
    // A permissive umask in the parent, as a shell or container might have.
    child = spawn(
      'sh',
      ['-c', `umask 022 && exec "${process.execPath}" "${BIN}" serve --listen 127.0.0.1:0 --data-dir "${dataDir}" --metrics-listen off --shards 1 --log-level warn`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve did not start: ${out} ${err}`)), 30_000);
      child!.stdout!.on('data', (d) => {
        out += d;
        const m = /listening on port (\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
    });
    const adminKey = readFileSync(join(dataDir, 'admin.key'), 'utf8').trim();
    expect(out).not.toContain(adminKey);
    expect(out).toContain(join(dataDir, 'admin.key'));

    const client = new TestClient(`127.0.0.1:${port}`);
    const created = await client.call('TenantService', 'CreateTenant', { tenant_id: 'private' }, { key: adminKey });
    const key = created.api_key.key as string;
    await client.call('SqlService', 'Execute', { sql: 'CREATE TABLE t (x)' }, { key });
    await client.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (1)' }, { key });
    client.close();

    const found = modes(dataDir);
    const names = [...found.keys()].map((p) => p.slice(dataDir.length));
    // The files the issue names are all there, while the server runs (WAL mode).
    for (const suffix of ['/admin.key', '/catalog.db', '/tenants']) expect(names).toContain(suffix);
    expect(names.some((n) => n.endsWith('/db.sqlite'))).toBe(true);
    expect(names.some((n) => n.endsWith('/db.sqlite-wal'))).toBe(true);
    const wrong = [...found].filter(([path, mode]) => mode !== (statSync(path).isDirectory() ? 0o700 : 0o600));
    expect(wrong.map(([p, m]) => `${p.slice(dataDir.length)} ${m.toString(8)}`)).toEqual([]);

    const exited = new Promise((resolve) => child!.on('exit', resolve));
    child.kill('SIGTERM');
    await exited;
    child = null;
  }, 60_000);
});

describe('the image', () => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim());

  it('keeps secrets, data and local builds out of the build context', () => {
    for (const entry of ['admin.key', '**/admin.key', 'data', 'node_modules', 'build', 'dist', 'certs', '*.key']) expect(ignore).toContain(entry);
  });

  it('runs compiled JavaScript as a non-root user, without the TypeScript toolchain', () => {
    const stages = dockerfile.split(/^FROM /m).slice(1);
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const runtime = stages.at(-1)!;
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime).toMatch(/ENTRYPOINT \["node", "dist\/src\/main\.js"\]/);
    // The runtime stage copies named paths, never the whole build (which would bring src/ and dev tools).
    expect(runtime).not.toMatch(/COPY --from=build \/app \/app/);
    expect(dockerfile).toMatch(/npm prune --omit=dev/);
    expect(dockerfile).toMatch(/test ! -e node_modules\/tsx && test ! -e node_modules\/esbuild/);
    // Nothing the runtime imports may be a devDependency.
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    for (const dev of ['tsx', 'esbuild', 'typescript', '@bufbuild/buf', 'vitest']) expect(pkg.dependencies[dev]).toBeUndefined();
    expect(pkg.devDependencies.tsx).toBeDefined();
  });
});

describe('compose', () => {
  const compose = readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8');

  it('publishes plaintext on loopback only and checks health', () => {
    const published = [...compose.matchAll(/ports: \[([^\]]*)\]/g)].flatMap((m) => m[1]!.split(',').map((p) => p.trim().replace(/"/g, '')));
    // The proxy's port; the nodes are reached through it (every node passes a call on to its tenant's owner).
    expect(published.length).toBeGreaterThanOrEqual(1);
    for (const port of published) expect(port).toMatch(/^127\.0\.0\.1:/);
    expect(compose).toMatch(/healthcheck:/);
    expect(compose).toMatch(/condition: service_healthy/);
  });

  const dockerCompose = spawnSync('docker-compose', ['version'], { encoding: 'utf8' });
  it.skipIf(dockerCompose.status !== 0)('validates with docker-compose config, alone and with the TLS override', () => {
    for (const files of [['docker-compose.yml'], ['docker-compose.yml', 'docker-compose.tls.yml']]) {
      const args = files.flatMap((f) => ['-f', f]);
      const result = spawnSync('docker-compose', [...args, 'config', '-q'], { cwd: ROOT, encoding: 'utf8' });
      expect(result.status, result.stderr).toBe(0);
    }
    const merged = spawnSync('docker-compose', ['-f', 'docker-compose.yml', '-f', 'docker-compose.tls.yml', 'config'], { cwd: ROOT, encoding: 'utf8' }).stdout;
    expect(merged).toMatch(/published: 7443/);
    expect(merged).toMatch(/TENANTD_TLS_CERT: \/run\/secrets\/tls_cert/);
    expect(existsSync(join(ROOT, 'deploy', 'nginx-tls.conf'))).toBe(true);
    // docker-compose 1.x is a Python program: three runs take half a minute on a busy host.
  }, 120_000);
});
