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
import { REQUEST_LOG_SCHEMA } from './requestLog.ts';

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

/** Rows of `_tenantd_meta` (always there), and of each object group made only when first needed. */
let expected: { always: string[]; optional: string[][] } | null = null;

/**
 * Whitespace in the stored CREATE text is not compared: earlier versions of
 * tenantd made the same tables from differently indented statements.
 */
function rowsOf(db: Database.Database): string[] {
  return (db.prepare(RESERVED_ROWS).raw(true).all() as Row[]).map(([type, name, table, sql]) =>
    JSON.stringify([type, name, table, sql.replace(/\s+/g, ' ').trim()]),
  );
}

/** What tenantd makes: the meta table, the event log (first Append), the request log (first write with a request_id). */
function expectedRows(): { always: string[]; optional: string[][] } {
  if (expected) return expected;
  const scratch = new Database(':memory:');
  try {
    scratch.exec(CREATE_META_SQL);
    const always = rowsOf(scratch);
    const added = (sql: string): string[] => {
      const before = new Set(rowsOf(scratch));
      scratch.exec(sql);
      return rowsOf(scratch).filter((row) => !before.has(row));
    };
    const events = added(CREATE_EVENTS_SQL);
    const requests = added(REQUEST_LOG_SCHEMA.map((o) => `${o.sql};`).join('\n'));
    expected = { always, optional: [events, requests] };
    return expected;
  } finally {
    scratch.close();
  }
}

function describeRow(row: string): string {
  const [type, name, table] = JSON.parse(row) as Row;
  return type === 'table' && name === table ? `table ${name} differs` : `${type} ${name} on ${table}`;
}

/**
 * Null when the reserved objects are exactly tenantd's own (the meta table,
 * and each optional group whole or not at all); otherwise the first object
 * that differs, e.g. `trigger t on _tenantd_events`. Run with the guard's
 * tenant policy off (it reads sqlite_schema's reserved rows).
 */
export function serviceSchemaProblem(db: Database.Database): string | null {
  const { always, optional } = expectedRows();
  const actual = new Set(rowsOf(db));
  for (const row of always) {
    if (!actual.delete(row)) return `${JSON.parse(row)[1]} is missing`;
  }
  for (const group of optional) {
    const present = group.filter((row) => actual.has(row));
    if (present.length === 0) continue;
    const missing = group.find((row) => !actual.has(row));
    if (missing !== undefined) return `${JSON.parse(missing)[1]} is missing`;
    for (const row of group) actual.delete(row);
  }
  const extra = actual.values().next();
  return extra.done ? null : describeRow(extra.value);
}
