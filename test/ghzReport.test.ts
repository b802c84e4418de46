/**
 * The load generator's report against ghz's own `-O json` output: a
 * hand-written report in ghz's shape (test/fixtures/ghz-report.json) is the
 * schema, and a real run against a real tenantd must match it key for key and
 * type for type. Also bench/ghz.ts as a command line, end to end.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runLoad } from '../bench/lib/loadgen.ts';
import type { GhzReport } from '../bench/lib/report.ts';
import { packageDefinition } from '../src/protos.ts';
import { startTestServer, type TestServer } from './support/server.ts';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const fixture = JSON.parse(readFileSync(new URL('./fixtures/ghz-report.json', import.meta.url), 'utf8')) as { [key: string]: Json };
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

/** Keys ghz leaves out when empty (`omitempty`): they may be missing on either side. */
const OPTIONAL = new Set([
  ...['name', 'details', 'tags'],
  ...['proto', 'protoset', 'import-paths', 'rps', 'concurrency', 'total', 'connections', 'duration', 'timeout', 'dial-timeout', 'keepalive']
    .concat(['data', 'metadata', 'name', 'skipFirst'])
    .map((key) => `options.${key}`),
]);
/** Objects keyed by data (status names, error texts, metadata keys): only their values' types are compared. */
const MAPS = new Set(['errorDistribution', 'statusCodeDistribution', 'options.metadata']);
/** ghz's `interface{}`: whatever JSON the user gave. */
const FREE = new Set(['options.data']);

function kind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

/**
 * Compares `actual` with the schema the fixture implies: same keys (less the
 * optional ones), same JSON types, recursively; arrays element by element
 * against the fixture's first element. Returns the differences, by path.
 */
function schemaDiff(actual: unknown, expected: Json, path = ''): string[] {
  const at = path || '(root)';
  if (FREE.has(path)) return [];
  if (kind(actual) !== kind(expected)) return [`${at}: expected ${kind(expected)}, got ${kind(actual)}`];
  if (Array.isArray(expected)) {
    if (expected.length === 0) return [];
    return (actual as unknown[]).flatMap((item, i) => schemaDiff(item, expected[0]!, `${path}[${i}]`));
  }
  if (kind(expected) !== 'object') return [];
  const exp = expected as { [key: string]: Json };
  const act = actual as Record<string, unknown>;
  if (MAPS.has(path)) {
    const sample = Object.values(exp)[0];
    return sample === undefined ? [] : Object.entries(act).flatMap(([k, v]) => schemaDiff(v, sample, `${path}.${k}`));
  }
  const diffs: string[] = [];
  const child = (key: string) => (path ? `${path}.${key}` : key);
  for (const key of Object.keys(exp)) {
    if (!(key in act)) {
      if (!OPTIONAL.has(child(key))) diffs.push(`${child(key)}: missing`);
    } else diffs.push(...schemaDiff(act[key], exp[key]!, child(key)));
  }
  for (const key of Object.keys(act)) {
    if (!(key in exp) && !OPTIONAL.has(child(key))) diffs.push(`${child(key)}: not a key of ghz's report`);
  }
  return diffs;
}

const GHZ_CODE_NAMES = ['OK', 'Canceled', 'Unknown', 'InvalidArgument', 'DeadlineExceeded', 'NotFound', 'AlreadyExists', 'PermissionDenied', 'ResourceExhausted', 'FailedPrecondition', 'Aborted', 'OutOfRange', 'Unimplemented', 'Internal', 'Unavailable', 'DataLoss', 'Unauthenticated'];

