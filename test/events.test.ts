/**
 * EventService against a real server: positions, optimistic appends,
 * reads with filters, retention that never reuses a position, isolation
 * from tenant SQL and other tenants, and Subscribe (backlog, then live).
 */
import { rmSync } from 'node:fs';
import { connect } from 'node:http2';
import Database from 'better-sqlite3';
import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageDefinition } from '../src/protos.ts';
import type { Config } from '../src/config.ts';
import { RpcError, decodeStatus, freshDataDir, startTestServer, type DecodedStatus, type TestServer } from './support/server.ts';

let t: TestServer;
const admin = () => ({ key: t.adminKey });
const UNLIMITED = { quotas: { requests_per_second: '-1', write_bytes_per_second: '-1', concurrent_requests: '-1', shard_ms_per_second: '-1' } };

beforeAll(async () => {
  t = await startTestServer({ shards: 2 });
});
afterAll(() => t.stop());

const event = (type: string, text: string, metadata: Record<string, string> = {}) => ({ type, data: Buffer.from(text), metadata });

function append(key: string, events: object[], expected?: number): Promise<{ positions: string[] }> {
  return t.client.call('EventService', 'Append', { events, ...(expected === undefined ? {} : { expected_position: String(expected) }) }, { key });
}

function read(key: string, from: number, limit = 0, types: string[] = []): Promise<{ events: any[]; next_position: string }> {
  return t.client.call('EventService', 'Read', { from_position: String(from), limit, types }, { key });
}

async function failure(promise: Promise<unknown>): Promise<DecodedStatus> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof RpcError) return error.status;
    throw error;
  }
  throw new Error('the call succeeded but was expected to fail');
}

/** Collects a subscription's events until `count` arrived; `then` runs once it is streaming. */
/**
 * A Subscribe whose client really stops reading: plain HTTP/2, the stream
 * paused, so flow control holds the server's writes back (grpc-js clients
 * keep reading into their own memory). readToEnd() reads what was sent
 * until the server ends the call, and resolves with its trailers.
 */
async function stalledSubscriber(server: TestServer, key: string): Promise<{ readToEnd(): Promise<Record<string, unknown>>; close(): void }> {
  const open = server.server.callsInFlight();
  const session = connect(`http://127.0.0.1:${server.server.port}`);
  const method = (packageDefinition()['tenantd.v1.EventService'] as Record<string, { path: string; requestSerialize(v: object): Buffer }>).Subscribe!;
  const body = method.requestSerialize({ from_position: '1' });
  const frame = Buffer.concat([Buffer.from([0]), Buffer.from(new Uint32Array([body.length]).buffer).reverse(), body]);
  const stream = session.request({ ':method': 'POST', ':path': method.path, 'content-type': 'application/grpc', te: 'trailers', authorization: `Bearer ${key}` });
  // A call ended before its first message answers trailers-only: the status comes in the response headers.
  const trailers = new Promise<Record<string, unknown>>((resolve) => {
    stream.once('trailers', (headers) => resolve(headers));
    stream.once('response', (headers) => {
      if (headers['grpc-status'] !== undefined) resolve(headers);
    });
  });
  stream.end(frame);
  stream.pause();
  // The server has the call; a moment more and it has subscribed.
  await server.untilCallsInFlight(open + 1);
  await new Promise((r) => setTimeout(r, 100));
  return {
    async readToEnd() {
      stream.on('data', () => undefined);
      stream.resume();
      const ended = await trailers;
      session.close();
      return ended;
    },
    close: () => session.destroy(),
  };
}

function collect(stream: grpc.ClientReadableStream<any>, count: number): Promise<any[]> {
  const got: any[] = [];
  return new Promise((resolve, reject) => {
    stream.on('data', (e) => {
      got.push(e);
      if (got.length === count) resolve(got);
    });
    stream.on('error', (error: grpc.ServiceError) => reject(new RpcError(decodeStatus(error))));
    stream.on('end', () => resolve(got));
  });
}

