/**
 * TLS and mutual TLS on the gRPC port (and HTTPS on the metrics port), with
 * certificates made by scripts/make-certs.sh, the commands the README shows.
 * On 011b252 the server had only createInsecure and none of these options.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { get as httpGet } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.ts';
import { packageDefinition } from '../src/protos.ts';
import { channelCredentials } from '../src/tls/clientCredentials.ts';
import { pythonGrpcMissing, runPython } from './support/python.ts';
import { startTestServer, type TestServer } from './support/server.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAKE_CERTS = join(ROOT, 'scripts', 'make-certs.sh');
const PY_CLIENT = fileURLToPath(new URL('./fixtures/reflection_client.py', import.meta.url));
const loaded = grpc.loadPackageDefinition(packageDefinition()) as any;

let work: string;
/** Two independent CAs, each with a server and a client certificate. */
let a: string;
let b: string;

function makeCerts(dir: string): void {
  execFileSync('sh', [MAKE_CERTS, dir], { stdio: 'pipe' });
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'tenantd-tls-'));
  a = join(work, 'a');
  b = join(work, 'b');
  makeCerts(a);
  makeCerts(b);
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

function healthClient(port: number, creds: grpc.ChannelCredentials): any {
  return new loaded.grpc.health.v1.Health(`127.0.0.1:${port}`, creds, { 'grpc.ssl_target_name_override': 'localhost' });
}

/** A Health.Check over `creds`: 'SERVING', or the status code name it failed with. */
function check(port: number, creds: grpc.ChannelCredentials): Promise<string> {
  const client = healthClient(port, creds);
  return new Promise((resolve) => {
    client.Check({ service: '' }, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (error: grpc.ServiceError | null, res: any) => {
      client.close();
      resolve(error ? grpc.status[error.code]! : res.status);
    });
  });
}

/** The serial number of the certificate a new TLS connection is served. */
function servedSerial(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(ca), servername: 'localhost', ALPNProtocols: ['h2'] }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial);
    });
    socket.on('error', reject);
  });
}

function serialOf(file: string): string {
  return new X509Certificate(readFileSync(file)).serialNumber;
}

describe('the README commands', () => {
  it('are the ones scripts/make-certs.sh runs, and make a chain OpenSSL verifies', () => {
    const script = readFileSync(MAKE_CERTS, 'utf8');
    const block = /# make-certs:begin\n([\s\S]*?)# make-certs:end/.exec(script)![1]!.trim();
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    expect(readme).toContain(block);
    const out = execFileSync('openssl', ['verify', '-CAfile', join(a, 'ca.crt'), join(a, 'server.crt'), join(a, 'client.crt')], { encoding: 'utf8' });
    expect(out).toContain('server.crt: OK');
    expect(out).toContain('client.crt: OK');
  });
});

describe('server TLS', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      tlsCert: join(a, 'server.crt'),
      tlsKey: join(a, 'server.key'),
      metricsListen: '127.0.0.1:0',
      metricsTls: true,
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('serves a Python grpcio client that trusts the CA', async () => {
    const missing = pythonGrpcMissing();
    if (missing) throw new Error(missing);
    const { report, stderr } = await runPython<any>(PY_CLIENT, [
      '--mode', 'health', '--address', `127.0.0.1:${t.server.port}`, '--ca', join(a, 'ca.crt'), '--server-name', 'localhost',
    ]);
    expect(report.health, stderr).toEqual({ ok: true, serving: true });
  }, 60_000);

  it('serves Node clients through the credentials module the CLI uses', async () => {
    expect(await check(t.server.port, channelCredentials({ ca: join(a, 'ca.crt') }))).toBe('SERVING');
  });

  it('refuses a client that trusts another CA, and a plaintext client', async () => {
    expect(await check(t.server.port, channelCredentials({ ca: join(b, 'ca.crt') }))).toBe('UNAVAILABLE');
    expect(await check(t.server.port, grpc.credentials.createInsecure())).toBe('UNAVAILABLE');
    const missing = pythonGrpcMissing();
    if (missing) throw new Error(missing);
    const { report } = await runPython<any>(PY_CLIENT, [
      '--mode', 'health', '--address', `127.0.0.1:${t.server.port}`, '--ca', join(b, 'ca.crt'), '--server-name', 'localhost',
    ]);
    expect(report.health).toMatchObject({ ok: false, code: 'UNAVAILABLE' });
    const plain = await runPython<any>(PY_CLIENT, ['--mode', 'health', '--address', `127.0.0.1:${t.server.port}`]);
    expect(plain.report.health).toMatchObject({ ok: false, code: 'UNAVAILABLE' });
  }, 60_000);

  it('serves the metrics port over HTTPS only', async () => {
    const body = await new Promise<string>((resolve, reject) => {
      httpsGet({ host: '127.0.0.1', port: t.server.httpPort!, path: '/healthz', ca: readFileSync(join(a, 'ca.crt')), servername: 'localhost' }, (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve(`${res.statusCode} ${text.trim()}`));
      }).on('error', reject);
    });
    expect(body).toBe('200 ok');
    const plain = await new Promise<string>((resolve) => {
      httpGet({ host: '127.0.0.1', port: t.server.httpPort!, path: '/healthz' }, (res) => resolve(String(res.statusCode))).on('error', (e) => resolve(e.message));
    });
    expect(plain).not.toBe('200');
  });
});