/** What must hold of any report of a run with at least one successful call. */
function checkReport(report: GhzReport): void {
  expect(schemaDiff(report, fixture)).toEqual([]);
  expect(report.date).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$/);
  expect(report.endReason).toBe('normal');

  // Durations are integer nanoseconds: a run of a few hundred local calls lasts
  // well over a millisecond (1e6) and well under a minute (6e10).
  const durations = [report.total, report.average, report.fastest, report.slowest, ...report.latencyDistribution!.map((l) => l.latency)];
  for (const d of durations) expect(Number.isInteger(d), `duration ${d}`).toBe(true);
  expect(report.total).toBeGreaterThan(1e6);
  expect(report.total).toBeLessThan(6e10);
  expect(report.fastest).toBeGreaterThan(1000);
  expect(report.slowest).toBeLessThanOrEqual(report.total);
  expect(report.rps).toBeCloseTo(report.count / (report.total / 1e9), 6);
  for (const key of ['timeout', 'dial-timeout'] as const) {
    if (report.options[key] !== undefined) expect(Number.isInteger(report.options[key])).toBe(true);
  }
  expect(report.options.timeout).toBe(20e9);

  // Percentiles: exactly ghz's, ordered between fastest and slowest.
  expect(report.latencyDistribution!.map((l) => l.percentage)).toEqual([10, 25, 50, 75, 90, 95, 99]);
  const ordered = [report.fastest, ...report.latencyDistribution!.map((l) => l.latency), report.slowest];
  for (let i = 1; i < ordered.length; i++) expect(ordered[i]).toBeGreaterThanOrEqual(ordered[i - 1]!);

  // Status codes by ghz's names, summing to count; errors are Go's error text.
  const codes = report.statusCodeDistribution;
  for (const name of Object.keys(codes)) expect(GHZ_CODE_NAMES).toContain(name);
  expect(Object.values(codes).reduce((a, b) => a + b, 0)).toBe(report.count);
  const ok = codes.OK ?? 0;
  expect(Object.values(report.errorDistribution).reduce((a, b) => a + b, 0)).toBe(report.count - ok);
  for (const text of Object.keys(report.errorDistribution)) expect(text).toMatch(/^rpc error: code = [A-Za-z]+ desc = /);

  // 11 buckets, marks in seconds from fastest to slowest, over the successful calls.
  const histogram = report.histogram!;
  expect(histogram).toHaveLength(11);
  expect(histogram[0]!.mark * 1e9).toBeCloseTo(report.fastest, -1);
  expect(histogram[10]!.mark * 1e9).toBeCloseTo(report.slowest, -1);
  expect(histogram[10]!.mark).toBeLessThan(60);
  for (let i = 1; i < histogram.length; i++) expect(histogram[i]!.mark).toBeGreaterThanOrEqual(histogram[i - 1]!.mark);
  expect(histogram.reduce((n, b) => n + b.count, 0)).toBe(ok);
  expect(histogram.reduce((n, b) => n + b.frequency, 0)).toBeCloseTo(1, 9);
}

describe('the schema helper', () => {
  it('accepts the fixture and catches a renamed key, a changed type and a stray key', () => {
    expect(schemaDiff(fixture, fixture)).toEqual([]);
    const renamed = structuredClone(fixture) as any;
    renamed.statusCodeDist = renamed.statusCodeDistribution;
    delete renamed.statusCodeDistribution;
    expect(schemaDiff(renamed, fixture)).toEqual(['statusCodeDistribution: missing', "statusCodeDist: not a key of ghz's report"]);
    const retyped = structuredClone(fixture) as any;
    retyped.total = String(retyped.total);
    retyped.histogram[3].mark = { seconds: 1 };
    retyped.options['dialTimeout'] = 1;
    expect(schemaDiff(retyped, fixture)).toEqual([
      "options.dialTimeout: not a key of ghz's report",
      'total: expected number, got string',
      'histogram[3].mark: expected number, got object',
    ]);
  });

  it('holds ghz invariants on the fixture itself', () => {
    checkReport(fixture as unknown as GhzReport);
  });
});

