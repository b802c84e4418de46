import { connect } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { status } from '@grpc/grpc-js';
import { packageDefinition, PROTO_DIR } from '../src/protos.ts';
import { rowsOf, startTestServer, v, type TestServer } from './support/server.ts';
import { writeThenCrash } from './support/shardCrash.ts';

let t: TestServer;
let key: string;

beforeAll(async () => {
  t = await startTestServer({ shards: 2 });
  // Near-limit values cost seconds of shard time on a busy machine: the shard-time quota is tested elsewhere.
  key = await t.createTenant('robust', { quotas: { write_bytes_per_second: '-1', requests_per_second: '-1', shard_ms_per_second: '-1' } });
  await t.sql(key, 'CREATE TABLE t (x)');
});
afterAll(() => t.stop());

async function healthy(): Promise<void> {
  const check = await t.client.call('grpc.health.v1.Health', 'Check', { service: '' });
  expect(check.status).toBe('SERVING');
  expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM t'))).toEqual([[0n]]);
}

describe('malformed requests', () => {
  it('answer with a clear status and leave the server healthy', async () => {
    const cases: [string, string, unknown, grpc.status][] = [
      ['SqlService', 'Execute', { sql: '' }, status.INVALID_ARGUMENT],
      ['SqlService', 'Execute', { sql: `SELECT '${'x'.repeat(1024 * 1024 + 10)}'` }, status.INVALID_ARGUMENT],
      ['SqlService', 'Execute', { sql: 'SELECT ?', params: [v.text('a'), v.text('b')] }, status.INVALID_ARGUMENT],
      ['SqlService', 'Execute', { sql: 'SELECT :a', named_params: { 'a;drop': v.int(1) } }, status.INVALID_ARGUMENT],
      ['SqlService', 'Execute', { sql: '\u0000\u0001garbage' }, status.INVALID_ARGUMENT],
      ['SqlService', 'Batch', { statements: [] }, status.INVALID_ARGUMENT],
      ['SqlService', 'Batch', { statements: Array.from({ length: 1001 }, () => ({ sql: 'SELECT 1' })) }, status.INVALID_ARGUMENT],
      ['TenantService', 'GetTenant', { name: 'tenants/../../etc' }, status.INVALID_ARGUMENT],
      ['TenantService', 'GetTenant', { name: 'acme' }, status.INVALID_ARGUMENT],
      ['TenantService', 'GetTenant', { name: 'tenants/nobody' }, status.NOT_FOUND],
      ['TenantService', 'RevokeApiKey', { name: 'tenants/robust/apiKeys/../../x' }, status.INVALID_ARGUMENT],
      ['TenantService', 'CreateTenant', { tenant_id: '../x' }, status.INVALID_ARGUMENT],
      ['TenantService', 'ListTenants', { page_size: -1 }, status.INVALID_ARGUMENT],
    ];
    for (const [service, method, request, code] of cases) {
      const callKey = service === 'TenantService' ? t.adminKey : key;
      const failure = await t.client.failure(service, method, request, { key: callKey });
      expect(failure.code, `${method} ${JSON.stringify(request).slice(0, 60)}`).toBe(code);
      expect(failure.domain).toBe('tenantd');
      expect(failure.reason).not.toBe('');
    }
    await healthy();
  });

  it('answer a request that is not valid protobuf with INVALID_ARGUMENT, not INTERNAL or a crash', async () => {
    const client = new grpc.Client(t.client.address, grpc.credentials.createInsecure());
    const md = t.client.metadata({ key });
    const raw = (bytes: Buffer) =>
      new Promise<grpc.ServiceError | null>((resolve) => {
        client.makeUnaryRequest(
          '/tenantd.v1.SqlService/Execute',
          (b: Buffer) => b,
          (b: Buffer) => b,
          bytes,
          md,
          (error) => resolve(error),
        );
      });
    const error = await raw(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]));
    expect(error).not.toBeNull();
    expect(error!.code).toBe(status.INVALID_ARGUMENT);
    client.close();
    await healthy();
  });

  it('rejects a message over the size limit with RESOURCE_EXHAUSTED', async () => {
    const failure = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT ?', params: [v.blob(Buffer.alloc(17 * 1024 * 1024))] }, { key });
    expect(failure.code).toBe(status.RESOURCE_EXHAUSTED);
    await healthy();
  });

  it('stores a value as large as SQLite allows and refuses larger ones cleanly', async () => {
    await t.sql(key, 'CREATE TABLE big (b BLOB)');
    await t.sql(key, 'INSERT INTO big VALUES (?)', [v.blob(Buffer.alloc(8 * 1024 * 1024, 7))]);
    const failure = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT zeroblob(100000000)' }, { key });
    expect(failure.code).toBe(status.INVALID_ARGUMENT);
    expect(failure.reason).toBe('SQLITE_TOOBIG');
    await healthy();
  });
});

