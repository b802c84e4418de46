/**
 * The fuzzer behind `npm run fuzz` and test/fuzz.test.ts: hostile calls of
 * five classes against a running tenantd, statuses counted from the client
 * side. A call "fails the run" when it is answered INTERNAL or UNKNOWN.
 *
 * - body: malformed request bodies on every method (random bytes, truncated
 *   and mutated valid messages, wrong wire types, huge lengths, deep nesting,
 *   bad framing);
 * - metadata: hostile headers (unreadable values, bad grpc-timeout,
 *   grpc-encoding, content-type, oversized values);
 * - http2: raw HTTP/2 misuse (unknown paths, rapid resets as raw frames, half-open streams);
 * - sql: a corpus of hostile SQL (ATTACH, pragmas, reserved names, huge
 *   CTEs, fts3_tokenizer, load_extension...) through Execute, Batch and Query.
 */
import type { ClientHttp2Session, OutgoingHttpHeaders } from 'node:http2';
import { packageDefinition } from '../../src/protos.ts';
import { frame, open, rawCall, type RawStatus } from './rawGrpc.ts';
import { rapidReset } from './rawFrames.ts';

export interface FuzzOptions {
  port: number;
  adminKey: string;
  tenantKey: string;
  tenantId: string;
  calls: number;
  /** Stop after this long even if `calls` are not all made. */
  timeMs: number;
  seed: number;
  /** Calls in flight at once. */
  concurrency: number;
  /** Bound on each call's wait for a status (half-open ones end at the server's request bound). */
  callTimeoutMs?: number;
}

export interface FuzzReport {
  calls: number;
  byClass: Record<string, number>;
  /** Time calls of each class took, summed: where a slow run spends it. */
  msByClass: Record<string, number>;
  /** Status name (or `reset`, `timeout`) -> count. */
  byStatus: Record<string, number>;
  /** Up to 20 examples of INTERNAL / UNKNOWN, each with what was sent. */
  failures: string[];
  internalOrUnknown: number;
  ms: number;
}

const STATUS_NAMES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];

/** mulberry32: a small seeded generator, so a failing run can be replayed with its --seed. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Method = { path: string; requestSerialize(value: object): Buffer; requestStream: boolean; responseStream: boolean };

function methods(): Method[] {
  const all: Method[] = [];
  for (const [name, entry] of Object.entries(packageDefinition())) {
    if ('format' in entry || !name.includes('.')) continue;
    for (const method of Object.values(entry as Record<string, Method>)) if (typeof method.path === 'string') all.push(method);
  }
  return all;
}

/** Valid requests to start mutations from: fields that exist in most messages, by name. */
const SAMPLES: object[] = [
  {},
  { sql: 'SELECT 1', params: [{ integer_value: '7' }, { text_value: 'x' }, { blob_value: Buffer.from([1, 2]) }], rows_per_chunk: 5 },
  // Not the fuzz tenant: a valid DeleteTenant with the admin key would end the run.
  { name: 'tenants/fuzz-other', page_size: 10, page_token: 'abc' },
  { tenant_id: 'fuzz-new', tenant: { plan: 'free', quotas: { requests_per_second: '5' } } },
  { statements: [{ sql: 'SELECT 1' }, { sql: 'SELECT ?', params: [{ real_value: 1.5 }] }] },
];

