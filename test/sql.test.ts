import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { rowsOf, startTestServer, v, type TestServer } from './support/server.ts';

let t: TestServer;
let key: string;

beforeAll(async () => {
  t = await startTestServer();
  // About SQL, not quotas: on a busy machine a heavy test must not leave the next one waiting for shard time.
  key = await t.createTenant('sql', { quotas: { shard_ms_per_second: '-1' } });
  await t.sql(key, 'CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n)');
});
afterAll(() => t.stop());

describe('Execute', () => {
  it('round-trips integers exactly across the whole int64 range', async () => {
    const ints = [0n, 1n, -1n, 9007199254740993n, -9007199254740993n, 9223372036854775807n, -9223372036854775808n];
    for (const i of ints) await t.sql(key, 'INSERT INTO vals (i) VALUES (?)', [v.int(i)]);
    const result = await t.sql(key, 'SELECT i FROM vals WHERE i IS NOT NULL ORDER BY id');
    expect(rowsOf(result).map((r) => r[0])).toEqual(ints);
    // Arithmetic stays in SQLite's integer domain too.
    expect(rowsOf(await t.sql(key, 'SELECT ? + 1', [v.int(9007199254740992n)]))).toEqual([[9007199254740993n]]);
  });

  it('round-trips reals, text, blobs and NULL with their types', async () => {
    const blob = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const insert = await t.sql(key, 'INSERT INTO vals (r, s, b, n) VALUES (?, ?, ?, ?)', [v.real(2.5), v.text('héllo ✓ 日本'), v.blob(blob), v.null()]);
    expect(insert.rows_affected).toBe('1');
    const result = await t.sql(key, 'SELECT r, s, b, n, typeof(r), typeof(b), typeof(n) FROM vals WHERE id = ?', [v.int(insert.last_insert_rowid)]);
    const [row] = rowsOf(result);
    expect(row![0]).toBe(2.5);
    expect(row![1]).toBe('héllo ✓ 日本');
    expect(Buffer.compare(row![2] as Buffer, blob)).toBe(0);
    expect(row![3]).toBeNull();
    expect(row!.slice(4)).toEqual(['real', 'blob', 'null']);
    // A real that happens to be whole stays a real.
    expect(result.rows[0].values[0].kind).toBe('real_value');
    expect(rowsOf(await t.sql(key, 'SELECT 3.0'))[0]![0]).toBe(3);
    expect((await t.sql(key, 'SELECT 3.0')).rows[0].values[0].kind).toBe('real_value');
  });

  it('returns columns with declared types, rows_affected and last_insert_rowid', async () => {
    await t.sql(key, 'CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, age INT)');
    const first = await t.sql(key, 'INSERT INTO people (name, age) VALUES (?, ?)', [v.text('ada'), v.int(36)]);
    expect(first.last_insert_rowid).toBe('1');
    await t.sql(key, 'INSERT INTO people (name, age) VALUES (?, ?)', [v.text('bob'), v.int(40)]);
    const update = await t.sql(key, 'UPDATE people SET age = age + 1');
    expect(update.rows_affected).toBe('2');
    const select = await t.sql(key, 'SELECT name, age, age * 2 AS twice FROM people ORDER BY id');
    expect(select.columns).toEqual([
      { name: 'name', decl_type: 'TEXT' },
      { name: 'age', decl_type: 'INT' },
      { name: 'twice', decl_type: '' },
    ]);
    expect(rowsOf(select)).toEqual([['ada', 37n, 74n], ['bob', 41n, 82n]]);
  });

  it('binds numbered parameters ?NNN from the positional list', async () => {
    const result = await t.sql(key, 'SELECT ?2, ?1, ?2', [v.text('a'), v.text('b')]);
    expect(rowsOf(result)).toEqual([['b', 'a', 'b']]);
  });

  it('describes the new columns of a cached query after ALTER TABLE', async () => {
    await t.sql(key, 'CREATE TABLE shape (a INTEGER)');
    await t.sql(key, 'INSERT INTO shape VALUES (1)');
    expect((await t.sql(key, 'SELECT * FROM shape')).columns.map((c: { name: string }) => c.name)).toEqual(['a']);
    await t.sql(key, 'ALTER TABLE shape ADD COLUMN b TEXT');
    const after = await t.sql(key, 'SELECT * FROM shape');
    expect(after.columns.map((c: { name: string }) => c.name)).toEqual(['a', 'b']);
    expect(rowsOf(after)).toEqual([[1n, null]]);
  });

  it('binds named parameters with any prefix', async () => {
    const result = await t.sql(key, 'SELECT :a, @b, $c', [], {
      named_params: { a: v.int(1), b: v.text('two'), c: v.null() },
    });
    expect(rowsOf(result)).toEqual([[1n, 'two', null]]);
  });

  it('returns rows from INSERT ... RETURNING together with the change count', async () => {
    const result = await t.sql(key, 'INSERT INTO people (name, age) VALUES (?, 1), (?, 2) RETURNING id, name', [v.text('cy'), v.text('di')]);
    expect(rowsOf(result)).toEqual([[3n, 'cy'], [4n, 'di']]);
    expect(result.rows_affected).toBe('2');
  });

  it('maps constraint violations to FAILED_PRECONDITION with SQLite’s extended code as the reason', async () => {
    const failure = await t.client.failure('SqlService', 'Execute', { sql: "INSERT INTO people (name) VALUES ('ada')" }, { key });
    expect(failure.code).toBe(status.FAILED_PRECONDITION);
    expect(failure.reason).toBe('SQLITE_CONSTRAINT_UNIQUE');
    expect(failure.domain).toBe('tenantd');
    const notNull = await t.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO people (name) VALUES (NULL)' }, { key });
    expect(notNull.reason).toBe('SQLITE_CONSTRAINT_NOTNULL');
  });

  it('rejects syntax errors, several statements and wrong parameter counts as INVALID_ARGUMENT', async () => {
    const syntax = await t.client.failure('SqlService', 'Execute', { sql: 'SELEKT 1' }, { key });
    expect(syntax.code).toBe(status.INVALID_ARGUMENT);
    expect(syntax.reason).toBe('SQLITE_ERROR');
    expect(syntax.fieldViolations[0]?.field).toBe('sql');

    const two = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT 1; SELECT 2' }, { key });
    expect(two.code).toBe(status.INVALID_ARGUMENT);
    expect(two.reason).toBe('INVALID_SQL');

    const few = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT ?, ?', params: [v.int(1)] }, { key });
    expect(few.code).toBe(status.INVALID_ARGUMENT);
    expect(few.reason).toBe('INVALID_PARAMETERS');
    const many = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT ?', params: [v.int(1), v.int(2)] }, { key });
    expect(many.reason).toBe('INVALID_PARAMETERS');
    const empty = await t.client.failure('SqlService', 'Execute', { sql: '   ' }, { key });
    expect(empty.reason).toBe('INVALID_SQL');
    const noKind = await t.client.failure('SqlService', 'Execute', { sql: 'SELECT ?', params: [{}] }, { key });
    expect(noKind.fieldViolations[0]?.field).toBe('params[0]');
  });

  it('counts a Batch’s results together against the size of one message', async () => {
    const sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) SELECT printf('%.60c', 'x') FROM c";
    await t.client.call('SqlService', 'Batch', { statements: [{ sql }] }, { key });
    const failure = await t.client.failure('SqlService', 'Batch', { statements: Array.from({ length: 4 }, () => ({ sql })) }, { key });
    expect(failure.reason).toBe('RESULT_TOO_LARGE');
  });

  it('refuses a result too large for one message and points to Query', async () => {
    const failure = await t.client.failure(
      'SqlService',
      'Execute',
      { sql: "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT x, printf('%.40c', 'x') FROM c" },
      { key },
    );
    expect(failure.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(failure.reason).toBe('RESULT_TOO_LARGE');
  });
});

