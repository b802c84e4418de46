/**
 * The cluster as docker-compose.yml runs it, as processes on loopback: etcd
 * for placement, three (then four) tenantd nodes, HAProxy routing on
 * `x-tenant-id` through maps that `tenantd cluster sync-proxy` keeps live.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, watch } from 'node:fs';
import { tmpdir } from 'node:os';
import Database from 'better-sqlite3';
import { Etcd3 } from 'etcd3';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { slotOf } from '../src/cluster/slots.ts';
import { emptyOverrides } from '../src/tenants/manager.ts';
import { LoopbackCluster, missingTools, waitFor, type Node } from './support/cluster.ts';
import { RpcError, type TestClient } from './support/server.ts';

const cluster = new LoopbackCluster(6);
const keys = new Map<string, string>();
/** Tenants moved on their own (their overrides outlive slot changes). */
const keysMovedAlone = new Set<string>();
const TENANTS = Array.from({ length: 300 }, (_, i) => `tenant-${String(i).padStart(3, '0')}`);

/** Where the placement puts the tenant, as a live node sees it. */
async function owner(tenantId: string): Promise<string> {
  const live = cluster.live();
  const placement = await retrying(() => live.client.call('ClusterService', 'GetPlacement', { tenant_id: tenantId }, { key: cluster.adminKey }));
  return placement.owner as string;
}

async function inParallel<T>(items: readonly T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: width }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
  }));
}

/** A call that a client would retry on UNAVAILABLE with RetryInfo, retried that way. */
async function retrying<T>(call: () => Promise<T>, attempts = 20): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await call();
    } catch (error) {
      const retryable =
        error instanceof RpcError &&
        (error.status.code === status.UNAVAILABLE || (error.status.code === status.RESOURCE_EXHAUSTED && error.status.retryDelayMs !== null));
      if (!retryable || i >= attempts) throw error;
      await new Promise((r) => setTimeout(r, error.status.retryDelayMs ?? 200));
    }
  }
}

async function count(client: TestClient, tenantId: string): Promise<number> {
  const result = await client.call('SqlService', 'Execute', { sql: 'SELECT count(*) FROM t' }, { key: keys.get(tenantId)!, tenantId });
  return Number(result.rows[0].values[0].integer_value);
}