describe('Append and Read', () => {
  it('gives positions from 1 and reads events back with their data, metadata and time', async () => {
    const key = await t.createTenant('log', UNLIMITED);
    // An explicit time (well inside the plan's event retention).
    const tenMinutesAgo = String(Math.floor(Date.now() / 1000) - 600);
    const at = { seconds: tenMinutesAgo, nanos: 250_000_000 };
    const first = await append(key, [event('created', 'a', { by: 'ada' }), { ...event('paid', 'b'), time: at }]);
    expect(first.positions).toEqual(['1', '2']);
    expect((await append(key, [event('shipped', 'c')])).positions).toEqual(['3']);

    const all = await read(key, 1);
    expect(all.events.map((e) => [e.position, e.type, e.data.toString()])).toEqual([
      ['1', 'created', 'a'],
      ['2', 'paid', 'b'],
      ['3', 'shipped', 'c'],
    ]);
    expect(all.events[0].metadata).toEqual({ by: 'ada' });
    expect(all.events[1].time).toMatchObject({ seconds: tenMinutesAgo, nanos: 250_000_000 });
    expect(Math.abs(Number(all.events[0].time.seconds) * 1000 - Date.now())).toBeLessThan(60_000);
    expect(all.next_position).toBe('4');

    const page = await read(key, 2, 1);
    expect(page.events.map((e) => e.position)).toEqual(['2']);
    expect(page.next_position).toBe('3');
    const paid = await read(key, 1, 0, ['paid', 'shipped']);
    expect(paid.events.map((e) => e.type)).toEqual(['paid', 'shipped']);
    expect(paid.next_position).toBe('4');
    const none = await read(key, 1, 0, ['refunded']);
    expect(none.events).toEqual([]);
    expect(none.next_position).toBe('4');

    const usage = await t.client.call('TenantService', 'GetTenantUsage', { name: 'tenants/log' }, admin());
    expect(usage.events_total).toBe('3');
  });

  it('appends with expected_position only when the log is where the caller thinks', async () => {
    const key = await t.createTenant('optimistic', UNLIMITED);
    expect((await append(key, [event('a', '1')], 0)).positions).toEqual(['1']);
    expect((await append(key, [event('b', '2')], 1)).positions).toEqual(['2']);
    const stale = await failure(append(key, [event('c', '3'), event('d', '4')], 1));
    expect(stale.code).toBe(status.ABORTED);
    expect(stale.reason).toBe('POSITION_MISMATCH');
    expect(stale.errorMetadata).toMatchObject({ expected_position: '1', last_position: '2' });
    // Nothing of the refused append was written.
    expect((await read(key, 1)).events.map((e) => e.type)).toEqual(['a', 'b']);
  });

  it('removes events past event_retention_hours and never gives a position twice', async () => {
    const key = await t.createTenant('retained', { quotas: { ...UNLIMITED.quotas, event_retention_hours: '1' } });
    const twoHoursAgo = { seconds: String(Math.floor(Date.now() / 1000) - 7200), nanos: 0 };
    await append(key, [{ ...event('old', 'x'), time: twoHoursAgo }, { ...event('old', 'y'), time: twoHoursAgo }]);
    expect((await append(key, [event('new', 'z')])).positions).toEqual(['3']);
    const left = await read(key, 1);
    expect(left.events.map((e) => [e.position, e.type])).toEqual([['3', 'new']]);
    expect((await append(key, [event('newer', 'w')], 3)).positions).toEqual(['4']);
  });

  it('keeps the log out of tenant SQL, other tenants and READ_ONLY appends', async () => {
    const key = await t.createTenant('private-log', UNLIMITED);
    const other = await t.createTenant('other-log', UNLIMITED);
    await append(key, [event('secret', 'only mine')]);
    const sql = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT * FROM _tenantd_events' }, { key });
    expect([status.PERMISSION_DENIED, status.INVALID_ARGUMENT]).toContain(sql.code);
    expect((await read(other, 1)).events).toEqual([]);
    const { key: readOnly } = await t.client.call('TenantService', 'CreateApiKey', { parent: 'tenants/private-log', api_key: { role: 'READ_ONLY' } }, admin());
    expect((await read(readOnly, 1)).events).toHaveLength(1);
    expect((await failure(append(readOnly, [event('x', 'y')]))).code).toBe(status.PERMISSION_DENIED);
  });

  it('refuses malformed appends and reads with the field named', async () => {
    const key = await t.createTenant('strict-log', UNLIMITED);
    const empty = await failure(append(key, []));
    expect(empty.code).toBe(status.INVALID_ARGUMENT);
    const noType = await failure(append(key, [event('', 'x')]));
    expect(noType.fieldViolations.map((f) => f.field)).toEqual(['events[0].type']);
    const withPosition = await failure(append(key, [{ ...event('a', 'b'), position: '7' }]));
    expect(withPosition.fieldViolations.map((f) => f.field)).toEqual(['events[0].position']);
    const bigLimit = await failure(read(key, 1, 5_000));
    expect(bigLimit.fieldViolations.map((f) => f.field)).toEqual(['limit']);
    expect((await read(key, 1)).events).toEqual([]);
  });

  it('pages reads by size as well as count, and Subscribe follows the pages', async () => {
    const key = await t.createTenant('bulky', UNLIMITED);
    const mib = 'x'.repeat(1024 * 1024 - 16);
    await append(key, Array.from({ length: 6 }, (_, i) => event('blob', `${i}${mib}`)));
    const first = await read(key, 1, 100);
    // 3 MiB a page: under the 4 MiB a gRPC client accepts by default.
    expect(first.events.map((e) => e.position)).toEqual(['1', '2', '3']);
    expect(first.next_position).toBe('4');
    const rest = await read(key, 4, 100);
    expect(rest.events.map((e) => e.position)).toEqual(['4', '5', '6']);
    expect(rest.next_position).toBe('7');
    const stream = t.client.openStream('EventService', 'Subscribe', { from_position: '1' }, { key });
    const got = await collect(stream, 6);
    expect(got.map((e) => e.data.subarray(0, 1).toString())).toEqual(['0', '1', '2', '3', '4', '5']);
    stream.cancel();
  });

  it('counts event payloads against write_bytes_per_second', async () => {
    const key = await t.createTenant('chatty', { quotas: { write_bytes_per_second: '1000' } });
    const refused = await failure(append(key, [event('big', 'x'.repeat(5_000))]));
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.reason).toBe('QUOTA_EXCEEDED');
  });
});

