/**
 * A bounded run of the fuzzer (bench/lib/fuzzer.ts; `npm run fuzz` runs
 * 100,000 calls): 3,000 hostile calls of every class against a real server,
 * none answered INTERNAL or UNKNOWN, the server alive and serving afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runFuzz } from '../bench/lib/fuzzer.ts';
import { rowsOf, startTestServer, type TestServer } from './support/server.ts';

let t: TestServer;
let key: string;
let canary: string;

beforeAll(async () => {
  t = await startTestServer({ shards: 2, requestReadTimeoutMs: 1_000 });
  key = await t.createTenant('fuzz', { quotas: { requests_per_second: '-1', query_timeout_ms: '1000' } });
  // The fuzz tenant ends the run over its shard-time quota; a neighbour checks the server serves.
  canary = await t.createTenant('canary');
});
afterAll(() => t.stop());

describe('the fuzzer, 3,000 calls', () => {
  it('gets no INTERNAL and no UNKNOWN, and the server serves afterwards', async () => {
    const report = await runFuzz({ port: t.server.port, adminKey: t.adminKey, tenantKey: key, tenantId: 'fuzz', calls: 3_000, timeMs: 150_000, seed: 20261202, concurrency: 32, callTimeoutMs: 20_000 });
    console.log(JSON.stringify({ byStatus: report.byStatus, msByClass: report.msByClass, ms: report.ms }));
    expect(report.failures).toEqual([]);
    expect(report.internalOrUnknown).toBe(0);
    expect(report.calls).toBeGreaterThan(1_000);
    for (const kind of ['body', 'metadata', 'http2', 'sql']) expect(report.byClass[kind] ?? 0, kind).toBeGreaterThan(0);
    expect(rowsOf(await t.sql(canary, 'SELECT 1'))).toEqual([[1n]]);
  }, 240_000);
});