const SQL_CORPUS: string[] = [
  "ATTACH DATABASE 'x.db' AS x", "ATTACH 'file:/etc/passwd?mode=ro' AS p", "attach database ':memory:' as m", 'ATTACH (SELECT 1) AS y', "ATTACH 'catalog.db' AS c",
  "VACUUM INTO '/tmp/x.db'", 'DETACH main', "SELECT load_extension('libc.so.6')", "SELECT load_extension('/tmp/x')",
  'PRAGMA foreign_keys = OFF', 'PRAGMA writable_schema = ON', 'PRAGMA journal_mode = OFF', 'PRAGMA synchronous = OFF', 'PRAGMA recursive_triggers = ON',
  'PRAGMA case_sensitive_like = ON', 'PRAGMA defer_foreign_keys = ON', 'PRAGMA temp_store_directory', "PRAGMA temp_store_directory = '/tmp'", 'PRAGMA database_list',
  'PRAGMA cell_size_check = ON', 'PRAGMA mmap_size = 1099511627776', 'PRAGMA cache_size = -100000000', 'PRAGMA max_page_count = 1', 'PRAGMA query_only = OFF',
  'PRAGMA trusted_schema = ON', 'PRAGMA integrity_check', 'PRAGMA main.page_size = 65536', 'PRAGMA hard_heap_limit = 1',
  'SELECT * FROM _tenantd_meta', 'SELECT * FROM "_TENANTD_META"', 'SELECT * FROM main._tenantd_events', 'DROP TABLE _tenantd_events', 'CREATE TABLE _tenantd_x (a)',
  'CREATE TABLE "_Tenantd_Y" (a)', 'ALTER TABLE t RENAME TO _tenantd_events', 'CREATE TRIGGER tr AFTER INSERT ON _tenantd_events BEGIN SELECT 1; END',
  'CREATE VIEW v AS SELECT * FROM _tenantd_meta', 'SELECT * FROM sqlite_master', 'SELECT * FROM sqlite_temp_master', 'DELETE FROM sqlite_master',
  'CREATE TEMP TABLE tt (a)', 'CREATE TEMP TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END', 'BEGIN', 'COMMIT', 'ROLLBACK', 'SAVEPOINT s', 'RELEASE s',
  "SELECT fts3_tokenizer('simple')", "SELECT fts3_tokenizer('porter')", "CREATE VIRTUAL TABLE f USING fts3(a, tokenize=porter)", 'CREATE VIRTUAL TABLE f5 USING fts5(a)',
  'CREATE VIRTUAL TABLE r USING rtree(id, a, b)', "SELECT * FROM pragma_table_info('t')", 'SELECT * FROM sqlite_dbpage', 'SELECT * FROM dbstat', "SELECT * FROM json_each('[1,2]')",
  'SELECT * FROM generate_series(1, 10)', "SELECT readfile('/etc/passwd')", "SELECT writefile('/tmp/x', 'y')", "SELECT edit('x')", 'SELECT sqlite_offset(1)',
  'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c', 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000000) SELECT max(x) FROM c',
  "SELECT zeroblob(2000000000)", "SELECT randomblob(20000000)", "SELECT printf('%.*c', 2000000000, 'x')", "SELECT replace(hex(zeroblob(10000000)), '0', 'aa')",
  'SELECT abs(-9223372036854775807 - 1)', "SELECT char(0, 1, 2, 65535, 1114111)", "SELECT CAST(x'ff' AS TEXT)", 'SELECT 1e309', 'SELECT -0.0',
  'CREATE TABLE IF NOT EXISTS t (a PRIMARY KEY, b REFERENCES t(a))', "INSERT INTO t VALUES (randomblob(16), NULL)", 'SELECT * FROM t', 'DROP TABLE IF EXISTS f',
  'SELECT ?', 'SELECT :a, @b, $c', 'SELECT ?999999', 'SELECT 1; SELECT 2', '', ';', '\u0000', 'SELECT "unterminated', "SELECT 'x' || ", '/* only a comment */',
  `SELECT ${'('.repeat(5000)}1${')'.repeat(5000)}`, `SELECT ${Array.from({ length: 3000 }, (_, i) => `${i}`).join(',')}`, `SELECT 1 ${'UNION ALL SELECT 1 '.repeat(1000)}`,
  `WITH ${Array.from({ length: 200 }, (_, i) => `c${i}(x) AS (SELECT ${i})`).join(',')} SELECT 1`, 'SELECT sqlite_version(), sqlite_source_id(), sqlite_compileoption_used(\'ENABLE_FTS3\')',
  // A pointer chosen by the tenant (a bound 8-byte blob), then a table that would use it.
  "SELECT fts3_tokenizer('x', ?)", "SELECT fts3_tokenizer('simple', ?)", 'CREATE VIRTUAL TABLE fx USING fts3(a, tokenize=x)', 'CREATE VIRTUAL TABLE fx4 USING fts4(a, tokenize=x)',
  'CREATE VIRTUAL TABLE tk USING fts3tokenize(simple)', 'CREATE VIRTUAL TABLE v5 USING fts5vocab(f5, row)', 'CREATE VIRTUAL TABLE aux USING fts4aux(f)', "SELECT * FROM json_tree('{\"a\":[1,2]}')",
  'SELECT * FROM pragma_function_list', 'SELECT * FROM pragma_module_list', "SELECT sqlite_rename_table('main', 'table', 't', 'x', 'y', 0, 0)", 'PRAGMA legacy_alter_table = ON',
  // The reserved namespace in other spellings and through renames, triggers and views.
  'CREATE TABLE ev (position INTEGER PRIMARY KEY, type, data)', 'ALTER TABLE ev RENAME TO "_TENANTD_EVENTS"', 'ALTER TABLE ev RENAME TO [_TeNaNtD_events]', 'ALTER TABLE t RENAME COLUMN a TO _tenantd_a',
  "CREATE TRIGGER trx AFTER INSERT ON ev BEGIN INSERT INTO _tenantd_meta VALUES ('k', 'v'); END", 'CREATE VIEW vm AS SELECT * FROM "_TENANTD_meta"', 'CREATE INDEX ix ON _tenantd_events (type)',
  'CREATE TRIGGER ts AFTER INSERT ON sqlite_master BEGIN SELECT 1; END', 'INSERT INTO ev (type, data) VALUES (1, 2)', 'DROP TRIGGER IF EXISTS trx',
  // Memory: whole rows of large values, each under the length limit.
  `SELECT ${Array.from({ length: 32 }, () => 'zeroblob(10000000)').join(', ')}`, `SELECT ${Array.from({ length: 300 }, () => 'randomblob(1000000)').join(', ')}`,
  `SELECT ${Array.from({ length: 8 }, () => "printf('%.*c', 9000000, 'x')").join(', ')}`,
];