describe('Batch', () => {
  it('applies every statement in one transaction and returns one result each', async () => {
    const response = await t.client.call(
      'SqlService',
      'Batch',
      {
        statements: [
          { sql: 'CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL CHECK (amount <> 0))' },
          { sql: 'INSERT INTO ledger (amount) VALUES (?)', params: [v.int(100)] },
          { sql: 'INSERT INTO ledger (amount) VALUES (?)', params: [v.int(-40)] },
          { sql: 'SELECT sum(amount) FROM ledger' },
        ],
      },
      { key },
    );
    expect(response.results).toHaveLength(4);
    expect(response.results[1].last_insert_rowid).toBe('1');
    expect(rowsOf(response.results[3])).toEqual([[60n]]);
  });

  it('leaves nothing behind when one statement fails, and names that statement', async () => {
    const failure = await t.client.failure(
      'SqlService',
      'Batch',
      {
        statements: [
          { sql: 'INSERT INTO ledger (amount) VALUES (5)' },
          { sql: 'CREATE TABLE scratch (x)' },
          { sql: 'INSERT INTO ledger (amount) VALUES (0)' },
        ],
      },
      { key },
    );
    expect(failure.code).toBe(status.FAILED_PRECONDITION);
    expect(failure.reason).toBe('SQLITE_CONSTRAINT_CHECK');
    expect(rowsOf(await t.sql(key, 'SELECT count(*), sum(amount) FROM ledger'))).toEqual([[2n, 60n]]);
    expect(rowsOf(await t.sql(key, "SELECT count(*) FROM sqlite_master WHERE name = 'scratch'"))).toEqual([[0n]]);

    const syntax = await t.client.failure(
      'SqlService',
      'Batch',
      { statements: [{ sql: 'INSERT INTO ledger (amount) VALUES (7)' }, { sql: 'NOT SQL' }] },
      { key },
    );
    expect(syntax.fieldViolations[0]?.field).toBe('statements[1].sql');
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM ledger'))).toEqual([[2n]]);
  });

  it('refuses transaction control inside a batch or a statement', async () => {
    const failure = await t.client.failure('SqlService', 'Batch', { statements: [{ sql: 'COMMIT' }] }, { key });
    expect(failure.code).toBe(status.PERMISSION_DENIED);
    const begin = await t.client.failure('SqlService', 'Execute', { sql: 'BEGIN' }, { key });
    expect(begin.code).toBe(status.PERMISSION_DENIED);
    // The connection is not left inside a transaction.
    await t.sql(key, 'INSERT INTO ledger (amount) VALUES (1)');
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM ledger'))).toEqual([[3n]]);
  });
});

