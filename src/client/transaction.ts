/**
 * `transaction(async (tx) => ...)`: an interactive transaction
 * (SqlService.Transaction) driven from a callback, retried from the start
 * while the server answers ABORTED (a conflict: the wait RetryInfo asks
 * for, then again) or the connection fails, with one request_id for every
 * attempt, so that a commit whose answer was lost is never applied twice:
 * the retry's `begin` is answered "already committed" and nothing runs.
 *
 * `TenantdClient.transaction()` (client.ts) is how applications call it;
 * the function itself takes any SqlService stub.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { rpcTypes, serviceDefinition } from '../protoRoot.ts';

export type Value = null | bigint | number | string | Uint8Array;

export interface Result {
  columns: { name: string; declType: string }[];
  rows: Value[][];
  rowsAffected: bigint;
  lastInsertRowid: bigint;
}

export interface Tx {
  /** One statement; rejects with TransactionError when it fails (the transaction stays open unless `transactionOpen` is false). */
  execute(sql: string, params?: Value[] | Record<string, Value>): Promise<Result>;
  /** Statements that apply together or not at all, inside the transaction. */
  batch(statements: { sql: string; params?: Value[] | Record<string, Value> }[]): Promise<Result[]>;
}

export interface TransactionOptions {
  mode?: 'DEFERRED' | 'IMMEDIATE' | 'READ_ONLY';
  /** Default: a new UUID per transaction() call, the same for all its attempts. */
  requestId?: string;
  /** Attempts before the last error is thrown; default 50. */
  maxAttempts?: number;
  /** Per attempt, e.g. a deadline. */
  callOptions?: grpc.CallOptions;
}

export class TransactionError extends Error {
  override name = 'TransactionError';
  constructor(
    readonly code: grpc.status,
    readonly reason: string,
    message: string,
    readonly retryAfterMs: number | null,
    /** For a failed statement: whether the transaction is still open. */
    readonly transactionOpen = false,
  ) {
    super(message);
  }
}

