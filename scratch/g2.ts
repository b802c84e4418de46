import Database from 'better-sqlite3';
import { Guard } from '../workers/guard.ts';
const db = new Database(':memory:');
Guard.load(db);
const g = Guard.attach(db);
db.exec("CREATE TABLE _tenantd_meta(key TEXT PRIMARY KEY, value ANY) STRICT; CREATE TABLE _tenantd_events(position INTEGER PRIMARY KEY, type TEXT); CREATE INDEX _tenantd_events_time ON _tenantd_events(type); CREATE TABLE t(a)");
for (const sql of ["REINDEX _tenantd_meta", "ANALYZE _tenantd_meta", "CREATE VIEW v AS SELECT * FROM _tenantd_meta", "SELECT * FROM v", "CREATE TRIGGER x BEFORE DELETE ON t BEGIN SELECT load_extension('x'); END", "DELETE FROM t", "SELECT * FROM pragma_index_list('_tenantd_events')", "SELECT * FROM \"main\".\"_TENANTD_META\"", "DROP TRIGGER IF EXISTS _tenantd_x", "CREATE TABLE c AS SELECT * FROM _tenantd_meta", "SELECT * FROM pragma_table_info('_TENANTD_META')", "PRAGMA index_info('_tenantd_events_time')", "SELECT rowid FROM _tenantd_events", "SELECT count(*) FROM _tenantd_events", "UPDATE sqlite_schema SET sql = '' WHERE name = 't'", "INSERT INTO sqlite_sequence VALUES ('_tenantd_events', 5)", "PRAGMA main.user_version = 1", "PRAGMA writable_schema", "PRAGMA data_store_directory='/tmp'", "PRAGMA temp_store_directory", "SELECT sqlite_offset(a) FROM t"]) {
  g.arm(1000);
  try { const st = db.prepare(sql); st.reader ? st.all() : st.run(); console.log('OK ', sql); }
  catch (e) { console.log('ERR', sql, '|', (e as Error).message, '|', g.lastDenial()); }
  finally { g.disarm(); }
}
