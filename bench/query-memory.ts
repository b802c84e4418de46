/**
 * npm run bench:query-memory [-- --calls 64 --mb 10 --tenants 8 --after 30s --malloc fixed|default]
 *
 * What results in flight cost the server: `--calls` concurrent Queries of
 * about `--mb` MB each (1 KiB rows: an integer, a 1 KiB blob), spread over
 * `--tenants` tenants, every client reading as fast as it can. tenantd runs
 * compiled, under plain node, in a child process (as `npm start` runs it);
 * its RSS is sampled every 50 ms.
 *
 * Prints the RSS at start, its peak during the load, the growth against the
 * bytes of the results in flight (goal: <= 2x), and the RSS `--after` the
 * load (goal: within 20 % of the start).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition } from '@grpc/proto-loader';
import { packageDefinition } from '../src/protos.ts';
import type { BenchServerArgs } from './lib/benchConfig.ts';
import { buildCompiled, startChild } from './lib/child.ts';
import { parseDuration } from './lib/loadgen.ts';
import { createTenants } from './lib/tenants.ts';

const { values: flags } = parseArgs({
  options: {
    calls: { type: 'string', default: '64' },
    mb: { type: 'string', default: '10' },
    tenants: { type: 'string', default: '8' },
    after: { type: 'string', default: '30s' },
    // 'fixed': glibc's thresholds as the Dockerfile sets them; 'default': glibc's own, dynamic ones.
    malloc: { type: 'string', default: 'fixed' },
  },
  strict: true,
});
const calls = Number(flags.calls);
const rowsPerResult = Math.round((Number(flags.mb) * 1_000_000) / 1024);
const tenantCount = Number(flags.tenants);
const afterMs = parseDuration(flags.after!, '--after');
const QUERY = `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${rowsPerResult}) SELECT x, randomblob(1024) FROM c`;

const line = (s = '') => process.stdout.write(`${s}\n`);
const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
const def = packageDefinition();

line(`machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} at start`);
if (flags.malloc === 'fixed') {
  // Inherited by the server child: see the Dockerfile.
  process.env.MALLOC_MMAP_THRESHOLD_ ??= '131072';
  process.env.MALLOC_TRIM_THRESHOLD_ ??= '131072';
} else if (flags.malloc !== 'default') throw new Error(`--malloc is fixed or default, not ${flags.malloc}`);
line(`glibc malloc thresholds: ${flags.malloc === 'fixed' ? `fixed (MALLOC_MMAP_THRESHOLD_=${process.env.MALLOC_MMAP_THRESHOLD_}, MALLOC_TRIM_THRESHOLD_=${process.env.MALLOC_TRIM_THRESHOLD_}, as the Dockerfile sets them)` : "glibc's dynamic defaults"}`);
buildCompiled();
const serverArgs: BenchServerArgs = { dataDir: mkdtempSync(join(tmpdir(), 'tenantd-qmem-')), shards: availableParallelism(), sync: 'normal', maxOpenDbs: 1000 };
const child = await startChild(new URL('./lib/serveTenantd.ts', import.meta.url), serverArgs, [], true);
try {
  const rss = async () => Number((await child.sample()).counters?.rssBytes ?? 0);
  /** The main thread's share: V8 heap and memory outside it (Buffers); the rest of RSS is the workers and native. */
  const parts = async () => {
    const c = (await child.sample()).counters ?? {};
    return `main-thread heap ${mib(c.heapTotalBytes ?? 0)}, external ${mib(c.externalBytes ?? 0)}`;
  };
  const tenants = await createTenants(`127.0.0.1:${child.ready.port}`, def, String(child.ready.adminKey), tenantCount, 1);
  const client = new grpc.Client(`127.0.0.1:${child.ready.port}`, grpc.credentials.createInsecure());
  const query = (def['tenantd.v1.SqlService'] as Record<string, MethodDefinition<object, object>>).Query!;
  /** One Query read to its end; returns its bytes on the wire (messages, without gRPC framing). */
  const run = (i: number) =>
    new Promise<number>((resolve, reject) => {
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${tenants[i % tenantCount]!.key}`);
      let bytes = 0;
      // The client keeps the bytes, not decoded rows: its own memory and CPU are not the subject.
      const stream = client.makeServerStreamRequest(query.path, query.requestSerialize as (v: object) => Buffer, (b: Buffer) => b, { sql: QUERY }, md);
      stream.on('data', (b: Buffer) => (bytes += b.length));
      stream.on('error', reject);
      stream.on('end', () => resolve(bytes));
    });
  // Warm: one query per tenant, so databases, statements and code are ready.
  await Promise.all(tenants.map((_, i) => run(i)));
  await new Promise((r) => setTimeout(r, 2_000));
  const start = await rss();
  line(`at start: RSS ${mib(start)}, ${await parts()}`);
  let peak = start;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, await rss());
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const t0 = performance.now();
  const sizes = await Promise.all(Array.from({ length: calls }, (_, i) => run(i)));
  const seconds = (performance.now() - t0) / 1000;
  sampling = false;
  await sampler;
  const inFlight = sizes.reduce((a, b) => a + b, 0);
  line(`load: ${calls} concurrent Queries of ${mib(sizes[0]!)} each (${rowsPerResult} rows), ${tenantCount} tenants, ${mib(inFlight)} in all, read in ${seconds.toFixed(1)} s`);
  const growth = peak - start;
  line(`RSS: ${mib(start)} at start, peak ${mib(peak)} during the load: growth ${mib(growth)} = ${(growth / inFlight).toFixed(2)}x the bytes in flight (goal <= 2x: ${growth <= 2 * inFlight ? 'met' : 'MISSED'})`);
  await new Promise((r) => setTimeout(r, afterMs));
  const after = await rss();
  line(`after: ${await parts()}`);
  const drift = (after - start) / start;
  line(`RSS ${afterMs / 1000} s after the load: ${mib(after)}, ${(drift * 100).toFixed(0)} % from the start (goal within 20 %: ${Math.abs(drift) <= 0.2 ? 'met' : 'MISSED'})`);
  client.close();
} finally {
  await child.stop();
  rmSync(serverArgs.dataDir, { recursive: true, force: true });
}
