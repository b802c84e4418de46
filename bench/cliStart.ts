/**
 * How long `tenantd <command>` takes to start, from the compiled build
 * (`npm run build` first): the wall time of `--help` (no gRPC loaded) and of
 * `tenants list` against a real server on 127.0.0.1, next to `node -e 0` on
 * the same host in the same run, so a loaded machine shows as such.
 *
 *   npm run build && npx tsx bench/cliStart.ts [runs]
 */
import { spawnSync } from 'node:child_process';
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

function time(args: string[], env: Record<string, string> = {}): number {
  const started = process.hrtime.bigint();
  const ran = spawnSync(process.execPath, args, { env: { ...process.env, ...env }, encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (ran.status !== 0) throw new Error(`${args.join(' ')} exited ${ran.status}: ${ran.stderr}`);
  return ms;
}

if (!existsSync(COMPILED)) throw new Error('no dist/: run `npm run build` first (the figure is for the compiled CLI)');
const server = await startTestServer();
try {
  const address = `127.0.0.1:${server.server.port}`;
  const env = { TENANTD_ADMIN_KEY: server.adminKey };
  const samples = { node: [] as number[], help: [] as number[], list: [] as number[] };
  for (let i = 0; i < runs; i++) {
    samples.node.push(time(['-e', '0']));
    samples.help.push(time([BIN, '--help']));
    samples.list.push(await timeAsync([BIN, 'tenants', 'list', '--address', address, '-o', 'json'], env));
  }
  const built = new Date(statSync(COMPILED).mtimeMs).toISOString();
  const nodeMs = median(samples.node);
  console.log(`cli start, median of ${runs} (dist built ${built}), node ${process.version}:`);
  console.log(`  node -e 0                    ${nodeMs.toFixed(0)} ms`);
  console.log(`  tenantd --help               ${median(samples.help).toFixed(0)} ms  (+${(median(samples.help) - nodeMs).toFixed(0)} ms over bare node)`);
  console.log(`  tenantd tenants list (call)  ${median(samples.list).toFixed(0)} ms  (+${(median(samples.list) - nodeMs).toFixed(0)} ms over bare node)`);
} finally {
  await server.stop();
}

/** Like time(), without blocking this process's event loop: the server answering lives here. */
async function timeAsync(args: string[], env: Record<string, string>): Promise<number> {
  const { spawn } = await import('node:child_process');
  const started = process.hrtime.bigint();
  const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  if (code !== 0) throw new Error(`${args.join(' ')} exited ${code}: ${stderr}`);
  return Number(process.hrtime.bigint() - started) / 1e6;
}