describe('mutual TLS', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({ tlsCert: join(a, 'server.crt'), tlsKey: join(a, 'server.key'), tlsClientCa: join(a, 'ca.crt') });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('accepts a client certificate the CA signed', async () => {
    const creds = channelCredentials({ ca: join(a, 'ca.crt'), cert: join(a, 'client.crt'), key: join(a, 'client.key') });
    expect(await check(t.server.port, creds)).toBe('SERVING');
    const { report, stderr } = await runPython<any>(PY_CLIENT, [
      '--mode', 'health', '--address', `127.0.0.1:${t.server.port}`, '--server-name', 'localhost',
      '--ca', join(a, 'ca.crt'), '--cert', join(a, 'client.crt'), '--key', join(a, 'client.key'),
    ]);
    expect(report.health, stderr).toEqual({ ok: true, serving: true });
  }, 60_000);

  it('refuses a client without a certificate, or with one another CA signed', async () => {
    expect(await check(t.server.port, channelCredentials({ ca: join(a, 'ca.crt') }))).toBe('UNAVAILABLE');
    const foreign = channelCredentials({ ca: join(a, 'ca.crt'), cert: join(b, 'client.crt'), key: join(b, 'client.key') });
    expect(await check(t.server.port, foreign)).toBe('UNAVAILABLE');
    const { report } = await runPython<any>(PY_CLIENT, [
      '--mode', 'health', '--address', `127.0.0.1:${t.server.port}`, '--ca', join(a, 'ca.crt'), '--server-name', 'localhost',
    ]);
    expect(report.health).toMatchObject({ ok: false, code: 'UNAVAILABLE' });
  }, 60_000);
});

