/**
 * Idempotent writes: a call that carries a `request_id` has its response
 * recorded in the tenant's own database, in the same SQLite transaction as
 * its writes, so the two commit or vanish together. A retry with the same
 * id finds the record and gets the first response back; nothing runs again.
 * The same id with a different request (another hash) is refused.
 *
 * A retry that arrives while the first still runs waits for it without any
 * bookkeeping here: a tenant's calls run one at a time on its shard, in
 * order, so the retry runs after the first has committed (or, in a group
 * commit, in the same transaction after it, where it sees its record).
 */
import { createHash } from 'node:crypto';
import { deserialize, serialize } from 'node:v8';
import { status as Status } from '@grpc/grpc-js';
import type Database from 'better-sqlite3';
import { ShardError } from './shardError.ts';

/**
 * The reserved table's exact schema, as sqlite_master holds it: the one
 * place it is written down (the guard's check of the service's own
 * `_tenantd*` tables reads it from here).
 */
export const REQUEST_LOG_SCHEMA: readonly { type: 'table' | 'index'; name: string; sql: string }[] = [
  {
    type: 'table',
    name: '_tenantd_requests',
    sql: 'CREATE TABLE _tenantd_requests (request_id TEXT PRIMARY KEY, method TEXT NOT NULL, request_hash BLOB NOT NULL, response BLOB NOT NULL, time INTEGER NOT NULL) STRICT',
  },
  { type: 'index', name: '_tenantd_requests_time', sql: 'CREATE INDEX _tenantd_requests_time ON _tenantd_requests (time)' },
];

/** A UUID in its canonical text form (any version), compared in lower case. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isRequestId(value: string): boolean {
  return UUID.test(value);
}

/**
 * The hash that tells a retry from another request with the same id: the
 * method and the request as the shard received it (structured-clone form,
 * so integers, reals, text and blobs stay distinct).
 */
export function requestHash(method: string, request: unknown): Buffer {
  return createHash('sha256').update(serialize([method, request])).digest();
}

interface Host {
  serviceStatement(sql: string): Database.Statement;
}

export class RequestLog {
  private exists = false;

  constructor(private readonly host: Host) {}

  private has(): boolean {
    if (!this.exists) {
      this.exists = this.host.serviceStatement("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_tenantd_requests'").get() !== undefined;
    }
    return this.exists;
  }

  /**
   * The recorded response of `requestId`, or undefined when there is none
   * younger than `windowMs`. Must run inside the transaction that will
   * record it. Throws INVALID_ARGUMENT REQUEST_ID_REUSED when the id was
   * used for another request.
   */
  lookup(requestId: string, method: string, hash: Buffer, windowMs: number): { response: unknown } | undefined {
    if (!this.has()) return undefined;
    const row = this.host
      .serviceStatement('SELECT method, request_hash, response FROM _tenantd_requests WHERE request_id = ? AND time >= ?')
      .raw(true)
      .get(requestId, Date.now() - windowMs) as [string, Uint8Array, Uint8Array] | undefined;
    if (row === undefined) return undefined;
    const [recordedMethod, recordedHash] = row;
    if (recordedMethod !== method || !hash.equals(Buffer.from(recordedHash))) {
      throw new ShardError({
        code: Status.INVALID_ARGUMENT,
        reason: 'REQUEST_ID_REUSED',
        message: `request_id ${requestId} was used for a different request (${recordedMethod}); use a new id for a new request`,
        metadata: { request_id: requestId, method: recordedMethod },
        fieldViolations: [{ field: 'request_id', description: 'already used for a different request' }],
      });
    }
    return { response: deserialize(row[2]) };
  }

  /** Records the response; in the caller's transaction. Replaces an expired record of the same id. */
  record(requestId: string, method: string, hash: Buffer, response: unknown): void {
    if (!this.has()) {
      for (const object of REQUEST_LOG_SCHEMA) this.host.serviceStatement(object.sql).run();
      this.exists = true;
    }
    this.host
      .serviceStatement('INSERT OR REPLACE INTO _tenantd_requests (request_id, method, request_hash, response, time) VALUES (?, ?, ?, ?, ?)')
      .run(requestId, method, hash, serialize(response), Date.now());
  }

  /** Removes records older than `windowMs` (the shard's background sweep); returns how many. */
  sweep(windowMs: number): number {
    if (!this.has()) return 0;
    return this.host.serviceStatement('DELETE FROM _tenantd_requests WHERE time < ?').run(Date.now() - windowMs).changes;
  }
}

/**
 * Fault injection for the durability tests: the process dies of SIGKILL
 * right after the commit that recorded this request_id, before any answer
 * leaves. Set only by tests, in a child server's environment.
 */
const KILL_AFTER_COMMIT = process.env.TENANTD_FAULT_KILL_AFTER_COMMIT;

export function afterCommit(requestId: string | null | undefined): void {
  if (KILL_AFTER_COMMIT !== undefined && requestId === KILL_AFTER_COMMIT) process.kill(process.pid, 'SIGKILL');
}
