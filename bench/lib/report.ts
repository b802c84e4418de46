/**
 * ghz's report: the JSON shape of ghz's runner.Report (field names, order,
 * nanosecond integer durations, `mark` in seconds) and the statistics computed
 * the way ghz computes them (runner/reporter.go), plus ghz's text renderers.
 */

/** Go's codes.Code String(), indexed by the numeric gRPC code. */
export const CODE_NAMES = [
  'OK',
  'Canceled',
  'Unknown',
  'InvalidArgument',
  'DeadlineExceeded',
  'NotFound',
  'AlreadyExists',
  'PermissionDenied',
  'ResourceExhausted',
  'FailedPrecondition',
  'Aborted',
  'OutOfRange',
  'Unimplemented',
  'Internal',
  'Unavailable',
  'DataLoss',
  'Unauthenticated',
] as const;

export function codeName(code: number): string {
  return CODE_NAMES[code] ?? `Code(${code})`;
}

/** runner.Options as ghz writes it (omitempty fields left out when zero). */
export interface GhzOptions {
  call?: string;
  host?: string;
  proto?: string;
  'import-paths'?: string[];
  insecure: boolean;
  rps?: number;
  'load-schedule': string;
  'load-start': number;
  'load-end': number;
  'load-step': number;
  'load-step-duration': number;
  'load-max-duration': number;
  concurrency?: number;
  'concurrency-schedule': string;
  'concurrency-start': number;
  'concurrency-end': number;
  'concurrency-step': number;
  'concurrency-step-duration': number;
  'concurrency-max-duration': number;
  total?: number;
  connections?: number;
  duration?: number;
  timeout?: number;
  'dial-timeout'?: number;
  data?: unknown;
  binary: boolean;
  metadata?: unknown;
  CPUs: number;
  name?: string;
  skipFirst?: number;
}

export interface LatencyDistribution {
  percentage: number;
  latency: number;
}

export interface Bucket {
  mark: number;
  count: number;
  frequency: number;
}

export interface ResultDetail {
  timestamp: string;
  latency: number;
  error: string;
  status: string;
}

export type EndReason = 'normal' | 'cancel' | 'timeout';

export interface GhzReport {
  date: string;
  name?: string;
  endReason: EndReason;
  options: GhzOptions;
  count: number;
  total: number;
  average: number;
  fastest: number;
  slowest: number;
  rps: number;
  errorDistribution: Record<string, number>;
  statusCodeDistribution: Record<string, number>;
  latencyDistribution: LatencyDistribution[] | null;
  histogram: Bucket[] | null;
  details?: ResultDetail[] | null;
}

/** What the load generator recorded: one entry per counted call. */
export interface Recorded {
  count: number;
  /** Nanoseconds, `count` entries used. */
  latencies: Float64Array;
  /** gRPC code per call, `count` entries used. */
  codes: Uint8Array;
  errorDistribution: Map<string, number>;
  /** Only when details were asked for: epoch ms at the call's start, and its error text. */
  details: { startMs: Float64Array; errors: (string | undefined)[] } | null;
}

const PERCENTILES = [10, 25, 50, 75, 90, 95, 99];

/** Go's time.Format(time.RFC3339) of a UTC time: no fractional seconds. */
export function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function sortedObject(map: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key of [...map.keys()].sort()) out[key] = map.get(key)!;
  return out;
}

/** runner/reporter.go latencies(): 0th-based rank, one lower when the rank is whole. */
function latencyDistribution(okSeconds: Float64Array): LatencyDistribution[] {
  const out: LatencyDistribution[] = [];
  for (const p of PERCENTILES) {
    const ip = (p / 100) * okSeconds.length;
    let di = Math.trunc(ip);
    if (ip === di) di -= 1;
    if (di < 0) di = 0;
    const value = okSeconds[di]!;
    out.push(value > 0 ? { percentage: p, latency: Math.trunc(value * 1e9) } : { percentage: 0, latency: 0 });
  }
  return out;
}

/** runner/reporter.go histogram(): 10 equal buckets from fastest, the 11th mark at slowest. */
function histogram(okSeconds: Float64Array, slowest: number, fastest: number): Bucket[] {
  const bc = 10;
  const marks: number[] = [];
  const counts = new Array<number>(bc + 1).fill(0);
  const bs = (slowest - fastest) / bc;
  for (let i = 0; i < bc; i++) marks.push(fastest + bs * i);
  marks.push(slowest);
  for (let i = 0, bi = 0; i < okSeconds.length; ) {
    if (okSeconds[i]! <= marks[bi]!) {
      i++;
      counts[bi]!++;
    } else if (bi < marks.length - 1) {
      bi++;
    } else {
      break; // cannot happen (slowest is the last mark) but never loop forever
    }
  }
  return marks.map((mark, i) => ({ mark, count: counts[i]!, frequency: counts[i]! / okSeconds.length }));
}

