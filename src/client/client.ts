/**
 * The typed tenantd client: SQL and events for a tenant key, admin calls for
 * the admin key. One Channel underneath; every failure is a TenantdError.
 */
import { Admin } from './admin.ts';
import { Channel, type CallOptions, type ChannelOptions } from './channel.ts';
import { Events } from './events.ts';
import { columnsOf, resultOf, rowOf, type Column, type ResultSet, type Row, type WireResult } from './results.ts';
import { bindings, type Params } from './values.ts';
import { transaction, type TransactionOptions, type Tx } from './transaction.ts';

export interface ConnectOptions extends ChannelOptions {}

/** One statement of a batch. */
export interface Statement {
  sql: string;
  params?: Params;
}

export interface QueryOptions extends CallOptions {
  /** Rows per message from the server; 0 lets it choose. */
  rowsPerChunk?: number;
}

/** Rows as they stream in; `columns` is known once the first message has arrived. */
export interface RowStream extends AsyncIterable<Row> {
  readonly columns: Column[];
}

export class TenantdClient {
  /** The gRPC plumbing, for calls the typed API does not cover. */
  readonly channel: Channel;
  readonly events: Events;
  readonly admin: Admin;

  constructor(options: ConnectOptions) {
    this.channel = new Channel(options);
    this.events = new Events(this.channel);
    this.admin = new Admin(this.channel);
  }

  /** One statement; `params` positional (`?`) or named (an object). */
  async execute(sql: string, params?: Params, options: CallOptions = {}): Promise<ResultSet> {
    return resultOf(await this.channel.unary<WireResult>('SqlService', 'Execute', { sql, ...bindings(params) }, options));
  }

  /** Statements in one transaction: all commit or none does. */
  async batch(statements: readonly (Statement | string)[], options: CallOptions = {}): Promise<ResultSet[]> {
    const request = { statements: statements.map((s) => (typeof s === 'string' ? { sql: s, params: [], named_params: {} } : { sql: s.sql, ...bindings(s.params) })) };
    const response = await this.channel.unary<{ results: WireResult[] }>('SqlService', 'Batch', request, options);
    return response.results.map(resultOf);
  }

  /**
   * A read streamed in chunks, for results too large for one answer. Breaking
   * out of the loop cancels the call on the server.
   */
  query(sql: string, params?: Params, options: QueryOptions = {}): RowStream {
    const stream = this.channel.serverStream<{ columns: Parameters<typeof columnsOf>[0]; rows: Parameters<typeof rowOf>[0][] }>(
      'SqlService',
      'Query',
      { sql, ...bindings(params), rows_per_chunk: options.rowsPerChunk ?? 0 },
      options,
    );
    const rows: RowStream & { columns: Column[] } = {
      columns: [],
      async *[Symbol.asyncIterator]() {
        for await (const chunk of stream) {
          if (chunk.columns.length > 0 && rows.columns.length === 0) rows.columns = columnsOf(chunk.columns);
          for (const row of chunk.rows) yield rowOf(row);
        }
      },
    };
    return rows;
  }

  /**
   * Runs `body` in an interactive transaction (SqlService.Transaction) and
   * commits it; resolves with what `body` returned. The whole transaction is
   * retried, `body` included, while the server answers ABORTED (after the
   * wait its RetryInfo asks for) or the connection fails, with one request_id
   * for every attempt: a commit whose answer was lost is never applied twice.
   */
  transaction<T>(body: (tx: Tx) => Promise<T>, options: TransactionOptions = {}): Promise<T | undefined> {
    return transaction(this.channel.client('SqlService') as unknown as Parameters<typeof transaction>[0], this.channel.metadata(), body, options);
  }

  close(): void {
    this.channel.close();
  }
}

/** A client for `address`; no connection is made until the first call. */
export function connect(options: ConnectOptions): TenantdClient {
  return new TenantdClient(options);
}
