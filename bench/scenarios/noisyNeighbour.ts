/**
 * noisy-neighbour: 9 quiet tenants at R calls/s each and one noisy tenant at
 * 10 R, point reads, all loads concurrent (the quiet ones in one client
 * process, the noisy one in another). Two phases on the same server: the
 * quiet tenants alone, then with the noisy one. Compares the quiet tenants'
 * p99, overall and split by whether they share the noisy tenant's shard.
 * Every quota is unlimited (plan `bench`): this measures isolation by
 * scheduling alone, not by tenantd's rate limits.
 */
import type { GhzReport } from '../lib/report.ts';
import { shardOf } from '../../src/routing/shardRouter.ts';
import { mergeReports, runGroups, withoutDetails, type LoadSpec } from './clients.ts';
import { bearer, clientNote, cpuNote, EXECUTE, fmt, percentile, pointReadData, rowOf, serverFlags, SHARDS, startTenantd, type Context, type Scenario } from './common.ts';
import { seedTenants, type SeededTenant } from './seed.ts';

const QUIET = 9;
const ROWS = 1000;
/** Calls/s of each quiet tenant; the noisy one sends 10x. */
export const QUIET_RPS = 100;
const FACTOR = 10;

function spec(ctx: Context, host: string, tenant: SeededTenant, rps: number, concurrency: number): LoadSpec {
  return {
    call: EXECUTE,
    host,
    concurrency,
    rps,
    duration: ctx.durationMs,
    // Throttled loads warm the client and server JIT slowly: 1 s leaves the first
    // few hundred ms of the measured phase slow (p99 ~50 ms instead of ~15 ms).
    warmup: `${Math.max(3000, ctx.warmupMs)}ms`,
    data: pointReadData(ROWS),
    metadata: bearer(tenant.key),
    name: tenant.tenantId,
  };
}

export const noisyNeighbour: Scenario = {
  name: 'noisy-neighbour',
  description: `${QUIET} quiet tenants at ${QUIET_RPS}/s each, one at ${FACTOR}x, point reads; quiet p99 with vs without the noisy one`,
  async run(ctx: Context) {
    const server = await startTenantd({ sync: 'normal' });
    try {
      const { tenants } = await seedTenants({ host: server.host, def: ctx.def, adminKey: server.adminKey, count: QUIET + 1, prefix: 'nn', table: { accounts: ROWS } });
      const [noisy, ...quiet] = tenants as [SeededTenant, ...SeededTenant[]];
      const noisyShard = shardOf(noisy.tenantId, SHARDS);
      const sameShard = quiet.map((t) => shardOf(t.tenantId, SHARDS) === noisyShard);
      const quietGroup = quiet.map((t) => spec(ctx, server.host, t, QUIET_RPS, 8));
      const noisyGroup = [spec(ctx, server.host, noisy, QUIET_RPS * FACTOR, 64)];

      const phase = async (withNoisy: boolean) => {
        let before = await server.child.sample();
        const { reports, clientCpuMs } = await runGroups(withNoisy ? [quietGroup, noisyGroup] : [quietGroup], async () => (before = await server.child.sample()));
        const all = reports.flat();
        const calls = all.reduce((n, r) => n + r.count, 0);
        const cpu = `${cpuNote(before, await server.child.sample(), calls)}, ${clientNote(clientCpuMs, calls)}`;
        const quietReports = reports[0]!;
        const onShard = (same: boolean) => {
          const picked = quietReports.filter((_, i) => sameShard[i] === same);
          return picked.length > 0 ? mergeReports(picked, same ? 'same-shard' : 'other-shard') : null;
        };
        return {
          quiet: mergeReports(quietReports, withNoisy ? 'quiet-with-noisy' : 'quiet-alone'),
          same: onShard(true),
          other: onShard(false),
          noisy: withNoisy ? withoutDetails(reports[1]![0]!) : null,
          cpu,
        };
      };
      const alone = await phase(false);
      const mixed = await phase(true);

      const p99 = (r: GhzReport | null) => (r && r.count > 0 ? fmt(percentile(r, 99)) : 'n/a');
      const ratio = percentile(mixed.quiet, 99) / Math.max(1, percentile(alone.quiet, 99));
      const split = (p: typeof alone) => `quiet p99 on the noisy tenant's shard ${p99(p.same)} (${sameShard.filter(Boolean).length} tenants), on the other shard(s) ${p99(p.other)}`;
      ctx.log(`noisy-neighbour: quiet p99 ${fmt(percentile(alone.quiet, 99))} alone -> ${fmt(percentile(mixed.quiet, 99))} with the noisy tenant (${ratio.toFixed(2)}x)`);
      const flags = serverFlags(server.args);
      ctx.addRow(rowOf('noisy-neighbour: quiet, noisy absent', alone.quiet, `${QUIET} tenants x ${QUIET_RPS}/s; ${split(alone)}; ${alone.cpu}; ${ctx.saveReport('noisy-quiet-alone', alone.quiet)}`));
      ctx.addRow(
        rowOf(
          'noisy-neighbour: quiet, noisy present',
          mixed.quiet,
          `quiet p99 ${ratio.toFixed(2)}x of the noisy-absent phase; ${split(mixed)}; ${mixed.cpu}; ${ctx.saveReport('noisy-quiet-with-noisy', mixed.quiet)}`,
        ),
      );
      const n = mixed.noisy!;
      ctx.addRow(
        rowOf(
          'noisy-neighbour: the noisy tenant',
          n,
          `asked for ${QUIET_RPS * FACTOR}/s (-c 64), shard ${noisyShard} of ${SHARDS}, ${flags}; ${ctx.saveReport('noisy-noisy', n)}`,
        ),
      );
    } finally {
      await server.stop();
    }
  },
};