describe('ghz-format reports from a real tenantd', () => {
  let t: TestServer;
  let limitedKey: string;
  let freeKey: string;
  let host: string;

  beforeAll(async () => {
    t = await startTestServer();
    host = `127.0.0.1:${t.server.port}`;
    // 50 calls/s: 200 calls at -c 8 on this loop take well under 4 s, so some are refused.
    limitedKey = await t.createTenant('limited', { quotas: { requests_per_second: '50', concurrent_requests: '-1' } });
    freeKey = await t.createTenant('open', { quotas: { requests_per_second: '-1', concurrent_requests: '-1' } });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('runLoad -n 200 -c 8 with refused and invalid calls matches the fixture', async () => {
    // Every 10th request names a parameter that is not bound: InvalidArgument.
    const data = Array.from({ length: 10 }, (_, i) => (i === 9 ? { sql: 'SELECT ?2', params: [{ integer_value: '1' }] } : { sql: 'SELECT 1' }));
    const { report } = await runLoad({
      call: 'tenantd.v1.SqlService.Execute',
      host,
      packageDefinition: packageDefinition(),
      concurrency: 8,
      total: 200,
      data,
      metadata: { authorization: `Bearer ${limitedKey}` },
    });
    checkReport(report);
    expect(report.count).toBe(200);
    expect(report.options).toMatchObject({ call: 'tenantd.v1.SqlService.Execute', host, insecure: true, concurrency: 8, total: 200, connections: 1, data, binary: false });
    expect(report.statusCodeDistribution.OK).toBeGreaterThan(0);
    expect(report.statusCodeDistribution.ResourceExhausted).toBeGreaterThan(0);
    expect(report.statusCodeDistribution.InvalidArgument).toBeGreaterThan(0);
    expect(Object.keys(report.errorDistribution).some((e) => e.startsWith('rpc error: code = ResourceExhausted desc = tenants/limited is over its requests_per_second quota'))).toBe(true);
    expect(report).not.toHaveProperty('details');
  });

  it('keeps per-call details in ghz shape when asked', async () => {
    const { report } = await runLoad({
      call: 'tenantd.v1.SqlService.Execute',
      host,
      packageDefinition: packageDefinition(),
      concurrency: 2,
      total: 20,
      details: true,
      data: [{ sql: 'SELECT 1' }, { sql: 'SELEKT 1' }],
      metadata: { authorization: `Bearer ${freeKey}` },
    });
    checkReport(report);
    expect(report.details).toHaveLength(20);
    expect(report.statusCodeDistribution).toEqual({ InvalidArgument: 10, OK: 10 });
    for (const d of report.details!) {
      expect(Number.isInteger(d.latency)).toBe(true);
      expect(Number.isNaN(Date.parse(d.timestamp))).toBe(false);
      expect(d.error === '').toBe(d.status === 'OK');
    }
  });

  /** Runs bench/ghz.ts in its own process, without blocking this loop (the server lives here). */
  function ghz(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'bench/ghz.ts', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.once('error', reject);
      child.once('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  it('bench/ghz.ts -O json prints a report of the same schema', async () => {
    const { code, stdout, stderr } = await ghz([
      '--call',
      'tenantd.v1.SqlService.Execute',
      '--insecure',
      '-d',
      '{"sql":"SELECT 1"}',
      '-m',
      JSON.stringify({ authorization: `Bearer ${freeKey}` }),
      '-c',
      '2',
      '-n',
      '20',
      '-O',
      'json',
      host,
    ]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const report = JSON.parse(stdout) as GhzReport;
    checkReport(report);
    expect(report.count).toBe(20);
    expect(report.statusCodeDistribution).toEqual({ OK: 20 });
    expect(report.options).toMatchObject({ concurrency: 2, total: 20, data: { sql: 'SELECT 1' }, metadata: { authorization: `Bearer ${freeKey}` } });
  });

  it('bench/ghz.ts refuses an unknown flag by name with exit code 2', async () => {
    const { code, stdout, stderr } = await ghz(['--call', 'tenantd.v1.SqlService.Execute', '--bogus', '1', host]);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('unknown flag --bogus');
  });
});
