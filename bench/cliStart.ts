/**
 * How long `tenantd <command>` takes to start, from the compiled build
 * (`npm run build` first): the wall time of `--help` (no gRPC loaded) and of
 * `tenants list` against a real server on 127.0.0.1, next to `node -e 0` on
 * the same host in the same run, so a loaded machine shows as such. Also
 * the CPU time each takes (user + system, from GNU time), which a host busy
 * with other work inflates far less than the wall time.
 *
 *   npm run build && npx tsx bench/cliStart.ts [runs]
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startTestServer } from '../test/support/server.ts';

const BIN = fileURLToPath(new URL('../bin/tenantd.js', import.meta.url));
const COMPILED = fileURLToPath(new URL('../dist/src/main.js', import.meta.url));
const runs = Number(process.argv[2] ?? 15);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

interface Sample {
  wallMs: number;
  cpuMs: number;
}

/** GNU time's last stderr line: `cpu=<user> <system>` in seconds. */
function cpuOf(stderr: string): number {
  const match = /cpu=([\d.]+) ([\d.]+)\s*$/.exec(stderr);
  if (!match) throw new Error(`no CPU time in ${JSON.stringify(stderr.slice(-200))}`);
  return (Number(match[1]) + Number(match[2])) * 1000;
}

function time(args: string[], env: Record<string, string> = {}): Sample {
  const started = process.hrtime.bigint();
  const ran = spawnSync('/usr/bin/time', ['-f', 'cpu=%U %S', process.execPath, ...args], { env: { ...process.env, ...env }, encoding: 'utf8' });
  const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
  if (ran.status !== 0) throw new Error(`${args.join(' ')} exited ${ran.status}: ${ran.stderr}`);
  return { wallMs, cpuMs: cpuOf(ran.stderr) };
}

if (!existsSync(COMPILED)) throw new Error('no dist/: run `npm run build` first (the figure is for the compiled CLI)');
const server = await startTestServer();
try {
  const address = `127.0.0.1:${server.server.port}`;
  const env = { TENANTD_ADMIN_KEY: server.adminKey };
  const samples = { node: [] as Sample[], help: [] as Sample[], list: [] as Sample[] };
  for (let i = 0; i < runs; i++) {
    samples.node.push(time(['-e', '0']));
    samples.help.push(time([BIN, '--help']));
    samples.list.push(await timeAsync([BIN, 'tenants', 'list', '--address', address, '-o', 'json'], env));
  }
  const built = new Date(statSync(COMPILED).mtimeMs).toISOString();
  const row = (label: string, of: Sample[]) => {
    const wall = median(of.map((s) => s.wallMs));
    const cpu = median(of.map((s) => s.cpuMs));
    const baseWall = median(samples.node.map((s) => s.wallMs));
    const baseCpu = median(samples.node.map((s) => s.cpuMs));
    const extra = of === samples.node ? '' : `  (+${(wall - baseWall).toFixed(0)} ms wall, +${(cpu - baseCpu).toFixed(0)} ms CPU over bare node)`;
    console.log(`  ${label.padEnd(28)} wall ${wall.toFixed(0).padStart(5)} ms  CPU ${cpu.toFixed(0).padStart(5)} ms${extra}`);
  };
  console.log(`cli start, median of ${runs} (dist built ${built}), node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} CPUs:`);
  row('node -e 0', samples.node);
  row('tenantd --help', samples.help);
  row('tenantd tenants list (call)', samples.list);
} finally {
  await server.stop();
}

/** Like time(), without blocking this process's event loop: the server answering lives here. */
async function timeAsync(args: string[], env: Record<string, string>): Promise<Sample> {
  const started = process.hrtime.bigint();
  const child = spawn('/usr/bin/time', ['-f', 'cpu=%U %S', process.execPath, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  if (code !== 0) throw new Error(`${args.join(' ')} exited ${code}: ${stderr}`);
  return { wallMs: Number(process.hrtime.bigint() - started) / 1e6, cpuMs: cpuOf(stderr) };
}
