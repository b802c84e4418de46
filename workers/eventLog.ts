/**
 * A tenant's event log: `_tenantd_events` in the tenant's own database,
 * which tenant SQL cannot touch (the guard refuses `_tenantd*`). The last
 * position given is kept in `_tenantd_meta`, not in sqlite_sequence (which
 * tenant SQL may write), so positions start at 1 and never repeat, not even
 * after old events are removed. The table is made on the first append: a
 * tenant that never uses events pays nothing for them.
 */
import { status as Status } from '@grpc/grpc-js';
import type Database from 'better-sqlite3';
import type { LogEvent, NewEvent } from '../src/protocol.ts';
import { ShardError } from './shardError.ts';

/**
 * A read (a Read, a page of a Subscribe backlog) stops at about this many
 * bytes: under the 4 MiB that gRPC clients accept by default.
 */
const MAX_EVENT_PAGE_BYTES = 3 * 1024 * 1024;

/** The log's table and index; serviceSchema.ts checks a tenant's copy against them. */
export const CREATE_EVENTS_SQL = `CREATE TABLE IF NOT EXISTS _tenantd_events (
    position INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata TEXT NOT NULL,
    time INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX IF NOT EXISTS _tenantd_events_time ON _tenantd_events (time);`;
const READ_ALL = 'SELECT position, type, data, metadata, time FROM _tenantd_events WHERE position >= ? AND time >= ? ORDER BY position LIMIT ?';
const READ_TYPES =
  'SELECT position, type, data, metadata, time FROM _tenantd_events WHERE position >= ? AND time >= ? AND type IN (SELECT value FROM json_each(?)) ORDER BY position LIMIT ?';

/** What the log needs of the tenant's connection (TenantDb). */
export interface EventLogHost {
  readonly db: Database.Database;
  /** A cached statement of the service's own. */
  statement(sql: string): Database.Statement;
  /** The file may have changed size; the schema changed (cached statements must be prepared again). */
  sizeChanged(): void;
  schemaChanged(): void;
}

export class EventLog {
  private exists = false;
  /** The tenant's event_retention_hours in ms as its last events call carried it; 0 keeps everything. */
  private retentionMs = 0;

  constructor(private readonly host: EventLogHost) {}

  /** Appends in one transaction; with `expected`, nothing is written unless the log's last position is it. */
  append(events: readonly NewEvent[], expected: bigint | null, retentionMs: number): bigint[] {
    this.retentionMs = retentionMs;
    this.ensure();
    this.host.sizeChanged();
    const { db } = this.host;
    this.host.statement('BEGIN IMMEDIATE').run();
    try {
      const last = this.lastPosition();
      if (expected !== null && expected !== last) {
        throw new ShardError({
          code: Status.ABORTED,
          reason: 'POSITION_MISMATCH',
          message: `the log's last position is ${last}, not the expected ${expected}; nothing was written`,
          metadata: { expected_position: String(expected), last_position: String(last) },
        });
      }
      if (retentionMs > 0) this.host.statement('DELETE FROM _tenantd_events WHERE time < ?').run(Date.now() - retentionMs);
      const insert = this.host.statement('INSERT INTO _tenantd_events (position, type, data, metadata, time) VALUES (?, ?, ?, ?, ?)');
      const positions = events.map((e, i) => {
        const position = last + BigInt(i + 1);
        insert.run(position, e.type, e.data, JSON.stringify(e.metadata), e.time);
        return position;
      });
      this.host
        .statement("INSERT INTO _tenantd_meta (key, value) VALUES ('events_last_position', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .run(last + BigInt(events.length));
      this.host.statement('COMMIT').run();
      return positions;
    } catch (error) {
      if (db.inTransaction) this.host.statement('ROLLBACK').run();
      throw error;
    }
  }

  /**
   * Up to `limit` events from `from` (only `types`, when given), never one
   * older than `retentionMs`, and where the next read starts; `complete`
   * when the read reached the end of the log.
   */
  read(from: bigint, limit: number, types: readonly string[], retentionMs: number): { events: LogEvent[]; nextPosition: bigint; complete: boolean } {
    this.retentionMs = retentionMs;
    if (!this.has()) return { events: [], nextPosition: from < 1n ? 1n : from, complete: true };
    // Expired events not yet swept away are never shown.
    const notBefore = retentionMs > 0 ? Date.now() - retentionMs : 0;
    const rows =
      types.length === 0
        ? this.host.statement(READ_ALL).raw(true).iterate(from, notBefore, limit)
        : this.host.statement(READ_TYPES).raw(true).iterate(from, notBefore, JSON.stringify(types), limit);
    const events: LogEvent[] = [];
    let bytes = 0;
    let cut = false;
    for (const [position, type, data, metadata, time] of rows as IterableIterator<[bigint, string, Uint8Array, string, bigint]>) {
      // A page stops at MAX_EVENT_PAGE_BYTES but always holds one event, like a Query chunk.
      const size = data.length + metadata.length + type.length;
      if (events.length > 0 && bytes + size > MAX_EVENT_PAGE_BYTES) {
        cut = true;
        break;
      }
      bytes += size;
      events.push({ position, type, data, metadata: JSON.parse(metadata) as Record<string, string>, time: Number(time) });
    }
    if (cut || events.length === limit) return { events, nextPosition: events.at(-1)!.position + 1n, complete: false };
    // A short page read everything there is: the next read starts after the last position ever given.
    const after = this.lastPosition() + 1n;
    return { events, nextPosition: from > after ? from : after, complete: true };
  }

  /** The tenant's retention as its last events call or an UpdateTenant carried it; 0 keeps everything. */
  get retention(): number {
    return this.retentionMs;
  }

  set retention(ms: number) {
    this.retentionMs = ms;
  }

  /** The time (ms) of the oldest event in the log, if it has any. */
  oldestTime(): number | null {
    if (!this.has()) return null;
    const oldest = this.host.statement('SELECT min(time) FROM _tenantd_events').pluck().get() as bigint | null;
    return oldest === null ? null : Number(oldest);
  }

  /** Removes the events older than the retention the last events call carried (the shard's background sweep). */
  sweep(): number {
    if (this.retentionMs <= 0 || !this.has()) return 0;
    const removed = this.host.statement('DELETE FROM _tenantd_events WHERE time < ?').run(Date.now() - this.retentionMs).changes;
    if (removed > 0) this.host.sizeChanged();
    return removed;
  }

  private has(): boolean {
    this.exists ||= this.host.statement("SELECT 1 FROM sqlite_schema WHERE name = '_tenantd_events'").get() !== undefined;
    return this.exists;
  }

  private ensure(): void {
    if (this.has()) return;
    this.host.db.exec(CREATE_EVENTS_SQL);
    this.exists = true;
    this.host.schemaChanged();
  }

  private lastPosition(): bigint {
    const last = this.host.statement("SELECT value FROM _tenantd_meta WHERE key = 'events_last_position'").pluck().get() as bigint | undefined;
    return last ?? 0n;
  }
}