describe('Subscribe', () => {
  it('sends the backlog, then new events live, in order and filtered by type', async () => {
    const key = await t.createTenant('live', UNLIMITED);
    await append(key, [event('a', '1'), event('b', '2'), event('a', '3')]);
    const all = t.client.openStream('EventService', 'Subscribe', { from_position: '2' }, { key });
    const onlyA = t.client.openStream('EventService', 'Subscribe', { from_position: '1', types: ['a'] }, { key });
    const gotAll = collect(all, 4);
    const gotA = collect(onlyA, 3);
    // Give both time to read their backlog, then append live.
    await new Promise((r) => setTimeout(r, 200));
    await append(key, [event('b', '4'), event('a', '5')]);
    expect((await gotAll).map((e) => [e.position, e.type])).toEqual([
      ['2', 'b'],
      ['3', 'a'],
      ['4', 'b'],
      ['5', 'a'],
    ]);
    expect((await gotA).map((e) => e.position)).toEqual(['1', '3', '5']);
    all.cancel();
    onlyA.cancel();
  });

  it('ends a subscription with FAILED_PRECONDITION when the tenant is suspended', async () => {
    const key = await t.createTenant('paused', UNLIMITED);
    const stream = t.client.openStream('EventService', 'Subscribe', { from_position: '1' }, { key });
    const ended = collect(stream, 1_000).then(
      () => null,
      (e: RpcError) => e.status,
    );
    await new Promise((r) => setTimeout(r, 200));
    await t.client.call('TenantService', 'SuspendTenant', { name: 'tenants/paused' }, admin());
    const error = await ended;
    expect(error?.code).toBe(status.FAILED_PRECONDITION);
    expect(error?.reason).toBe('TENANT_SUSPENDED');
  });
});

