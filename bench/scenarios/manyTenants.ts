/**
 * many-tenants: point reads round-robined over 1, 100 and 10,000 active
 * tenants on one server. The 10,000 are created first through CreateTenant
 * (32 in flight; the seeding time is its own row), and `--max-open-dbs` is
 * below the tenant count so the shards' LRU of open databases is exercised:
 * with a strict round robin over more tenants than fit, every call finds its
 * database closed and opens it, closing the least recently used one.
 */
import { runOne } from './clients.ts';
import { bearer, clientNote, cpuNote, EXECUTE, pointReadData, rowOf, seconds, serverFlags, SHARDS, startTenantd, type Context, type Scenario } from './common.ts';
import { seedTenants } from './seed.ts';

const COUNTS = [1, 100, 10_000];
const ROWS = 100;
const CONCURRENCY = 64;
/** Per shard: 2 shards hold 2,000 open databases, a fifth of the 10,000. */
const MAX_OPEN_DBS = 1000;
const LANES = 32;

export const manyTenants: Scenario = {
  name: 'many-tenants',
  description: `point reads round-robin over ${COUNTS.join(' / ')} tenants, --max-open-dbs ${MAX_OPEN_DBS}`,
  async run(ctx: Context) {
    const server = await startTenantd({ sync: 'normal', maxOpenDbs: MAX_OPEN_DBS });
    try {
      const total = Math.max(...COUNTS);
      const seedBefore = await server.child.sample();
      const seeded = await seedTenants({
        host: server.host,
        def: ctx.def,
        adminKey: server.adminKey,
        count: total,
        prefix: 'mt',
        table: { accounts: ROWS },
        lanes: LANES,
        onProgress: (n) => {
          if (process.stderr.isTTY) process.stderr.write(`\r  many-tenants: seeding ${n}/${total}${n === total ? '\n' : ''}`);
          else if (n % 2500 === 0) ctx.log(`many-tenants: seeded ${n}/${total}`);
        },
      });
      const seedCpu = cpuNote(seedBefore, await server.child.sample(), total * 2);
      ctx.log(`many-tenants: ${total} tenants created and filled in ${seconds(seeded.ms)} (${(total / (seeded.ms / 1000)).toFixed(0)} tenants/s)`);
      ctx.addRow({
        scenario: `many-tenants seeding (${total})`,
        rps: (total * 2) / (seeded.ms / 1000),
        p50Ns: 0,
        p99Ns: 0,
        errors: 0,
        count: total * 2,
        kind: 'setup',
        notes:
          `${total} x (CreateTenant + Batch[CREATE TABLE, INSERT ${ROWS} rows]), ${LANES} tenants in flight: ${seconds(seeded.ms)}, ` +
          `${(total / (seeded.ms / 1000)).toFixed(0)} tenants/s; ${seedCpu.replace('/call', '/API call')}`,
      });
      for (const n of COUNTS) {
        // Spread over the whole range, so the small sets are not all on one end of the LRU.
        const step = Math.floor(total / n);
        const keys = Array.from({ length: n }, (_, i) => bearer(seeded.tenants[i * step]!.key));
        let before = await server.child.sample();
        const name = `many-tenants-${n}`;
        const { report, clientCpuMs } = await runOne(
          {
            call: EXECUTE,
            host: server.host,
            concurrency: CONCURRENCY,
            duration: ctx.durationMs,
            warmup: `${ctx.warmupMs}ms`,
            data: pointReadData(ROWS),
            metadata: keys,
            name,
          },
          async () => (before = await server.child.sample()),
        );
        const cpu = `${cpuNote(before, await server.child.sample(), report.count)}, ${clientNote(clientCpuMs, report.count)}`;
        const fits = n <= MAX_OPEN_DBS * SHARDS ? 'all open' : `${MAX_OPEN_DBS * SHARDS} of ${n} fit the LRU: nearly every call opens a database`;
        const file = ctx.saveReport(name, report);
        ctx.addRow(rowOf(name, report, `${n} tenant(s) round-robin, -c ${CONCURRENCY}, ${fits}, ${serverFlags(server.args)}; ${cpu}; ${file}`));
      }
    } finally {
      await server.stop();
    }
  },
};
