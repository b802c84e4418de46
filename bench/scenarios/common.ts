/**
 * What every scenario shares: the context run.ts hands it, the row it adds to
 * the Markdown table, tenantd in a child process (with `groupCommit`, which
 * bench/lib/benchConfig.ts does not take), and small formatting helpers.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PackageDefinition } from '@grpc/proto-loader';
import type { BenchServerArgs } from '../lib/benchConfig.ts';
import { startChild, type ChildServer } from '../lib/child.ts';
import { cpuDelta, type CpuSample } from '../lib/procStat.ts';
import { formatNanoUnit, type GhzReport } from '../lib/report.ts';

export interface TenantdArgs extends BenchServerArgs {
  groupCommit: boolean;
}

/** One line of the results table. */
export interface Row {
  scenario: string;
  /** Calls/s over all the phase's loads. */
  rps: number;
  p50Ns: number;
  p99Ns: number;
  /** Calls that did not end OK. */
  errors: number;
  count: number;
  notes: string;
  /** How run.ts renders the figures: ratios (on/off), or no latencies (seeding). Default: a load. */
  kind?: 'load' | 'ratio' | 'setup';
  /** CPU per call of the server (all threads) and of the load generator processes, µs, where measured. */
  serverCpuUs?: number;
  clientCpuUs?: number;
  /** Calls per durable commit in the server during the phase (tenantd writes only). */
  callsPerCommit?: number;
}

export interface Context {
  quick: boolean;
  /** Length of each measured load phase. */
  durationMs: number;
  /** Warm-up before each measured phase (not recorded). */
  warmupMs: number;
  def: PackageDefinition;
  /** Writes the raw ghz report as bench/results/<stamp>-<name>.json; returns the file name. */
  saveReport(name: string, report: GhzReport): string;
  addRow(row: Row): void;
  log(line: string): void;
}

export interface Scenario {
  name: string;
  description: string;
  run(ctx: Context): Promise<void>;
}

export const SHARDS = availableParallelism();
export const EXECUTE = 'tenantd.v1.SqlService.Execute';
export const BATCH = 'tenantd.v1.SqlService.Batch';

export const POINT_READ = 'SELECT id, name, balance FROM accounts WHERE id = ?';
export const ACCOUNTS_DDL = 'CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)';
export const ACCOUNTS_FILL =
  'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) ' +
  "INSERT INTO accounts (id, name, balance) SELECT i, 'account-' || i, i * 100 FROM n";
export const EVENTS_DDL = 'CREATE TABLE events (id INTEGER PRIMARY KEY, writer TEXT NOT NULL, payload TEXT NOT NULL, created INTEGER NOT NULL)';
/** One INSERT; the templates are filled per call by the load generator. */
export const INSERT_EVENT = {
  sql: 'INSERT INTO events (writer, payload, created) VALUES (?, ?, ?)',
  params: [{ text_value: '{{.WorkerID}}' }, { text_value: '{{randomString 64}}' }, { integer_value: '{{.TimestampUnixNano}}' }],
};

/** Point-read request data: a random id in 1..rows. */
export function pointReadData(rows: number): object {
  return { sql: POINT_READ, params: [{ integer_value: `{{randomInt 1 ${rows + 1}}}` }] };
}

export function bearer(key: string): Record<string, string> {
  return { authorization: `Bearer ${key}` };
}

export interface Tenantd {
  child: ChildServer;
  host: string;
  adminKey: string;
  dataDir: string;
  args: TenantdArgs;
  stop(): Promise<void>;
}

/** A real tenantd (startServer, real shard workers) in a child process on a fresh data directory. */
export async function startTenantd(options: Partial<Omit<TenantdArgs, 'dataDir'>> = {}): Promise<Tenantd> {
  const args: TenantdArgs = {
    dataDir: mkdtempSync(join(tmpdir(), 'tenantd-scenario-')),
    shards: SHARDS,
    sync: 'full',
    maxOpenDbs: 1000,
    groupCommit: true,
    ...options,
  };
  try {
    const child = await startChild(new URL('./tenantdChild.ts', import.meta.url), args);
    return {
      child,
      host: `127.0.0.1:${child.ready.port}`,
      adminKey: String(child.ready.adminKey),
      dataDir: args.dataDir,
      args,
      async stop() {
        await child.stop();
        rmSync(args.dataDir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    rmSync(args.dataDir, { recursive: true, force: true });
    throw error;
  }
}

export function serverFlags(args: TenantdArgs): string {
  return `--sync ${args.sync} --group-commit ${args.groupCommit ? 'on' : 'off'} --shards ${args.shards} --max-open-dbs ${args.maxOpenDbs}`;
}

export function percentile(report: GhzReport, p: number): number {
  return report.latencyDistribution?.find((l) => l.percentage === p)?.latency ?? 0;
}

export function errorsOf(report: GhzReport): number {
  return report.count - (report.statusCodeDistribution.OK ?? 0);
}

/** The table row of a report. */
export function rowOf(scenario: string, report: GhzReport, notes: string): Row {
  return { scenario, rps: report.rps, p50Ns: percentile(report, 50), p99Ns: percentile(report, 99), errors: errorsOf(report), count: report.count, notes };
}

/** The server's CPU per call over a phase, in µs, as a note. */
export function cpuNote(before: CpuSample, after: CpuSample, calls: number): string {
  const d = cpuDelta(before, after);
  const main = d.mainThreadMs === null ? '' : `, main thread ${((d.mainThreadMs * 1000) / calls).toFixed(0)}`;
  return `server CPU ${((d.processMs * 1000) / calls).toFixed(0)} µs/call (all threads${main})`;
}

export function clientNote(clientCpuMs: number, calls: number): string {
  return `client CPU ${((clientCpuMs * 1000) / Math.max(1, calls)).toFixed(0)} µs/call`;
}

/** A short text of the errors, for the log. */
export function errorSummary(report: GhzReport): string {
  return Object.entries(report.errorDistribution)
    .map(([text, n]) => `${n}x ${text.length > 140 ? `${text.slice(0, 140)}...` : text}`)
    .join('; ');
}

export function fmt(ns: number): string {
  return formatNanoUnit(Math.round(ns));
}

export function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
