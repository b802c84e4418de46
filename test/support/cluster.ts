/**
 * The docker-compose cluster as processes on loopback: etcd, `tenantd serve`
 * nodes joined through it, HAProxy running deploy/haproxy.cfg (addresses and
 * paths rewritten only) and `tenantd cluster sync-proxy` keeping its maps.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freshDataDir, TestClient } from './server.ts';
import { freePort } from './freePort.ts';
export { freePort };

export const ETCD = process.env.TENANTD_ETCD ?? '/usr/bin/etcd';
export const HAPROXY = process.env.TENANTD_HAPROXY ?? '/usr/sbin/haproxy';
export const BIN = fileURLToPath(new URL('../../bin/tenantd.js', import.meta.url));
const HAPROXY_CONF = fileURLToPath(new URL('../../deploy/haproxy.cfg', import.meta.url));

export function missingTools(): string | null {
  for (const tool of [ETCD, HAPROXY]) {
    if (!existsSync(tool)) {
      return (
        `${tool} is not there; the cluster tests run the real etcd and HAProxy. Run .ci/run, or apt-get install -y etcd-server haproxy ` +
        '(or set TENANTD_ETCD / TENANTD_HAPROXY). Set TENANTD_SKIP_CLUSTER=1 to skip them.'
      );
    }
  }
  return null;
}

export async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface Node {
  id: string;
  port: number;
  dataDir: string;
  child: ChildProcess;
  client: TestClient;
  log: string[];
}

/** Every call to a node or the proxy that sets no deadline of its own gets this one: a hang becomes a failure naming the call. */
const CALL_DEADLINE_MS = 15_000;

/** Every process the clusters of this test file started: killed when the file's process exits, however it ends. */
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