/** Makes the tenant ~24 MB, so that its copy takes long enough to be cut. */
async function fill(tenantId: string, key: string): Promise<void> {
  await retrying(() => cluster.proxy.call('SqlService', 'Execute', { sql: 'CREATE TABLE IF NOT EXISTS pad (b BLOB)' }, { key, tenantId }));
  for (let i = 0; i < 6; i++) {
    await retrying(() => cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO pad VALUES (randomblob(4000000))' }, { key, tenantId }));
  }
}

/** A ~24 MB tenant about to move: its key, row count, owner, and a live node to move it to. */
async function moveCandidate(tenantId: string): Promise<{ tenantId: string; key: string; rowsBefore: number; from: string; target: Node }> {
  const key = keys.get(tenantId)!;
  await fill(tenantId, key);
  const rowsBefore = await retrying(() => count(cluster.proxy, tenantId));
  const from = await owner(tenantId);
  const target = cluster.nodes.find((n) => n.id !== from && n.child.exitCode === null && n.child.signalCode === null)!;
  return { tenantId, key, rowsBefore, from, target };
}

/** After a move cut short: the owner, whichever node it is, has every acknowledged row and takes writes. */
async function nothingLost(tenantId: string, key: string, rowsBefore: number): Promise<void> {
  expect(await retrying(() => count(cluster.proxy, tenantId), 60)).toBe(rowsBefore);
  await retrying(() => cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (6)' }, { key, tenantId }), 60);
  expect(await count(cluster.proxy, tenantId)).toBe(rowsBefore + 1);
}

/** Resolves the moment a move's upload file appears in the node's tmp directory. */
function copyArrives(dataDir: string): Promise<void> {
  const dir = join(dataDir, 'tmp');
  return new Promise((resolve, reject) => {
    const watcher = watch(dir, (_event, name) => {
      if (name?.startsWith('restore-')) {
        watcher.close();
        clearTimeout(timer);
        resolve();
      }
    });
    const timer = setTimeout(() => {
      watcher.close();
      reject(new Error(`no copy arrived in ${dir}`));
    }, 30_000);
  });
}

describe.skipIf(process.env.TENANTD_SKIP_CLUSTER === '1')('a cluster placed through etcd, routed by HAProxy', () => {
  beforeAll(async () => {
    const missing = missingTools();
    if (missing) throw new Error(missing);
    await cluster.startEtcd();
    await Promise.all(['n1', 'n2', 'n3'].map((id) => cluster.startNode(id)));
    const assigned = await cluster.cli(['rebalance']);
    expect(assigned.code, assigned.err).toBe(0);
    expect(assigned.out).toContain('16384 unassigned slots to assign');
    await cluster.startProxy();
    await waitFor('the proxy to route', async () => {
      await cluster.proxy.call('grpc.health.v1.Health', 'Check', { service: '' }, { deadlineMs: 1_000 });
      return true;
    });
  }, 120_000);

  afterAll(() => cluster.stop(), 30_000);

  it('gives every slot an owner, evenly', async () => {
    const placement = await cluster.live().client.call('ClusterService', 'GetPlacement', {}, { key: cluster.adminKey });
    expect(placement.unassigned_slots).toBe(0);
    const slots = placement.nodes.map((n: { slots: number }) => n.slots);
    expect(slots.reduce((a: number, b: number) => a + b, 0)).toBe(16384);
    expect(Math.max(...slots) - Math.min(...slots)).toBeLessThanOrEqual(1);
  });

  it('places 300 tenants created through HAProxy on their slot’s owner, and serves each through any node', async () => {
    await inParallel(TENANTS, 8, async (tenantId) => {
      // Enterprise: no request-rate quota in the way of the write-load test below.
      const created = await retrying(() =>
        cluster.proxy.call('TenantService', 'CreateTenant', { tenant_id: tenantId, tenant: { plan: 'enterprise' } }, { key: cluster.adminKey, tenantId }),
      );
      keys.set(tenantId, created.api_key.key);
      await cluster.proxy.call('SqlService', 'Execute', { sql: 'CREATE TABLE t (v INTEGER)' }, { key: created.api_key.key, tenantId });
    });
    const byNode = new Map<string, number>();
    await inParallel(TENANTS, 8, async (tenantId) => {
      const home = await owner(tenantId);
      expect(cluster.homes(tenantId)).toEqual([home]);
      byNode.set(home, (byNode.get(home) ?? 0) + 1);
    });
    expect(byNode.size).toBe(3);
    // A tenant key works through every node (forwarded) and the proxy.
    for (const tenantId of TENANTS.slice(0, 20)) {
      for (const client of [cluster.proxy, ...cluster.nodes.map((n) => n.client)]) {
        await client.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (1)' }, { key: keys.get(tenantId)!, tenantId });
      }
      expect(await count(cluster.nodes[2]!.client, tenantId)).toBe(4);
    }
  }, 180_000);

  it('lists every tenant of the cluster from any node, page by page', async () => {
    const listed: string[] = [];
    let token = '';
    do {
      const page = await cluster.nodes[2]!.client.call('TenantService', 'ListTenants', { page_size: 70, page_token: token }, { key: cluster.adminKey });
      listed.push(...page.tenants.map((t: { tenant_id: string }) => t.tenant_id));
      token = page.next_page_token;
    } while (token !== '');
    expect(listed).toEqual(TENANTS);
  });

  it('moves a tenant under 200 writes/s in two phases: no acknowledged write lost, writes pause briefly, reads never fail', async () => {
    const tenantId = TENANTS[7]!;
    const key = keys.get(tenantId)!;
    // 3 MB: past the size from which a move copies first while the writes go on, then sends the pages written meanwhile.
    await retrying(() => cluster.proxy.call('SqlService', 'Execute', { sql: 'CREATE TABLE pad (b BLOB)' }, { key, tenantId }));
    await retrying(() => cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO pad VALUES (randomblob(3000000))' }, { key, tenantId }));
    const from = await owner(tenantId);
    const to = cluster.nodes.map((n) => n.id).find((id) => id !== from)!;
    keysMovedAlone.add(tenantId);
    const acked: number[] = [];
    const ackTimes: number[] = [];
    const readFailures: unknown[] = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        const started = Date.now();
        await retrying(() => cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (?)', params: [{ integer_value: String(1000 + i) }] }, { key, tenantId }));
        acked.push(1000 + i);
        ackTimes.push(Date.now());
        await new Promise((r) => setTimeout(r, Math.max(0, 5 - (Date.now() - started))));
      }
    })();
    const reader = (async () => {
      while (writing) {
        await cluster.proxy.call('SqlService', 'Execute', { sql: 'SELECT max(v) FROM t' }, { key, tenantId }).catch((e: unknown) => readFailures.push(e));
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    await new Promise((r) => setTimeout(r, 1000));
    const moved = await cluster.cli(['move', tenantId, to]);
    await new Promise((r) => setTimeout(r, 1000));
    writing = false;
    await Promise.all([writer, reader]);
    expect(moved.code, moved.err).toBe(0);
    expect(moved.out).toMatch(/FLIPPED/);
    // Phase 1 staged the whole copy; phase 2 sent only the pages the writes changed meanwhile.
    expect(moved.out).toMatch(/STAGED/);
    const delta = /sent (\d+) bytes: (\d+) runs of pages/.exec(moved.out);
    expect(delta, moved.out).not.toBeNull();
    expect(Number(delta![1])).toBeGreaterThan(0);
    expect(Number(delta![1])).toBeLessThan(1_500_000);
    expect(await owner(tenantId)).toBe(to);
    const gaps = ackTimes.slice(1).map((t, i) => t - ackTimes[i]!);
    // The target is 1 s (bench:cluster measures it); a shared CI host gets twice that here.
    expect(Math.max(...gaps), moved.out).toBeLessThan(2000);
    expect(readFailures).toEqual([]);
    const rows = await cluster.proxy.call('SqlService', 'Execute', { sql: 'SELECT v FROM t WHERE v >= 1000 ORDER BY v' }, { key, tenantId });
    expect(rows.rows.map((r: { values: { integer_value: string }[] }) => Number(r.values[0]!.integer_value))).toEqual(acked);
    await waitFor('the source to drop its copy', () => cluster.homes(tenantId).length === 1, 15_000);
    expect(cluster.homes(tenantId)).toEqual([to]);
  }, 120_000);

  it('stages a move’s copy only when it is sound, and installs a phase 2 only over its own staged copy', async () => {
    const tenantId = 'not-here-yet';
    const from = await owner(tenantId);
    const target = cluster.nodes.find((n) => n.id !== from && n.child.exitCode === null && n.child.signalCode === null)!;
    const catalog_json = JSON.stringify({ record: { tenantId }, keys: [] });
    const send = (header: Record<string, unknown>, parts: unknown[]) =>
      target.client.clientStream('ClusterService', 'ReceiveTenant', [{ header: { catalog_json, ...header } }, ...parts], { key: cluster.adminKey });
    const refused = async (header: Record<string, unknown>, parts: unknown[]) => {
      const error = await send(header, parts).then(() => null, (e: unknown) => e);
      expect(error).toBeInstanceOf(RpcError);
      return (error as RpcError).status;
    };
    const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
    const dir = mkdtempSync(join(tmpdir(), 'tenantd-stage-'));
    try {
      const file = join(dir, 'db.sqlite');
      const db = new Database(file);
      db.exec('CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2)');
      db.close();
      const bytes = readFileSync(file);
      // Not a database, or not the bytes the header promised: nothing is staged.
      const garbage = Buffer.alloc(8192, 7);
      expect((await refused({ stage: true, sha256: sha256(garbage), size: String(garbage.length) }, [{ chunk: garbage }])).code).toBe(status.INVALID_ARGUMENT);
      expect((await refused({ stage: true, sha256: sha256(garbage), size: String(bytes.length) }, [{ chunk: bytes }])).reason).toBe('CHECKSUM_MISMATCH');
      // A phase 2 for a copy the node does not hold.
      const unknown = await refused({ epoch: '99', base: 'no-such-copy', sha256: sha256(Buffer.alloc(0)), size: String(bytes.length) }, []);
      expect([unknown.code, unknown.reason]).toEqual([status.FAILED_PRECONDITION, 'STAGE_NOT_FOUND']);
      const staged = (await send({ stage: true, sha256: sha256(bytes), size: String(bytes.length) }, [{ chunk: bytes }])).staged as string;
      expect(staged).toMatch(/^[0-9a-f-]{36}$/);
      // A patch past the database's end is refused, and the staged copy is spent.
      const outside = await refused({ epoch: '99', base: staged, sha256: sha256(Buffer.alloc(0)), size: String(bytes.length) }, [
        { patch: { offset: String(bytes.length), data: Buffer.alloc(4096) } },
      ]);
      expect([outside.code, outside.reason]).toEqual([status.INVALID_ARGUMENT, 'INVALID_ARGUMENT']);
      expect((await refused({ epoch: '99', base: staged, sha256: sha256(Buffer.alloc(0)), size: String(bytes.length) }, [])).reason).toBe('STAGE_NOT_FOUND');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(readdirSync(join(target.dataDir, 'tmp'))).toEqual([]);
  }, 60_000);

  it('sets aside a copy of a tenant that another live node owns once the grace period has passed, and nothing else', async () => {
    const tenantId = 'left-behind';
    const from = await owner(tenantId);
    const stray = cluster.nodes.find((n) => n.id !== from && n.child.exitCode === null && n.child.signalCode === null)!;
    // A copy installed on a node that does not own it, never flipped to: what a move leaves
    // when its target installed the copy and the flip then failed, or a source restarted in its grace period.
    const dir = mkdtempSync(join(tmpdir(), 'tenantd-orphan-'));
    let bytes: Buffer;
    try {
      const db = new Database(join(dir, 'db.sqlite'));
      db.exec('CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (42)');
      db.close();
      bytes = readFileSync(join(dir, 'db.sqlite'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const now = Date.now();
    const record = { tenantId, displayName: '', labels: {}, plan: 'free', quotas: emptyOverrides(), state: 'ACTIVE', createTime: now, updateTime: now, etag: '1', schemaVersion: 0 };
    const header = { catalog_json: JSON.stringify({ record, keys: [] }), epoch: '1000', sha256: createHash('sha256').update(bytes).digest('hex'), size: String(bytes.length) };
    await stray.client.clientStream('ClusterService', 'ReceiveTenant', [{ header }, { chunk: bytes }], { key: cluster.adminKey });
    expect(cluster.homes(tenantId)).toEqual([stray.id]);
    const own = TENANTS.filter((id) => cluster.homes(id).includes(stray.id)).slice(0, 30);
    const before = own.map((id) => statSync(join(stray.dataDir, 'tenants', id, 'db.sqlite'), { bigint: true }));
    await waitFor('the stray copy to be set aside', () => !cluster.homes(tenantId).includes(stray.id), 30_000);
    const aside = readdirSync(join(stray.dataDir, 'orphans')).filter((name) => name.startsWith(`${tenantId}-`));
    expect(aside).toHaveLength(1);
    // Set aside, not deleted: the bytes are all there.
    const kept = new Database(join(stray.dataDir, 'orphans', aside[0]!, 'db.sqlite'), { readonly: true });
    expect(kept.prepare('SELECT v FROM t').pluck().get()).toBe(42);
    kept.close();
    // The node's own tenants are not touched.
    own.forEach((id, i) => {
      const after = statSync(join(stray.dataDir, 'tenants', id, 'db.sqlite'), { bigint: true });
      expect([after.ino, after.mtimeNs]).toEqual([before[i]!.ino, before[i]!.mtimeNs]);
    });
  }, 60_000);

  it('adds a fourth node: only the slots it is given move, and no other tenant’s file is touched', async () => {
    const before = new Map<string, { home: string; ino: number; mtimeMs: number }>();
    for (const tenantId of TENANTS) {
      const [home] = cluster.homes(tenantId);
      const stat = statSync(join(cluster.node(home!).dataDir, 'tenants', tenantId, 'db.sqlite'));
      before.set(tenantId, { home: home!, ino: stat.ino, mtimeMs: stat.mtimeMs });
    }
    await cluster.startNode('n4');
    const rebalanced = await cluster.cli(['rebalance', '--parallelism', '4'], `127.0.0.1:${cluster.live().port}`);
    expect(rebalanced.code, rebalanced.err).toBe(0);
    const placement = await cluster.live().client.call('ClusterService', 'GetPlacement', {}, { key: cluster.adminKey });
    const n4 = placement.nodes.find((n: { node_id: string }) => n.node_id === 'n4');
    expect(n4.slots).toBeGreaterThanOrEqual(4095);
    let movedCount = 0;
    for (const tenantId of TENANTS) {
      const now = await owner(tenantId);
      const was = before.get(tenantId)!;
      if (now === was.home) {
        // Untouched: same file, never rewritten.
        const stat = statSync(join(cluster.node(now).dataDir, 'tenants', tenantId, 'db.sqlite'));
        expect({ ino: stat.ino, mtimeMs: stat.mtimeMs }).toEqual({ ino: was.ino, mtimeMs: was.mtimeMs });
      } else {
        expect(now).toBe('n4');
        movedCount += 1;
      }
    }
    expect(movedCount).toBeGreaterThan(0);
    expect(movedCount).toBeLessThan(TENANTS.length / 2);
    // The moved tenants answer through the proxy once sync-proxy has the new map (or one hop before it).
    for (const tenantId of TENANTS.slice(0, 30)) await retrying(() => count(cluster.proxy, tenantId));
  }, 180_000);

  it('fences a zombie: a node stopped past its lease, whose slot was given away meanwhile, writes nothing more for it', async () => {
    const zombie = cluster.node('n2');
    const victim = TENANTS.find((id) => cluster.homes(id)[0] === 'n2' && !keysMovedAlone.has(id))!;
    // Whether anything was written to its copy: the database and its WAL, as the OS sees them.
    const dir = join(zombie.dataDir, 'tenants', victim);
    const written = () =>
      readdirSync(dir)
        .filter((f) => f.startsWith('db.sqlite'))
        .map((f) => {
          const stat = statSync(join(dir, f));
          return `${f}:${stat.size}:${stat.mtimeMs}`;
        })
        .sort()
        .join(' ');
    const before = await count(zombie.client, victim);
    const filesBefore = written();
    cluster.pause(zombie);
    const etcd = new Etcd3({ hosts: cluster.etcdUrl });
    const slotKey = `/tenantd/slots/${slotOf(victim)}`;
    let old: { node: string; epoch: number };
    try {
      await waitFor('n2 to leave the registry', async () => {
        const p = await cluster.live().client.call('ClusterService', 'GetPlacement', {}, { key: cluster.adminKey });
        return !p.nodes.some((n: { node_id: string }) => n.node_id === 'n2');
      }, 20_000);
      // An operator gives the dead node's slot to n1 (no data can be copied from a stopped node).
      old = JSON.parse((await etcd.get(slotKey).string())!) as { node: string; epoch: number };
      await etcd.put(slotKey).value(JSON.stringify({ node: 'n1', epoch: old.epoch + 1 }));
    } finally {
      // Whatever happened, the node runs again: a stopped node would hold every later test's calls.
      cluster.resume(zombie);
    }
    // Straight to the zombie, at once and for a while: none of these may land in its copy.
    for (let i = 0; i < 20; i++) {
      await zombie.client
        .call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (7)' }, { key: keys.get(victim)!, tenantId: victim })
        .catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(written()).toBe(filesBefore);
    // It rejoins with a fresh lease and follows the new placement: the call is passed to n1.
    await waitFor('n2 to rejoin', async () => {
      const p = await cluster.live().client.call('ClusterService', 'GetPlacement', {}, { key: cluster.adminKey });
      return p.nodes.some((n: { node_id: string }) => n.node_id === 'n2');
    }, 20_000);
    const forwarded = await zombie.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (8)' }, { key: keys.get(victim)!, tenantId: victim });
    // n1 never had this tenant's keys: the owner, not the zombie, answered.
    expect(forwarded.code).toBe(status.UNAUTHENTICATED);
    expect(written()).toBe(filesBefore);
    // Give the slot back for the tests that follow.
    await etcd.put(slotKey).value(JSON.stringify({ node: 'n2', epoch: old.epoch + 2 }));
    etcd.close();
    await waitFor('n2 to serve its slot again', async () => (await count(zombie.client, victim)) === before, 20_000);
  }, 90_000);

  it('registers a node again when its key goes while its lease lives (a late put of an abandoned lease, then revoked)', async () => {
    const node = cluster.nodes.find((n) => n.child.exitCode === null && n.child.signalCode === null && n.id !== cluster.live().id)!;
    const listed = async () => {
      const p = await cluster.live().client.call('ClusterService', 'GetPlacement', {}, { key: cluster.adminKey });
      return p.nodes.some((n: { node_id: string }) => n.node_id === node.id);
    };
    await waitFor(`${node.id} to be listed`, listed, 20_000);
    const etcd = new Etcd3({ hosts: cluster.etcdUrl });
    try {
      await etcd.delete().key(`/tenantd/nodes/${node.id}`);
      await waitFor(`${node.id} to leave the listing`, async () => !(await listed()), 10_000);
      // Its lease is renewed all along: only the node noticing its key is gone brings it back.
      await waitFor(`${node.id} to register again`, listed, 20_000);
    } finally {
      etcd.close();
    }
  }, 60_000);

  it('keeps serving from cached placement while etcd restarts, and moves again afterwards', async () => {
    const tenantId = TENANTS[11]!;
    await cluster.stopEtcd();
    // Served from the placement each node cached, for as long as its lease may still be alive.
    for (let i = 0; i < 20; i++) {
      await cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (9)' }, { key: keys.get(tenantId)!, tenantId });
    }
    await cluster.startEtcd();
    // Moves resume once every node holds a lease again: one that lapsed while etcd was down
    // (on a loaded host the keep-alive may miss its TTL) is granted anew, and until then the
    // others see that node as not live (a move from it is UNAVAILABLE OWNER_DOWN).
    const running = cluster.nodes.filter((n) => n.child.exitCode === null && n.child.signalCode === null);
    const seen = new Map<string, string>();
    try {
      await waitFor('every node to be live again after the etcd restart', async () => {
        for (const node of running) {
          const placement = await node.client.call('ClusterService', 'GetPlacement', {}, { key: cluster.adminKey }).catch((e: unknown) => String(e));
          seen.set(node.id, typeof placement === 'string' ? placement : placement.nodes.map((n: { node_id: string }) => n.node_id).join(','));
          if (typeof placement === 'string' || placement.nodes.length < running.length) return false;
        }
        return true;
      });
    } catch (error) {
      const logs = running.map((n) => `${n.id} sees [${seen.get(n.id)}]; its log ends:\n${n.log.join('').slice(-1500)}`).join('\n');
      throw new Error(`${(error as Error).message}\n${logs}`);
    }
    const from = await retrying(() => owner(tenantId));
    const to = cluster.nodes.map((n) => n.id).find((id) => id !== from)!;
    keysMovedAlone.add(tenantId);
    const moved = await cluster.cli(['move', tenantId, to]);
    expect(moved.code, moved.err).toBe(0);
    expect(await owner(tenantId)).toBe(to);
    expect(await retrying(() => count(cluster.proxy, tenantId))).toBeGreaterThanOrEqual(20);
  }, 90_000);

  it('loses nothing when the move’s target is killed in the middle', async () => {
    const { tenantId, key, rowsBefore, from, target } = await moveCandidate(TENANTS[23]!);
    const arrived = copyArrives(target.dataDir);
    const move = cluster.cli(['move', tenantId, target.id]);
    await arrived;
    target.child.kill('SIGKILL');
    const result = await move;
    expect(result.code).toBe(1);
    expect(await owner(tenantId)).toBe(from);
    expect(await retrying(() => count(cluster.proxy, tenantId))).toBe(rowsBefore);
    await cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (6)' }, { key, tenantId });
    expect(await count(cluster.proxy, tenantId)).toBe(rowsBefore + 1);
    // The target comes back with its own tenants; the copy it was sent is not its to serve.
    await cluster.restartNode(target.id);
    expect(await retrying(() => count(cluster.proxy, tenantId))).toBe(rowsBefore + 1);
  }, 90_000);

  it('loses nothing when the move’s source is killed in the middle', async () => {
    const { tenantId, key, rowsBefore, from, target } = await moveCandidate(TENANTS[31]!);
    const arrived = copyArrives(target.dataDir);
    const move = cluster.cli(['move', tenantId, target.id], `127.0.0.1:${target.port}`);
    await arrived;
    cluster.node(from).child.kill('SIGKILL');
    await move;
    await cluster.restartNode(from);
    // Whichever side of the flip the kill fell on, the owner has every acknowledged row.
    await nothingLost(tenantId, key, rowsBefore);
  }, 120_000);

  it('loses nothing when the move’s target dies after staging its copy, during the fenced phase 2', async () => {
    const { tenantId, key, rowsBefore, from, target } = await moveCandidate(TENANTS[41]!);
    // Frozen the moment its staged copy is reported (the source then fences, snapshots and
    // sends the delta, which the frozen target never answers), then killed.
    let frozen = false;
    const move = cluster.cli(['move', tenantId, target.id], undefined, (out) => {
      if (!frozen && out.includes('STAGED')) {
        frozen = true;
        target.child.kill('SIGSTOP');
        setTimeout(() => target.child.kill('SIGKILL'), 500);
      }
    });
    const result = await move;
    expect(result.out).toMatch(/STAGED/);
    await cluster.restartNode(target.id);
    // Rolled back to the source (or, had the delta won the race with SIGSTOP, moved whole): every row is there.
    await nothingLost(tenantId, key, rowsBefore);
    if (result.code !== 0) expect(await owner(tenantId)).toBe(from);
  }, 120_000);

  it('loses nothing when the move’s source is killed once it has fenced the tenant for phase 2', async () => {
    const { tenantId, key, rowsBefore, from, target } = await moveCandidate(TENANTS[47]!);
    let killed = false;
    const move = cluster.cli(['move', tenantId, target.id], `127.0.0.1:${target.port}`, (out) => {
      if (!killed && out.includes('FENCED')) {
        killed = true;
        cluster.node(from).child.kill('SIGKILL');
      }
    });
    const result = await move;
    expect(result.out).toMatch(/STAGED/);
    await cluster.restartNode(from);
    // Whichever side of the flip the kill fell on, the owner has every acknowledged row.
    await nothingLost(tenantId, key, rowsBefore);
  }, 120_000);

  it('drains a node: every slot and tenant moves off it, and every tenant still answers', async () => {
    const killed = cluster.nodes.filter((n) => n.child.exitCode !== null || n.child.signalCode !== null).map((n) => n.id);
    for (const id of killed) await cluster.restartNode(id);
    const drained = await cluster.cli(['drain', 'n4', '--parallelism', '4']);
    expect(drained.code, drained.err).toBe(0);
    const placement = await cluster.live().client.call('ClusterService', 'GetPlacement', {}, { key: cluster.adminKey });
    // n4 owns no slot: listed with none, or not listed at all (a node just restarted by this test,
    // asked under load, may not have seen n4's membership yet; it has seen the slots).
    expect(placement.nodes.find((n: { node_id: string }) => n.node_id === 'n4')?.slots ?? 0).toBe(0);
    await waitFor('n4 to drop its old copies', () => TENANTS.every((id) => !cluster.homes(id).includes('n4')), 20_000);
    for (const tenantId of TENANTS) {
      expect(await owner(tenantId)).not.toBe('n4');
      // HAProxy answers 503 (UNAVAILABLE) for a node it has not seen healthy again yet since the
      // restarts above (2 checks 2 s apart; longer on a loaded host): a client retries that.
      await retrying(() => count(cluster.proxy, tenantId), 60);
    }
  }, 180_000);
});