describe('Subscribe limits', () => {
  it('allows 16 subscriptions per tenant at a time', async () => {
    const key = await t.createTenant('popular', UNLIMITED);
    await append(key, [event('hello', 'x')]);
    const streams = Array.from({ length: 16 }, () => t.client.openStream('EventService', 'Subscribe', { from_position: '1' }, { key }));
    // Each has its first event, so each is registered.
    await Promise.all(streams.map((stream) => new Promise((resolve) => stream.once('data', resolve))));
    const extra = t.client.openStream('EventService', 'Subscribe', { from_position: '1' }, { key });
    const refused = await collect(extra, 1).then(
      () => null,
      (e: RpcError) => e.status,
    );
    expect(refused?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused?.reason).toBe('TOO_MANY_SUBSCRIBERS');
    for (const stream of streams) {
      stream.on('error', () => undefined);
      stream.cancel();
    }
  });

  it('ends a subscriber that stops reading before the events waiting for it pass 8 MiB', async () => {
    const key = await t.createTenant('firehose', UNLIMITED);
    const stalled = await stalledSubscriber(t, key);
    const mib = Buffer.alloc(1024 * 1024 - 64, 7);
    for (let i = 0; i < 6; i++) await append(key, Array.from({ length: 8 }, () => ({ type: 'big', data: mib, metadata: {} })));
    const ended = await stalled.readToEnd();
    expect(ended['grpc-status']).toBe(String(status.RESOURCE_EXHAUSTED));
    expect(decodeURIComponent(String(ended['grpc-message']))).toContain('waited for this subscriber');
  });

  it('ends subscribers once the server-wide budget for unread data runs out, and gives their share back', async () => {
    // 3 MiB for everything waiting for slow clients, server-wide; each subscriber alone may hold 8 MiB.
    const small = await startTestServer({ shards: 2, queryUnreadLimits: { perTenant: 64 * 1024 * 1024, total: 3 * 1024 * 1024 } });
    try {
      const a = await small.createTenant('budget-a', UNLIMITED);
      const b = await small.createTenant('budget-b', UNLIMITED);
      const [stalledA, stalledB] = [await stalledSubscriber(small, a), await stalledSubscriber(small, b)];
      const chunk = Buffer.alloc(64 * 1024, 3);
      // 4 MiB to each tenant: far under one subscriber's 8 MiB, more than the server's 3 MiB together.
      for (let i = 0; i < 8; i++) {
        for (const key of [a, b]) await small.client.call('EventService', 'Append', { events: Array.from({ length: 8 }, () => ({ type: 'big', data: chunk, metadata: {} })) }, { key });
      }
      // One of them at least is ended; the other may read on.
      const ended = await Promise.race([stalledA.readToEnd(), stalledB.readToEnd()]);
      expect(ended['grpc-status']).toBe(String(status.RESOURCE_EXHAUSTED));
      expect(decodeURIComponent(String(ended['grpc-message']))).toContain('budget for data waiting');
      stalledA.close();
      stalledB.close();
      // Whatever waited was given back: a new subscriber gets live events.
      const { positions } = await small.client.call('EventService', 'Append', { events: [event('before', 'x')] }, { key: a });
      const live = small.client.openStream('EventService', 'Subscribe', { from_position: String(BigInt(positions[0]) + 1n) }, { key: a });
      const first = new Promise((resolve) => live.once('data', resolve));
      await new Promise((r) => setTimeout(r, 200));
      await small.client.call('EventService', 'Append', { events: [event('after', 'x')] }, { key: a });
      expect(await first).toMatchObject({ type: 'after' });
      live.on('error', () => undefined);
      live.cancel();
    } finally {
      await small.stop();
    }
  }, 60_000);
});