export function buildReport(
  recorded: Recorded,
  totalNs: number,
  endReason: EndReason,
  options: GhzOptions,
  withDetails: boolean,
  name?: string,
): GhzReport {
  const { count, latencies, codes } = recorded;
  const statusCodes = new Map<string, number>();
  let sumNs = 0;
  let okCount = 0;
  for (let i = 0; i < count; i++) {
    const name = codeName(codes[i]!);
    statusCodes.set(name, (statusCodes.get(name) ?? 0) + 1);
    sumNs += latencies[i]!;
    if (codes[i] === 0) okCount++;
  }
  const report: GhzReport = {
    date: rfc3339(Date.now()),
    ...(name ? { name } : {}),
    endReason,
    options,
    count,
    total: Math.trunc(totalNs),
    average: 0,
    fastest: 0,
    slowest: 0,
    rps: 0,
    errorDistribution: sortedObject(recorded.errorDistribution),
    statusCodeDistribution: sortedObject(statusCodes),
    latencyDistribution: null,
    histogram: null,
  };
  if (count > 0) {
    report.average = Math.trunc(sumNs / count);
    report.rps = count / (totalNs / 1e9);
    // ghz takes fastest, slowest, histogram and percentiles over the calls without an error.
    const ok = new Float64Array(okCount);
    for (let i = 0, j = 0; i < count; i++) if (codes[i] === 0) ok[j++] = latencies[i]! / 1e9;
    ok.sort();
    if (ok.length > 0) {
      const fastest = ok[0]!;
      const slowest = ok[ok.length - 1]!;
      report.fastest = Math.trunc(fastest * 1e9);
      report.slowest = Math.trunc(slowest * 1e9);
      report.histogram = histogram(ok, slowest, fastest);
      report.latencyDistribution = latencyDistribution(ok);
    }
  }
  if (withDetails) {
    const details: ResultDetail[] = [];
    for (let i = 0; i < count; i++) {
      details.push({
        timestamp: recorded.details ? new Date(recorded.details.startMs[i]!).toISOString() : '',
        latency: Math.trunc(latencies[i]!),
        error: recorded.details?.errors[i] ?? '',
        status: codeName(codes[i]!),
      });
    }
    report.details = count > 0 ? details : null;
  }
  return report;
}

// ---- renderers ----

/** printer.go formatNanoUnit. */
export function formatNanoUnit(ns: number): string {
  if (ns < 10_000) return `${ns} ns`;
  const ms = ns / 1e6;
  return ms < 1000 ? `${ms.toFixed(2)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** Go's text/tabwriter with minwidth 0, padding 3, for cells ended by a tab. */
function tabulate(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => `${row.map((cell, i) => cell.padEnd(widths[i]! + 3)).join('')}\n`).join('');
}

function histogramText(buckets: Bucket[]): string {
  const maxMark = Math.max(0, ...buckets.map((b) => b.mark));
  const maxCount = Math.max(0, ...buckets.map((b) => b.count));
  const markLen = (maxMark * 1000).toFixed(3).length;
  const countLen = String(maxCount).length;
  return buckets
    .map((b) => {
      const bar = maxCount > 0 ? Math.floor((b.count * 40 + Math.floor(maxCount / 2)) / maxCount) : 0;
      const mark = (b.mark * 1000).toFixed(3);
      const count = String(b.count);
      return `  ${mark.padEnd(markLen)} [${count}]${' '.repeat(countLen - count.length)} |${'∎'.repeat(bar)}\n`;
    })
    .join('');
}

/** ghz's default (summary) output. */
export function summary(report: GhzReport): string {
  let out = '\nSummary:\n';
  if (report.name) out += `  Name:\t\t${report.name}\n`;
  out += `  Count:\t${report.count}\n`;
  out += `  Total:\t${formatNanoUnit(report.total)}\n`;
  out += `  Slowest:\t${formatNanoUnit(report.slowest)}\n`;
  out += `  Fastest:\t${formatNanoUnit(report.fastest)}\n`;
  out += `  Average:\t${formatNanoUnit(report.average)}\n`;
  out += `  Requests/sec:\t${report.rps.toFixed(2)}\n\n`;
  out += `Response time histogram:\n${histogramText(report.histogram ?? [])}\n`;
  out += 'Latency distribution:';
  for (const l of report.latencyDistribution ?? []) out += `\n  ${l.percentage} % in ${formatNanoUnit(l.latency)} `;
  out += '\n\n';
  const codes = Object.entries(report.statusCodeDistribution);
  if (codes.length > 0) {
    out += `Status code distribution:\n${tabulate(codes.map(([code, n]) => [`  [${code}]`, `${n} responses`]))}`;
  }
  const errors = Object.entries(report.errorDistribution);
  out += '\n';
  if (errors.length > 0) out += `Error distribution:\n${tabulate(errors.map(([err, n]) => [`  [${n}]`, err]))}`;
  return out;
}

/** ghz -O csv: one line per call (needs details). */
export function csv(report: GhzReport): string {
  const lines = (report.details ?? []).map((d) => `${(d.latency / 1e6).toFixed(2)},${d.status},${d.error}`);
  return `\nduration (ms),status,error${lines.map((l) => `\n${l}`).join('')}\n`;
}

export type Format = 'summary' | 'json' | 'pretty' | 'csv';

export function render(report: GhzReport, format: Format): string {
  switch (format) {
    case 'summary':
      return summary(report);
    case 'json':
      return JSON.stringify(report);
    case 'pretty':
      return JSON.stringify(report, null, 2);
    case 'csv':
      return csv(report);
  }
}
