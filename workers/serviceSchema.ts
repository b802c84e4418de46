/**
 * The exact schema of tenantd's own objects in a tenant's database: the
 * reserved `_tenantd*` namespace (any case, as SQLite folds identifiers).
 *
 * The guard refuses tenant SQL that names a reserved object, but some DDL
 * never shows the authorizer the name it produces (ALTER TABLE ... RENAME TO
 * passes only the old name). So the service also compares what is there
 * with what it made: after every tenant statement that may change the schema
 * (rolled back when it differs), after every migration step, and when it
 * opens a tenant (refused as TENANT_SCHEMA_TAMPERED when it differs). Any
 * trigger, index or view on a reserved table, or any other object with a
 * reserved name, is a difference.
 */
import Database from 'better-sqlite3';
import { CREATE_EVENTS_SQL } from './eventLog.ts';

/** `_tenantd_meta`, made when a tenant's database opens. */
export const CREATE_META_SQL = 'CREATE TABLE IF NOT EXISTS _tenantd_meta (key TEXT PRIMARY KEY, value ANY) STRICT;';

/**
 * Every sqlite_schema row whose name or table is reserved, plus SQLite's
 * auto-indexes of reserved tables. `lower(substr(...))` rather than LIKE, so
 * a connection's case_sensitive_like cannot change the answer.
 */
const RESERVED_ROWS = `SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema
  WHERE lower(substr(name, 1, 8)) = '_tenantd' OR lower(substr(tbl_name, 1, 8)) = '_tenantd'
     OR lower(substr(name, 1, 25)) = 'sqlite_autoindex__tenantd'
  ORDER BY type, name`;

type Row = [string, string, string, string];

let expected: { meta: string[]; withEvents: string[] } | null = null;

/**
 * Whitespace in the stored CREATE text is not compared: earlier versions of
 * tenantd made the same tables from differently indented statements.
 */
function rowsOf(db: Database.Database): string[] {
  return (db.prepare(RESERVED_ROWS).raw(true).all() as Row[]).map(([type, name, table, sql]) =>
    JSON.stringify([type, name, table, sql.replace(/\s+/g, ' ').trim()]),
  );
}

/** What a database that tenantd alone touched holds: with and without the event log. */
function expectedRows(): { meta: string[]; withEvents: string[] } {
  if (expected) return expected;
  const scratch = new Database(':memory:');
  try {
    scratch.exec(CREATE_META_SQL);
    const meta = rowsOf(scratch);
    scratch.exec(CREATE_EVENTS_SQL);
    expected = { meta, withEvents: rowsOf(scratch) };
    return expected;
  } finally {
    scratch.close();
  }
}

/**
 * Null when the reserved objects are exactly tenantd's own; otherwise the
 * first object that differs, e.g. `trigger t on _tenantd_events`. Run with
 * the guard's tenant policy off (it reads sqlite_schema's reserved rows).
 */
export function serviceSchemaProblem(db: Database.Database): string | null {
  const { meta, withEvents } = expectedRows();
  const actual = rowsOf(db);
  const want = actual.length === meta.length ? meta : withEvents;
  for (let i = 0; i < Math.max(actual.length, want.length); i++) {
    if (actual[i] === want[i]) continue;
    if (actual[i] === undefined) return `${JSON.parse(want[i]!)[1]} is missing`;
    const [type, name, table] = JSON.parse(actual[i]!) as Row;
    return type === 'table' && name === table ? `table ${name} differs` : `${type} ${name} on ${table}`;
  }
  return null;
}