describe('health and reflection', () => {
  it('serves grpc.health.v1 for the server and each service', async () => {
    for (const service of ['', 'tenantd.v1.SqlService', 'tenantd.v1.TenantService']) {
      expect((await t.client.call('grpc.health.v1.Health', 'Check', { service })).status).toBe('SERVING');
    }
    const unknown = await t.client.failure('grpc.health.v1.Health', 'Check', { service: 'nope.Service' });
    expect(unknown.code).toBe(status.NOT_FOUND);
  });

  for (const version of ['v1', 'v1alpha']) {
    it(`lists every service through server reflection ${version}`, async () => {
      const definition = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, { includeDirs: [PROTO_DIR], keepCase: true });
      const pkg = (grpc.loadPackageDefinition(definition) as any).grpc.reflection[version];
      const client = new pkg.ServerReflection(t.client.address, grpc.credentials.createInsecure());
      const stream = client.ServerReflectionInfo();
      const answer = new Promise<any>((resolve, reject) => {
        stream.on('data', resolve);
        stream.on('error', reject);
      });
      stream.write({ list_services: '' });
      const response = await answer;
      stream.end();
      client.close();
      const names = response.list_services_response.service.map((s: { name: string }) => s.name);
      expect([...names].sort()).toEqual([
        'grpc.health.v1.Health',
        'grpc.reflection.v1.ServerReflection',
        'grpc.reflection.v1alpha.ServerReflection',
        'tenantd.v1.ClusterService',
        'tenantd.v1.EventService',
        'tenantd.v1.SchemaService',
        'tenantd.v1.SqlService',
        'tenantd.v1.TenantService',
      ]);
    });
  }
});

describe('shard workers', () => {
  it('restarts a shard that dies; other shards never notice', async () => {
    const shards = t.server.router.shards;
    const victim = shards[0]!;
    const ids = ['sa', 'sb', 'sc', 'sd', 'se', 'sf'];
    const keys = new Map<string, string>();
    for (const id of ids) keys.set(id, await t.createTenant(id));
    const { shardOf } = await import('../src/routing/shardRouter.ts');
    const onVictim = ids.find((id) => shardOf(id, shards.length) === 0)!;
    const elsewhere = ids.find((id) => shardOf(id, shards.length) !== 0)!;

    const before = victim.restartCount;
    const exited = new Promise((r) => victim.thread.once('exit', r));
    // The worker dies of an uncaught exception, as a bug would kill it. (Not
    // worker.terminate(): terminating a thread inside a SQLite call aborts
    // the whole process in better-sqlite3, so tenantd never does that.)
    const crash = victim.call({ op: 'crash', tenantId: '' }).catch((e: unknown) => e);
    // Queued behind the crash: in flight when the worker dies.
    const inFlight = t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key: keys.get(onVictim)! });
    const failure = await inFlight;
    expect(failure.code).toBe(status.UNAVAILABLE);
    expect(failure.reason).toBe('SHARD_RESTARTING');
    await exited;
    expect(await crash).toMatchObject({ reason: 'SHARD_RESTARTING' });
    expect(rowsOf(await t.sql(keys.get(elsewhere)!, 'SELECT 1'))).toEqual([[1n]]);

    // The replacement serves the victim's tenants again.
    let answered = false;
    for (let attempt = 0; attempt < 50 && !answered; attempt++) {
      try {
        await t.sql(keys.get(onVictim)!, 'SELECT 1');
        answered = true;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    expect(answered).toBe(true);
    expect(victim.restartCount).toBe(before + 1);
  });

  it('answers a write that committed before its shard died in the same batch', async () => {
    const shards = t.server.router.shards;
    const { shardOf } = await import('../src/routing/shardRouter.ts');
    const [id, reader] = ['wa', 'wb', 'wc', 'wd', 'we', 'wf', 'wg', 'wh'].filter((x) => shardOf(x, shards.length) === 1);
    const key = await t.createTenant(id!);
    const readerKey = await t.createTenant(reader!);
    await t.sql(key, 'CREATE TABLE w (x)');
    // Enough quick calls that the shard counts the reader as quick (its open was not).
    for (let i = 0; i < 12; i++) await t.sql(readerKey, 'SELECT 1');
    // One message to the worker: a write, another tenant's read, then the crash. The write's answer
    // went out as soon as it committed: a committed write is never reported as failed.
    const { rowsAffected, rowsAfterRestart } = await writeThenCrash(t, shards[1]!, { id: id!, key }, reader!);
    expect(rowsAffected).toBe('1');
    // And it is there, once, after the restart.
    expect(rowsAfterRestart).toEqual([[1n]]);
  });
});