function rawBody(rand: () => number, method: Method): Buffer {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const randomBytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
  let valid: Buffer;
  try {
    valid = method.requestSerialize(pick(SAMPLES));
  } catch {
    valid = Buffer.alloc(0);
  }
  switch (Math.floor(rand() * 9)) {
    case 0:
      return randomBytes(Math.floor(rand() * 64));
    case 1:
      return valid.subarray(0, Math.floor(rand() * valid.length));
    case 2: {
      const copy = Buffer.from(valid.length > 0 ? valid : randomBytes(8));
      for (let i = 0; i < 1 + rand() * 4; i++) copy[Math.floor(rand() * copy.length)] = Math.floor(rand() * 256);
      return copy;
    }
    case 3:
      // A known field number with every wire type, including the group and reserved ones.
      return Buffer.concat([Buffer.from([(Math.floor(1 + rand() * 5) << 3) | Math.floor(rand() * 8)]), randomBytes(6)]);
    case 4:
      // A length far past the end.
      return Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    case 5: {
      // Deep nesting: a length-delimited field inside another, hundreds deep.
      let inner = Buffer.from([0x08, 0x01]);
      const depth = 50 + Math.floor(rand() * 2000);
      for (let i = 0; i < depth; i++) inner = Buffer.concat([Buffer.from([0x0a]), varint(inner.length), inner]);
      return inner;
    }
    case 6:
      // Valid, with varints padded to 10 bytes and negative int32s.
      return Buffer.concat([valid, Buffer.from([0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])]);
    case 7:
      return Buffer.concat([valid, valid.subarray(0, Math.floor(rand() * valid.length))]);
    default:
      return valid;
  }
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

const UNREADABLE_VALUES = ['a\u00e9', 'x\ty', '\u0085', Buffer.from([0xc3, 0x28]).toString('latin1'), '\u00ff'.repeat(10), ' ', ''];

export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const rand = generator(options.seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const all = methods();
  const execute = all.find((m) => m.path.endsWith('/Execute'))!;
  const query = all.find((m) => m.path.endsWith('/Query'))!;
  const batch = all.find((m) => m.path.endsWith('/Batch'))!;
  const report: FuzzReport = { calls: 0, byClass: {}, msByClass: {}, byStatus: {}, failures: [], internalOrUnknown: 0, ms: 0 };
  const sessions: ClientHttp2Session[] = Array.from({ length: 4 }, () => open(options.port));
  const session = (): ClientHttp2Session => {
    const i = Math.floor(rand() * sessions.length);
    if (sessions[i]!.destroyed || sessions[i]!.closed) sessions[i] = open(options.port);
    return sessions[i]!;
  };
  const keys = [options.tenantKey, options.adminKey, 'tdk_not_a_key', ''];
  const callTimeoutMs = options.callTimeoutMs ?? 45_000;
  // Subscribe, WatchUsage and Health.Watch run until the client leaves: a second is enough to see them start.
  const timeoutFor = (method: Method): number => (method.responseStream ? 1_500 : callTimeoutMs);

  /** One hostile call; resolves with its class, what it sent (for the report) and what came back. */
  async function one(): Promise<[string, string, RawStatus[]]> {
    const kind = pick(['body', 'body', 'body', 'metadata', 'http2', 'sql', 'sql']);
    const key = pick(keys);
    const auth: OutgoingHttpHeaders = key ? { authorization: `Bearer ${key}` } : {};
    if (kind === 'body') {
      const method = pick(all);
      const body = rawBody(rand, method);
      const framed = rand() < 0.1 ? frame(body, false, Math.floor(rand() * 2 ** 32)) : rand() < 0.05 ? body : frame(body);
      const messages = method.requestStream && rand() < 0.5 ? Buffer.concat([framed, frame(rawBody(rand, method))]) : framed;
      const sent = `${method.path} ${messages.subarray(0, 48).toString('hex')}`;
      return [kind, sent, [await rawCall(session(), method.path, { ...auth, 'x-tenant-id': options.tenantId }, messages, { timeoutMs: timeoutFor(method) })]];
    }
    if (kind === 'metadata') {
      const method = pick(all);
      const headers: OutgoingHttpHeaders = { ...auth };
      const which = Math.floor(rand() * 8);
      if (which === 0) headers['x-tenant-id'] = pick([...UNREADABLE_VALUES, options.tenantId, 'other', '../x', 'x'.repeat(5000)]);
      if (which === 1) headers.authorization = `Bearer ${pick(keys)}${pick(UNREADABLE_VALUES)}`;
      if (which === 2) headers['grpc-timeout'] = pick(['abc', '1', 'S', '99999999H', '0n', '1n', '-5S', '1 S', '١S']);
      if (which === 3) headers['grpc-encoding'] = pick(['gzip', 'deflate', 'br', 'identity', 'zstd', '']);
      if (which === 4) headers['content-type'] = pick(['application/json', 'text/plain', 'application/grpc+json', 'application/grpc-web']);
      if (which === 5) headers[pick(['x-pad', 'traceparent', 'grpc-status-details-bin', 'x-request-id'])] = 'v'.repeat(Math.floor(rand() * 40_000));
      if (which === 6) headers.traceparent = pick(['00-zz-zz-01', '00-' + 'f'.repeat(32) + '-' + '0'.repeat(16) + '-ff', UNREADABLE_VALUES[0]!]);
      if (which === 7) headers['x-custom-bin'] = '!!!not base64';
      const compressed = which === 3 && rand() < 0.7;
      let body: Buffer;
      try {
        body = method.requestSerialize(pick(SAMPLES));
      } catch {
        body = Buffer.alloc(0);
      }
      const sent = `${method.path} ${JSON.stringify(headers).slice(0, 200)}`;
      return [kind, sent, [await rawCall(session(), method.path, headers, frame(compressed ? Buffer.from('not compressed') : body, compressed), { timeoutMs: timeoutFor(method) })]];
    }
    if (kind === 'http2') {
      const which = Math.floor(rand() * 4);
      if (which === 0) {
        const path = pick(['/', '/tenantd.v1.SqlService/Nope', '/x/y/z', '/tenantd.v1.SqlService/Execute/extra', `/${'a'.repeat(3000)}`]);
        return [kind, `path ${path.slice(0, 60)}`, [await rawCall(session(), path, auth, frame(Buffer.alloc(0)), { timeoutMs: callTimeoutMs })]];
      }
      if (which === 1) {
        // A rapid reset (CVE-2023-44487): streams opened and reset in one write on a new connection,
        // then a PING the server must still answer, then a normal call. Written as raw frames: the
        // node:http2 client looped forever inside its own close() when it did this (rawFrames.ts).
        const streams = 20 + Math.floor(rand() * 400);
        const storm = await rapidReset(options.port, { path: execute.path, headers: auth.authorization ? { authorization: String(auth.authorization) } : {}, streams, timeoutMs: 5_000 });
        const stormStatus: RawStatus = { code: null, message: '', reason: '', fields: [], httpStatus: null, received: storm.received, failure: `rapid reset: ${storm.ended}` };
        if (storm.ended === 'timeout' && report.failures.length < 20) report.failures.push(`rapid reset of ${streams} streams: no PING answer, GOAWAY or close in 5 s`);
        const after = await rawCall(session(), execute.path, { authorization: `Bearer ${options.tenantKey}` }, frame(execute.requestSerialize({ sql: 'SELECT 1' })), { timeoutMs: callTimeoutMs });
        return [kind, `rapid reset x${streams}`, [stormStatus, after]];
      }
      if (which === 2) {
        // Half-open: the body never ends. The fuzzer gives up first (the server's own bound is
        // test/transport.test.ts's to check); the stream is reset, which the server must survive.
        const partial = rand() < 0.5 ? null : frame(execute.requestSerialize({ sql: 'SELECT 1' })).subarray(0, 6);
        return [kind, 'half-open', [await rawCall(session(), execute.path, auth, partial, { end: false, timeoutMs: 200 + rand() * 1_000 })]];
      }
      // Wrong method, missing te.
      return [kind, 'GET', [await rawCall(session(), execute.path, { ':method': pick(['GET', 'PUT']), te: '', ...auth }, null, { timeoutMs: callTimeoutMs })]];
    }
    // sql
    const sql = pick(SQL_CORPUS);
    const params = sql.includes('?') || sql.includes(':a') ? [pick([{ blob_value: Buffer.from('AAAAAAAA') }, { integer_value: '-1' }, { text_value: 'x' }])] : [];
    const roKey = { authorization: `Bearer ${options.tenantKey}` };
    const which = Math.floor(rand() * 3);
    const method = which === 0 ? execute : which === 1 ? query : batch;
    const request = which === 2 ? { statements: [{ sql, params }, { sql: pick(SQL_CORPUS) }] } : { sql, params };
    return [kind, `${method.path} ${sql.slice(0, 80)}`, [await rawCall(session(), method.path, roKey, frame(method.requestSerialize(request)), { timeoutMs: callTimeoutMs })]];
  }

  const started = Date.now();
  let issued = 0;
  async function worker(): Promise<void> {
    while (issued < options.calls && Date.now() - started < options.timeMs) {
      issued++;
      const callStarted = Date.now();
      const [kind, sent, results] = await one();
      report.byClass[kind] = (report.byClass[kind] ?? 0) + 1;
      report.msByClass[kind] = (report.msByClass[kind] ?? 0) + (Date.now() - callStarted);
      for (const result of results) {
        report.calls++;
        const name = result.code === null ? (result.failure ?? 'none').replace(/^error: .*/, 'error') : (STATUS_NAMES[result.code] ?? String(result.code));
        report.byStatus[name] = (report.byStatus[name] ?? 0) + 1;
        if (result.code === 13 || result.code === 2) {
          report.internalOrUnknown++;
          if (report.failures.length < 20) report.failures.push(`${STATUS_NAMES[result.code]} "${result.message}" <- ${kind}: ${sent}`);
        }
      }
    }
  }
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  for (const s of sessions) s.destroy();
  report.ms = Date.now() - started;
  return report;
}
