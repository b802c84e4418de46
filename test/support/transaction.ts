/**
 * A test's side of SqlService.Transaction: one request, one response, in
 * order, over a real grpc-js bidirectional stream.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeStatus, RpcError, type CallOptions, type DecodedStatus, type TestClient } from './server.ts';
import { rpcTypes } from '../../src/protos.ts';

export class TxStream {
  private readonly responses: any[] = [];
  private waiting: ((value: any) => void) | null = null;
  /** The call's final status once it ended with an error. */
  failure: RpcError | null = null;
  ended = false;

  constructor(readonly call: grpc.ClientDuplexStream<any, any>) {
    call.on('data', (response) => {
      this.responses.push(response);
      this.flush();
    });
    call.on('error', (error: grpc.ServiceError) => {
      this.failure = new RpcError(decodeStatus(error));
      this.flush();
    });
    call.on('end', () => {
      this.ended = true;
      this.flush();
    });
  }

  static open(client: TestClient, options: CallOptions = {}): TxStream {
    return new TxStream(client.openDuplex('SqlService', 'Transaction', options));
  }

  private flush(): void {
    if (!this.waiting) return;
    if (this.responses.length > 0) this.waiting(this.responses.shift());
    else if (this.failure) this.waiting(this.failure);
    else if (this.ended) this.waiting(new Error('stream ended without a response'));
    else return;
    this.waiting = null;
  }

  /** The next response; rejects with the call's RpcError if it ended with one. */
  next(): Promise<any> {
    return new Promise((resolve, reject) => {
      this.waiting = (value) => (value instanceof Error ? reject(value) : resolve(value));
      this.flush();
    });
  }

  /** Sends one request and waits for its response. */
  send(request: unknown): Promise<any> {
    this.call.write(request);
    return this.next();
  }

  begin(mode = 'DEFERRED', requestId?: string): Promise<any> {
    return this.send({ begin: { mode, request_id: requestId ?? '' } });
  }

  /** A statement's result; throws an RpcError built from an error entry. */
  async exec(sql: string, params: unknown[] = []): Promise<any> {
    const response = await this.send({ statement: { sql, params } });
    if (response.kind === 'error') throw new RpcError(entryStatus(response.error));
    return response.result;
  }

  async commit(): Promise<any> {
    return this.send({ commit: {} });
  }

  async rollback(): Promise<any> {
    return this.send({ rollback: {} });
  }

  /** Resolves once the call has ended (OK or not). */
  async closed(): Promise<void> {
    if (this.ended || this.failure) return;
    await new Promise<void>((resolve) => {
      this.call.on('status', () => resolve());
      this.call.on('error', () => resolve());
    });
  }
}

/** An error entry's google.rpc.Status, decoded as decodeStatus decodes the trailer. */
export function entryStatus(entry: { status: { code: number; message: string; details: { type_url: string; value: Buffer }[] } }): DecodedStatus {
  const type = rpcTypes().lookupType('google.rpc.Status');
  const bytes = type.encode(type.fromObject(entry.status)).finish();
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', Buffer.from(bytes));
  return decodeStatus({ code: entry.status.code, details: entry.status.message, metadata } as grpc.ServiceError);
}

/**
 * Runs `body` in a transaction, again from the start while it is ABORTED
 * (a conflict), after the RetryInfo delay. Returns the attempts it took.
 */
export async function retryingTransaction(client: TestClient, options: CallOptions, mode: string, body: (tx: TxStream) => Promise<void>): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    const tx = TxStream.open(client, options);
    try {
      await expectKind(tx.begin(mode), 'begun');
      await body(tx);
      await expectKind(tx.commit(), 'committed');
      await tx.closed();
      return attempt;
    } catch (error) {
      tx.call.cancel();
      if (!(error instanceof RpcError) || error.status.code !== grpc.status.ABORTED || attempt > 500) throw error;
      await new Promise((resolve) => setTimeout(resolve, error.status.retryDelayMs ?? 10));
    }
  }
}

async function expectKind(response: Promise<any>, kind: string): Promise<any> {
  const r = await response;
  if (r.kind === 'error') throw new RpcError(entryStatus(r.error));
  if (r.kind !== kind) throw new Error(`expected ${kind}, got ${r.kind}`);
  return r;
}
