/**
 * A non-Node client against a real server: test/fixtures/interop_client.py
 * generates Python stubs from proto/ with grpc_tools, runs a session against
 * the server and reports what it saw as JSON; the assertions are all here.
 *
 * Needs Debian's python3-grpcio, python3-grpc-tools and python3-protobuf for
 * /usr/bin/python3 (`.ci/run` installs them). TENANTD_SKIP_INTEROP=1 skips.
 */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rowsOf, startTestServer, type TestServer } from './support/server.ts';

const PYTHON = '/usr/bin/python3';
const SCRIPT = fileURLToPath(new URL('./fixtures/interop_client.py', import.meta.url));
const TENANT_ID = 'python-interop';
const RUN_TIMEOUT_MS = 60_000;

interface ObservedValue {
  kind: string | null;
  value?: string | number;
  hex?: string;
  length?: number;
}

interface ObservedError {
  grpc_error: boolean;
  succeeded?: boolean;
  exception?: string;
  code: string;
  code_value: number;
  details: string;
  trailing_keys: string[];
  status_details_bin: boolean;
  status_details_bin_is_bytes?: boolean;
  status: { code: number; message: string; detail_types: string[] } | null;
  error_info: { reason: string; domain: string; metadata: Record<string, string> } | null;
  bad_request: { field_violations: { field: string; description: string }[] } | null;
  other_details: unknown[];
}

interface ObservedColumn {
  name: string;
  decl_type: string;
}

interface ObservedExecute {
  columns: ObservedColumn[];
  rows: ObservedValue[][];
  rows_affected: string;
  last_insert_rowid: string;
}

interface ObservedSample {
  label: string;
  sent?: ObservedValue;
  received: ObservedValue | null;
  sqlite_type?: string | null;
  exact: boolean;
}

/** What interop_client.py prints; a step that failed unexpectedly holds `unexpected_error` instead. */
interface Report {
  fatal?: string;
  environment: { python: string; executable: string; grpcio: string; protobuf: string; protobuf_implementation: string };
  generation: {
    proto_root: string;
    files: string[];
    first_attempt_errors: string;
    stripped_optional: string[];
    modules: string[];
    module_dirs_in_temp: boolean;
  };
  create_tenant: {
    name: string;
    tenant_id: string;
    display_name: string;
    labels: Record<string, string>;
    state: string;
    create_time_seconds: string;
    etag_present: boolean;
    api_key: { name: string; key_id: string; role: string; key_present: boolean };
    call_code: string;
  };
  create_table: ObservedExecute;
  inserts: { label: string; rows_affected: string; last_insert_rowid: string }[];
  read_back: { columns: ObservedColumn[]; row_count: number; samples: ObservedSample[] };
  echo_params: ObservedSample[];
  lookups: Record<string, string[]>;
  batch: { results: ObservedExecute[] };
  batch_rollback: { error: ObservedError; count_after: ObservedValue };
  query_stream: { messages: { columns: ObservedColumn[]; row_count: number }[]; rows: [string, string][] };
  query_values: { messages: number; samples: ObservedSample[] };
  events: {
    positions: string[];
    read: { position: string; type: string; data_hex: string; metadata: Record<string, string>; time_set: boolean }[];
    next_position: string;
    subscribed_first: { position: string; type: string };
  };
  backup_restore: { chunks: number; bytes: number; total_size: string; sha256_matches: boolean; sqlite_magic: boolean; restored_name: string };
  errors: Record<
    'attach' | 'unique' | 'primary_key' | 'query_missing_table' | 'no_credentials' | 'tenant_key_on_admin_method' | 'tenant_exists',
    ObservedError
  >;
  health: { server: string; sql_service: string; unknown_service: ObservedError };
}

const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const TEXT = 'h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \u{1F389} \u0394';

