/**
 * The docker-compose topology as processes on loopback: three `tenantd
 * serve` nodes sharing one admin key (--admin-key-file) behind nginx running
 * deploy/nginx.conf (only its node addresses and port rewritten). Each
 * tenant lives on exactly one node, every call for it reaches that node, and
 * a node that is down makes its own tenants UNAVAILABLE without anything
 * landing on another node.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDataDir, RpcError, TestClient } from './support/server.ts';

const NGINX = process.env.TENANTD_NGINX ?? '/usr/sbin/nginx';
const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));
const NGINX_CONF = fileURLToPath(new URL('../deploy/nginx.conf', import.meta.url));
const INSTALL_HINT =
  `${NGINX} is not there; the cluster test runs the real proxy. Run .ci/run, or apt-get install -y nginx-light ` +
  '(or set TENANTD_NGINX to an nginx binary). Set TENANTD_SKIP_CLUSTER=1 to skip this test.';

const dir = freshDataDir();
const adminKey = randomBytes(32).toString('base64');
const nodes: { child: ChildProcess; port: number; client: TestClient }[] = [];
let nginx: ChildProcess | null = null;
let proxy: TestClient;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function startNode(index: number, keyFile: string): Promise<{ child: ChildProcess; port: number }> {
  const dataDir = join(dir, `node-${index}`);
  const args = ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--admin-key-file', keyFile, '--metrics-listen', 'off', '--shards', '1', '--log-level', 'warn'];
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`node ${index} did not start: ${out} ${err}`)), 30_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const port = /listening on port (\d+)/.exec(out);
      if (port) {
        clearTimeout(timer);
        resolve({ child, port: Number(port[1]) });
      }
    });
    child.on('exit', (code) => reject(new Error(`node ${index} exited with ${code}: ${err}`)));
  });
}

/** deploy/nginx.conf with the nodes' loopback ports, a loopback listen port, and files under `prefix`. */
function nginxConf(ports: number[], proxyPort: number, prefix: string): string {
  const conf = readFileSync(NGINX_CONF, 'utf8');
  const servers = [...conf.matchAll(/^\s*server tenantd-\d+:7070( [^;]*)?;$/gm)];
  expect(servers).toHaveLength(ports.length);
  let out = conf;
  servers.forEach((match, i) => (out = out.replace(match[0], `    server 127.0.0.1:${ports[i]}${match[1] ?? ''};`)));
  expect(out).toContain('listen 7070 http2;');
  out = out.replace('listen 7070 http2;', `listen 127.0.0.1:${proxyPort} http2;`);
  // Not part of the deployment: keep nginx's files out of /var when run as a test.
  const paths = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((p) => `  ${p}_temp_path ${join(prefix, p)};`).join('\n');
  return out.replace('http {', `http {\n${paths}`);
}

async function waitForProxy(): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await proxy.call('grpc.health.v1.Health', 'Check', { service: '' }, { deadlineMs: 1_000 });
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Which nodes know the tenant (GetTenant straight to each). */
async function homes(tenantId: string): Promise<number[]> {
  const found: number[] = [];
  for (const [i, node] of nodes.entries()) {
    if (node.child.exitCode !== null || node.child.signalCode !== null) continue;
    try {
      await node.client.call('TenantService', 'GetTenant', { name: `tenants/${tenantId}` }, { key: adminKey });
      found.push(i);
    } catch (error) {
      if (!(error instanceof RpcError) || error.status.code !== status.NOT_FOUND) throw error;
    }
  }
  return found;
}

const TENANTS = Array.from({ length: 12 }, (_, i) => `customer-${i}`);
const keys = new Map<string, string>();