describe('a Query whose client does not read', () => {
  const BIG_RESULT = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 48) SELECT x, randomblob(1048576) FROM c';

  it('is ended RESOURCE_EXHAUSTED once its tenant’s unread results pass the bound, instead of the server holding them all', async () => {
    // A bound of 16 MiB per tenant here (256 MiB, one whole result, by default).
    const small = await startTestServer({ shards: 1, queryUnreadLimits: { perTenant: 16 * 1024 * 1024, total: 1024 * 1024 * 1024 } });
    const hoarder = await small.createTenant('hoarder', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1' } });
    // Plain HTTP/2 with the stream paused: flow control really holds the server's writes back.
    const session = connect(`http://127.0.0.1:${small.server.port}`);
    const method = (packageDefinition()['tenantd.v1.SqlService'] as Record<string, { path: string; requestSerialize(v: object): Buffer }>).Query!;
    const body = method.requestSerialize({ sql: BIG_RESULT, params: [] });
    const frame = Buffer.concat([Buffer.from([0]), Buffer.from(new Uint32Array([body.length]).buffer).reverse(), body]);
    const stream = session.request({ ':method': 'POST', ':path': method.path, 'content-type': 'application/grpc', te: 'trailers', authorization: `Bearer ${hoarder}` });
    const trailers = new Promise<Record<string, unknown>>((resolve) => stream.once('trailers', (headers) => resolve(headers)));
    stream.end(frame);
    stream.pause();
    // The shard produces all 48 MiB in well under this; the server keeps at most its limits of them.
    await new Promise((r) => setTimeout(r, 1_500));
    let received = 0;
    stream.on('data', (data: Buffer) => (received += data.length));
    stream.resume();
    const ended = await trailers;
    expect(ended['grpc-status']).toBe(String(status.RESOURCE_EXHAUSTED));
    expect(decodeURIComponent(String(ended['grpc-message']))).toContain('too slowly');
    expect(received).toBeLessThan(40 * 1024 * 1024);
    session.close();
    // The tenant's budget is whole again: the same query to a client that reads gets all of it.
    const chunks = await small.client.stream<{ rows: unknown[] }>('SqlService', 'Query', { sql: 'SELECT 1 UNION ALL SELECT 2' }, { key: hoarder });
    expect(chunks.reduce((n, c) => n + c.rows.length, 0)).toBe(2);
    await small.stop();
  }, 30_000);

  it('is streamed whole to a client that reads it', async () => {
    const reader = await t.createTenant('reader', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1' } });
    const chunks = await t.client.stream<{ rows: { values: unknown[] }[] }>('SqlService', 'Query', { sql: BIG_RESULT }, { key: reader });
    expect(chunks.reduce((n, c) => n + c.rows.length, 0)).toBe(48);
  }, 30_000);
});