/** The values the script sends, in its order: how they must come back, to Python and to Node. */
const SAMPLES: { label: string; observed: ObservedValue; sqliteType: string; node: unknown }[] = [
  { label: 'int_max', observed: { kind: 'integer_value', value: '9223372036854775807' }, sqliteType: 'integer', node: 9223372036854775807n },
  { label: 'int_min', observed: { kind: 'integer_value', value: '-9223372036854775808' }, sqliteType: 'integer', node: -9223372036854775808n },
  { label: 'int_zero', observed: { kind: 'integer_value', value: '0' }, sqliteType: 'integer', node: 0n },
  { label: 'int_minus_one', observed: { kind: 'integer_value', value: '-1' }, sqliteType: 'integer', node: -1n },
  {
    label: 'real_pi',
    observed: { kind: 'real_value', value: 3.141592653589793, hex: '0x1.921fb54442d18p+1' },
    sqliteType: 'real',
    node: 3.141592653589793,
  },
  { label: 'real_integral', observed: { kind: 'real_value', value: 2, hex: '0x1.0000000000000p+1' }, sqliteType: 'real', node: 2 },
  {
    label: 'real_negative_subnormal',
    observed: { kind: 'real_value', value: -5e-324, hex: '-0x0.0000000000001p-1022' },
    sqliteType: 'real',
    node: -5e-324,
  },
  {
    label: 'real_huge',
    observed: { kind: 'real_value', value: 1.7976931348623157e308, hex: '0x1.fffffffffffffp+1023' },
    sqliteType: 'real',
    node: 1.7976931348623157e308,
  },
  { label: 'text_unicode', observed: { kind: 'text_value', value: TEXT }, sqliteType: 'text', node: TEXT },
  { label: 'text_empty', observed: { kind: 'text_value', value: '' }, sqliteType: 'text', node: '' },
  { label: 'blob_all_bytes', observed: { kind: 'blob_value', hex: ALL_BYTES.toString('hex'), length: 256 }, sqliteType: 'blob', node: ALL_BYTES },
  { label: 'blob_empty', observed: { kind: 'blob_value', hex: '', length: 0 }, sqliteType: 'blob', node: Buffer.alloc(0) },
  { label: 'null', observed: { kind: 'null_value' }, sqliteType: 'null', node: null },
];

const INSTALL_HINT =
  `${PYTHON} cannot import grpc and grpc_tools, which the Python interop test needs. ` +
  'Run .ci/run, or install the Debian packages yourself: ' +
  'apt-get install -y --no-install-recommends python3-grpcio python3-grpc-tools python3-protobuf. ' +
  'Set TENANTD_SKIP_INTEROP=1 to skip this test.';

function checkPython(): void {
  const probe = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools'], { encoding: 'utf8', timeout: 20_000 });
  if (probe.error || probe.status !== 0) {
    const why = probe.error ? String(probe.error) : probe.stderr.trim().split('\n').pop();
    throw new Error(`${INSTALL_HINT} (${why})`);
  }
}

function pythonEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' };
  delete env.PYTHONPATH;
  delete env.PYTHONHOME;
  return env;
}

/**
 * Runs the script without blocking this thread: the server under test answers
 * from this same event loop, so spawnSync would deadlock.
 */
