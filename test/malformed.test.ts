/**
 * Requests that do not decode, and request framing grpc-js refuses, are
 * answered with a clear status that is never INTERNAL or UNKNOWN: bodies that
 * are not protobuf on every method get INVALID_ARGUMENT MALFORMED_REQUEST
 * with the decoder's words; so do an unparsable grpc-timeout and a body
 * flagged compressed that does not decompress. Every valid protobuf decodes,
 * varints of any legal length included.
 */
import { gzipSync } from 'node:zlib';
import type { ClientHttp2Session } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { frame, open, rawCall, type RawStatus } from '../bench/lib/rawGrpc.ts';
import { packageDefinition } from '../src/protos.ts';
import { rowsOf, startTestServer, type TestServer } from './support/server.ts';

let t: TestServer;
let key: string;
let session: ClientHttp2Session;

beforeAll(async () => {
  t = await startTestServer({ shards: 1 });
  key = await t.createTenant('mal', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1' } });
  session = open(t.server.port);
});
afterAll(async () => {
  session.close();
  await t.stop();
});

type Method = { path: string; requestSerialize(value: object): Buffer };

/** Every method the server has: ours, health and reflection. */
function allPaths(): string[] {
  const paths: string[] = [];
  for (const [name, entry] of Object.entries(packageDefinition())) {
    if ('format' in entry || !name.includes('.')) continue;
    for (const method of Object.values(entry as Record<string, Method>)) if (typeof method.path === 'string') paths.push(method.path);
  }
  paths.push('/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo', '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo');
  return paths;
}

function method(service: string, name: string): Method {
  return (packageDefinition()[service] as Record<string, Method>)[name]!;
}

const auth = () => ({ authorization: `Bearer ${key}` });

function expectMalformed(result: RawStatus, field: string, what: string): void {
  expect(result.code, `${what}: ${result.message} ${result.failure ?? ''}`).toBe(status.INVALID_ARGUMENT);
  expect(result.reason, what).toBe('MALFORMED_REQUEST');
  expect(result.fields, what).toEqual([field]);
}

async function stillServes(): Promise<void> {
  expect(rowsOf(await t.sql(key, 'SELECT 6 * 7'))).toEqual([[42n]]);
}

describe('a request body that is not protobuf', () => {
  const BODIES: [string, Buffer][] = [
    ['a wire type that does not exist', Buffer.from([0x7f])],
    ['a length past the end', Buffer.from([0x7a, 0x64, 0x01])],
    ['a group that never ends', Buffer.from([0x7b])],
  ];

  it('gets INVALID_ARGUMENT MALFORMED_REQUEST on every method, with the decoder’s reason', async () => {
    const paths = allPaths();
    expect(paths.length).toBeGreaterThanOrEqual(27);
    for (const path of paths) {
      for (const [what, body] of BODIES) {
        // An admin key: a client stream's handler checks the key before it reads a message.
        const result = await rawCall(session, path, { authorization: `Bearer ${t.adminKey}` }, frame(body));
        expectMalformed(result, 'request', `${path} ${what}`);
        expect(result.message).toContain('does not decode');
      }
    }
    await stillServes();
  });

  it('ends a client stream at its first bad message', async () => {
    const restore = method('tenantd.v1.TenantService', 'RestoreTenant');
    const good = restore.requestSerialize({ name: 'tenants/mal' });
    const result = await rawCall(session, restore.path, { authorization: `Bearer ${t.adminKey}` }, Buffer.concat([frame(good), frame(Buffer.from([0x7f]))]));
    expectMalformed(result, 'request', 'RestoreTenant');
  });
});

describe('what grpc-js refuses before any handler', () => {
  const execute = () => method('tenantd.v1.SqlService', 'Execute');
  const body = () => execute().requestSerialize({ sql: 'SELECT 1' });

  it('answers an unparsable grpc-timeout INVALID_ARGUMENT naming the header', async () => {
    // (grpc-js's pattern is not anchored: '-1S' reads as 1 s and '123456789S' as 23456789 s; lenient, not a failure.)
    for (const timeout of ['abc', '', 'S', '1x', 'xS']) {
      const result = await rawCall(session, execute().path, { ...auth(), 'grpc-timeout': timeout }, frame(body()));
      if (timeout === '') {
        expect(result.code).not.toBe(status.INTERNAL);
        continue;
      }
      expectMalformed(result, 'grpc-timeout', `grpc-timeout ${timeout}`);
    }
    await stillServes();
  });

  it('answers a body flagged gzip or deflate that does not decompress INVALID_ARGUMENT', async () => {
    for (const encoding of ['gzip', 'deflate']) {
      for (const garbage of [Buffer.from('not compressed at all'), gzipSync(body()).subarray(0, 12), Buffer.alloc(0)]) {
        const result = await rawCall(session, execute().path, { ...auth(), 'grpc-encoding': encoding }, frame(garbage, true));
        expectMalformed(result, 'grpc-encoding', `${encoding} ${garbage.toString('hex').slice(0, 20)}`);
      }
    }
    // A body that is compressed properly still works.
    const ok = await rawCall(session, execute().path, { ...auth(), 'grpc-encoding': 'gzip' }, frame(gzipSync(body()), true));
    expect(ok.code).toBe(status.OK);
    await stillServes();
  });

  it('answers an unknown grpc-encoding UNIMPLEMENTED and a message over the size limit RESOURCE_EXHAUSTED', async () => {
    const unknown = await rawCall(session, execute().path, { ...auth(), 'grpc-encoding': 'br' }, frame(body(), true));
    expect(unknown.code).toBe(status.UNIMPLEMENTED);
    expect(unknown.message).toContain('unsupported encoding');
    // Declared larger than 16 MiB: refused from the length prefix alone, before the body arrives.
    const huge = await rawCall(session, execute().path, auth(), frame(Buffer.alloc(16), false, 64 * 1024 * 1024));
    expect(huge.code).toBe(status.RESOURCE_EXHAUSTED);
    await stillServes();
  });
});

describe('valid protobuf', () => {
  /** `value` as a varint of exactly `bytes` bytes (padded with continuation bytes; 10 for a negative). */
  function varint(value: bigint, bytes: number): number[] {
    let v = BigInt.asUintN(64, value);
    const out: number[] = [];
    for (let i = 0; i < bytes; i++) {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (i < bytes - 1) byte |= 0x80;
      out.push(byte);
    }
    return out;
  }

  it('decodes int32 fields written as varints of every legal length, negative ones as 10 bytes', async () => {
    const query = method('tenantd.v1.SqlService', 'Query');
    const sql = Buffer.from('SELECT 1 UNION ALL SELECT 2');
    for (let bytes = 1; bytes <= 10; bytes++) {
      // rows_per_chunk (field 4) first, so a misread length would swallow the sql field after it.
      const request = Buffer.concat([Buffer.from([0x20, ...varint(1n, bytes)]), Buffer.from([0x0a, sql.length]), sql]);
      const result = await rawCall(session, query.path, auth(), frame(request));
      expect(result.code, `rows_per_chunk as ${bytes} bytes: ${result.message}`).toBe(status.OK);
    }
    // An int64 value written into an int32 field keeps its low 32 bits: 2^32 + 1 reads as 1.
    const request = Buffer.concat([Buffer.from([0x20, ...varint((1n << 32n) + 1n, 6)]), Buffer.from([0x0a, sql.length]), sql]);
    expect((await rawCall(session, query.path, auth(), frame(request))).code).toBe(status.OK);
    // -1 travels as 10 bytes and decodes; the handler then judges the value itself.
    const negative = Buffer.concat([Buffer.from([0x0a, sql.length]), sql, Buffer.from([0x20, ...varint(-1n, 10)])]);
    const refused = await rawCall(session, query.path, auth(), frame(negative));
    expect(refused.code).toBe(status.INVALID_ARGUMENT);
    expect(refused.fields).toEqual(['rows_per_chunk']);
    const list = method('tenantd.v1.TenantService', 'ListTenants');
    for (let bytes = 1; bytes <= 10; bytes++) {
      const result = await rawCall(session, list.path, { authorization: `Bearer ${t.adminKey}` }, frame(Buffer.from([0x08, ...varint(5n, bytes)])));
      expect(result.code, `page_size as ${bytes} bytes`).toBe(status.OK);
    }
    await stillServes();
  });
});
