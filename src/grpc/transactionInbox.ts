/**
 * The requests of one Transaction stream, read one at a time with a time
 * limit: what the handler (transaction.ts) waits on between requests. A
 * client that sends ahead is held back by flow control once a few requests
 * are buffered.
 */
import { status as Status } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import type { ProtoTransactionRequest, TransactionCall } from './transaction.ts';

export type InboxEvent =
  | { kind: 'message'; message: ProtoTransactionRequest }
  /** The client half-closed its side. */
  | { kind: 'ended' }
  /** Nothing came within the time asked for. */
  | { kind: 'idle' }
  /** Cancelled, disconnected, past its deadline, or ended by the server (shutdown). */
  | { kind: 'failed'; error: TenantdError };

/** Requests buffered before the stream is paused. */
const MAX_BUFFERED = 8;

export class TransactionInbox {
  private readonly buffered: ProtoTransactionRequest[] = [];
  private ended = false;
  private failure: TenantdError | null = null;
  private wake: (() => void) | null = null;
  private readonly onData = (message: ProtoTransactionRequest) => {
    this.buffered.push(message);
    if (this.buffered.length >= MAX_BUFFERED) this.call.pause();
    this.wake?.();
  };
  private readonly onEnd = () => {
    this.ended = true;
    this.wake?.();
  };
  private readonly onCancelled = () => this.abort(new TenantdError(Status.CANCELLED, 'CANCELLED', 'the client cancelled the call or disconnected'));
  private readonly onError = () => this.abort(new TenantdError(Status.CANCELLED, 'CANCELLED', 'the stream failed'));

  constructor(private readonly call: TransactionCall) {
    call.on('data', this.onData);
    call.on('end', this.onEnd);
    call.on('cancelled', this.onCancelled);
    call.on('error', this.onError);
    if (call.cancelled) this.onCancelled();
  }

  /** Ends the stream's waiting with `error` (the first one given wins). */
  abort(error: TenantdError): void {
    this.failure ??= error;
    this.wake?.();
  }

  /** The next request, or why there is none, waiting at most `timeoutMs`. */
  async next(timeoutMs: number): Promise<InboxEvent> {
    for (;;) {
      if (this.failure) return { kind: 'failed', error: this.failure };
      const message = this.buffered.shift();
      if (message !== undefined) {
        if (this.buffered.length < MAX_BUFFERED) this.call.resume();
        return { kind: 'message', message };
      }
      if (this.ended) return { kind: 'ended' };
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await new Promise<boolean>((resolve) => {
        this.wake = () => resolve(false);
        timer = setTimeout(() => resolve(true), Math.max(0, timeoutMs));
      });
      this.wake = null;
      clearTimeout(timer);
      if (timedOut && !this.failure && this.buffered.length === 0 && !this.ended) return { kind: 'idle' };
    }
  }

  close(): void {
    this.call.off('data', this.onData);
    this.call.off('end', this.onEnd);
    this.call.off('cancelled', this.onCancelled);
    this.call.off('error', this.onError);
  }
}