function runClient(address: string, adminKey: string): Promise<{ status: number | null; stdout: string; stderr: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [SCRIPT, '--address', address, '--tenant-id', TENANT_ID], {
      // The key travels in the environment, not argv, as a real deployment would pass it.
      env: { ...pythonEnv(), TENANTD_ADMIN_KEY: adminKey },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`interop_client.py ran longer than ${RUN_TIMEOUT_MS} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, RUN_TIMEOUT_MS);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr, ms: Date.now() - started });
    });
  });
}

describe.skipIf(process.env.TENANTD_SKIP_INTEROP === '1')('a Python client with stubs generated from proto/', () => {
  let t: TestServer | undefined;
  let report: Report;

  /** A step of the report, failing with what went wrong if the script hit an unexpected error there. */
  function step<K extends keyof Report>(name: K): NonNullable<Report[K]> {
    const value = report[name] as unknown;
    expect(value, `the report has no ${String(name)}`).toBeDefined();
    const unexpected = (value as { unexpected_error?: unknown }).unexpected_error;
    if (unexpected !== undefined) throw new Error(`${String(name)} failed in Python: ${JSON.stringify(unexpected, null, 2)}`);
    return value as NonNullable<Report[K]>;
  }

  function expectStatus(observed: ObservedError, code: string, reason: string): void {
    expect(observed.grpc_error, JSON.stringify(observed)).toBe(true);
    expect(observed.code, observed.details).toBe(code);
    expect(observed.status_details_bin, 'grpc-status-details-bin is in the trailers').toBe(true);
    expect(observed.status_details_bin_is_bytes).toBe(true);
    // google.rpc.Status repeats the call's status, and leads with ErrorInfo.
    expect(observed.status?.code).toBe(observed.code_value);
    expect(observed.status?.message).toBe(observed.details);
    expect(observed.status?.detail_types[0]).toBe('type.googleapis.com/google.rpc.ErrorInfo');
    expect(observed.error_info?.domain).toBe('tenantd');
    expect(observed.error_info?.reason).toBe(reason);
    expect(observed.other_details).toEqual([]);
  }

  beforeAll(async () => {
    checkPython();
    t = await startTestServer();
    const run = await runClient(`127.0.0.1:${t.server.port}`, t.adminKey);
    const diagnostics = `exit status ${run.status} after ${run.ms} ms\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`;
    if (run.status !== 0) throw new Error(`interop_client.py failed: ${diagnostics}`);
    try {
      report = JSON.parse(run.stdout) as Report;
    } catch {
      throw new Error(`interop_client.py did not print one JSON object: ${diagnostics}`);
    }
  }, RUN_TIMEOUT_MS + 30_000);

  afterAll(async () => {
    await t?.stop();
  });

  it('generates its stubs at run time from the repository protos with grpc_tools', () => {
    expect(report.fatal).toBeUndefined();
    expect(report.environment.executable).toBe(PYTHON);
    const generation = step('generation');
    expect(generation.proto_root).toBe(fileURLToPath(new URL('../proto', import.meta.url)));
    expect(generation.modules).toEqual([
      'google.rpc.error_details_pb2',
      'google.rpc.status_pb2',
      'grpc.health.v1.health_pb2',
      'grpc.health.v1.health_pb2_grpc',
      'tenantd.v1.common_pb2',
      'tenantd.v1.event_service_pb2',
      'tenantd.v1.event_service_pb2_grpc',
      'tenantd.v1.sql_service_pb2',
      'tenantd.v1.sql_service_pb2_grpc',
      'tenantd.v1.tenant_service_pb2',
      'tenantd.v1.tenant_service_pb2_grpc',
    ]);
    expect(generation.module_dirs_in_temp).toBe(true);
    // Debian 12's grpc_tools bundles a protoc too old for proto3 `optional`, which
    // error_details.proto and AppendRequest.expected_position use; the script then
    // compiles a copy without the label.
    for (const file of generation.stripped_optional) expect(['google/rpc/error_details.proto', 'tenantd/v1/event_service.proto']).toContain(file);
    if (generation.stripped_optional.length > 0) expect(generation.first_attempt_errors).toMatch(/optional/);
  });

  it('creates a tenant with the admin key and gets its first key', async () => {
    const created = step('create_tenant');
    expect(created).toMatchObject({
      name: `tenants/${TENANT_ID}`,
      tenant_id: TENANT_ID,
      display_name: 'Python interop \u2713',
      labels: { client: 'python' },
      state: 'ACTIVE',
      etag_present: true,
      call_code: 'OK',
    });
    expect(Number(created.create_time_seconds)).toBeGreaterThan(1_600_000_000);
    expect(created.api_key.role).toBe('READ_WRITE');
    expect(created.api_key.key_present).toBe(true);
    expect(created.api_key.name).toBe(`tenants/${TENANT_ID}/apiKeys/${created.api_key.key_id}`);
    // The server stored what Python sent.
    const tenant = await t!.client.call('TenantService', 'GetTenant', { name: `tenants/${TENANT_ID}` }, { key: t!.adminKey });
    expect(tenant.display_name).toBe('Python interop \u2713');
    expect(tenant.labels).toEqual({ client: 'python' });
  });

  it('inserts with positional and named parameters', () => {
    expect(step('create_table').rows_affected).toBe('0');
    expect(step('inserts')).toEqual(
      SAMPLES.map((sample, i) => ({ label: sample.label, rows_affected: '1', last_insert_rowid: String(i + 1) })),
    );
  });

  it('round-trips every value type from a Python client', async () => {
    const readBack = step('read_back');
    expect(readBack.columns).toEqual([
      { name: 'id', decl_type: 'INTEGER' },
      { name: 'label', decl_type: 'TEXT' },
      { name: 'v', decl_type: 'ANY' },
      { name: 'type', decl_type: '' },
    ]);
    expect(readBack.row_count).toBe(SAMPLES.length);
    for (const sample of SAMPLES) {
      const got = readBack.samples.find((s) => s.label === sample.label);
      expect(got, sample.label).toBeDefined();
      expect(got!.sent, `${sample.label} as sent`).toEqual(sample.observed);
      expect(got!.received, `${sample.label} as received`).toEqual(sample.observed);
      expect(got!.sqlite_type, sample.label).toBe(sample.sqliteType);
      expect(got!.exact, `${sample.label} is the same Python value`).toBe(true);
    }
    // And Node reads exactly what Python wrote.
    const response = await t!.client.call(
      'SqlService',
      'Execute',
      { sql: 'SELECT label, v FROM vals WHERE label <> ? ORDER BY id', params: [{ text_value: 'batch_named' }] },
      { key: t!.adminKey, tenantId: TENANT_ID },
    );
    const rows = rowsOf(response);
    expect(rows.map((row) => row[0])).toEqual(SAMPLES.map((s) => s.label));
    for (const [i, sample] of SAMPLES.entries()) {
      if (typeof sample.node === 'number') expect(Object.is(rows[i]![1], sample.node), sample.label).toBe(true);
      else expect(rows[i]![1], sample.label).toEqual(sample.node);
    }
  });

  it('passes every value type through a parameter and back unchanged', () => {
    const echoed = step('echo_params');
    expect(echoed.map((e) => e.label)).toEqual(SAMPLES.map((s) => s.label));
    for (const [i, sample] of SAMPLES.entries()) {
      expect(echoed[i]!.received, sample.label).toEqual(sample.observed);
      expect(echoed[i]!.sqlite_type, sample.label).toBe(sample.sqliteType);
      expect(echoed[i]!.exact, sample.label).toBe(true);
    }
  });

  it('finds rows by 64-bit integer, real, text and blob parameters', () => {
    expect(step('lookups')).toEqual({
      int_max: ['int_max'],
      int_min: ['int_min'],
      real_pi: ['real_pi'],
      text_unicode: ['text_unicode'],
      blob_all_bytes: ['blob_all_bytes'],
    });
  });

  it('runs a Batch in one transaction, all or nothing', () => {
    const { results } = step('batch');
    expect(results).toHaveLength(4);
    expect(results[0]!.rows_affected).toBe('0');
    expect(results[1]!.rows_affected).toBe('1000');
    expect(results[2]).toMatchObject({ rows_affected: '1', last_insert_rowid: String(SAMPLES.length + 1) });
    expect(results[3]!.columns.map((c) => c.name)).toEqual(['n', 'total']);
    expect(results[3]!.rows).toEqual([
      [
        { kind: 'integer_value', value: '1000' },
        { kind: 'integer_value', value: '333833500' },
      ],
    ]);

    const rollback = step('batch_rollback');
    expectStatus(rollback.error, 'FAILED_PRECONDITION', 'SQLITE_CONSTRAINT_PRIMARYKEY');
    // The first statement's row was rolled back with the second.
    expect(rollback.count_after).toEqual({ kind: 'integer_value', value: '1000' });
  });

  it('streams a Query in chunks, with the columns on the first message only', () => {
    const stream = step('query_stream');
    expect(stream.messages.map((m) => m.row_count)).toEqual([128, 128, 128, 128, 128, 128, 128, 104]);
    expect(stream.messages[0]!.columns).toEqual([
      { name: 'n', decl_type: 'INTEGER' },
      { name: 'sq', decl_type: 'INTEGER' },
    ]);
    for (const message of stream.messages.slice(1)) expect(message.columns).toEqual([]);
    expect(stream.rows).toEqual(Array.from({ length: 1000 }, (_, i) => [String(i + 1), String((i + 1) * (i + 1))]));

    const values = step('query_values');
    expect(values.messages).toBe(Math.ceil((SAMPLES.length + 1) / 3));
    expect(values.samples.map((s) => s.label)).toEqual(SAMPLES.map((s) => s.label));
    for (const [i, sample] of SAMPLES.entries()) {
      expect(values.samples[i]!.received, sample.label).toEqual(sample.observed);
      expect(values.samples[i]!.exact, sample.label).toBe(true);
    }
  });

  it('decodes ErrorInfo and BadRequest from grpc-status-details-bin when a statement is not allowed', () => {
    const attach = step('errors').attach;
    expectStatus(attach, 'PERMISSION_DENIED', 'SQL_NOT_ALLOWED');
    expect(attach.status?.detail_types).toEqual([
      'type.googleapis.com/google.rpc.ErrorInfo',
      'type.googleapis.com/google.rpc.BadRequest',
    ]);
    expect(attach.error_info?.metadata.denied).toMatch(/ATTACH/);
    expect(attach.bad_request?.field_violations).toEqual([{ field: 'sql', description: attach.details }]);
  });

  it('reports constraint violations as FAILED_PRECONDITION with the SQLite extended code', () => {
    const errors = step('errors');
    expectStatus(errors.unique, 'FAILED_PRECONDITION', 'SQLITE_CONSTRAINT_UNIQUE');
    expect(errors.unique.details).toMatch(/UNIQUE constraint failed: vals\.label/);
    expect(errors.unique.bad_request).toBeNull();
    expectStatus(errors.primary_key, 'FAILED_PRECONDITION', 'SQLITE_CONSTRAINT_PRIMARYKEY');
    expect(errors.primary_key.bad_request).toBeNull();
  });

  it('ends a failing Query stream with the same decodable details', () => {
    const missing = step('errors').query_missing_table;
    expectStatus(missing, 'INVALID_ARGUMENT', 'SQLITE_ERROR');
    expect(missing.details).toMatch(/no such table: no_such_table/);
    expect(missing.bad_request?.field_violations.map((v) => v.field)).toEqual(['sql']);
  });

  it('rejects calls without a key, tenant keys on admin methods, and a second tenant with the same id', () => {
    const errors = step('errors');
    expectStatus(errors.no_credentials, 'UNAUTHENTICATED', 'MISSING_CREDENTIALS');
    expectStatus(errors.tenant_key_on_admin_method, 'PERMISSION_DENIED', 'ADMIN_KEY_REQUIRED');
    expectStatus(errors.tenant_exists, 'ALREADY_EXISTS', 'TENANT_EXISTS');
  });

  it('appends, reads and subscribes to events, bytes and metadata exact', () => {
    const events = step('events');
    expect(events.positions).toEqual(['1', '2']);
    expect(events.read).toEqual([
      { position: '1', type: 'created', data_hex: '0001feff', metadata: { by: 'python' }, time_set: true },
      { position: '2', type: 'paid', data_hex: Buffer.from('café').toString('hex'), metadata: {}, time_set: true },
    ]);
    expect(events.next_position).toBe('3');
    expect(events.subscribed_first).toEqual({ position: '2', type: 'paid' });
  });

  it('backs a tenant up through a server stream and restores it through a client stream', async () => {
    const backup = step('backup_restore');
    expect(backup.chunks).toBeGreaterThan(1);
    expect(String(backup.bytes)).toBe(backup.total_size);
    expect(backup.sha256_matches).toBe(true);
    expect(backup.sqlite_magic).toBe(true);
    expect(backup.restored_name).toBe(`tenants/${TENANT_ID}-restored`);
    const { key } = await t!.client.call('TenantService', 'CreateApiKey', { parent: `tenants/${TENANT_ID}-restored` }, { key: t!.adminKey });
    const rows = await t!.sql(key, 'SELECT count(*) FROM seq');
    expect(rows.rows[0].values[0]).toMatchObject({ integer_value: '1000' });
  });

  it('answers grpc.health.v1.Health Check for the server and its services', () => {
    const health = step('health');
    expect(health.server).toBe('SERVING');
    expect(health.sql_service).toBe('SERVING');
    expectStatus(health.unknown_service, 'NOT_FOUND', 'SERVICE_UNKNOWN');
  });
});
