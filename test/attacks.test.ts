/**
 * Issue 10 items 1, 3, 4, 5 and issue 11 item 4 against a real server: the
 * attacks as an outside client made them, and more of each class.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { tenantDbPath } from '../src/protocol.ts';
import { CREATE_META_SQL, serviceSchemaProblem } from '../workers/serviceSchema.ts';
import { rowsOf, startTestServer, v, type TestServer } from './support/server.ts';

let t: TestServer;
const admin = () => ({ key: t.adminKey });
/** Tenants of these tests may use the shard freely: the host may be loaded. */
const FREE = { quotas: { shard_ms_per_second: '-1', requests_per_second: '-1' } };

beforeAll(async () => {
  t = await startTestServer({ shards: 2, migrationTimeoutMs: 1500 });
});
afterAll(() => t.stop());

async function readOnlyKey(tenantId: string): Promise<string> {
  const { key } = await t.client.call('TenantService', 'CreateApiKey', { parent: `tenants/${tenantId}`, api_key: { role: 'READ_ONLY' } }, admin());
  return key;
}

const event = (type: string) => ({ type, data: Buffer.from('x'), metadata: {} });

async function waitForMigration(name: string): Promise<any> {
  for (let i = 0; i < 400; i++) {
    const m = await t.client.call('SchemaService', 'GetMigration', { name }, admin());
    if (m.state !== 'RUNNING') return m;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${name} still running`);
}

describe('a pointer chosen by the tenant (10.1)', () => {
  it('refuses fts3_tokenizer with a bound blob, and the fts3 table that would use it does not crash the node', async () => {
    const key = await t.createTenant('atk-fts3', FREE);
    const ro = await readOnlyKey('atk-fts3');
    for (const k of [ro, key]) {
      const refused = await t.client.failure('SqlService', 'Execute', { sql: "SELECT fts3_tokenizer('x', ?)", params: [v.blob(Buffer.from('AAAAAAAA'))] }, { key: k });
      expect(refused.code).toBe(status.PERMISSION_DENIED);
      expect(refused.message).toMatch(/fts3_tokenizer/);
    }
    // The one-argument form hands out a real pointer; refused too.
    expect((await t.client.failure('SqlService', 'Execute', { sql: "SELECT hex(fts3_tokenizer('simple'))" }, { key })).code).toBe(status.PERMISSION_DENIED);
    const create = await t.client.failure('SqlService', 'Execute', { sql: 'CREATE VIRTUAL TABLE f USING fts3(a, tokenize=x)' }, { key });
    expect(create.code).not.toBe(status.OK);
    expect(rowsOf(await t.sql(key, 'SELECT 1'))).toEqual([[1n]]);
  });

  it('refuses functions, modules and eponymous tables outside the allow-list, also inside views and triggers', async () => {
    const key = await t.createTenant('atk-allow', FREE);
    for (const sql of [
      'SELECT count(*) FROM dbstat',
      "SELECT * FROM dbstat('main')",
      "SELECT * FROM fts3tokenize('simple', 'a b')",
      "SELECT * FROM sqlite_dbpage",
      'CREATE VIRTUAL TABLE g USING geopoly(a)',
      'CREATE VIRTUAL TABLE v USING fts5vocab(x, row)',
      "SELECT sqlite_log(1, 'x')",
      "SELECT sqlite_compileoption_get(0)",
      'SELECT total_changes()',
      "SELECT rtreenode(2, x'00')",
      "SELECT geopoly_debug(x'00')",
      "SELECT load_extension('x')",
    ]) {
      const refused = await t.client.failure('SqlService', 'Execute', { sql }, { key });
      expect([status.PERMISSION_DENIED, status.INVALID_ARGUMENT], sql).toContain(refused.code);
    }
    // A view or trigger cannot smuggle a refused function past the check.
    await t.sql(key, 'CREATE TABLE src (x)');
    await t.sql(key, 'CREATE VIEW leaky AS SELECT total_changes() AS n');
    expect((await t.client.failure('SqlService', 'Execute', { sql: 'SELECT * FROM leaky' }, { key })).code).toBe(status.PERMISSION_DENIED);
    await t.sql(key, "CREATE TRIGGER src_t AFTER INSERT ON src BEGIN SELECT sqlite_log(1, 'x'); END");
    expect((await t.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO src VALUES (1)' }, { key })).code).toBe(status.PERMISSION_DENIED);
    // What is allowed works.
    expect(rowsOf(await t.sql(key, "SELECT count(*) FROM json_each('[1,2,3]')"))).toEqual([[3n]]);
    expect(rowsOf(await t.sql(key, "SELECT abs(-1), unlikely(1), '{\"a\":2}' ->> '$.a', sum(1) OVER ()"))).toEqual([[1n, 1n, 2n, 1n]]);
  });
});

describe('the reserved namespace (10.3)', () => {
  const SHAPE = 'CREATE TABLE ev (position INTEGER PRIMARY KEY, type TEXT NOT NULL, data BLOB NOT NULL, metadata TEXT NOT NULL, time INTEGER NOT NULL) STRICT';

  it('refuses renaming a table onto the event log in any case or quoting, and the log stays the service’s', async () => {
    const key = await t.createTenant('atk-rename', FREE);
    await t.sql(key, SHAPE);
    await t.sql(key, 'CREATE TABLE stolen (k, v)');
    await t.sql(key, 'CREATE TRIGGER ev_copy AFTER INSERT ON ev BEGIN INSERT INTO stolen SELECT key, value FROM _tenantd_meta; END');
    for (const target of ['_tenantd_events', '_TenantD_Events', '"_tenantd_events"', '[_tenantd_events]', '`_tenantd_events`', '_tenantd_x', '"_TENANTD_META2"']) {
      for (const from of ['ev', 'main.ev', '"ev"']) {
        const refused = await t.client.failure('SqlService', 'Execute', { sql: `ALTER TABLE ${from} RENAME TO ${target}` }, { key });
        expect(refused.code, `${from} -> ${target}`).toBe(status.PERMISSION_DENIED);
      }
    }
    // The same names in a Batch, after a statement that succeeded: all undone.
    const batch = await t.client.failure(
      'SqlService',
      'Batch',
      { statements: [{ sql: 'CREATE TABLE fine (x)' }, { sql: 'ALTER TABLE ev RENAME TO _tenantd_events' }] },
      { key },
    );
    expect(batch.code).toBe(status.PERMISSION_DENIED);
    expect(rowsOf(await t.sql(key, "SELECT count(*) FROM sqlite_schema WHERE name = 'fine'"))).toEqual([[0n]]);
    // Unicode look-alikes are not reserved (SQLite folds ASCII only): a Cyrillic т.
    await t.sql(key, 'ALTER TABLE ev RENAME TO "_tenan\u0442d_events"');
    for (let i = 0; i < 2; i++) await t.client.call('EventService', 'Append', { events: [event('e')] }, { key });
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM stolen'))).toEqual([[0n]]);
    // Creating, indexing, triggering on or viewing a reserved name, in any case.
    for (const sql of [
      'CREATE TABLE "_TENANTD_x" (a)',
      'CREATE TABLE main.[_tenantd_y] (a)',
      'CREATE INDEX `_tenantd_i` ON stolen (k)',
      'CREATE INDEX i ON "_TENANTD_EVENTS" (type)',
      'CREATE TRIGGER tr AFTER INSERT ON _Tenantd_Events BEGIN SELECT 1; END',
      'CREATE VIEW _tenantd_v AS SELECT 1',
      'CREATE VIRTUAL TABLE _tenantd_f USING fts5(a)',
      'ALTER TABLE _TENANTD_EVENTS ADD COLUMN z',
      'ALTER TABLE stolen RENAME TO _tenantd_z',
    ]) {
      expect((await t.client.failure('SqlService', 'Execute', { sql }, { key })).code, sql).toBe(status.PERMISSION_DENIED);
    }
  });

  it('checks a tenant trigger fired by a migration as tenant code', async () => {
    const key = await t.createTenant('atk-migr', FREE);
    await t.client.call('SchemaService', 'ApplyMigration', { migration_id: 'atk-ops', sql: 'CREATE TABLE ops (x)' }, admin());
    await waitForMigration('migrations/atk-ops');
    await t.sql(key, 'SELECT 1');
    await t.sql(key, 'CREATE TABLE loot (k, v)');
    await t.sql(key, 'CREATE TRIGGER ops_t AFTER INSERT ON ops BEGIN INSERT INTO loot SELECT key, value FROM _tenantd_meta; END');
    await t.client.call('SchemaService', 'ApplyMigration', { migration_id: 'atk-ops-fill', sql: 'INSERT INTO ops VALUES (1)' }, admin());
    const done = await waitForMigration('migrations/atk-ops-fill');
    expect(done.failures.map((f: { tenant: string }) => f.tenant)).toContain('tenants/atk-migr');
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM loot'))).toEqual([[0n]]);
  });

  it('knows tenantd’s own schema exactly, whatever the indentation it was made with', () => {
    const db = new Database(':memory:');
    try {
      db.exec(CREATE_META_SQL);
      expect(serviceSchemaProblem(db)).toBeNull();
      // As an earlier version made it: other indentation, same table.
      db.exec(`CREATE TABLE IF NOT EXISTS _tenantd_events (
        position INTEGER PRIMARY KEY,
          type TEXT NOT NULL, data BLOB NOT NULL,
        metadata TEXT NOT NULL, time INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX IF NOT EXISTS _tenantd_events_time ON _tenantd_events (time);`);
      expect(serviceSchemaProblem(db)).toBeNull();
      for (const [tamper, undo] of [
        ['CREATE TRIGGER t AFTER INSERT ON _tenantd_events BEGIN SELECT 1; END', 'DROP TRIGGER t'],
        ['CREATE INDEX extra ON _tenantd_meta (value)', 'DROP INDEX extra'],
        ['CREATE TABLE "_TenantD_x" (a)', 'DROP TABLE "_TenantD_x"'],
        ['CREATE VIEW _tenantd_v AS SELECT 1', 'DROP VIEW _tenantd_v'],
        ['ALTER TABLE _tenantd_events ADD COLUMN z TEXT', null],
      ] as const) {
        db.exec(tamper);
        expect(serviceSchemaProblem(db), tamper).not.toBeNull();
        if (undo) db.exec(undo);
      }
    } finally {
      db.close();
    }
  });

  it('refuses to open a tenant whose own tables were tampered with (TENANT_SCHEMA_TAMPERED)', { timeout: 90_000 }, async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tenantd-test-tamper-'));
    try {
      const first = await startTestServer({ dataDir }, { keepDataDir: true });
      const key = await first.createTenant('tampered');
      await first.client.call('EventService', 'Append', { events: [event('e')] }, { key });
      await first.stop();
      const raw = new Database(tenantDbPath(dataDir, 'tampered'));
      raw.exec('CREATE TABLE mine (k, v); CREATE TRIGGER t AFTER INSERT ON _tenantd_events BEGIN INSERT INTO mine SELECT key, value FROM _tenantd_meta; END');
      raw.close();
      const second = await startTestServer({ dataDir }, { keepDataDir: true });
      try {
        const refused = await second.client.failure('SqlService', 'Execute', { sql: 'SELECT 1' }, { key });
        expect(refused.code).toBe(status.FAILED_PRECONDITION);
        expect(refused.reason).toBe('TENANT_SCHEMA_TAMPERED');
        const append = await second.client.failure('EventService', 'Append', { events: [event('e')] }, { key });
        expect(append.reason).toBe('TENANT_SCHEMA_TAMPERED');
      } finally {
        await second.stop();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('no call leaves connection state behind (10.4)', () => {
  it('refuses connection-level pragmas from any key, so foreign keys hold for the next call', async () => {
    const key = await t.createTenant('atk-pragma', FREE);
    const ro = await readOnlyKey('atk-pragma');
    await t.sql(key, 'CREATE TABLE parent (id INTEGER PRIMARY KEY)');
    await t.sql(key, 'CREATE TABLE child (p INTEGER REFERENCES parent (id))');
    const recursive = rowsOf(await t.sql(ro, 'PRAGMA recursive_triggers'));
    for (const k of [ro, key]) {
      for (const sql of [
        'PRAGMA foreign_keys = OFF',
        'PRAGMA recursive_triggers = OFF',
        'PRAGMA case_sensitive_like = ON',
        'PRAGMA defer_foreign_keys = ON',
        'PRAGMA ignore_check_constraints = ON',
        'PRAGMA query_only = ON',
        'PRAGMA reverse_unordered_selects = ON',
        'PRAGMA legacy_alter_table = ON',
        'PRAGMA cache_size = 1000000',
        'PRAGMA busy_timeout = 100000',
        'PRAGMA temp.user_version = 5',
      ]) {
        expect((await t.client.failure('SqlService', 'Execute', { sql }, { key: k })).code, sql).toBe(status.PERMISSION_DENIED);
      }
      // The table-valued form takes no setting either.
      const tvf = await t.client.failure('SqlService', 'Execute', { sql: "SELECT * FROM pragma_foreign_keys('0')" }, { key: k });
      expect([status.PERMISSION_DENIED, status.INVALID_ARGUMENT]).toContain(tvf.code);
    }
    const orphan = await t.client.failure('SqlService', 'Execute', { sql: 'INSERT INTO child VALUES (42)' }, { key });
    expect(orphan.code).toBe(status.FAILED_PRECONDITION);
    expect(rowsOf(await t.sql(ro, 'PRAGMA foreign_keys'))).toEqual([[1n]]);
    expect(rowsOf(await t.sql(ro, 'PRAGMA recursive_triggers'))).toEqual(recursive);
    await t.sql(key, 'PRAGMA user_version = 3');
    expect(rowsOf(await t.sql(ro, 'PRAGMA user_version'))).toEqual([[3n]]);
  });

  it('starts every call with last_insert_rowid() at 0', async () => {
    const key = await t.createTenant('atk-rowid', FREE);
    await t.sql(key, 'CREATE TABLE r (id INTEGER PRIMARY KEY)');
    await t.sql(key, 'INSERT INTO r VALUES (77)');
    await t.client.call('EventService', 'Append', { events: [event('e')] }, { key });
    expect(rowsOf(await t.sql(key, 'SELECT last_insert_rowid()'))).toEqual([[0n]]);
    const batch = await t.client.call('SqlService', 'Batch', { statements: [{ sql: 'INSERT INTO r VALUES (78)' }, { sql: 'SELECT last_insert_rowid()' }] }, { key });
    expect(rowsOf(batch.results[1])).toEqual([[78n]]);
  });
});

describe('memory one tenant can take (10.5)', () => {
  it('bounds every value a call makes by its length limit', async () => {
    const key = await t.createTenant('atk-len', FREE);
    const cols = Array.from({ length: 32 }, () => 'zeroblob(16000000)').join(', ');
    for (const sql of [`SELECT ${cols}`, "SELECT length(printf('%.*c', 20000000, 'x'))", 'SELECT length(randomblob(11000000))']) {
      const refused = await t.client.failure('SqlService', 'Execute', { sql }, { key });
      expect(refused.code, sql).toBe(status.INVALID_ARGUMENT);
      expect(refused.reason).toBe('SQLITE_TOOBIG');
    }
    expect(rowsOf(await t.sql(key, 'SELECT length(zeroblob(4000000))'))).toEqual([[4000000n]]);
  });

  it('bounds a whole result row while SQLite builds it, not just each value', async () => {
    const key = await t.createTenant('atk-row', FREE);
    await t.sql(key, 'CREATE TABLE big (b BLOB)');
    await t.sql(key, 'INSERT INTO big VALUES (randomblob(3000000))');
    const times = (n: number, value: string) => Array.from({ length: n }, () => value).join(', ');
    const queryFailure = async (sql: string) => {
      try {
        await t.client.stream('SqlService', 'Query', { sql }, { key });
      } catch (error) {
        return (error as { status: { code: number; reason: string; errorMetadata: Record<string, string> } }).status;
      }
      throw new Error(`Query ${sql.slice(0, 40)} succeeded`);
    };
    const rssBefore = process.memoryUsage().rss;
    // Each value is under the call's 10 MiB; the rows are 320 MB, 64 MB, 96 MB and 80 MB.
    const wide = [`SELECT ${times(32, 'zeroblob(10000000)')}`, `SELECT ${times(32, 'randomblob(2000000)')}`, `SELECT ${times(32, 'b')} FROM big`];
    for (const sql of wide) {
      for (const failure of [await t.client.failure('SqlService', 'Execute', { sql }, { key }), await queryFailure(sql)]) {
        expect(failure.code, sql.slice(0, 40)).toBe(status.INVALID_ARGUMENT);
        expect(failure.reason).toBe('SQLITE_TOOBIG');
        // 32 MiB shared by 32 columns.
        expect(failure.errorMetadata).toMatchObject({ limit_bytes: String(1024 * 1024) });
      }
    }
    const returning = await t.client.failure('SqlService', 'Execute', { sql: `INSERT INTO big VALUES (zeroblob(5000000)) RETURNING ${times(16, 'b')}` }, { key });
    expect(returning.reason).toBe('SQLITE_TOOBIG');
    expect(rowsOf(await t.sql(key, 'SELECT count(*) FROM big'))).toEqual([[1n]]);
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(200 * 1024 * 1024);

    // Narrow statements keep the call's whole limit, in the same Batch after a wide one too;
    // a wide row of small values is served.
    const batch = await t.client.call('SqlService', 'Batch', { statements: [{ sql: `SELECT ${times(64, '1')}` }, { sql: 'SELECT length(b), length(zeroblob(9000000)) FROM big' }] }, { key });
    expect(rowsOf(batch.results[1])).toEqual([[3000000n, 9000000n]]);
    const chunks = await t.client.stream('SqlService', 'Query', { sql: `SELECT ${times(32, 'zeroblob(100000)')}` }, { key });
    expect(chunks.length).toBeGreaterThan(0);
  });
});

describe('statements SQLite cannot interrupt while it prepares them (10.5)', () => {
  const chain = (depth: number, hint: string) => {
    let sql = `WITH a0(x) AS ${hint} (SELECT 1)`;
    for (let i = 1; i <= depth; i++) sql += `, a${i}(x) AS ${hint} (SELECT x FROM a${i - 1} UNION ALL SELECT x FROM a${i - 1})`;
    return `${sql} SELECT count(*) FROM a${depth}`;
  };

  it('refuses CTE chains that expand exponentially, at once, and runs modest ones', async () => {
    const key = await t.createTenant('atk-cte', { quotas: { ...FREE.quotas, query_timeout_ms: '1500' } });
    for (const hint of ['NOT MATERIALIZED', '', 'MATERIALIZED']) {
      const started = performance.now();
      const refused = await t.client.failure('SqlService', 'Execute', { sql: chain(18, hint) }, { key });
      expect(refused.code, hint).toBe(status.INVALID_ARGUMENT);
      expect(refused.reason).toBe('STATEMENT_TOO_COMPLEX');
      expect(performance.now() - started).toBeLessThan(1500);
      expect(rowsOf(await t.sql(key, chain(4, hint)))).toEqual([[16n]]);
    }
    // Recursive CTEs are one reference each.
    expect(rowsOf(await t.sql(key, 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) SELECT count(*) FROM c'))).toEqual([[10n]]);
  });

  it('refuses a view (or trigger) that would expand exponentially, and keeps the schema as it was', async () => {
    const key = await t.createTenant('atk-views', FREE);
    await t.sql(key, 'CREATE VIEW v0 (x) AS SELECT 1');
    let refusedAt = 0;
    for (let i = 1; i <= 14; i++) {
      const sql = `CREATE VIEW v${i} (x) AS SELECT x FROM v${i - 1} UNION ALL SELECT x FROM "V${i - 1}"`;
      const failure = await t.client.failure('SqlService', 'Execute', { sql }, { key }).catch(() => null);
      if (failure) {
        expect(failure.reason).toBe('STATEMENT_TOO_COMPLEX');
        refusedAt = i;
        break;
      }
    }
    expect(refusedAt).toBeGreaterThan(4);
    expect(rowsOf(await t.sql(key, `SELECT count(*) FROM sqlite_schema WHERE type = 'view'`))).toEqual([[BigInt(refusedAt)]]);
    const top = `v${refusedAt - 1}`;
    expect(rowsOf(await t.sql(key, `SELECT count(*) FROM ${top}`))).toEqual([[2n ** BigInt(refusedAt - 1)]]);
    // Referencing the biggest allowed view many times in one statement, or in a trigger, is refused too.
    const many = Array.from({ length: 8 }, () => `SELECT x FROM ${top}`).join(' UNION ALL ');
    expect((await t.client.failure('SqlService', 'Execute', { sql: `SELECT count(*) FROM (${many})` }, { key })).reason).toBe('STATEMENT_TOO_COMPLEX');
    await t.sql(key, 'CREATE TABLE fire (x)');
    const trigger = await t.client.failure('SqlService', 'Execute', { sql: `CREATE TRIGGER boom AFTER INSERT ON fire BEGIN SELECT count(*) FROM (${many}); END` }, { key });
    expect(trigger.reason).toBe('STATEMENT_TOO_COMPLEX');
    await t.sql(key, 'INSERT INTO fire VALUES (1)');
  });
});

describe('migrations run off the main thread, under the guard and a deadline (11.4)', () => {
  it('refuses transaction control and ATTACH in a migration, creating no file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tenantd-test-attach-'));
    try {
      const path = join(dir, 'escaped.db');
      for (const validate_only of [true, false]) {
        const refused = await t.client.failure(
          'SchemaService',
          'ApplyMigration',
          { migration_id: `atk-attach-${validate_only}`, sql: `COMMIT; ATTACH '${path}' AS x; CREATE TABLE x.t (a);`, validate_only },
          admin(),
        );
        expect(refused.code).toBe(status.INVALID_ARGUMENT);
        expect(refused.reason).toBe('MIGRATION_INVALID');
        const attach = await t.client.failure('SchemaService', 'ApplyMigration', { migration_id: `atk-attach2-${validate_only}`, sql: `ATTACH '${path}' AS x`, validate_only }, admin());
        expect(attach.reason).toBe('MIGRATION_INVALID');
        expect(existsSync(path)).toBe(false);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('stops a runaway migration at --migration-timeout-ms while the server keeps answering', async () => {
    const key = await t.createTenant('atk-mig-neighbour', FREE);
    const started = performance.now();
    const runaway = t.client.failure(
      'SchemaService',
      'ApplyMigration',
      { migration_id: 'atk-runaway', sql: 'CREATE TABLE n AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c' },
      admin(),
    );
    // The main thread stays free: a call made while the migration is validated is answered before it ends.
    const neighbourAt = await t.sql(key, 'SELECT 1').then(() => performance.now() - started);
    const refused = await runaway;
    const refusedAt = performance.now() - started;
    expect(refused.code).toBe(status.INVALID_ARGUMENT);
    expect(refused.message).toMatch(/time limit/);
    expect(neighbourAt).toBeLessThan(refusedAt);
    expect(refusedAt).toBeLessThan(15_000);
  });
});
