/**
 * How much tenant work may wait for the shards. A shard runs one statement
 * at a time, so calls that arrive faster than it can run them queue up; the
 * per-tenant quotas (requests, concurrency) bound each tenant but not many
 * tenants together. Past these bounds a call is refused at once,
 * UNAVAILABLE `SHARD_OVERLOADED` with RetryInfo, instead of waiting in
 * memory for a turn it would not get before its deadline.
 *
 * Counted: tenant data calls (Execute, Batch, Query, Append, Read) from the
 * moment the front end posts them until their answer; bytes are those of
 * their SQL text, parameters and events (what the queue holds).
 */
import { status as Status } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import { DEFAULT_SHARD_QUEUE_LIMITS, type ShardQueueLimits } from '../config.ts';
import type { ShardRequest, SqlValue, StatementInput } from '../protocol.ts';

/** What a refused caller is told to wait: about the time a shard takes to work off a full queue's head. */
const kRetryDelayMs = 250;

/** One server's count, shared by its shard handles; each handle keeps its own. */
export class ShardQueueBudget {
  private calls = 0;
  private bytes = 0;

  constructor(readonly limits: ShardQueueLimits = DEFAULT_SHARD_QUEUE_LIMITS) {}

  /** Takes a call of `bytes` for a shard that holds `shardCalls` / `shardBytes`; throws when a bound would be passed. */
  take(shardIndex: number, shardCalls: number, shardBytes: number, bytes: number): void {
    const l = this.limits;
    const over =
      shardCalls + 1 > l.perShardCalls ? 'calls in this shard'
      : shardBytes + bytes > l.perShardBytes ? 'bytes queued in this shard'
      : this.calls + 1 > l.totalCalls ? 'calls in all shards'
      : this.bytes + bytes > l.totalBytes ? 'bytes queued in all shards'
      : null;
    if (over !== null) {
      throw new TenantdError(Status.UNAVAILABLE, 'SHARD_OVERLOADED', `the server is overloaded (${over}); retry after the delay given`, {
        metadata: { shard: String(shardIndex) },
        retryDelayMs: kRetryDelayMs,
      });
    }
    this.calls++;
    this.bytes += bytes;
  }

  give(bytes: number): void {
    this.calls--;
    this.bytes -= bytes;
  }

  get queuedCalls(): number {
    return this.calls;
  }
}

function valueBytes(value: SqlValue): number {
  if (typeof value === 'string') return value.length;
  if (value instanceof Uint8Array) return value.byteLength;
  return 8;
}

function statementBytes(s: StatementInput): number {
  let bytes = s.sql.length;
  for (const value of s.params) bytes += valueBytes(value);
  if (s.named) for (const value of Object.values(s.named)) bytes += valueBytes(value);
  return bytes;
}

/** A tenant data call's size in the queue; null for the service's own ops, which are never refused. */
export function queuedBytesOf(request: Omit<ShardRequest, 'id'>): number | null {
  const r = request as ShardRequest;
  switch (r.op) {
    case 'execute':
    case 'query':
      return 64 + statementBytes(r.statement);
    case 'batch':
      return r.statements.reduce((sum, s) => sum + 64 + statementBytes(s), 0);
    case 'appendEvents':
      return r.events.reduce((sum, e) => sum + 64 + e.type.length + e.data.byteLength, 0);
    case 'readEvents':
      return 64;
    default:
      return null;
  }
}
