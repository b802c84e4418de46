/**
 * point-read: Execute `SELECT id, name, balance FROM accounts WHERE id = ?`
 * with a random id, over 100 seeded tenants (1,000 rows each), the tenant key
 * round-robined per request, -c 64.
 */
import { runOne } from './clients.ts';
import { bearer, clientNote, cpuNote, EXECUTE, pointReadData, rowOf, seconds, serverFlags, startTenantd, type Context, type Scenario } from './common.ts';
import { seedTenants } from './seed.ts';

const TENANTS = 100;
const ROWS = 1000;
const CONCURRENCY = 64;

export const pointRead: Scenario = {
  name: 'point-read',
  description: `Execute point read by random id, ${TENANTS} tenants x ${ROWS} rows, -c ${CONCURRENCY}`,
  async run(ctx: Context) {
    const server = await startTenantd({ sync: 'normal' });
    try {
      const seeded = await seedTenants({ host: server.host, def: ctx.def, adminKey: server.adminKey, count: TENANTS, prefix: 'pr', table: { accounts: ROWS } });
      ctx.log(`point-read: ${TENANTS} tenants seeded in ${seconds(seeded.ms)}`);
      let before = await server.child.sample();
      const { report, clientCpuMs } = await runOne(
        {
          call: EXECUTE,
          host: server.host,
          concurrency: CONCURRENCY,
          duration: ctx.durationMs,
          warmup: `${ctx.warmupMs}ms`,
          data: pointReadData(ROWS),
          metadata: seeded.tenants.map((t) => bearer(t.key)),
          name: 'point-read',
        },
        async () => (before = await server.child.sample()),
      );
      const cpu = `${cpuNote(before, await server.child.sample(), report.count)}, ${clientNote(clientCpuMs, report.count)}`;
      const file = ctx.saveReport('point-read', report);
      ctx.addRow(rowOf('point-read', report, `${TENANTS} tenants round-robin, -c ${CONCURRENCY}, ${serverFlags(server.args)}; ${cpu}; ${file}`));
    } finally {
      await server.stop();
    }
  },
};
