/**
 * insert-full / insert-normal: Execute INSERT of one ~100-byte row, 32
 * concurrent writers spread over 4 tenants (8 writers each, every writer
 * keeps to its tenant), `--sync full` vs `--sync normal`, group commit on
 * (tenantd's default). And the shared driver for writes that batch.ts and
 * groupCommit.ts use.
 */
import type { SyncMode } from '../../src/config.ts';
import { mergeReports, runGroups, type LoadSpec } from './clients.ts';
import {
  bearer,
  clientNote,
  cpuNote,
  errorSummary,
  EXECUTE,
  INSERT_EVENT,
  rowOf,
  serverFlags,
  startTenantd,
  type Context,
  type Row,
  type Scenario,
  type TenantdArgs,
} from './common.ts';
import { seedTenants } from './seed.ts';

export interface WriteLoad {
  name: string;
  server: Partial<Omit<TenantdArgs, 'dataDir'>>;
  tenants: number;
  /** Writers per tenant. */
  writersPerTenant: number;
  /** Client processes the writers of each tenant are split over. */
  processes?: number;
  /** TCP connections per load (one load per tenant and process). Default 1. */
  connections?: number;
  call: string;
  data: unknown;
  /** Rows written per call, for the notes. */
  rowsPerCall: number;
}

/** Seeds the tenants, runs the writers for ctx.durationMs, returns the table row (the report is saved). */
export async function runWrites(ctx: Context, load: WriteLoad): Promise<Row> {
  const server = await startTenantd(load.server);
  try {
    const { tenants } = await seedTenants({ host: server.host, def: ctx.def, adminKey: server.adminKey, count: load.tenants, prefix: 'w', table: 'events' });
    const processes = load.processes ?? 1;
    const groups: LoadSpec[][] = Array.from({ length: processes }, () => []);
    tenants.forEach((tenant, t) => {
      for (let p = 0; p < processes; p++) {
        const concurrency = Math.floor(load.writersPerTenant / processes) + (p < load.writersPerTenant % processes ? 1 : 0);
        if (concurrency === 0) continue;
        groups[(t + p) % processes]!.push({
          call: load.call,
          host: server.host,
          concurrency,
          connections: load.connections ?? 1,
          duration: ctx.durationMs,
          warmup: `${ctx.warmupMs}ms`,
          data: load.data,
          metadata: bearer(tenant.key),
          name: `${load.name}-${tenant.tenantId}-${p}`,
        });
      }
    });
    let before = await server.child.sample();
    const { reports, clientCpuMs } = await runGroups(groups, async () => (before = await server.child.sample()));
    const report = mergeReports(reports.flat(), load.name);
    const after = await server.child.sample();
    const cpu = `${cpuNote(before, after, report.count)}, ${clientNote(clientCpuMs, report.count)}`;
    const commits = (after.counters?.commits ?? 0) - (before.counters?.commits ?? 0);
    const committedCalls = (after.counters?.committedCalls ?? 0) - (before.counters?.committedCalls ?? 0);
    const callsPerCommit = commits > 0 ? committedCalls / commits : undefined;
    const grouping = callsPerCommit === undefined ? '' : `; ${commits} commits for ${committedCalls} calls (${callsPerCommit.toFixed(1)} calls per commit)`;
    const file = ctx.saveReport(load.name, report);
    if (report.count !== report.statusCodeDistribution.OK) ctx.log(`${load.name}: errors: ${errorSummary(report)}`);
    const writers = load.tenants * load.writersPerTenant;
    const rows = load.rowsPerCall > 1 ? `, ${Math.round(report.rps * load.rowsPerCall)} rows/s` : '';
    const spread = load.tenants > 1 ? ` over ${load.tenants} tenants` : ' on one tenant';
    const conns = (load.connections ?? 1) > 1 ? `, ${load.connections} connections per load` : '';
    const clients = (processes > 1 ? `, ${processes} client processes` : '') + conns;
    return {
      ...rowOf(load.name, report, `${writers} writers${spread}${clients}${rows}, ${serverFlags(server.args)}; ${cpu}${grouping}; ${file}`),
      ...(callsPerCommit === undefined ? {} : { callsPerCommit }),
      serverCpuUs: ((after.processMs - before.processMs) * 1000) / report.count,
      clientCpuUs: (clientCpuMs * 1000) / report.count,
    };
  } finally {
    await server.stop();
  }
}

function insert(sync: SyncMode): Scenario {
  const name = `insert-${sync}`;
  return {
    name,
    description: `Execute INSERT, 32 writers over 4 tenants, --sync ${sync}`,
    async run(ctx) {
      ctx.addRow(
        await runWrites(ctx, {
          name,
          server: { sync },
          tenants: 4,
          writersPerTenant: 8,
          call: EXECUTE,
          data: INSERT_EVENT,
          rowsPerCall: 1,
        } satisfies WriteLoad),
      );
    },
  };
}

export const insertFull = insert('full');
export const insertNormal = insert('normal');
