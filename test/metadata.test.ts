/**
 * An `x-tenant-id` or `authorization` that was sent but that grpc-js could
 * not read (CR/LF, non-ASCII bytes, invalid UTF-8: grpc-js drops such a
 * value) is refused INVALID_ARGUMENT naming the field, never taken for
 * "not sent". Sent over raw HTTP/2, since grpc-js's own client refuses to send them.
 */
import type { ClientHttp2Session } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { frame, open, rawCall } from '../bench/lib/rawGrpc.ts';
import { packageDefinition } from '../src/protos.ts';
import { startTestServer, type TestServer } from './support/server.ts';

let t: TestServer;
let key: string;
let session: ClientHttp2Session;

beforeAll(async () => {
  t = await startTestServer({ shards: 1 });
  key = await t.createTenant('meta', { quotas: { requests_per_second: '-1', shard_ms_per_second: '-1' } });
  await t.createTenant('other');
  session = open(t.server.port);
});
afterAll(async () => {
  session.close();
  await t.stop();
});

type Method = { path: string; requestSerialize(value: object): Buffer };
const execute = () => (packageDefinition()['tenantd.v1.SqlService'] as Record<string, Method>).Execute!;
const getTenant = () => (packageDefinition()['tenantd.v1.TenantService'] as Record<string, Method>).GetTenant!;
const SELECT = () => frame(execute().requestSerialize({ sql: 'SELECT 1' }));

/** Values grpc-js cannot read; each a latin1 string, sent byte for byte. */
const UNREADABLE: [string, string][] = [
  ['a non-ASCII byte', 'other\u00e9'],
  ['invalid UTF-8', Buffer.from([0x6f, 0x74, 0xc3, 0x28]).toString('latin1')],
  ['a TAB', 'oth\ter'],
  ['a high control byte', 'other\u0085'],
];
// CR, LF, NUL and DEL never reach JavaScript: node's HTTP/2 library (nghttp2)
// removes a header field holding them as it decodes the request, so neither
// grpc-js nor tenantd can tell it was sent (README, "Metadata").

describe('an x-tenant-id that cannot be read', () => {
  it('is refused INVALID_ARGUMENT naming x-tenant-id, for a tenant key and for an admin key', async () => {
    for (const [what, value] of UNREADABLE) {
      for (const who of [key, t.adminKey]) {
        const result = await rawCall(session, execute().path, { authorization: `Bearer ${who}`, 'x-tenant-id': value }, SELECT());
        expect(result.code, `${what}: ${result.message} ${result.failure ?? ''}`).toBe(status.INVALID_ARGUMENT);
        expect(result.reason, what).toBe('UNREADABLE_METADATA');
        expect(result.fields, what).toEqual(['x-tenant-id']);
      }
      const admin = await rawCall(session, getTenant().path, { authorization: `Bearer ${t.adminKey}`, 'x-tenant-id': value }, frame(getTenant().requestSerialize({ name: 'tenants/meta' })));
      expect(admin.code, `GetTenant ${what}`).toBe(status.INVALID_ARGUMENT);
      expect(admin.fields).toEqual(['x-tenant-id']);
    }
  });

  it('is refused when a readable value travels with an unreadable one; two values are never read as the first', async () => {
    const both = await rawCall(session, execute().path, { authorization: `Bearer ${key}`, 'x-tenant-id': ['meta', 'other\u00e9'] }, SELECT());
    expect(both.code).toBe(status.INVALID_ARGUMENT);
    expect(both.fields).toEqual(['x-tenant-id']);
    // Node joins repeated headers into one value ("meta, other"), which names no tenant.
    const two = await rawCall(session, execute().path, { authorization: `Bearer ${t.adminKey}`, 'x-tenant-id': ['meta', 'other'] }, SELECT());
    expect(two.code).not.toBe(status.OK);
  });

  it('leaves readable values as they were', async () => {
    expect((await rawCall(session, execute().path, { authorization: `Bearer ${key}`, 'x-tenant-id': 'meta' }, SELECT())).code).toBe(status.OK);
    expect((await rawCall(session, execute().path, { authorization: `Bearer ${t.adminKey}`, 'x-tenant-id': 'meta' }, SELECT())).code).toBe(status.OK);
    expect((await rawCall(session, execute().path, { authorization: `Bearer ${key}`, 'x-tenant-id': 'other' }, SELECT())).code).toBe(status.PERMISSION_DENIED);
  });
});

describe('an authorization that cannot be read', () => {
  it('is refused INVALID_ARGUMENT naming authorization', async () => {
    for (const [what, value] of UNREADABLE) {
      const result = await rawCall(session, execute().path, { authorization: `Bearer ${key}${value}` }, SELECT());
      expect(result.code, what).toBe(status.INVALID_ARGUMENT);
      expect(result.fields, what).toEqual(['authorization']);
    }
  });
});