describe('Subscribe bounds and ends', () => {
  it('ends a subscriber that stops reading before more than 10,000 events wait for it (small events, far under 8 MiB)', async () => {
    const key = await t.createTenant('eventflood', UNLIMITED);
    const stalled = await stalledSubscriber(t, key);
    // 20,000 events of 100 bytes: 2 MB in all, a quarter of the byte bound.
    const small = Buffer.alloc(100, 1);
    for (let i = 0; i < 20; i++) await append(key, Array.from({ length: 1000 }, () => ({ type: 'small', data: small, metadata: {} })));
    const ended = await stalled.readToEnd();
    expect(ended['grpc-status']).toBe(String(status.RESOURCE_EXHAUSTED));
    expect(decodeURIComponent(String(ended['grpc-message']))).toMatch(/10,?000 events/);
  }, 60_000);

  it('ends a subscription with NOT_FOUND when its tenant is deleted', async () => {
    const key = await t.createTenant('deleted-live', UNLIMITED);
    await append(key, [event('hello', 'x')]);
    const stream = t.client.openStream('EventService', 'Subscribe', { from_position: '1' }, { key });
    const first = new Promise((resolve) => stream.once('data', resolve));
    const ended = new Promise<DecodedStatus | null>((resolve) => {
      stream.on('error', (e: grpc.ServiceError) => resolve(decodeStatus(e)));
      stream.on('end', () => resolve(null));
    });
    stream.on('data', () => undefined);
    await first;
    await t.client.call('TenantService', 'DeleteTenant', { name: 'tenants/deleted-live', force: true }, admin());
    const error = await ended;
    expect(error?.code).toBe(status.NOT_FOUND);
    expect(error?.reason).toBe('TENANT_NOT_FOUND');
  });
});

describe('retention in the background', () => {
  it('removes expired events from the database between calls, without an Append', async () => {
    const other = await startTestServer({ shards: 1, eventSweepMs: 100 }, { keepDataDir: true });
    try {
      const key = await other.createTenant('swept', { quotas: { ...UNLIMITED.quotas, event_retention_hours: '1' } });
      const twoHoursAgo = { seconds: String(Math.floor(Date.now() / 1000) - 7200), nanos: 0 };
      await other.client.call('EventService', 'Append', { events: [{ ...event('old', 'x'), time: twoHoursAgo }, event('new', 'y')] }, { key });
      // Reads never show an expired event, swept or not.
      const read = await other.client.call('EventService', 'Read', { from_position: '1' }, { key });
      expect(read.events.map((e: { type: string }) => e.type)).toEqual(['new']);
      await new Promise((r) => setTimeout(r, 400));
    } finally {
      await other.stop();
    }
    // The row itself is gone from the tenant's file.
    const db = new Database(`${other.dataDir}/tenants/swept/db.sqlite`, { readonly: true });
    try {
      expect(db.prepare('SELECT type FROM _tenantd_events ORDER BY position').pluck().all()).toEqual(['new']);
    } finally {
      db.close();
      rmSync(other.dataDir, { recursive: true, force: true });
    }
  });
});

