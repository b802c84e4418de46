/**
 * npm run bench:cluster — the cluster on loopback (etcd, three nodes,
 * HAProxy + sync-proxy, as in docker-compose.yml) measured three ways:
 *
 *   1. the write pause of an online move, by tenant size (1, 10, 50 MB):
 *      a writer at ~200 writes/s through HAProxy, the largest gap between
 *      its acknowledgements, and what the source reports (fence → flip);
 *   2. point reads through HAProxy against straight to the owner;
 *   3. the cost of a forwarded hop: the same reads sent to a node that
 *      does not own the tenant.
 *
 * Flags: --sizes 1,10,50 (MB)  --seconds 5 (per read round)  --concurrency 32
 */
import { parseArgs } from 'node:util';
import { LoopbackCluster, waitFor } from '../test/support/cluster.ts';
import type { TestClient } from '../test/support/server.ts';

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '1,10,50' },
    seconds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '32' },
  },
});
const sizes = values.sizes.split(',').map(Number);
const seconds = Number(values.seconds);
const concurrency = Number(values.concurrency);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function readRound(client: TestClient, tenants: { id: string; key: string }[]): Promise<{ rate: number; p50: number; p99: number }> {
  const latencies: number[] = [];
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, worker) => {
      for (let i = worker; Date.now() < end; i += concurrency) {
        const t = tenants[i % tenants.length]!;
        const started = performance.now();
        await client.call('SqlService', 'Execute', { sql: 'SELECT v FROM t WHERE rowid = 1' }, { key: t.key, tenantId: t.id });
        latencies.push(performance.now() - started);
      }
    }),
  );
  latencies.sort((a, b) => a - b);
  return { rate: latencies.length / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

async function main(): Promise<void> {
  const cluster = new LoopbackCluster(10);
  try {
    await cluster.startEtcd();
    await Promise.all(['n1', 'n2', 'n3'].map((id) => cluster.startNode(id)));
    const init = await cluster.cli(['rebalance']);
    if (init.code !== 0) throw new Error(init.err);
    await cluster.startProxy();
    await waitFor('the proxy', async () => {
      await cluster.proxy.call('grpc.health.v1.Health', 'Check', { service: '' }, { deadlineMs: 1000 });
      return true;
    });
    const admin = cluster.adminKey;
    const owner = async (id: string) =>
      (await cluster.nodes[0]!.client.call('ClusterService', 'GetPlacement', { tenant_id: id }, { key: admin })).owner as string;
    const create = async (id: string) => {
      const created = await cluster.proxy.call('TenantService', 'CreateTenant', { tenant_id: id, tenant: { plan: 'enterprise' } }, { key: admin, tenantId: id });
      const key = created.api_key.key as string;
      await cluster.proxy.call('SqlService', 'Execute', { sql: 'CREATE TABLE t (v INTEGER, pad BLOB)' }, { key, tenantId: id });
      await cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO t VALUES (1, NULL)' }, { key, tenantId: id });
      return key;
    };

    console.log(`tenantd bench:cluster — ${new Date().toISOString()}, node ${process.version}, ${(await import('node:os')).cpus().length} cores`);
    console.log('\n1. move pause by tenant size (writer ~200 writes/s through HAProxy)');
    console.log('size_mb  max_ack_gap_ms  reported_write_pause_ms  stages');
    for (const mb of sizes) {
      const id = `move-${mb}mb`;
      const key = await create(id);
      for (let done = 0; done < mb; done += 4) {
        const chunk = Math.min(4, mb - done);
        await cluster.proxy.call('SqlService', 'Execute', { sql: `INSERT INTO t VALUES (2, randomblob(${chunk * 1024 * 1024}))` }, { key, tenantId: id, deadlineMs: 60_000 });
      }
      const from = await owner(id);
      const to = cluster.nodes.find((n) => n.id !== from)!.id;
      const acks: number[] = [];
      let writing = true;
      const writer = (async () => {
        while (writing) {
          const started = Date.now();
          try {
            await cluster.proxy.call('SqlService', 'Execute', { sql: 'INSERT INTO t (v) VALUES (3)' }, { key, tenantId: id });
            acks.push(Date.now());
          } catch {
            // retried by the next iteration
          }
          await new Promise((r) => setTimeout(r, Math.max(0, 5 - (Date.now() - started))));
        }
      })();
      await new Promise((r) => setTimeout(r, 500));
      const moved = await cluster.cli(['move', id, to]);
      await new Promise((r) => setTimeout(r, 500));
      writing = false;
      await writer;
      const gaps = acks.slice(1).map((t, i) => t - acks[i]!);
      const flipped = /FLIPPED .*writes paused (\d+) ms\s+(.*)/.exec(moved.out);
      console.log(`${String(mb).padStart(7)}  ${String(Math.max(...gaps)).padStart(14)}  ${String(flipped?.[1] ?? 'failed').padStart(23)}  ${flipped?.[2] ?? moved.err.trim()}`);
      // Two-phase moves: what phase 1 copied unfenced, and what phase 2 sent while fenced.
      const staged = /STAGED\s+(\d+) bytes\s+(.*)/.exec(moved.out);
      const sent = /INSTALLED .*?(sent .*)/.exec(moved.out);
      console.log(`${' '.repeat(9)}phase 1: ${staged ? `${staged[1]} bytes ${staged[2]}` : 'none (one-phase move)'}; ${sent?.[1] ?? ''}`);
    }

    console.log(`\n2-3. point reads, ${concurrency} in flight, ${seconds} s per round, 30 tenants`);
    const tenants: { id: string; key: string }[] = [];
    for (let i = 0; i < 30; i++) tenants.push({ id: `read-${i}`, key: await create(`read-${i}`) });
    // One owner for all of them, so "direct" and "one hop away" are well defined.
    const home = await owner(tenants[0]!.id);
    for (const t of tenants) {
      if ((await owner(t.id)) !== home) {
        const moved = await cluster.cli(['move', t.id, home]);
        if (moved.code !== 0) throw new Error(moved.err);
      }
    }
    const direct = cluster.node(home).client;
    const other = cluster.nodes.find((n) => n.id !== home)!.client;
    const rounds: Record<string, { rate: number; p50: number; p99: number }> = {};
    for (const [name, client] of [['direct to owner', direct], ['through HAProxy', cluster.proxy], ['one forwarded hop', other], ['direct to owner (again)', direct]] as const) {
      rounds[name] = await readRound(client, tenants);
      const r = rounds[name]!;
      console.log(`${name.padEnd(24)} ${r.rate.toFixed(0).padStart(6)} calls/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms`);
    }
    const base = (rounds['direct to owner']!.p50 + rounds['direct to owner (again)']!.p50) / 2;
    console.log(`\nhop cost (p50): ${(rounds['one forwarded hop']!.p50 - base).toFixed(2)} ms; HAProxy cost (p50): ${(rounds['through HAProxy']!.p50 - base).toFixed(2)} ms`);
  } finally {
    await cluster.stop();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
