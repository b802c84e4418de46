/**
 * npm run bench:scenarios [-- --quick] [--only echo,point-read,...] [--duration 10s]
 *
 * Runs tenantd's load scenarios, each against real servers in child
 * processes, driven by the ghz-compatible load generator (bench/lib) in
 * child processes of its own. Writes bench/results/scenarios-<stamp>.md (a
 * table: scenario, calls/s, p50, p99, errors, notes) and every raw ghz JSON
 * report as bench/results/scenarios-<stamp>-<name>.json.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { packageDefinition } from '../../src/protos.ts';
import { parseDuration } from '../lib/loadgen.ts';
import type { GhzReport } from '../lib/report.ts';
import { batch } from './batch.ts';
import { fmt, type Context, type Row, type Scenario } from './common.ts';
import { echo } from './echo.ts';
import { groupCommit } from './groupCommit.ts';
import { insertFull, insertNormal } from './insert.ts';
import { manyTenants } from './manyTenants.ts';
import { noisyNeighbour } from './noisyNeighbour.ts';
import { pointRead } from './pointRead.ts';

const SCENARIOS: Scenario[] = [echo, pointRead, insertFull, insertNormal, batch, manyTenants, noisyNeighbour, groupCommit];

function parseArgs(argv: string[]): { quick: boolean; only: string[] | null; duration: string | null } {
  const out = { quick: false, only: null as string[] | null, duration: null as string | null };
  for (let i = 0; i < argv.length; i++) {
    const [name, inline] = argv[i]!.includes('=') ? (argv[i]!.split(/=(.*)/s) as [string, string]) : [argv[i]!, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${name} needs a value`);
      return v;
    };
    if (name === '--quick') out.quick = true;
    else if (name === '--only') out.only = value().split(',').map((s) => s.trim()).filter(Boolean);
    else if (name === '--duration') out.duration = value();
    else if (name === '--help' || name === '-h') {
      process.stdout.write(`usage: npm run bench:scenarios -- [--quick] [--only name,name] [--duration 10s]\nscenarios:\n${SCENARIOS.map((s) => `  ${s.name.padEnd(16)} ${s.description}`).join('\n')}\n`);
      process.exit(0);
    } else throw new Error(`unknown flag ${name}; known: --quick --only --duration --help`);
  }
  for (const name of out.only ?? []) {
    if (!SCENARIOS.some((s) => s.name === name)) throw new Error(`--only: unknown scenario ${name}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  }
  return out;
}

function gitCommit(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain'], { encoding: 'utf8' }).trim() !== '';
    return `${head}${dirty ? '-dirty' : ''}`;
  } catch {
    return 'unknown (no git)';
  }
}

function cells(row: Row): [string, string, string] {
  if (row.kind === 'ratio') return [`${row.rps.toFixed(2)}x`, `${row.p50Ns.toFixed(2)}x`, `${row.p99Ns.toFixed(2)}x`];
  if (row.kind === 'setup') return [row.rps.toFixed(0), '-', '-'];
  return [row.rps.toFixed(0), fmt(row.p50Ns), fmt(row.p99Ns)];
}

let args: ReturnType<typeof parseArgs>;
try {
  args = parseArgs(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`bench:scenarios: ${(error as Error).message}\n`);
  process.exit(2);
}
const durationMs = parseDuration(args.duration ?? (args.quick ? '3s' : '10s'), '--duration');
const warmupMs = Math.round(Math.min(2000, Math.max(1000, durationMs / 5)));
const stamp = new Date().toISOString().replace(/[:]/g, '-').replace(/\.\d+Z$/, 'Z');
const resultsDir = new URL('../results/', import.meta.url);
mkdirSync(resultsDir, { recursive: true });
const selected = args.only ? SCENARIOS.filter((s) => args.only!.includes(s.name)) : SCENARIOS;

const header = [
  `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
  `commit: ${gitCommit()}`,
  `load average at start: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`,
  `run: ${args.quick ? '--quick, ' : ''}${durationMs / 1000} s per measured load phase after ${warmupMs / 1000} s of warm-up; scenarios: ${selected.map((s) => s.name).join(', ')}`,
];
const rows: Row[] = [];
const failures: string[] = [];
const log = (line: string) => process.stdout.write(`${line}\n`);
header.forEach(log);

const ctx: Context = {
  quick: args.quick,
  durationMs,
  warmupMs,
  def: packageDefinition(),
  saveReport(name: string, report: GhzReport) {
    const file = `scenarios-${stamp}-${name}.json`;
    writeFileSync(new URL(file, resultsDir), `${JSON.stringify(report, null, 2)}\n`);
    return file;
  },
  addRow(row: Row) {
    rows.push(row);
    const [rps, p50, p99] = cells(row);
    log(`  ${row.scenario.padEnd(38)} ${rps.padStart(8)} calls/s  p50 ${p50.padStart(9)}  p99 ${p99.padStart(9)}  errors ${row.errors}/${row.count}`);
  },
  log: (line: string) => log(`  ${line}`),
};

for (const scenario of selected) {
  log(`\n== ${scenario.name}: ${scenario.description}`);
  const t0 = performance.now();
  try {
    await scenario.run(ctx);
  } catch (error) {
    const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
    failures.push(`${scenario.name}: ${message.split('\n')[0]}`);
    log(`  FAILED: ${message}`);
  }
  log(`  (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
}

const escape = (s: string) => s.replace(/\|/g, '\\|');
const md = [
  `# tenantd scenarios, ${stamp}`,
  '',
  ...header.map((h) => `- ${h}`),
  '- client: bench/lib/loadgen.ts (ghz-compatible) in child processes; servers in child processes; all on the same cores',
  '',
  '| scenario | calls/s | p50 | p99 | errors | notes |',
  '| --- | --- | --- | --- | --- | --- |',
  ...rows.map((r) => {
    const [rps, p50, p99] = cells(r);
    return `| ${escape(r.scenario)} | ${rps} | ${p50} | ${p99} | ${r.errors} of ${r.count} | ${escape(r.notes)} |`;
  }),
  ...(failures.length ? ['', '## Failed', '', ...failures.map((f) => `- ${escape(f)}`)] : []),
  '',
];
const mdFile = new URL(`scenarios-${stamp}.md`, resultsDir);
writeFileSync(mdFile, md.join('\n'));
log(`\nwrote ${mdFile.pathname}`);
process.exit(failures.length ? 1 : 0);