describe('retention in the background, beyond the open tenants', () => {
  /** The event types left in a tenant's file, read after its server stopped. */
  function typesInFile(dataDir: string, tenantId: string): string[] {
    const db = new Database(`${dataDir}/tenants/${tenantId}/db.sqlite`, { readonly: true });
    try {
      return db.prepare('SELECT type FROM _tenantd_events ORDER BY position').pluck().all() as string[];
    } finally {
      db.close();
    }
  }

  const hoursAgo = (hours: number) => ({ seconds: String(Math.floor(Date.now() / 1000) - hours * 3600), nanos: 0 });

  /** Runs `body` against a server of its own, stops it, and returns the event types left in `tenantId`'s file. */
  async function typesLeftAfter(config: Partial<Config>, tenantId: string, body: (server: TestServer) => Promise<void>): Promise<string[]> {
    const other = await startTestServer(config, { keepDataDir: true });
    try {
      await body(other);
    } finally {
      await other.stop();
    }
    try {
      return typesInFile(other.dataDir, tenantId);
    } finally {
      rmSync(other.dataDir, { recursive: true, force: true });
    }
  }

  it('sweeps a tenant whose database the pool has closed, without a call from it', async () => {
    // One open database per shard: creating the second tenant closes the first.
    const left = await typesLeftAfter({ shards: 1, maxOpenDbs: 1, eventSweepMs: 100 }, 'closed', async (other) => {
      const key = await other.createTenant('closed', { quotas: { ...UNLIMITED.quotas, event_retention_hours: '1' } });
      await other.client.call('EventService', 'Append', { events: [{ ...event('old', 'x'), time: hoursAgo(2) }, event('new', 'y')] }, { key });
      await other.createTenant('neighbour');
      await new Promise((r) => setTimeout(r, 400));
    });
    expect(left).toEqual(['new']);
  });

  it('still sweeps a closed tenant after a restart, without a call from it', async () => {
    const dataDir = freshDataDir();
    const config = { dataDir, shards: 1, eventSweepMs: 100 };
    const first = await startTestServer(config, { keepDataDir: true });
    let expiresAtMs: number;
    try {
      const key = await first.createTenant('restarted', { quotas: { ...UNLIMITED.quotas, event_retention_hours: '1' } });
      // The old event expires 5 s from now, once the slow part (start, create) is behind: after the first server has stopped (checked below).
      const expiresAtS = Math.floor(Date.now() / 1000) + 5;
      expiresAtMs = expiresAtS * 1000;
      await first.client.call('EventService', 'Append', { events: [{ ...event('old', 'x'), time: { seconds: String(expiresAtS - 3600), nanos: 0 } }, event('new', 'y')] }, { key });
    } finally {
      // Open at shutdown: the shard notes the tenant as it closes it.
      await first.stop();
    }
    expect(Date.now()).toBeLessThan(expiresAtMs);
    expect(typesInFile(dataDir, 'restarted')).toEqual(['old', 'new']);
    // A second server on the same data: nothing calls the tenant, its database stays closed.
    const second = await startTestServer(config, { keepDataDir: true });
    let left: string[] = [];
    try {
      // Until the sweep has run past the expiry (every 100 ms), not a fixed wait: a loaded host starts the shard late.
      const deadline = expiresAtMs + 15_000;
      for (;;) {
        await new Promise((r) => setTimeout(r, 200));
        if (Date.now() < expiresAtMs) continue;
        try {
          left = typesInFile(dataDir, 'restarted');
        } catch {
          // Busy with the sweep this instant: look again.
        }
        if (left.length === 1 || Date.now() > deadline) break;
      }
    } finally {
      await second.stop();
    }
    expect(left).toEqual(['new']);
    expect(typesInFile(dataDir, 'restarted')).toEqual(['new']);
    rmSync(dataDir, { recursive: true, force: true });
  }, 40_000);

  it('sweeps with the retention UpdateTenant set, not the one the last events call carried', async () => {
    const left = await typesLeftAfter({ shards: 1, eventSweepMs: 100 }, 'shortened', async (other) => {
      const key = await other.createTenant('shortened', { quotas: { ...UNLIMITED.quotas, event_retention_hours: '3' } });
      await other.client.call('EventService', 'Append', { events: [{ ...event('two-hours-old', 'x'), time: hoursAgo(2) }, event('new', 'y')] }, { key });
      await new Promise((r) => setTimeout(r, 300));
      await other.client.call(
        'TenantService',
        'UpdateTenant',
        { tenant: { name: 'tenants/shortened', quotas: { event_retention_hours: '1' } }, update_mask: { paths: ['quotas.event_retention_hours'] } },
        { key: other.adminKey },
      );
      await new Promise((r) => setTimeout(r, 400));
    });
    expect(left).toEqual(['new']);
  });
});

describe('Subscribe at shutdown', () => {
  it('ends subscriptions with UNAVAILABLE so the drain does not wait for them', async () => {
    const other = await startTestServer({ shards: 1, drainTimeoutMs: 10_000 });
    const key = await other.createTenant('draining', UNLIMITED);
    const stream = other.client.openStream('EventService', 'Subscribe', { from_position: '1' }, { key });
    const ended = collect(stream, 1_000).then(
      () => null,
      (e: RpcError) => e.status,
    );
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    await other.stop();
    // Well under the 10 s drain timeout: the subscription was ended, not waited for.
    expect(Date.now() - started).toBeLessThan(5_000);
    const error = await ended;
    expect(error?.code).toBe(status.UNAVAILABLE);
    expect(error?.reason).toBe('SHUTTING_DOWN');
  });
});
