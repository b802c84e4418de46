import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { GUARD_LIBRARY_PATH, Guard } from '../workers/guard.ts';

const RUNAWAY = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c';
// Tens of seconds of work instead of forever: if an interrupt never comes, the
// test fails (the query returns) instead of hanging in synchronous code.
const LONG_RUNNING = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 200000000) SELECT count(*) FROM c';
const ENTRY_POINT = 'sqlite3_tenantdguard_init';
const require = createRequire(import.meta.url);
const BETTER_SQLITE3 = require.resolve('better-sqlite3');

const tempDirs: string[] = [];
const openDbs: Database.Database[] = [];

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tenantd-guard-'));
  tempDirs.push(dir);
  return dir;
}

function openRaw(options?: Database.Options): { db: Database.Database; dir: string } {
  const dir = tempDir();
  const db = new Database(join(dir, 'tenant.db'), options);
  openDbs.push(db);
  return { db, dir };
}

function open(): { db: Database.Database; guard: Guard; dir: string } {
  const { db, dir } = openRaw();
  const guard = Guard.attach(db);
  return { db, guard, dir };
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Runs `fn`, returning the error it throws (or failing the test if none). */
function thrown(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected the call to throw');
}

beforeAll(() => {
  // Same step as postinstall; a no-op when the library is newer than its sources.
  execFileSync(process.execPath, [fileURLToPath(new URL('../scripts/build-guard.mjs', import.meta.url))], {
    stdio: 'pipe',
  });
  expect(existsSync(GUARD_LIBRARY_PATH)).toBe(true);
});

afterEach(() => {
  for (const db of openDbs.splice(0)) if (db.open) db.close();
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('deadline', () => {
  it('interrupts a runaway query after about the timeout and leaves the connection usable', () => {
    const { db, guard } = open();
    db.exec('CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)');

    guard.arm(200);
    const start = performance.now();
    const err = thrown(() => db.prepare(RUNAWAY).get());
    const elapsed = performance.now() - start;

    expect(err.code).toBe('SQLITE_INTERRUPT');
    expect(elapsed).toBeGreaterThanOrEqual(150);
    expect(elapsed).toBeLessThan(2000);
    expect(guard.disarm()).toBe(true);

    expect(db.prepare('SELECT count(*) FROM t').pluck().get()).toBe(2);
    guard.arm(0);
    expect(db.prepare('SELECT sum(x) FROM t').pluck().get()).toBe(3);
    expect(guard.disarm()).toBe(false);
  });

  it('does not fire when the statement finishes in time', () => {
    const { db, guard } = open();
    guard.arm(5000);
    expect(db.prepare('SELECT 1 + 1').pluck().get()).toBe(2);
    expect(guard.disarm()).toBe(false);
    // Nothing left scheduled: a later long-ish statement is not interrupted.
    sleepMs(20);
    expect(db.prepare('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 200000) SELECT count(*) FROM c').pluck().get()).toBe(200000);
  });

  it('a deadline that passes while idle does not leak into statements after disarm', () => {
    const { db, guard } = open();
    db.exec('CREATE TABLE t(x); INSERT INTO t VALUES (42)');
    let fired = 0;
    for (let i = 0; i < 10; i++) {
      guard.arm(1);
      sleepMs(40);
      // Practically always true; an iteration where a starved watchdog has not
      // fired yet just does not exercise the leak, it is not a failure.
      if (guard.disarm()) fired++;
      expect(db.prepare('SELECT x FROM t').pluck().get()).toBe(42);
      db.prepare('INSERT INTO t VALUES (?)').run(i);
    }
    expect(fired).toBeGreaterThan(0);
    expect(db.prepare('SELECT count(*) FROM t').pluck().get()).toBe(11);
  });

  it('keeps enforcing an overdue deadline on statements started after it passed', () => {
    const { db, guard } = open();
    guard.arm(5);
    // The first interrupt lands while no statement runs and is cleared when
    // the next statement starts; the watchdog must interrupt again.
    sleepMs(30);
    const start = performance.now();
    expect(thrown(() => db.prepare(LONG_RUNNING).get()).code).toBe('SQLITE_INTERRUPT');
    expect(performance.now() - start).toBeLessThan(2000);
    expect(guard.disarm()).toBe(true);
  });

  it('works with defaultSafeIntegers(true)', () => {
    const { db } = openRaw();
    db.defaultSafeIntegers(true);
    const guard = Guard.attach(db);
    guard.arm(100);
    expect(db.prepare('SELECT 7').pluck().get()).toBe(7n);
    expect(guard.disarm()).toBe(false);
    guard.arm(100);
    expect(thrown(() => db.prepare(LONG_RUNNING).get()).code).toBe('SQLITE_INTERRUPT');
    expect(guard.disarm()).toBe(true);
    expect(guard.lastDenial()).toBeNull();
  });

  it('interrupts two connections of one thread at their own deadlines', () => {
    const a = open();
    const b = open();
    const armedAt = performance.now();
    a.guard.arm(700);
    b.guard.arm(150);

    expect(thrown(() => b.db.prepare(LONG_RUNNING).get()).code).toBe('SQLITE_INTERRUPT');
    const bElapsed = performance.now() - armedAt;
    expect(bElapsed).toBeGreaterThanOrEqual(110);
    expect(bElapsed).toBeLessThan(600);
    expect(b.guard.disarm()).toBe(true);

    // Disarming b left a armed: its own, later deadline still applies.
    expect(thrown(() => a.db.prepare(LONG_RUNNING).get()).code).toBe('SQLITE_INTERRUPT');
    const aElapsed = performance.now() - armedAt;
    expect(aElapsed).toBeGreaterThanOrEqual(600);
    expect(aElapsed).toBeLessThan(2700);
    expect(a.guard.disarm()).toBe(true);

    // And b, disarmed, was not interrupted again in the meantime.
    expect(b.db.prepare('SELECT 1').pluck().get()).toBe(1);
  });

  it('interrupts connections in two worker threads at their own deadlines', async () => {
    const dir = tempDir();
    const script = join(dir, 'runaway-worker.mjs');
    writeFileSync(
      script,
      `
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
const Database = createRequire(import.meta.url)(workerData.betterSqlite3);
const db = new Database(workerData.dbPath);
db.loadExtension(workerData.library, workerData.entryPoint);
const token = randomBytes(16);
db.prepare('SELECT tenantd_guard_init(?)').get(token);
const arm = db.prepare('SELECT tenantd_arm(?, ?)').pluck();
const disarm = db.prepare('SELECT tenantd_disarm(?)').pluck();
const start = performance.now();
arm.get(token, workerData.timeoutMs);
let code = null;
try { db.prepare(workerData.sql).get(); } catch (err) { code = err.code; }
const elapsed = performance.now() - start;
const fired = disarm.get(token);
const after = db.prepare('SELECT 5').pluck().get();
db.close();
parentPort.postMessage({ code, elapsed, fired, after });
`,
    );
    const run = (name: string, timeoutMs: number) =>
      new Promise<{ code: string | null; elapsed: number; fired: number; after: number }>((resolve, reject) => {
        const worker = new Worker(script, {
          workerData: {
            betterSqlite3: BETTER_SQLITE3,
            library: GUARD_LIBRARY_PATH,
            entryPoint: ENTRY_POINT,
            dbPath: join(dir, `${name}.db`),
            timeoutMs,
            sql: LONG_RUNNING,
          },
        });
        worker.once('message', resolve);
        worker.once('error', reject);
      });

    const [fast, slow] = await Promise.all([run('fast', 150), run('slow', 600)]);
    for (const r of [fast, slow]) {
      expect(r.code).toBe('SQLITE_INTERRUPT');
      expect(r.fired).toBe(1);
      expect(r.after).toBe(5);
    }
    expect(fast.elapsed).toBeGreaterThanOrEqual(110);
    expect(fast.elapsed).toBeLessThan(2000);
    expect(slow.elapsed).toBeGreaterThanOrEqual(450);
    expect(slow.elapsed).toBeLessThan(2600);
  }, 20_000);
});

describe('authorizer', () => {
  function seed(db: Database.Database): void {
    db.exec(`
      CREATE TABLE _tenantd_meta(k TEXT PRIMARY KEY, v);
      INSERT INTO _tenantd_meta VALUES ('quota', 100);
      CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT);
      INSERT INTO t(a) VALUES ('x'), ('y');
      ANALYZE;
    `);
  }

  interface Case {
    sql: string;
    reason: RegExp;
    /** Setup run with the guard off before the guarded attempt. */
    before?: string;
    /** Whether the same SQL succeeds with the guard off. */
    allowedOff?: boolean;
  }

  const TEMP = /temp.*temporary objects are not allowed/i;
  const cases: Case[] = [
    { sql: "ATTACH ':memory:' AS aux", reason: /ATTACH/, allowedOff: true },
    { sql: 'DETACH aux', reason: /DETACH/, before: "ATTACH ':memory:' AS aux", allowedOff: true },
    { sql: "VACUUM INTO '@DIR@/copy.db'", reason: /VACUUM INTO/, allowedOff: true },
    { sql: 'BEGIN', reason: /BEGIN/, allowedOff: true },
    { sql: 'COMMIT', reason: /COMMIT/ },
    { sql: 'SAVEPOINT sp', reason: /SAVEPOINT sp/, allowedOff: true },
    { sql: 'RELEASE sp', reason: /RELEASE sp/ },
    { sql: 'PRAGMA journal_mode=DELETE', reason: /PRAGMA journal_mode=DELETE/, allowedOff: true },
    { sql: "PRAGMA journal_mode('wal')", reason: /PRAGMA journal_mode=wal/ },
    { sql: 'PRAGMA synchronous=OFF', reason: /PRAGMA synchronous=OFF/, allowedOff: true },
    { sql: 'PRAGMA max_page_count=1', reason: /PRAGMA max_page_count=1/, allowedOff: true },
    { sql: 'PRAGMA writable_schema=1', reason: /PRAGMA writable_schema/, allowedOff: true },
    { sql: 'PRAGMA page_size=1024', reason: /PRAGMA page_size=1024/ },
    { sql: 'PRAGMA cache_size=-100000', reason: /PRAGMA cache_size/ },
    { sql: 'PRAGMA mmap_size=1000000', reason: /PRAGMA mmap_size/ },
    { sql: 'PRAGMA temp_store=MEMORY', reason: /PRAGMA temp_store/ },
    { sql: 'PRAGMA busy_timeout=100000', reason: /PRAGMA busy_timeout/ },
    { sql: 'PRAGMA query_only=1', reason: /PRAGMA query_only/ },
    { sql: 'PRAGMA wal_checkpoint', reason: /PRAGMA wal_checkpoint/ },
    { sql: 'PRAGMA Database_List', reason: /PRAGMA Database_List/ },
    { sql: 'PRAGMA trusted_schema=1', reason: /PRAGMA trusted_schema/ },
    { sql: 'SELECT * FROM pragma_database_list', reason: /PRAGMA database_list/, allowedOff: true },
    { sql: 'PRAGMA table_info(_tenantd_meta)', reason: /table_info on _tenantd_meta/, allowedOff: true },
    { sql: "SELECT * FROM pragma_table_info('_tenantd_meta')", reason: /table_info on _tenantd_meta/ },
    { sql: "SELECT load_extension('x')", reason: /load_extension/ },
    { sql: 'SELECT * FROM _tenantd_meta', reason: /reading _tenantd_meta/, allowedOff: true },
    { sql: 'SELECT v FROM _TENANTD_META', reason: /reading _tenantd_meta/i },
    { sql: "INSERT INTO _tenantd_meta VALUES ('k', 1)", reason: /inserting into _tenantd_meta/, allowedOff: true },
    { sql: 'UPDATE _tenantd_meta SET v = 0', reason: /_tenantd_meta/, allowedOff: true },
    { sql: 'DELETE FROM _tenantd_meta', reason: /deleting from _tenantd_meta/, allowedOff: true },
    { sql: 'CREATE TABLE _tenantd_other(x)', reason: /CREATE TABLE _tenantd_other/, allowedOff: true },
    { sql: 'CREATE INDEX i ON _tenantd_meta(v)', reason: /CREATE INDEX i on _tenantd_meta/, allowedOff: true },
    { sql: 'CREATE INDEX _tenantd_i ON t(a)', reason: /CREATE INDEX _tenantd_i/ },
    {
      sql: 'CREATE TRIGGER tr AFTER INSERT ON _tenantd_meta BEGIN SELECT 1; END',
      reason: /CREATE TRIGGER tr on _tenantd_meta/,
      allowedOff: true,
    },
    { sql: 'CREATE VIEW _tenantd_v AS SELECT 1', reason: /CREATE VIEW _tenantd_v/, allowedOff: true },
    { sql: 'ALTER TABLE _tenantd_meta ADD COLUMN z', reason: /ALTER TABLE _tenantd_meta/, allowedOff: true },
    { sql: 'DROP TABLE _tenantd_meta', reason: /DROP TABLE _tenantd_meta/, allowedOff: true },
    { sql: 'CREATE TEMP TABLE tt(x)', reason: TEMP, allowedOff: true },
    { sql: 'CREATE TABLE temp.tt(x)', reason: TEMP, allowedOff: true },
    { sql: 'CREATE TEMP VIEW tv AS SELECT 1', reason: TEMP, allowedOff: true },
    { sql: 'CREATE TEMP TRIGGER ttr AFTER INSERT ON t BEGIN SELECT 1; END', reason: TEMP, allowedOff: true },
    { sql: 'CREATE TRIGGER temp.ttr AFTER INSERT ON t BEGIN SELECT 1; END', reason: TEMP, allowedOff: true },
    { sql: 'CREATE VIRTUAL TABLE temp.ft USING fts5(body)', reason: TEMP, allowedOff: true },
    // Not on the module allow-list, and dropped from the connection: refused even with the guard off.
    { sql: 'CREATE VIRTUAL TABLE g USING geopoly(a)', reason: /module geopoly/ },
    { sql: "INSERT INTO sqlite_stat1 VALUES ('t', NULL, '1')", reason: /inserting into sqlite_stat1/ },
    { sql: "UPDATE sqlite_stat1 SET stat = '1'", reason: /updating sqlite_stat1/ },
  ];

  for (const c of cases) {
    it(`refuses under the guard: ${c.sql}`, () => {
      const { db, guard, dir } = open();
      seed(db);
      const sql = c.sql.replaceAll('@DIR@', dir);
      if (c.before) db.exec(c.before);

      guard.arm(0);
      const err = thrown(() => db.exec(sql));
      // SQLite words it differently per action ("not authorized", "access to
      // t.c is prohibited", ...); the reason comes from lastDenial().
      expect(err.message).toMatch(/not authorized|authorization denied|prohibited/);
      expect(guard.lastDenial()).toMatch(c.reason);
      expect(guard.disarm()).toBe(false);
      // Still reported after disarm; cleared by the next arm.
      expect(guard.lastDenial()).toMatch(c.reason);
      guard.arm(0);
      expect(guard.lastDenial()).toBeNull();
      guard.disarm();

      if (c.allowedOff) {
        expect(() => db.exec(sql)).not.toThrow();
      }
      if (sql.includes('VACUUM INTO')) {
        expect(existsSync(join(dir, 'copy.db'))).toBe(true);
      }
    });
  }

  it('allows ordinary tenant SQL under the guard', () => {
    const { db, guard } = open();
    seed(db);
    guard.arm(10_000);
    db.exec(`
      CREATE TABLE notes(id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT, body TEXT);
      CREATE INDEX notes_title ON notes(title);
      INSERT INTO notes(title, body) VALUES ('a', 'hello world'), ('b', 'goodbye');
      UPDATE notes SET body = body || '!' WHERE id = 1;
      DELETE FROM notes WHERE id = 2;
      CREATE VIEW note_titles AS SELECT title FROM notes;
      CREATE TABLE log(msg);
      CREATE TRIGGER notes_log AFTER INSERT ON notes BEGIN INSERT INTO log VALUES (new.title); END;
      INSERT INTO notes(title, body) VALUES ('c', 'again');
      ALTER TABLE notes ADD COLUMN extra;
      ALTER TABLE notes RENAME TO notes2;
      ALTER TABLE notes2 RENAME COLUMN extra TO more;
      ANALYZE;
      DROP INDEX notes_title;
      DROP TABLE t;
      PRAGMA foreign_keys;
      PRAGMA user_version=7;
      PRAGMA optimize;
      PRAGMA integrity_check;
      CREATE VIRTUAL TABLE docs USING fts5(body);
      INSERT INTO docs VALUES ('the quick brown fox'), ('lazy dog');
      CREATE VIRTUAL TABLE boxes USING rtree(id, minx, maxx);
      INSERT INTO boxes VALUES (1, 0, 10);
    `);
    expect(db.prepare("SELECT count(*) FROM docs WHERE docs MATCH 'fox'").pluck().get()).toBe(1);
    expect(db.prepare('SELECT count(*) FROM boxes WHERE minx >= 0').pluck().get()).toBe(1);
    expect(db.prepare('SELECT msg FROM log').pluck().get()).toBe('c');
    expect(db.prepare('PRAGMA user_version').pluck().get()).toBe(7);
    expect(db.prepare('PRAGMA foreign_keys').pluck().get()).toBe(1);
    expect(db.prepare('PRAGMA journal_mode').pluck().get()).toBe('delete');
    expect(db.prepare('PRAGMA page_count').pluck().get()).toBeGreaterThan(0);
    expect(db.prepare('PRAGMA table_info(notes2)').all().map((r) => (r as { name: string }).name)).toEqual([
      'id',
      'title',
      'body',
      'more',
    ]);
    expect(db.prepare("SELECT count(*) FROM pragma_table_info('notes2')").pluck().get()).toBe(4);
    expect(db.prepare("SELECT count(*) FROM sqlite_schema WHERE name = 'notes2'").pluck().get()).toBe(1);
    expect(db.prepare("SELECT count(*) FROM sqlite_sequence WHERE name = 'notes2'").pluck().get()).toBe(1);
    expect(db.prepare('SELECT count(*) FROM sqlite_stat1').pluck().get()).toBeGreaterThan(0);
    expect(guard.lastDenial()).toBeNull();
    expect(guard.disarm()).toBe(false);
  });

  it('checks views and triggers against the policy when tenant SQL uses them', () => {
    const { db, guard } = open();
    seed(db);
    guard.arm(0);
    // Bodies are authorized when a statement using them is prepared, not at
    // CREATE time, so these succeed but can never be used by tenant SQL.
    db.exec('CREATE VIEW peek AS SELECT * FROM _tenantd_meta');
    db.exec('CREATE TRIGGER wipe AFTER INSERT ON t BEGIN DELETE FROM _tenantd_meta; END');
    expect(thrown(() => db.prepare('SELECT * FROM peek').all()).message).toMatch(/prohibited|not authorized/);
    expect(guard.lastDenial()).toMatch(/reading _tenantd_meta/);
    expect(thrown(() => db.prepare("INSERT INTO t(a) VALUES ('z')").run()).message).toMatch(/not authorized/);
    expect(guard.lastDenial()).toMatch(/deleting from _tenantd_meta/);
    guard.disarm();
    expect(db.prepare('SELECT count(*) FROM _tenantd_meta').pluck().get()).toBe(1);
  });

  it('allows plain VACUUM under the guard, copying service tables too', () => {
    const { db, guard } = open();
    seed(db);
    db.exec("CREATE TABLE big(x); INSERT INTO big SELECT randomblob(1000) FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 500) SELECT i FROM c); DROP TABLE big");
    const before = db.prepare('PRAGMA page_count').pluck().get() as number;

    guard.arm(10_000);
    db.exec('VACUUM');
    expect(guard.lastDenial()).toBeNull();
    expect(guard.disarm()).toBe(false);

    expect(db.prepare('PRAGMA page_count').pluck().get()).toBeLessThan(before);
    expect(db.prepare("SELECT v FROM _tenantd_meta WHERE k = 'quota'").pluck().get()).toBe(100);
  });

  it('keeps the control statements working after the tenant changes the schema', () => {
    const { db, guard } = open();
    guard.arm(10_000);
    db.exec('CREATE TABLE a(x); DROP TABLE a; CREATE TABLE b(y)');
    expect(thrown(() => db.exec('BEGIN')).message).toMatch(/not authorized/);
    // These statements were prepared before the schema changed and are now
    // re-prepared under the guard.
    expect(guard.lastDenial()).toMatch(/BEGIN/);
    expect(guard.disarm()).toBe(false);
    guard.arm(0);
    expect(guard.disarm()).toBe(false);
  });
});

describe('control functions', () => {
  it('refuse a wrong or missing token from SQL, guard on or off', () => {
    const { db, guard } = open();
    const attempts = [
      'SELECT tenantd_arm(randomblob(16), 100)',
      'SELECT tenantd_disarm(randomblob(16))',
      "SELECT tenantd_disarm(x'00')",
      'SELECT tenantd_disarm(NULL)',
      "SELECT tenantd_last_denial('token')",
    ];
    for (const armed of [false, true]) {
      if (armed) guard.arm(0);
      for (const sql of attempts) {
        expect(() => db.prepare(sql).get(), sql).toThrow('tenantd: not permitted');
      }
      expect(() => db.prepare('SELECT tenantd_guard_init(randomblob(16))').get()).toThrow(/already set/);
    }
    // The failed disarm attempts above did not turn the guard off.
    expect(() => db.exec("ATTACH ':memory:' AS x")).toThrow(/not authorized/);
    expect(guard.disarm()).toBe(false);
    expect(() => db.exec("ATTACH ':memory:' AS x")).not.toThrow();
  });

  it('refuse everything before a token has been set', () => {
    const { db } = openRaw();
    db.loadExtension(GUARD_LIBRARY_PATH);
    expect(() => db.prepare("SELECT tenantd_arm(zeroblob(16), 1)").get()).toThrow('tenantd: not permitted');
    expect(() => db.prepare('SELECT tenantd_disarm(NULL)').get()).toThrow('tenantd: not permitted');
    expect(() => db.prepare("SELECT tenantd_guard_init(x'0102')").get()).toThrow(/16-byte/);
    const token = randomBytes(16);
    expect(db.prepare('SELECT tenantd_guard_init(?)').pluck().get(token)).toBe(1);
    expect(db.prepare('SELECT tenantd_arm(?, 0)').pluck().get(token)).toBe(1);
    expect(db.prepare('SELECT tenantd_disarm(?)').pluck().get(token)).toBe(0);
  });

  it('cannot be used from schema objects', () => {
    const { db } = open();
    db.exec("CREATE VIEW v AS SELECT tenantd_disarm(x'00') AS r");
    expect(() => db.prepare('SELECT * FROM v').get()).toThrow(/unsafe use of tenantd_disarm/);
  });
});

describe('connection settings', () => {
  it('applies the limits and forbids loading more extensions', () => {
    const { db, dir } = open();
    expect(() => db.exec(`SELECT ${'1+'.repeat(300)}1`)).toThrow(/maximum depth 200/);
    const cols = Array.from({ length: 2001 }, (_, i) => `c${i}`).join(', ');
    expect(() => db.exec(`CREATE TABLE wide(${cols})`)).toThrow(/too many columns/);
    expect(() => db.prepare(`SELECT '${'x'.repeat(1024 * 1024)}'`)).toThrow(/too big|too long/);
    expect(() => db.prepare('SELECT zeroblob(17 * 1024 * 1024)').get()).toThrow(/too big/);
    expect(() => db.loadExtension(GUARD_LIBRARY_PATH)).toThrow(/not authorized/);
    expect(() => Guard.load(db)).toThrow(/cannot load tenantd guard extension/);
    // Nor can a second token take over the one already set.
    expect(() => Guard.attach(db)).toThrow(/token already set/);

    // One attached database stays possible (VACUUM needs it), a second is not.
    db.exec("ATTACH ':memory:' AS one");
    expect(() => db.exec("ATTACH ':memory:' AS two")).toThrow(/too many attached databases - max 1/);
    db.exec('DETACH one');
    // Guard-off VACUUM INTO still works: the one attached database it needs is allowed. (The
    // service copies a tenant with the online backup API now: test/heavyOps.test.ts.)
    db.exec('CREATE TABLE t(x); INSERT INTO t VALUES (1)');
    db.exec(`VACUUM INTO '${join(dir, 'copy.db')}'`);
    const copy = new Database(join(dir, 'copy.db'), { readonly: true });
    expect(copy.prepare('SELECT x FROM t').pluck().get()).toBe(1);
    copy.close();
  });
});

describe('process lifetime', () => {
  it('survives many connections closed while armed, in threads, and process exit', () => {
    const dir = tempDir();
    const script = join(dir, 'churn.mjs');
    writeFileSync(
      script,
      `
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { Worker, isMainThread, workerData } from 'node:worker_threads';
import { join } from 'node:path';
const { betterSqlite3, library, entryPoint, dir } = isMainThread ? JSON.parse(process.argv[2]) : workerData;
const Database = createRequire(import.meta.url)(betterSqlite3);
const LONG_RUNNING = ${JSON.stringify(LONG_RUNNING)};
function openGuarded(name) {
  const db = new Database(join(dir, name));
  db.loadExtension(library, entryPoint);
  const token = randomBytes(16);
  db.prepare('SELECT tenantd_guard_init(?)').get(token);
  return { db, token, arm: db.prepare('SELECT tenantd_arm(?, ?)').pluck() };
}
const tag = isMainThread ? 'main' : 'w' + workerData.id;
let interrupted = 0;
for (let round = 0; round < 4; round++) {
  const conns = [];
  for (let i = 0; i < 50; i++) conns.push(openGuarded(tag + '-' + i + '.db'));
  conns.forEach((c, i) => c.arm.get(c.token, 1 + (i % 5)));
  for (const c of conns.slice(0, 3)) {
    try { c.db.prepare(LONG_RUNNING).get(); } catch (err) { if (err.code === 'SQLITE_INTERRUPT') interrupted++; }
  }
  conns.forEach((c) => c.db.close());   // closed while still armed
}
// Left open and armed: closed by better-sqlite3's cleanup at exit, while the
// watchdog may be firing at them.
const leftOpen = [];
for (let i = 0; i < 10; i++) { const c = openGuarded(tag + '-open-' + i + '.db'); c.arm.get(c.token, i % 2 ? 1 : 60000); leftOpen.push(c); }
if (isMainThread) {
  const workers = [1, 2].map((id) => new Worker(new URL(import.meta.url), { workerData: { betterSqlite3, library, entryPoint, dir, id } }));
  await Promise.all(workers.map((w) => new Promise((res, rej) => { w.on('exit', res); w.on('error', rej); })));
  console.log('churn ok interrupted=' + interrupted);
}
`,
    );
    const args = JSON.stringify({ betterSqlite3: BETTER_SQLITE3, library: GUARD_LIBRARY_PATH, entryPoint: ENTRY_POINT, dir });
    const result = spawnSync(process.execPath, [script, args], { encoding: 'utf8', timeout: 60_000 });
    expect(result.stderr).toBe('');
    expect(result.signal).toBeNull();
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('churn ok interrupted=12');
  }, 70_000);
});

describe('cost', () => {
  it('measures arm + disarm per statement (informational)', () => {
    const { db, guard } = open();
    const stmt = db.prepare('SELECT 1').pluck();
    const n = 50_000;
    for (let i = 0; i < 1000; i++) {
      guard.arm(1000);
      guard.disarm();
    }
    let t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      guard.arm(1000);
      guard.disarm();
    }
    const pair = Number(process.hrtime.bigint() - t) / n;
    t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) stmt.get();
    const select = Number(process.hrtime.bigint() - t) / n;
    console.log(
      `guard arm+disarm: ${(pair / 1000).toFixed(2)} µs per pair (deadline set); SELECT 1: ${(select / 1000).toFixed(2)} µs`,
    );
    expect(pair).toBeGreaterThan(0);
  });
});

/**
 * The allow-lists against the SQLite library as built (better-sqlite3's own
 * compile options): every function, module and pragma it offers is either
 * named below, and then works under the guard, or refused. A newer SQLite
 * with a new function, module or pragma fails this test until someone
 * decides about it (and the guard refuses it meanwhile).
 */
describe('allow-lists against the library as built', () => {
  // The same lists as tenantd_guard.c and the README's "Security model".
  const FUNCTIONS = new Set(
    `abs changes char coalesce concat concat_ws format glob hex if ifnull iif instr last_insert_rowid length like
     likelihood likely lower ltrim max min nullif octet_length printf quote random randomblob replace round rtrim sign
     soundex sqlite_version substr substring subtype trim typeof unhex unicode unistr unistr_quote unlikely upper zeroblob
     current_date current_time current_timestamp date datetime julianday strftime time timediff unixepoch
     acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10 log2 mod pi pow power
     radians sin sinh sqrt tan tanh trunc
     avg count group_concat median percentile percentile_cont percentile_disc string_agg sum total
     cume_dist dense_rank first_value lag last_value lead nth_value ntile percent_rank rank row_number
     -> ->> json json_array json_array_insert json_array_length json_error_position json_extract json_group_array
     json_group_object json_insert json_object json_patch json_pretty json_quote json_remove json_replace json_set
     json_type json_valid jsonb jsonb_array jsonb_array_insert jsonb_extract jsonb_group_array jsonb_group_object
     jsonb_insert jsonb_object jsonb_patch jsonb_remove jsonb_replace jsonb_set
     match matchinfo offsets optimize snippet highlight bm25 fts5_get_locale fts5_insttoken fts5_locale`.split(/\s+/),
  );
  const MODULES: Record<string, string> = { fts3: '(a)', fts4: '(a)', fts5: '(a)', rtree: '(id, x0, x1)', rtree_i32: '(id, x0, x1)' };
  const EPONYMOUS = ['json_each', 'json_tree', 'jsonb_each', 'jsonb_tree'];
  const INTROSPECT = new Set(
    'table_info table_xinfo table_list index_list index_info index_xinfo foreign_key_list foreign_key_check integrity_check quick_check'.split(' '),
  );
  const READABLE = new Set(
    `page_count page_size freelist_count schema_version data_version compile_options function_list module_list pragma_list
     collation_list encoding journal_mode synchronous max_page_count foreign_keys recursive_triggers defer_foreign_keys
     case_sensitive_like automatic_index auto_vacuum busy_timeout cache_size cache_spill cell_size_check
     ignore_check_constraints legacy_alter_table query_only reverse_unordered_selects secure_delete temp_store threads
     trusted_schema journal_size_limit mmap_size locking_mode wal_autocheckpoint analysis_limit user_version application_id
     optimize`.split(/\s+/),
  );
  const SETTABLE = new Set(['user_version', 'application_id', 'optimize']);

  const plain = new Database(':memory:');
  const builtFunctions = plain.prepare('SELECT name, type, narg FROM pragma_function_list').all() as { name: string; type: string; narg: number }[];
  const builtModules = plain.prepare('SELECT name FROM pragma_module_list').pluck().all() as string[];
  const builtPragmas = plain.prepare('SELECT name FROM pragma_pragma_list').pluck().all() as string[];
  plain.close();

  /** Prepares `sql` with the guard on; the denial, or null when the guard let it through. */
  function underGuard(db: Database.Database, guard: Guard, sql: string): { denial: string | null; error: string | null } {
    guard.arm(0);
    try {
      db.prepare(sql);
      return { denial: guard.lastDenial(), error: null };
    } catch (err) {
      return { denial: guard.lastDenial(), error: (err as Error).message };
    } finally {
      guard.disarm();
    }
  }

  it('lets every allowed function through and refuses every other one', () => {
    const { db, guard } = open();
    expect(builtFunctions.length).toBeGreaterThan(100);
    const wrong: string[] = [];
    for (const { name, type, narg } of builtFunctions) {
      const n = narg < 0 ? 1 : narg;
      const args = Array.from({ length: n }, () => '?').join(', ');
      const call = name === '->' || name === '->>' ? `? ${name} ?` : `"${name}"(${args})`;
      const sql = `SELECT ${call}${type === 'w' ? ' OVER ()' : ''}`;
      const { denial } = underGuard(db, guard, sql);
      const allowed = FUNCTIONS.has(name);
      if (allowed && denial !== null) wrong.push(`${name}/${narg} refused: ${denial}`);
      if (!allowed && (denial === null || !denial.includes(name))) wrong.push(`${name}/${narg} not refused`);
    }
    expect(wrong).toEqual([]);
    // The refused ones that matter most, by name.
    for (const name of ['fts3_tokenizer', 'load_extension', 'sqlite_log', 'fts5', 'rtreenode', 'geopoly_debug', 'total_changes']) {
      expect(FUNCTIONS.has(name)).toBe(false);
    }
  });

  it('lets every allowed module and eponymous table through and refuses every other one', () => {
    const { db, guard } = open();
    const wrong: string[] = [];
    for (const name of [...new Set([...builtModules, ...EPONYMOUS, ...Object.keys(MODULES)])]) {
      if (name.startsWith('pragma_')) continue; // governed by the pragma lists (next test)
      if (MODULES[name] !== undefined) {
        guard.arm(0);
        try {
          db.exec(`CREATE VIRTUAL TABLE "vt_${name}" USING ${name}${MODULES[name]}`);
        } catch (err) {
          wrong.push(`${name} refused: ${(err as Error).message} ${guard.lastDenial()}`);
        } finally {
          guard.disarm();
        }
      } else if (EPONYMOUS.includes(name)) {
        const { error } = underGuard(db, guard, `SELECT * FROM ${name}('[1]')`);
        if (error !== null) wrong.push(`${name} refused: ${error}`);
      } else {
        const created = underGuard(db, guard, `CREATE VIRTUAL TABLE "vt_${name}" USING ${name}(a)`);
        const read = underGuard(db, guard, `SELECT * FROM ${name}`);
        if (created.error === null || read.error === null) wrong.push(`${name} not refused`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('lets tenants read the readable pragmas and set only the settable ones', () => {
    const { db, guard } = open();
    const wrong: string[] = [];
    for (const name of builtPragmas) {
      const read = underGuard(db, guard, `PRAGMA ${name}`);
      const readable = READABLE.has(name) || INTROSPECT.has(name);
      if (readable && read.denial !== null) wrong.push(`reading ${name} refused: ${read.denial}`);
      if (!readable && read.denial === null) wrong.push(`reading ${name} not refused`);
      if (INTROSPECT.has(name)) continue; // the argument names a table, not a setting
      const set = underGuard(db, guard, `PRAGMA ${name} = 0`);
      if (SETTABLE.has(name) && set.denial !== null) wrong.push(`setting ${name} refused: ${set.denial}`);
      if (!SETTABLE.has(name) && set.denial === null) wrong.push(`setting ${name} not refused`);
      // The table-valued form never sets anything either (its argument is a schema name where the pragma takes one).
      if (!READABLE.has(name) || SETTABLE.has(name) || name.endsWith('_list')) continue;
      const value = () => {
        const statement = db.prepare(`PRAGMA ${name}`);
        return statement.reader ? JSON.stringify(statement.all()) : 'no value';
      };
      const before = value();
      guard.arm(0);
      try {
        db.prepare(`SELECT * FROM pragma_${name}('0')`).all();
      } catch {
        // refused or "unknown database": either way nothing was set
      } finally {
        guard.disarm();
      }
      if (value() !== before) wrong.push(`pragma_${name}('0') changed it`);
    }
    expect(wrong).toEqual([]);
  });

  it('checks trigger code as tenant code even when the service’s own statement fires it, under the tenant’s deadline', () => {
    const { db, guard } = open();
    db.exec(`CREATE TABLE _tenantd_meta (key TEXT PRIMARY KEY, value ANY) STRICT;
      INSERT INTO _tenantd_meta VALUES ('schema_version', 3);
      CREATE TABLE _tenantd_events (position INTEGER PRIMARY KEY, type TEXT);
      CREATE TABLE stolen (k, v);
      CREATE TRIGGER steal AFTER INSERT ON _tenantd_events BEGIN INSERT INTO stolen SELECT key, value FROM _tenantd_meta; END;
      CREATE TABLE slow (x);
      CREATE TRIGGER spin AFTER INSERT ON slow BEGIN SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c); END;`);
    // Guard off altogether: the service's own statement, no tenant call.
    const err = thrown(() => db.prepare("INSERT INTO _tenantd_events (type) VALUES ('e')").run());
    expect(err.message).toMatch(/not authorized|prohibited/);
    expect(guard.lastDenial()).toMatch(/_tenantd_meta.*in trigger or view steal/);
    expect(db.prepare('SELECT count(*) FROM stolen').pluck().get()).toBe(0);
    // The service's statement under a tenant's deadline ('service' mode): the trigger's loop is interrupted.
    db.exec('DROP TRIGGER steal');
    guard.armCall(200, 'service');
    const started = performance.now();
    expect(thrown(() => db.prepare('INSERT INTO slow VALUES (1)').run()).code).toBe('SQLITE_INTERRUPT');
    expect(guard.disarm()).toBe(true);
    expect(performance.now() - started).toBeLessThan(5000);
    // The service's own statements themselves stay unchecked in 'service' mode.
    guard.armCall(1000, 'service');
    expect(db.prepare('SELECT count(*) FROM _tenantd_meta').pluck().get()).toBe(1);
    guard.disarm();
  });
});