type Stub = grpc.Client & { Transaction(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<unknown, any> };

/** A SqlService client for `address`. */
export function sqlClient(address: string, credentials = grpc.credentials.createInsecure()): Stub {
  const SqlService = grpc.makeGenericClientConstructor(serviceDefinition('tenantd.v1.SqlService'), 'SqlService') as unknown as new (a: string, c: grpc.ChannelCredentials) => Stub;
  return new SqlService(address, credentials);
}

// ---- values ----

function toProto(value: Value): Record<string, unknown> {
  if (value === null) return { null_value: 'NULL_VALUE' };
  if (typeof value === 'bigint') return { integer_value: value.toString() };
  if (typeof value === 'number') return Number.isInteger(value) ? { integer_value: String(value) } : { real_value: value };
  if (typeof value === 'string') return { text_value: value };
  return { blob_value: Buffer.from(value.buffer, value.byteOffset, value.byteLength) };
}

function fromProto(value: Record<string, any>): Value {
  switch (value.kind) {
    case 'integer_value':
      return BigInt(value.integer_value);
    case 'real_value':
      return value.real_value as number;
    case 'text_value':
      return value.text_value as string;
    case 'blob_value':
      return new Uint8Array(value.blob_value as Buffer);
    default:
      return null;
  }
}

function statement(sql: string, params: Value[] | Record<string, Value> = []): Record<string, unknown> {
  if (Array.isArray(params)) return { sql, params: params.map(toProto) };
  return { sql, named_params: Object.fromEntries(Object.entries(params).map(([k, v]) => [k, toProto(v)])) };
}

function result(response: any): Result {
  return {
    columns: response.columns.map((c: any) => ({ name: c.name, declType: c.decl_type })),
    rows: response.rows.map((r: any) => r.values.map(fromProto)),
    rowsAffected: BigInt(response.rows_affected),
    lastInsertRowid: BigInt(response.last_insert_rowid),
  };
}

// ---- errors ----

function decodeStatus(code: grpc.status, message: string, bytes: Uint8Array | undefined, open = false): TransactionError {
  let reason = '';
  let retryAfterMs: number | null = null;
  if (bytes) {
    const root = rpcTypes();
    const status = root.lookupType('google.rpc.Status').decode(bytes) as unknown as { details: { type_url: string; value: Uint8Array }[] };
    for (const any of status.details ?? []) {
      const typeName = any.type_url.split('/').pop()!;
      const detail = root.lookupType(typeName).toObject(root.lookupType(typeName).decode(any.value), { longs: Number, defaults: true }) as any;
      if (typeName === 'google.rpc.ErrorInfo') reason = detail.reason;
      if (typeName === 'google.rpc.RetryInfo') retryAfterMs = Number(detail.retry_delay.seconds) * 1000 + detail.retry_delay.nanos / 1e6;
    }
  }
  return new TransactionError(code, reason, message, retryAfterMs, open);
}

function fromServiceError(error: grpc.ServiceError): TransactionError {
  const raw = error.metadata?.get('grpc-status-details-bin')[0];
  return decodeStatus(error.code, error.details, raw instanceof Buffer ? raw : undefined);
}

function fromEntry(entry: any): TransactionError {
  const type = rpcTypes().lookupType('google.rpc.Status');
  const bytes = type.encode(type.fromObject(entry.status)).finish();
  return decodeStatus(entry.status.code, entry.status.message, bytes, entry.transaction_open);
}

// ---- one attempt ----

/** Requests and their responses, one at a time, over one Transaction stream. */
class Conversation {
  private readonly responses: any[] = [];
  private failure: TransactionError | null = null;
  private ended = false;
  private waiting: (() => void) | null = null;

  constructor(readonly call: grpc.ClientDuplexStream<unknown, any>) {
    call.on('data', (r) => {
      this.responses.push(r);
      this.waiting?.();
    });
    call.on('error', (e: grpc.ServiceError) => {
      this.failure = fromServiceError(e);
      this.waiting?.();
    });
    call.on('end', () => {
      this.ended = true;
      this.waiting?.();
    });
  }

  async send(request: unknown): Promise<any> {
    this.call.write(request);
    for (;;) {
      const next = this.responses.shift();
      if (next !== undefined) return next;
      if (this.failure) throw this.failure;
      if (this.ended) throw new TransactionError(grpc.status.UNAVAILABLE, 'STREAM_ENDED', 'the transaction stream ended without an answer', null);
      await new Promise<void>((resolve) => (this.waiting = resolve));
      this.waiting = null;
    }
  }
}

/** Whether a whole transaction may run again after `error`. */
function retryable(error: unknown): error is TransactionError {
  return error instanceof TransactionError && (error.code === grpc.status.ABORTED || error.code === grpc.status.UNAVAILABLE);
}

/**
 * Runs `body` in a transaction and commits it; returns what `body` returned.
 * Retries the whole transaction (running `body` again) on ABORTED and
 * UNAVAILABLE. If this request_id's transaction had already committed (an
 * earlier call, or an attempt whose commit answer was lost), nothing runs
 * and the value `body` returned in the attempt that committed is returned
 * (undefined when that attempt was made by an earlier call).
 */
export async function transaction<T>(client: Stub, metadata: grpc.Metadata, body: (tx: Tx) => Promise<T>, options: TransactionOptions = {}): Promise<T | undefined> {
  const requestId = options.requestId ?? randomUUID();
  const maxAttempts = options.maxAttempts ?? 50;
  let committing: { value: T } | null = null;
  for (let attempt = 1; ; attempt++) {
    const conversation = new Conversation(client.Transaction(metadata, options.callOptions ?? {}));
    try {
      const begun = await conversation.send({ begin: { mode: options.mode ?? 'DEFERRED', request_id: requestId } });
      if (begun.kind === 'committed') return committing?.value;
      if (begun.kind === 'error') throw fromEntry(begun.error);
      const tx: Tx = {
        async execute(sql, params) {
          const r = await conversation.send({ statement: statement(sql, params) });
          if (r.kind === 'error') throw fromEntry(r.error);
          return result(r.result);
        },
        async batch(statements) {
          const r = await conversation.send({ batch: { statements: statements.map((s) => statement(s.sql, s.params)) } });
          if (r.kind === 'error') throw fromEntry(r.error);
          return r.batch.results.map(result);
        },
      };
      const value = await body(tx);
      // From here the outcome may be unknown to us: a retry with the same request_id finds out.
      committing = { value };
      const done = await conversation.send({ commit: {} });
      if (done.kind !== 'committed') throw new TransactionError(grpc.status.INTERNAL, 'UNEXPECTED_RESPONSE', `commit answered ${done.kind}`, null);
      return value;
    } catch (error) {
      conversation.call.cancel();
      if (!retryable(error) || attempt >= maxAttempts) throw error;
      // At least what RetryInfo asks for; under steady contention, a growing, jittered wait on top spreads the retries out.
      const delay = Math.max(error.retryAfterMs ?? 0, Math.random() * Math.min(1000, 5 * 2 ** attempt));
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}
