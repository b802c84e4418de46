import Database from 'better-sqlite3';
import { Guard } from '../workers/guard.ts';
const db = new Database(':memory:');
Guard.load(db);
const g = Guard.attach(db);
db.exec('CREATE TABLE t(a INTEGER PRIMARY KEY, b); CREATE TABLE _tenantd_meta(key TEXT PRIMARY KEY, value ANY) STRICT');
function tryit(sql: string, params: unknown[] = []) {
  g.armCall(1500, 'tenant', 1 << 20);
  const t = Date.now();
  try { const st = db.prepare(sql); const r = st.reader ? st.all(...params) : st.run(...params); console.log('OK', sql.slice(0, 80), JSON.stringify(r).slice(0, 100)); }
  catch (e) { console.log('ERR', sql.slice(0, 80), (e as Error).message, g.lastDenial(), Date.now() - t, 'ms'); }
  finally { const f = g.disarm(); if (f) console.log('  fired'); }
}
tryit("SELECT fts3_tokenizer('x', ?)", [Buffer.from('AAAAAAAA')]);
tryit("SELECT count(*) FROM dbstat");
tryit("SELECT * FROM fts3tokenize('simple','a b')");
tryit("SELECT * FROM json_each('[1,2]')");
tryit("SELECT count(*) FROM json_each('[1,2]')");
tryit("SELECT * FROM pragma_table_info('_tenantd_meta')");
tryit("SELECT * FROM pragma_table_info('t')");
tryit("PRAGMA foreign_keys=OFF");
tryit("PRAGMA foreign_keys");
tryit("PRAGMA temp.user_version=3");
tryit("PRAGMA user_version=3");
tryit("SELECT length(zeroblob(2000000))");
tryit("ALTER TABLE t RENAME TO t2");
tryit("ALTER TABLE t2 RENAME TO t");
tryit("ANALYZE");
tryit("ALTER TABLE t DROP COLUMN b");
tryit("SELECT abs(1), unlikely(1), 1->>'$', date('now'), sum(1) OVER ()");
tryit("CREATE VIRTUAL TABLE f USING fts5(x)");
tryit("CREATE VIRTUAL TABLE g USING geopoly(x)");
tryit("CREATE VIRTUAL TABLE v USING fts5vocab(f, row)");
tryit("INSERT INTO t(b) VALUES (1)");
tryit("SELECT last_insert_rowid()");
for (const depth of [14, 16, 18]) {
  let w = 'WITH a0(x) AS NOT MATERIALIZED (SELECT 1)';
  for (let i = 1; i <= depth; i++) w += `, a${i}(x) AS NOT MATERIALIZED (SELECT x FROM a${i - 1} UNION ALL SELECT x FROM a${i - 1})`;
  tryit(w + ` SELECT count(*) FROM a${depth}`);
  console.log(process.memoryUsage().rss >> 20, 'MB');
}