describe('Query', () => {
  it('streams a large result in chunks with the columns first', async () => {
    const messages = await t.client.stream(
      'SqlService',
      'Query',
      { sql: 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 25000) SELECT x FROM c', rows_per_chunk: 1000 },
      { key },
    );
    expect(messages.length).toBe(25);
    expect(messages[0].columns).toEqual([{ name: 'x', decl_type: '' }]);
    expect(messages[1].columns).toEqual([]);
    const all = messages.flatMap((m) => rowsOf(m).map((r) => r[0]));
    expect(all).toHaveLength(25000);
    expect(all[24999]).toBe(25000n);
  });

  it('sends the columns of an empty result and refuses statements that return no rows', async () => {
    const messages = await t.client.stream('SqlService', 'Query', { sql: 'SELECT * FROM ledger WHERE 0' }, { key });
    expect(messages).toHaveLength(1);
    expect(messages[0].columns.map((c: { name: string }) => c.name)).toEqual(['id', 'amount']);
    await expect(t.client.stream('SqlService', 'Query', { sql: 'DELETE FROM ledger' }, { key })).rejects.toMatchObject({
      status: { code: status.INVALID_ARGUMENT, reason: 'NOT_A_QUERY' },
    });
  });
});

describe('READ_ONLY keys', () => {
  it('read but cannot write, in Execute, Batch or Query', async () => {
    const created = await t.client.call('TenantService', 'CreateApiKey', { parent: 'tenants/sql', api_key: { role: 'READ_ONLY' } }, { key: t.adminKey });
    const ro = created.key as string;
    expect(rowsOf(await t.sql(ro, 'SELECT count(*) FROM ledger'))).toEqual([[3n]]);
    for (const sql of ['INSERT INTO ledger (amount) VALUES (9)', 'DELETE FROM ledger', 'CREATE TABLE x (y)', 'DROP TABLE ledger']) {
      const failure = await t.client.failure('SqlService', 'Execute', { sql }, { key: ro });
      expect(failure.code, sql).toBe(status.PERMISSION_DENIED);
      expect(failure.reason, sql).toBe('READ_ONLY_KEY');
    }
    const batch = await t.client.failure(
      'SqlService',
      'Batch',
      { statements: [{ sql: 'SELECT 1' }, { sql: 'UPDATE ledger SET amount = 1' }] },
      { key: ro },
    );
    expect(batch.reason).toBe('READ_ONLY_KEY');
    expect(batch.fieldViolations[0]?.field).toBe('statements[1].sql');
    expect(rowsOf(await t.sql(key, 'SELECT count(*), sum(amount) FROM ledger'))).toEqual([[3n, 61n]]);
  });
});
