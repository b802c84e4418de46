/**
 * npm run fuzz [-- --calls 100000 --time-ms 900000 --seed 1 --concurrency 32]
 *
 * Starts a real tenantd in a child process (so a crash is seen, not
 * shared), throws hostile calls at it (bench/lib/fuzzer.ts), prints the
 * statuses it got per code, and exits non-zero if any call got INTERNAL or
 * UNKNOWN, if the server died, or if a normal call fails afterwards.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startChild } from './lib/child.ts';
import { frame, open, rawCall } from './lib/rawGrpc.ts';
import { runFuzz } from './lib/fuzzer.ts';
import { packageDefinition } from '../src/protos.ts';

const { values } = parseArgs({
  options: {
    calls: { type: 'string', default: '100000' },
    'time-ms': { type: 'string', default: '900000' },
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    concurrency: { type: 'string', default: '32' },
  },
});
const calls = Number(values.calls);
const timeMs = Number(values['time-ms']);
const seed = Number(values.seed);
const concurrency = Number(values.concurrency);

type Method = { path: string; requestSerialize(value: object): Buffer; responseDeserialize(b: Buffer): unknown };
const tenants = packageDefinition()['tenantd.v1.TenantService'] as Record<string, Method>;
const sql = packageDefinition()['tenantd.v1.SqlService'] as Record<string, Method>;

const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-fuzz-'));
const child = await startChild(new URL('./lib/serveTenantd.ts', import.meta.url), { dataDir, shards: 2, sync: 'normal', maxOpenDbs: 64 });
const { port, adminKey } = child.ready as unknown as { port: number; adminKey: string };
let died = false;
const session = open(port);

/** Creates the fuzz tenant with a plan that limits it (bench plan is unlimited) and returns its key. */
async function createTenant(tenantId: string): Promise<string> {
  const create = tenants.CreateTenant!;
  const stream = session.request({ ':method': 'POST', ':path': create.path, 'content-type': 'application/grpc', te: 'trailers', authorization: `Bearer ${adminKey}` });
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  stream.end(frame(create.requestSerialize({ tenant_id: tenantId, tenant: { plan: 'free', quotas: { requests_per_second: '-1', query_timeout_ms: '1000' } } })));
  await new Promise((resolve) => stream.on('close', resolve));
  const body = Buffer.concat(chunks).subarray(5);
  return (create.responseDeserialize(body) as { api_key: { key: string } }).api_key.key;
}

const tenantKey = await createTenant('fuzz');
// The fuzz tenant ends the run over its shard-time quota; a neighbour checks the server still serves.
const canaryKey = await createTenant('canary');
process.stdout.write(`fuzzing tenantd on port ${port}: up to ${calls} calls or ${timeMs} ms, seed ${seed}, ${concurrency} at once\n`);
const report = await runFuzz({ port, adminKey, tenantKey, tenantId: 'fuzz', calls, timeMs, seed, concurrency });
const after = await rawCall(session, sql.Execute!.path, { authorization: `Bearer ${canaryKey}` }, frame(sql.Execute!.requestSerialize({ sql: 'SELECT 1' })));
died = after.code === null;
session.close();
await child.stop();
rmSync(dataDir, { recursive: true, force: true });

process.stdout.write(`\n${report.calls} calls in ${(report.ms / 1000).toFixed(1)} s\nby class: ${JSON.stringify(report.byClass)}\nms by class: ${JSON.stringify(report.msByClass)}\nby status:\n`);
for (const [name, count] of Object.entries(report.byStatus).sort((a, b) => b[1] - a[1])) process.stdout.write(`  ${name.padEnd(20)} ${count}\n`);
for (const failure of report.failures) process.stdout.write(`  ! ${failure}\n`);
process.stdout.write(`INTERNAL or UNKNOWN: ${report.internalOrUnknown}; a normal call afterwards: ${after.code === 0 ? 'OK' : `failed (${after.code ?? after.failure})`}${died ? '; the server died' : ''}\n`);
process.exit(report.internalOrUnknown === 0 && after.code === 0 ? 0 : 1);