describe('certificate reload', () => {
  it('serves a new certificate to new connections while an open stream continues', async () => {
    const live = join(work, 'live');
    makeCerts(live);
    const next = join(work, 'next');
    makeCerts(next);
    const third = join(work, 'third');
    makeCerts(third);
    const t = await startTestServer({ tlsCert: join(live, 'server.crt'), tlsKey: join(live, 'server.key') });
    try {
      const first = serialOf(join(live, 'server.crt'));
      expect(await servedSerial(t.server.port, join(live, 'ca.crt'))).toBe(first);

      // An open stream on a connection made with the first certificate.
      const tenantKey = await (async () => {
        const client = new loaded.tenantd.v1.TenantService(`127.0.0.1:${t.server.port}`, channelCredentials({ ca: join(live, 'ca.crt') }), {
          'grpc.ssl_target_name_override': 'localhost',
        });
        const md = new grpc.Metadata();
        md.set('authorization', `Bearer ${t.adminKey}`);
        const res = await new Promise<any>((resolve, reject) =>
          client.CreateTenant({ tenant_id: 'tls' }, md, (e: Error | null, r: any) => (e ? reject(e) : resolve(r))),
        );
        client.close();
        return res.api_key.key as string;
      })();
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${tenantKey}`);
      const events = new loaded.tenantd.v1.EventService(`127.0.0.1:${t.server.port}`, channelCredentials({ ca: join(live, 'ca.crt') }), {
        'grpc.ssl_target_name_override': 'localhost',
      });
      const received: string[] = [];
      const stream = events.Subscribe({ from_position: '0' }, md);
      stream.on('data', (e: any) => received.push(e.type));
      stream.on('error', () => undefined);
      const append = (type: string) =>
        new Promise<void>((resolve, reject) =>
          events.Append({ events: [{ type, data: Buffer.from('x') }] }, md, (e: Error | null) => (e ? reject(e) : resolve())),
        );
      await append('before');
      await expect.poll(() => received, { timeout: 10_000 }).toEqual(['before']);

      // Rotation by replacing the files (rename, as secret managers do): picked up by the poll.
      copyFileSync(join(next, 'server.key'), join(live, 'server.key.new'));
      copyFileSync(join(next, 'server.crt'), join(live, 'server.crt.new'));
      renameSync(join(live, 'server.key.new'), join(live, 'server.key'));
      renameSync(join(live, 'server.crt.new'), join(live, 'server.crt'));
      const second = serialOf(join(next, 'server.crt'));
      await expect.poll(() => servedSerial(t.server.port, join(next, 'ca.crt')).catch(() => 'old'), { timeout: 15_000, interval: 250 }).toBe(second);
      expect(await check(t.server.port, channelCredentials({ ca: join(next, 'ca.crt') }))).toBe('SERVING');
      expect(await check(t.server.port, channelCredentials({ ca: join(live, 'ca.crt') }))).toBe('UNAVAILABLE');

      // The stream opened under the old certificate still carries events.
      await append('after-file-reload');
      await expect.poll(() => received, { timeout: 10_000 }).toEqual(['before', 'after-file-reload']);

      // SIGHUP's path: a reload on demand, no waiting for the poll.
      copyFileSync(join(third, 'server.key'), join(live, 'server.key.new'));
      copyFileSync(join(third, 'server.crt'), join(live, 'server.crt.new'));
      renameSync(join(live, 'server.key.new'), join(live, 'server.key'));
      renameSync(join(live, 'server.crt.new'), join(live, 'server.crt'));
      expect(t.server.reloadCertificates()).toBe(true);
      expect(await servedSerial(t.server.port, join(third, 'ca.crt'))).toBe(serialOf(join(third, 'server.crt')));
      await append('after-sighup');
      await expect.poll(() => received, { timeout: 10_000 }).toEqual(['before', 'after-file-reload', 'after-sighup']);

      // A broken key is refused; the server keeps the certificate it had.
      copyFileSync(join(next, 'server.key'), join(live, 'server.key'));
      expect(t.server.reloadCertificates()).toBe(false);
      expect(await servedSerial(t.server.port, join(third, 'ca.crt'))).toBe(serialOf(join(third, 'server.crt')));
      stream.cancel();
      events.close();
    } finally {
      await t.stop();
    }
  }, 60_000);
});

describe('TLS options', () => {
  const env = {};
  it('are checked at start with messages naming the option', () => {
    const fail = (argv: string[], environment: NodeJS.ProcessEnv = env) => {
      try {
        loadConfig(argv, environment);
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        return (error as Error).message;
      }
      throw new Error(`accepted ${argv.join(' ')}`);
    };
    expect(fail(['--tls-cert', join(a, 'server.crt')])).toMatch(/--tls-cert and --tls-key .* go together/);
    expect(fail(['--tls-cert', join(a, 'server.key'), '--tls-key', join(a, 'server.key')])).toMatch(/^--tls-cert .*server\.key: expected a PEM file with a CERTIFICATE block/);
    expect(fail(['--tls-cert', join(a, 'server.crt'), '--tls-key', join(b, 'server.key')])).toMatch(/^--tls-key .*: not the private key of --tls-cert/);
    expect(fail([], { TENANTD_TLS_KEY: join(a, 'nope.key') })).toMatch(/^TENANTD_TLS_KEY .*nope\.key: cannot read it \(ENOENT\)/);
    expect(fail(['--tls-client-ca', join(a, 'ca.crt')])).toMatch(/--tls-client-ca \(mutual TLS\) needs --tls-cert/);
    expect(fail(['--metrics-tls', 'on'])).toMatch(/--metrics-tls on needs --tls-cert/);
    const config = loadConfig([], {
      TENANTD_TLS_CERT: join(a, 'server.crt'),
      TENANTD_TLS_KEY: join(a, 'server.key'),
      TENANTD_TLS_CLIENT_CA: join(a, 'ca.crt'),
    });
    expect([config.tlsCert, config.tlsKey, config.tlsClientCa]).toEqual([join(a, 'server.crt'), join(a, 'server.key'), join(a, 'ca.crt')]);
  });
});
