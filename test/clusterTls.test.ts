/**
 * The TLS cluster (docker-compose.tls.yml, deploy/nginx-tls.conf) on
 * loopback: three TLS-only nodes behind the real nginx with the deployment's
 * configuration (only addresses and file paths rewritten). Clients reach the
 * proxy over TLS with the cluster CA; the proxy re-encrypts to the nodes
 * (which refuse plaintext) and verifies them as `tenantd`.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageDefinition } from '../src/protos.ts';
import { channelCredentials } from '../src/tls/clientCredentials.ts';
import { freshDataDir, startTestServer, type TestServer } from './support/server.ts';
import { freePort } from './support/freePort.ts';

const NGINX = process.env.TENANTD_NGINX ?? '/usr/sbin/nginx';
const CONF = fileURLToPath(new URL('../deploy/nginx-tls.conf', import.meta.url));
const MAKE_CERTS = fileURLToPath(new URL('../scripts/make-certs.sh', import.meta.url));
const loaded = grpc.loadPackageDefinition(packageDefinition()) as any;

const dir = freshDataDir();
const certs = join(dir, 'certs');
const adminKey = randomBytes(32).toString('base64');
const nodes: TestServer[] = [];
let nginx: ChildProcess | null = null;
let tlsPort = 0;
let plainPort = 0;

function call(port: number, creds: grpc.ChannelCredentials, service: string, method: string, request: object, md: Record<string, string>): Promise<any> {
  const client = new loaded.tenantd.v1[service](`127.0.0.1:${port}`, creds, { 'grpc.ssl_target_name_override': 'localhost' });
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) metadata.set(k, v);
  return new Promise((resolve, reject) =>
    client[method](request, metadata, { deadline: Date.now() + 10_000 }, (error: grpc.ServiceError | null, res: any) => {
      client.close();
      if (error) reject(error);
      else resolve(res);
    }),
  );
}

describe.skipIf(process.env.TENANTD_SKIP_CLUSTER === '1')('the TLS cluster proxy', () => {
  beforeAll(async () => {
    if (!existsSync(NGINX)) throw new Error(`${NGINX} is not there (apt-get install nginx-light); TENANTD_SKIP_CLUSTER=1 skips`);
    execFileSync('sh', [MAKE_CERTS, certs], { stdio: 'pipe' });
    const keyFile = join(dir, 'admin.key');
    writeFileSync(keyFile, `${adminKey}\n`, { mode: 0o600 });
    for (let i = 0; i < 3; i++) {
      nodes.push(
        await startTestServer({ shards: 1, adminKeyFile: keyFile, tlsCert: join(certs, 'server.crt'), tlsKey: join(certs, 'server.key') }),
      );
    }
    tlsPort = await freePort();
    plainPort = await freePort();
    const prefix = join(dir, 'nginx');
    mkdirSync(prefix, { recursive: true });
    let conf = readFileSync(CONF, 'utf8');
    const servers = [...conf.matchAll(/^\s*server tenantd-\d+:7070( [^;]*)?;$/gm)];
    expect(servers).toHaveLength(3);
    servers.forEach((m, i) => (conf = conf.replace(m[0], `    server 127.0.0.1:${nodes[i]!.server.port}${m[1] ?? ''};`)));
    expect(conf).toContain('listen 7443 ssl http2;');
    expect(conf).toContain('listen 7070 http2;');
    conf = conf
      .replace('listen 7443 ssl http2;', `listen 127.0.0.1:${tlsPort} ssl http2;`)
      .replace('listen 7070 http2;', `listen 127.0.0.1:${plainPort} http2;`)
      .replaceAll('/etc/nginx/certs/', `${certs}/`);
    const paths = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((p) => `  ${p}_temp_path ${join(prefix, p)};`).join('\n');
    writeFileSync(join(prefix, 'nginx.conf'), conf.replace('http {', `http {\n${paths}`));
    const g = `pid ${join(prefix, 'nginx.pid')}; error_log stderr;`;
    const check = spawnSync(NGINX, ['-t', '-p', prefix, '-c', join(prefix, 'nginx.conf'), '-g', g], { encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`nginx -t refused the configuration:\n${check.stderr}`);
    nginx = spawn(NGINX, ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-g', `daemon off; ${g}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  }, 60_000);

  afterAll(async () => {
    nginx?.kill('SIGQUIT');
    for (const node of nodes) await node.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('terminates TLS, re-encrypts to the nodes, and refuses plaintext on the TLS port', async () => {
    const tls = channelCredentials({ ca: join(certs, 'ca.crt') });
    const admin = { authorization: `Bearer ${adminKey}`, 'x-tenant-id': 'secure' };
    // Ready when a call gets through to a node: GetTenant answers NOT_FOUND.
    const deadline = Date.now() + 15_000;
    for (;;) {
      const error = await call(tlsPort, tls, 'TenantService', 'GetTenant', { name: 'tenants/secure' }, admin).catch((e) => e);
      if (error.code === grpc.status.NOT_FOUND) break;
      if (Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 200));
    }
    const created = await call(tlsPort, tls, 'TenantService', 'CreateTenant', { tenant_id: 'secure' }, admin);
    const key = created.api_key.key as string;
    const tenant = { authorization: `Bearer ${key}`, 'x-tenant-id': 'secure' };
    const res = await call(tlsPort, tls, 'SqlService', 'Execute', { sql: 'SELECT 1 AS one' }, tenant);
    expect(res.rows[0].values[0].integer_value).toBe('1');
    // The loopback-only plaintext port reaches the same TLS nodes.
    const plain = await call(plainPort, grpc.credentials.createInsecure(), 'SqlService', 'Execute', { sql: 'SELECT 2' }, tenant);
    expect(plain.rows[0].values[0].integer_value).toBe('2');
    const refused = await call(tlsPort, grpc.credentials.createInsecure(), 'SqlService', 'Execute', { sql: 'SELECT 3' }, tenant).catch((e) => e);
    expect(refused.code).toBe(grpc.status.UNAVAILABLE);
    // And the nodes themselves speak only TLS.
    const direct = await call(nodes[0]!.server.port, grpc.credentials.createInsecure(), 'SqlService', 'Execute', { sql: 'SELECT 4' }, tenant).catch((e) => e);
    expect(direct.code).toBe(grpc.status.UNAVAILABLE);
  }, 60_000);
});