function tracked(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export class LoopbackCluster {
  readonly dir = freshDataDir();
  readonly adminKey = randomBytes(32).toString('base64');
  readonly keyFile = join(this.dir, 'admin.key');
  readonly nodes: Node[] = [];
  etcd: ChildProcess | null = null;
  etcdPort = 0;
  private etcdPeerPort = 0;
  haproxy: ChildProcess | null = null;
  syncProxy: ChildProcess | null = null;
  proxy!: TestClient;
  proxyPort = 0;
  runtimePort = 0;

  constructor(private readonly leaseTtlSeconds = 4) {
    writeFileSync(this.keyFile, `${this.adminKey}\n`, { mode: 0o600 });
  }

  get etcdUrl(): string {
    return `http://127.0.0.1:${this.etcdPort}`;
  }

  async startEtcd(): Promise<void> {
    if (this.etcdPort === 0) {
      this.etcdPort = await freePort();
      this.etcdPeerPort = await freePort();
    }
    const dataDir = join(this.dir, 'etcd');
    const url = this.etcdUrl;
    this.etcd = tracked(spawn(
      ETCD,
      [
        '--data-dir', dataDir,
        '--listen-client-urls', url,
        '--advertise-client-urls', url,
        '--listen-peer-urls', `http://127.0.0.1:${this.etcdPeerPort}`,
        '--initial-advertise-peer-urls', `http://127.0.0.1:${this.etcdPeerPort}`,
        '--initial-cluster', `default=http://127.0.0.1:${this.etcdPeerPort}`,
        '--log-level', 'error',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    ));
    await waitFor('etcd', async () => (await fetch(`${url}/health`)).ok);
  }

  async stopEtcd(): Promise<void> {
    const etcd = this.etcd;
    if (!etcd) return;
    this.etcd = null;
    if (etcd.exitCode !== null || etcd.signalCode !== null) return;
    const exited = new Promise((r) => etcd.once('exit', r));
    etcd.kill('SIGKILL');
    await exited;
  }

  async startNode(id: string, extra: string[] = []): Promise<Node> {
    const port = await freePort();
    const dataDir = join(this.dir, id);
    const args = [
      BIN, 'serve',
      '--listen', `127.0.0.1:${port}`,
      '--data-dir', dataDir,
      '--admin-key-file', this.keyFile,
      '--metrics-listen', 'off',
      '--shards', '1',
      '--log-level', 'warn',
      '--cluster-etcd', this.etcdUrl,
      '--node-id', id,
      '--lease-ttl-s', String(this.leaseTtlSeconds),
      '--move-grace-ms', '1000',
      '--orphan-grace-ms', '4000',
      ...extra,
    ];
    const child = tracked(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    const log: string[] = [];
    child.stderr!.on('data', (d) => log.push(String(d)));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`node ${id} did not start: ${out} ${log.join('')}`)), 60_000);
      child.stdout!.on('data', (d) => {
        out += d;
        log.push(String(d));
        if (/listening on port (\d+)/.test(out)) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`node ${id} exited with ${code}: ${log.join('')}`)));
    });
    const node = { id, port, dataDir, child, client: new TestClient(`127.0.0.1:${port}`, CALL_DEADLINE_MS), log };
    this.nodes.push(node);
    return node;
  }

  /** Nodes a test has stopped with SIGSTOP (pause()): alive, but they answer nothing. */
  private readonly paused = new Set<Node>();

  /**
   * A node that answers: not killed and not paused. The nodes are in the order their starts
   * finished, which varies: never take `nodes[0]` for one that answers.
   */
  live(): Node {
    return this.nodes.find((n) => n.child.exitCode === null && n.child.signalCode === null && !this.paused.has(n))!;
  }

  /** Stops the node's process (SIGSTOP): its lease runs out while it does nothing, as a zombie's would. */
  pause(node: Node): void {
    this.paused.add(node);
    node.child.kill('SIGSTOP');
  }

  resume(node: Node): void {
    node.child.kill('SIGCONT');
    this.paused.delete(node);
  }

  node(id: string): Node {
    return this.nodes.find((n) => n.id === id)!;
  }

  /** Starts a node again (after a kill) with its id and data directory, on a new port. */
  async restartNode(id: string): Promise<Node> {
    const old = this.node(id);
    this.nodes.splice(this.nodes.indexOf(old), 1);
    old.client.close();
    return this.startNode(id);
  }

  /** HAProxy on deploy/haproxy.cfg, and sync-proxy following the placement. */
  async startProxy(): Promise<void> {
    const dir = join(this.dir, 'haproxy');
    mkdirSync(dir, { recursive: true });
    this.proxyPort = await freePort();
    this.runtimePort = await freePort();
    let conf = readFileSync(HAPROXY_CONF, 'utf8');
    for (const [from, to] of [
      ['/usr/local/etc/haproxy/', `${dir}/`],
      ['bind 127.0.0.1:7070', `bind 127.0.0.1:${this.proxyPort}`],
      ['ipv4@127.0.0.1:9999', `ipv4@127.0.0.1:${this.runtimePort}`],
    ] as const) {
      if (!conf.includes(from)) throw new Error(`deploy/haproxy.cfg no longer has ${from}`);
      conf = conf.replaceAll(from, to);
    }
    writeFileSync(join(dir, 'haproxy.cfg'), conf);
    writeFileSync(join(dir, 'slots.map'), '');
    writeFileSync(join(dir, 'tenants.map'), '');
    const check = spawnSync(HAPROXY, ['-c', '-f', join(dir, 'haproxy.cfg')], { encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`haproxy -c refused the configuration:\n${check.stdout}${check.stderr}`);
    this.haproxy = tracked(spawn(HAPROXY, ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'ignore', 'pipe'] }));
    this.syncProxy = tracked(spawn(
      process.execPath,
      [BIN, 'cluster', 'sync-proxy', '--etcd', this.etcdUrl, '--haproxy-socket', `127.0.0.1:${this.runtimePort}`,
        '--slots-map', join(dir, 'slots.map'), '--tenants-map', join(dir, 'tenants.map'), '--write-files'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ));
    this.proxy = new TestClient(`127.0.0.1:${this.proxyPort}`, CALL_DEADLINE_MS);
  }

  /** Runs `tenantd cluster ...` against a node; resolves with its exit code and output. `onOutput` sees stdout so far as it grows. */
  cli(args: string[], address = `127.0.0.1:${this.live().port}`, onOutput?: (out: string) => void): Promise<{ code: number | null; out: string; err: string }> {
    const child = tracked(spawn(process.execPath, [BIN, 'cluster', ...args, '--address', address], {
      env: { ...process.env, TENANTD_ADMIN_KEY: this.adminKey },
      stdio: ['ignore', 'pipe', 'pipe'],
    }));
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => {
      out += d;
      onOutput?.(out);
    });
    child.stderr!.on('data', (d) => (err += d));
    // A command that hangs fails its test instead of holding the suite.
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    return new Promise((resolve) =>
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, out, err });
      }),
    );
  }

  /** Which nodes hold the tenant's database file. */
  homes(tenantId: string): string[] {
    return this.nodes.filter((n) => existsSync(join(n.dataDir, 'tenants', tenantId, 'db.sqlite'))).map((n) => n.id);
  }

  async stop(): Promise<void> {
    this.proxy?.close();
    this.syncProxy?.kill('SIGKILL');
    this.haproxy?.kill('SIGKILL');
    for (const node of this.nodes) {
      node.client.close();
      if (node.child.signalCode === 'SIGSTOP' || node.child.exitCode === null) node.child.kill('SIGCONT');
      node.child.kill('SIGKILL');
    }
    await this.stopEtcd();
    await new Promise((r) => setTimeout(r, 200));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
