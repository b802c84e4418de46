/**
 * Load generators in child processes (loadChild.ts), one per group of loads,
 * all measured over the same interval: every group warms up, then all start
 * measuring on one signal. And `mergeReports`, which turns several ghz
 * reports (with details) into one, computed the way ghz computes its own.
 */
import { fork } from 'node:child_process';
import type { LoadOptions } from '../lib/loadgen.ts';
import { buildReport, CODE_NAMES, type GhzReport } from '../lib/report.ts';

/** runLoad's options that travel over IPC (the child loads tenantd's protos itself). */
export type LoadSpec = Omit<LoadOptions, 'packageDefinition' | 'beforeMeasure' | 'details' | 'data' | 'metadata'> & {
  data?: unknown;
  metadata?: Record<string, string> | Record<string, string>[];
};

export type ToLoadChild = { type: 'run'; specs: LoadSpec[] } | { type: 'go' };
export type FromLoadChild = { type: 'warm' } | { type: 'reports'; reports: GhzReport[]; cpuMs: number } | { type: 'error'; message: string };

export interface GroupsRun {
  /** One array of reports per group, in the order of the specs. */
  reports: GhzReport[][];
  /** CPU the load generator processes used while measuring, ms, summed. */
  clientCpuMs: number;
}

/**
 * Runs each group of loads in its own process; `onStart` runs once all are
 * warm, right before they start measuring (e.g. to sample the server's CPU).
 */
export async function runGroups(groups: LoadSpec[][], onStart?: () => Promise<unknown>): Promise<GroupsRun> {
  const children = groups.map(() =>
    fork(new URL('./loadChild.ts', import.meta.url), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
  );
  let warm = 0;
  let clientCpuMs = 0;
  let failed: (error: Error) => void;
  const failure = new Promise<never>((_, reject) => (failed = reject));
  const results = children.map(
    (child, i) =>
      new Promise<GhzReport[]>((resolve) => {
        child.on('message', (message: FromLoadChild) => {
          if (message.type === 'error') failed(new Error(`load group ${i}: ${message.message}`));
          else if (message.type === 'reports') {
            clientCpuMs += message.cpuMs;
            resolve(message.reports);
          }
          else if (message.type === 'warm' && ++warm === children.length) {
            void Promise.resolve(onStart?.()).then(() => {
              for (const c of children) c.send({ type: 'go' } satisfies ToLoadChild);
            }, failed);
          }
        });
        child.once('exit', (code) => failed(new Error(`load group ${i} exited with code ${code}`)));
        child.send({ type: 'run', specs: groups[i]! } satisfies ToLoadChild);
      }),
  );
  try {
    return { reports: await Promise.race([Promise.all(results), failure]), clientCpuMs };
  } finally {
    for (const child of children) if (child.connected) child.disconnect();
  }
}

/** One load in one child process: its report without the details, and the client's CPU. */
export async function runOne(spec: LoadSpec, onStart?: () => Promise<unknown>): Promise<{ report: GhzReport; clientCpuMs: number }> {
  const { reports, clientCpuMs } = await runGroups([[spec]], onStart);
  return { report: withoutDetails(reports[0]![0]!), clientCpuMs };
}

export function withoutDetails(report: GhzReport): GhzReport {
  const { details: _details, ...rest } = report;
  return rest;
}

/**
 * Several reports of loads that ran over the same interval as one report:
 * every call of every load, `total` the longest of theirs, concurrency and
 * connections summed, `options.metadata` the loads' metadata as an array (the
 * round-robin form -m takes). Needs the reports' details.
 */
export function mergeReports(reports: GhzReport[], name: string): GhzReport {
  const count = reports.reduce((n, r) => n + (r.details?.length ?? 0), 0);
  const latencies = new Float64Array(count);
  const codes = new Uint8Array(count);
  const errorDistribution = new Map<string, number>();
  let i = 0;
  for (const report of reports) {
    if (!report.details && report.count > 0) throw new Error('mergeReports needs reports with details');
    for (const d of report.details ?? []) {
      latencies[i] = d.latency;
      codes[i] = Math.max(0, (CODE_NAMES as readonly string[]).indexOf(d.status));
      if (d.error) errorDistribution.set(d.error, (errorDistribution.get(d.error) ?? 0) + 1);
      i++;
    }
  }
  const first = reports[0]!;
  const totalNs = Math.max(...reports.map((r) => r.total));
  const options = {
    ...first.options,
    concurrency: reports.reduce((n, r) => n + (r.options.concurrency ?? 0), 0),
    connections: reports.reduce((n, r) => n + (r.options.connections ?? 0), 0),
    metadata: reports.map((r) => r.options.metadata),
    data: first.options.data,
  };
  const endReason = reports.some((r) => r.endReason === 'timeout') ? 'timeout' : 'normal';
  return buildReport({ count, latencies, codes, errorDistribution, details: null }, totalNs, endReason, options, false, name);
}
