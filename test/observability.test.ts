import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { defaultConfig, loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { packageDefinition } from '../src/protos.ts';
import { installTelemetry, type InstalledTelemetry } from '../src/telemetry/sdk.ts';
import { RpcError, rowsOf, startTestServer, v, type TestServer } from './support/server.ts';

/** Values that must never reach a log line. */
const SECRET_PARAM = 'sekrit-param-7f3a9c';

const spans = new InMemorySpanExporter();
const lines: string[] = [];
const logger = createLogger('debug', (line) => lines.push(line));
let telemetry: InstalledTelemetry;
let t: TestServer;
let key: string;
/** The tenants beforeAll creates and calls: each one's database is open in its shard. */
const OPEN_TENANTS = 2;

beforeAll(async () => {
  // The entry point's installer, with an in-memory span exporter beside Prometheus.
  telemetry = installTelemetry({ ...defaultConfig(), metricsListen: '127.0.0.1:0' }, logger, {
    spanProcessors: [new SimpleSpanProcessor(spans)],
  })!;
  t = await startTestServer({ metricsListen: '127.0.0.1:0', logLevel: 'debug' }, { logger, metricsHandler: telemetry.metricsHandler });
  key = await t.createTenant('obs', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1' } });
  await t.sql(key, 'CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)');
  await t.sql(key, 'INSERT INTO notes (body) VALUES (?)', [v.text(SECRET_PARAM)]);
  expect(rowsOf(await t.sql(key, 'SELECT body FROM notes WHERE body = ?', [v.text(SECRET_PARAM)]))).toEqual([[SECRET_PARAM]]);
  // An error (no such table) and a quota refusal (the second call inside one second).
  await expect(t.sql(key, 'SELECT * FROM missing')).rejects.toThrow(RpcError);
  const limited = await t.createTenant('limited', { quotas: { requests_per_second: '1' } });
  await t.sql(limited, 'SELECT 1');
  await expect(t.sql(limited, 'SELECT 1')).rejects.toThrow(/RESOURCE_EXHAUSTED/);
});

afterAll(async () => {
  await t?.stop();
  await telemetry?.shutdown();
});

async function get(port: number | null, path: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: response.status, body: await response.text() };
}

/** Series lines of a metric whose labels include every one given. */
function series(body: string, name: string, labels: Record<string, string> = {}): { labels: string; value: number }[] {
  const found: { labels: string; value: number }[] = [];
  for (const line of body.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const text = match[2] ?? '';
    if (Object.entries(labels).every(([k, value]) => text.includes(`${k}="${value}"`))) found.push({ labels: text, value: Number(match[3]) });
  }
  return found;
}

function logged(): Record<string, unknown>[] {
  return lines.map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe('/metrics', () => {
  it('serves call, latency, refusal, in-flight and shard series beside /healthz and /readyz', async () => {
    const { status, body } = await get(t.server.httpPort, '/metrics');
    expect(status).toBe(200);

    const buckets = series(body, 'rpc_server_duration_bucket', { rpc_system: 'grpc', rpc_service: 'tenantd.v1.SqlService', rpc_method: 'Execute' });
    expect(buckets.length).toBeGreaterThan(5);
    expect(body).toMatch(/# UNIT rpc_server_duration ms/);
    const ok = series(body, 'tenantd_rpc_calls_total', { rpc_method: 'Execute', rpc_grpc_status_code: '0' });
    expect(ok[0]?.value).toBeGreaterThanOrEqual(4);
    expect(series(body, 'tenantd_rpc_calls_total', { rpc_method: 'Execute', rpc_grpc_status_code: String(grpc.status.INVALID_ARGUMENT) })).toHaveLength(1);
    expect(series(body, 'tenantd_rpc_calls_total', { rpc_method: 'Execute', rpc_grpc_status_code: String(grpc.status.RESOURCE_EXHAUSTED) })).toHaveLength(1);
    expect(series(body, 'tenantd_rpc_calls_total', { rpc_method: 'CreateTenant', rpc_service: 'tenantd.v1.TenantService' })).toHaveLength(1);
    expect(series(body, 'tenantd_quota_refusals_total', { tenantd_quota: 'requests_per_second' })[0]?.value).toBe(1);
    expect(series(body, 'tenantd_rpc_in_flight', { rpc_method: 'Execute' })[0]?.value).toBe(0);
    expect(series(body, 'tenantd_shard_queue_depth', { tenantd_shard: '0' })[0]?.value).toBe(0);
    expect(series(body, 'tenantd_shard_queue_depth', { tenantd_shard: '1' })[0]?.value).toBe(0);
    expect(series(body, 'tenantd_shard_busy_time_total').every((s) => s.value > 0)).toBe(true);
    expect(series(body, 'tenantd_storage_bytes')[0]?.value).toBeGreaterThan(0);
    // beforeAll wrote twice (CREATE TABLE, INSERT): two commits carrying one call each.
    expect(series(body, 'tenantd_shard_commits_total').reduce((sum, s) => sum + s.value, 0)).toBe(2);
    expect(series(body, 'tenantd_shard_committed_calls_total').reduce((sum, s) => sum + s.value, 0)).toBe(2);
    // --sync full, per commit (the default): one sync each.
    expect(series(body, 'tenantd_shard_syncs_total').reduce((sum, s) => sum + s.value, 0)).toBe(2);
    // Each of them one tenant file's fsync (SQLite's, at its commit), none of the whole filesystem.
    expect(series(body, 'tenantd_shard_syncs_total', { tenantd_sync_kind: 'file' }).reduce((sum, s) => sum + s.value, 0)).toBe(2);
    expect(series(body, 'tenantd_shard_syncs_total', { tenantd_sync_kind: 'filesystem' })).toEqual([]);
    const open = series(body, 'tenantd_shard_open_databases');
    expect(open.reduce((sum, s) => sum + s.value, 0)).toBe(OPEN_TENANTS);
    // Per-tenant series are opt-in.
    expect(body).not.toContain('tenantd_tenant_id');

    expect(await get(t.server.httpPort, '/healthz')).toEqual({ status: 200, body: 'ok\n' });
    expect(await get(t.server.httpPort, '/readyz')).toEqual({ status: 200, body: 'ready\n' });
  });

  it('counts a slow call in flight and in its shard’s queue while it runs', async () => {
    const slow = t.sql(key, 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT count(*) FROM c');
    let inFlight = 0;
    let queued = 0;
    for (let i = 0; i < 100 && (inFlight === 0 || queued === 0); i++) {
      const { body } = await get(t.server.httpPort, '/metrics');
      inFlight = series(body, 'tenantd_rpc_in_flight', { rpc_method: 'Execute' })[0]?.value ?? 0;
      queued = series(body, 'tenantd_shard_queue_depth').reduce((sum, s) => sum + s.value, 0);
    }
    expect({ inFlight, queued }).toEqual({ inFlight: 1, queued: 1 });
    await slow;
    const { body } = await get(t.server.httpPort, '/metrics');
    expect(series(body, 'tenantd_rpc_in_flight', { rpc_method: 'Execute' })[0]?.value).toBe(0);
  });

  it('adds a tenant label to the call counter only, when --metrics-per-tenant is on', async () => {
    const perTenant = await startTestServer({ metricsPerTenant: true });
    let body: string;
    try {
      const tenantKey = await perTenant.createTenant('labelled');
      await perTenant.sql(tenantKey, 'SELECT 1');
      // Both servers record into the process's one meter provider, which this exporter reads
      // (call counts are observed from the running server, so before it stops).
      body = (await get(t.server.httpPort, '/metrics')).body;
    } finally {
      await perTenant.stop();
    }
    expect(series(body, 'tenantd_rpc_calls_total', { tenantd_tenant_id: 'labelled', rpc_method: 'Execute' })[0]?.value).toBe(1);
    expect(body.split('\n').filter((line) => line.includes('tenantd_tenant_id')).every((line) => line.startsWith('tenantd_rpc_calls_total'))).toBe(true);
  });
});

describe('traces', () => {
  it('gives each RPC a server span with a child span for the work inside its shard', async () => {
    spans.reset();
    const { trailers } = await t.client.callWithTrailers('SqlService', 'Execute', { sql: 'SELECT count(*) FROM notes' }, { key });
    const finished = spans.getFinishedSpans();
    const server = finished.find((s) => s.name === 'tenantd.v1.SqlService/Execute')!;
    expect(server).toBeDefined();
    expect(server.kind).toBe(SpanKind.SERVER);
    expect(server.attributes).toMatchObject({
      'rpc.system': 'grpc',
      'rpc.service': 'tenantd.v1.SqlService',
      'rpc.method': 'Execute',
      'rpc.grpc.status_code': 0,
      'tenantd.tenant_id': 'obs',
      'tenantd.request_id': trailers['x-request-id'],
    });
    const shard = finished.find((s) => s.name === 'shard.execute')!;
    expect(shard).toBeDefined();
    expect(shard.spanContext().traceId).toBe(server.spanContext().traceId);
    expect(shard.parentSpanContext?.spanId).toBe(server.spanContext().spanId);
    expect(shard.attributes).toMatchObject({ 'tenantd.shard.op': 'execute', 'tenantd.tenant_id': 'obs', 'tenantd.shard': server.attributes['tenantd.shard'] });
    expect(durationMs(shard)).toBeLessThanOrEqual(durationMs(server));
    // The worker reported when it ran, so the span is the shard's own time, not the dispatch round trip.
    expect(shard.attributes['tenantd.shard.timing']).toBe('worker');
  });

  it("continues the caller's trace from its traceparent", async () => {
    spans.reset();
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    await t.client.call('SqlService', 'Execute', { sql: 'SELECT 1' }, { key, metadata: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` } });
    const server = spans.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER)!;
    expect(server.spanContext().traceId).toBe(traceId);
    expect(server.parentSpanContext?.spanId).toBe('00f067aa0ba902b7');
  });

  it('marks server faults as errors but not the caller’s mistakes', async () => {
    spans.reset();
    await expect(t.sql(key, 'SELECT * FROM missing')).rejects.toThrow(RpcError);
    const server = spans.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER)!;
    expect(server.attributes['rpc.grpc.status_code']).toBe(grpc.status.INVALID_ARGUMENT);
    expect(server.status.code).toBe(SpanStatusCode.UNSET);
    const shard = spans.getFinishedSpans().find((s) => s.name === 'shard.execute')!;
    expect(shard.attributes['tenantd.error.reason']).toBeTypeOf('string');
  });
});

function durationMs(span: ReadableSpan): number {
  return span.duration[0] * 1e3 + span.duration[1] / 1e6;
}

describe('logs', () => {
  it('write an access line per call with its request id, and never a key or a parameter value', async () => {
    const longSql = `SELECT body FROM notes WHERE body = ? /* ${'x'.repeat(400)} */`;
    const { trailers } = await t.client.callWithTrailers('SqlService', 'Execute', { sql: longSql, params: [v.text(SECRET_PARAM)] }, { key });
    const requestId = trailers['x-request-id']!;
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);

    const entries = logged();
    const access = entries.find((e) => e.request_id === requestId)!;
    expect(access).toMatchObject({ level: 'debug', msg: 'rpc', method: 'tenantd.v1.SqlService/Execute', tenant: 'obs', code: 'OK' });
    expect(access.duration_ms).toBeTypeOf('number');
    expect(access.trace_id).toMatch(/^[0-9a-f]{32}$/);
    expect(String(access.sql).length).toBeLessThanOrEqual(201);
    expect(String(access.sql).startsWith('SELECT body FROM notes')).toBe(true);

    // A Batch logs its statements joined (made only when the debug line is written).
    const batch = await t.client.callWithTrailers(
      'SqlService',
      'Batch',
      { statements: [{ sql: 'INSERT INTO notes (body) VALUES (?)', params: [v.text(SECRET_PARAM)] }, { sql: 'SELECT count(*) FROM notes' }] },
      { key },
    );
    const batchLine = logged().find((e) => e.request_id === batch.trailers['x-request-id'])!;
    expect(batchLine.sql).toBe('INSERT INTO notes (body) VALUES (?); SELECT count(*) FROM notes');

    // Failures are logged at info, with the status and reason.
    expect(entries).toContainEqual(
      expect.objectContaining({ level: 'info', msg: 'rpc', method: 'tenantd.v1.SqlService/Execute', tenant: 'limited', code: 'RESOURCE_EXHAUSTED', reason: 'QUOTA_EXCEEDED' }),
    );
    expect(entries.some((e) => e.method === 'tenantd.v1.TenantService/CreateTenant' && e.code === 'OK')).toBe(true);

    const all = lines.join('');
    expect(all).not.toContain(key);
    expect(all).not.toContain(key.slice(-32));
    expect(all).not.toContain(t.adminKey);
    expect(all).not.toContain(SECRET_PARAM);
  });

  it('returns the request id with an error too', async () => {
    const Client = grpc.makeGenericClientConstructor({}, 'Raw');
    const raw = new Client(`127.0.0.1:${t.server.port}`, grpc.credentials.createInsecure());
    const execute = (grpc.loadPackageDefinition(packageDefinition()) as any).tenantd.v1.SqlService.service.Execute;
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${key}`);
    const error = await new Promise<grpc.ServiceError>((resolve) => {
      raw.makeUnaryRequest(execute.path, execute.requestSerialize, execute.responseDeserialize, { sql: 'SELEKT' }, metadata, (e: grpc.ServiceError | null) => resolve(e!));
    });
    raw.close();
    const requestId = String(error.metadata.get('x-request-id')[0]);
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(logged().find((e) => e.request_id === requestId)).toMatchObject({ level: 'info', code: grpc.status[error.code] });
  });
});

describe('/readyz', () => {
  it('turns 503 as soon as the server drains, while a slow call still finishes', async () => {
    // A drain long enough for the slow call on a loaded host: at the drain timeout its statement is interrupted.
    const d = await startTestServer({ metricsListen: '127.0.0.1:0', drainTimeoutMs: 15_000 });
    const slowKey = await d.createTenant('slow', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1', query_timeout_ms: '15000' } });
    expect((await get(d.server.httpPort, '/readyz')).status).toBe(200);
    // Without an installed exporter there is no /metrics.
    expect((await get(d.server.httpPort, '/metrics')).status).toBe(404);
    const slow = d.sql(slowKey, 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT count(*) FROM c');
    await d.untilCallsInFlight(1);
    const stopping = d.server.shutdown();
    let readyz = await get(d.server.httpPort, '/readyz');
    for (let i = 0; i < 50 && readyz.status !== 503; i++) readyz = await get(d.server.httpPort, '/readyz');
    expect(readyz).toEqual({ status: 503, body: 'draining\n' });
    expect((await get(d.server.httpPort, '/healthz')).status).toBe(200);
    expect(rowsOf(await slow)).toEqual([[2000000n]]);
    await stopping;
    await d.stop();
  });
});

describe('telemetry options', () => {
  it('default to telemetry on and per-tenant series off, and take on/off from flags and the environment', () => {
    expect(loadConfig([], {})).toMatchObject({ telemetry: true, metricsPerTenant: false });
    expect(loadConfig(['--telemetry', 'off', '--metrics-per-tenant', 'on'], {})).toMatchObject({ telemetry: false, metricsPerTenant: true });
    expect(loadConfig([], { TENANTD_TELEMETRY: 'false', TENANTD_METRICS_PER_TENANT: 'true' })).toMatchObject({ telemetry: false, metricsPerTenant: true });
    expect(() => loadConfig(['--telemetry', 'maybe'], {})).toThrow('--telemetry: expected "maybe" to be on or off');
  });

  it('install nothing when telemetry is off, or with no metrics address and no OTLP endpoint', () => {
    const silent = createLogger('silent');
    expect(installTelemetry({ ...defaultConfig(), telemetry: false }, silent)).toBeNull();
    const saved = { ...process.env };
    for (const name of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT']) delete process.env[name];
    try {
      expect(installTelemetry({ ...defaultConfig(), metricsListen: null }, silent)).toBeNull();
    } finally {
      Object.assign(process.env, saved);
    }
  });
});