describe.skipIf(process.env.TENANTD_SKIP_CLUSTER === '1')('a cluster of three nodes behind the hashing proxy', () => {
  beforeAll(async () => {
    if (!existsSync(NGINX) || spawnSync(NGINX, ['-v']).status !== 0) throw new Error(INSTALL_HINT);
    const keyFile = join(dir, 'admin.key');
    writeFileSync(keyFile, `${adminKey}\n`, { mode: 0o600 });
    const started = await Promise.all([0, 1, 2].map((i) => startNode(i, keyFile)));
    for (const node of started) nodes.push({ ...node, client: new TestClient(`127.0.0.1:${node.port}`) });

    const prefix = join(dir, 'nginx');
    mkdirSync(prefix, { recursive: true });
    const proxyPort = await freePort();
    writeFileSync(join(prefix, 'nginx.conf'), nginxConf(started.map((n) => n.port), proxyPort, prefix));
    const check = spawnSync(NGINX, ['-t', '-p', prefix, '-c', join(prefix, 'nginx.conf'), '-g', `pid ${join(prefix, 'nginx.pid')}; error_log stderr;`], { encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`nginx -t refused the configuration:\n${check.stderr}`);
    nginx = spawn(NGINX, ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-g', `daemon off; pid ${join(prefix, 'nginx.pid')}; error_log stderr;`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    proxy = new TestClient(`127.0.0.1:${proxyPort}`);
    await waitForProxy();
  }, 60_000);

  afterAll(async () => {
    proxy?.close();
    nginx?.kill('SIGQUIT');
    for (const node of nodes) {
      node.client.close();
      node.child.kill('SIGKILL');
    }
    await new Promise((r) => setTimeout(r, 200));
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates each tenant on exactly one node, spread over the nodes', async () => {
    for (const tenantId of TENANTS) {
      // Admin calls about one tenant carry x-tenant-id too: that is what the proxy routes on.
      const created = await proxy.call('TenantService', 'CreateTenant', { tenant_id: tenantId }, { key: adminKey, tenantId });
      keys.set(tenantId, created.api_key.key);
    }
    const placement = await Promise.all(TENANTS.map(homes));
    for (const found of placement) expect(found).toHaveLength(1);
    expect(new Set(placement.map((found) => found[0])).size).toBeGreaterThanOrEqual(2);
  });

  it('routes every call for a tenant to its node', async () => {
    for (const tenantId of TENANTS) {
      const key = keys.get(tenantId)!;
      await proxy.call('SqlService', 'Execute', { sql: 'CREATE TABLE t (who TEXT)' }, { key, tenantId });
      await proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (?)', params: [{ text_value: tenantId }] }, { key, tenantId });
    }
    for (const tenantId of TENANTS) {
      const rows = await proxy.call('SqlService', 'Execute', { sql: 'SELECT who FROM t' }, { key: keys.get(tenantId)!, tenantId });
      expect(rows.rows.map((r: { values: { text_value: string }[] }) => r.values[0]!.text_value)).toEqual([tenantId]);
    }
  });

  it('lists the tenants of every node with the CLI given the nodes’ addresses', async () => {
    const addresses = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
    const child = spawn(process.execPath, [BIN, 'tenants', 'list', '--address', addresses], {
      env: { ...process.env, TENANTD_ADMIN_KEY: adminKey },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    expect(await new Promise((resolve) => child.on('exit', resolve))).toBe(0);
    const listed = out.trim().split('\n').map((line) => (JSON.parse(line) as { tenant_id: string }).tenant_id);
    expect(listed.sort()).toEqual([...TENANTS].sort());
  });

  it('makes a stopped node’s tenants UNAVAILABLE, never re-homes them, and keeps serving the others', async () => {
    const placement = new Map(await Promise.all(TENANTS.map(async (id) => [id, (await homes(id))[0]!] as const)));
    const victim = placement.get(TENANTS[0]!)!;
    nodes[victim]!.child.kill('SIGKILL');
    await new Promise((resolve) => nodes[victim]!.child.once('exit', resolve));

    for (const [tenantId, home] of placement) {
      const call = proxy.call('SqlService', 'Execute', { sql: 'SELECT count(*) FROM t' }, { key: keys.get(tenantId)!, tenantId });
      if (home === victim) {
        const failure = await call.then(
          () => null,
          (e: RpcError) => e.status,
        );
        expect(failure?.code).toBe(status.UNAVAILABLE);
      } else {
        expect((await call).rows).toHaveLength(1);
      }
    }
    // Creating one of its tenants again goes to the stopped node, not to a live one.
    const again = await proxy.call('TenantService', 'CreateTenant', { tenant_id: TENANTS[0] }, { key: adminKey, tenantId: TENANTS[0] }).then(
      () => null,
      (e: RpcError) => e.status,
    );
    expect(again?.code).toBe(status.UNAVAILABLE);
    expect(await homes(TENANTS[0]!)).toEqual([]);
  });
});
