/**
 * Where a Query's chunks wait for its client. The shard produces a result as
 * fast as it can and cannot be paused mid-statement, so what the client has
 * not taken yet is held here: a client that stops reading (or reads slowly)
 * must not make the server hold its whole result, up to 256 MiB, and many
 * such calls the process's memory. Past MAX_UNREAD_BYTES for one call, or
 * MAX_UNREAD_BYTES_TOTAL for all calls together, the call is ended with
 * RESOURCE_EXHAUSTED; the rest of its result is dropped as it arrives.
 */
import { status as Status, type ServerWritableStream } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import { whenWritable } from './handlers.ts';

export const MAX_UNREAD_BYTES = 16 * 1024 * 1024;
export const MAX_UNREAD_BYTES_TOTAL = 256 * 1024 * 1024;

/** Bytes held for every Query in the process. */
let unreadTotal = 0;

export class QueryOutlet<M> {
  private readonly waiting: { message: M; bytes: number }[] = [];
  private unread = 0;
  private pumping: Promise<void> | null = null;
  private failure: TenantdError | null = null;
  /** Resolved when the call is ended for a slow client: a pump waiting for a client that never reads stops. */
  private readonly stopped: Promise<void>;
  private stop!: () => void;

  constructor(private readonly call: ServerWritableStream<unknown, M>) {
    this.stopped = new Promise((resolve) => (this.stop = resolve));
  }

  /** A chunk of `bytes` (its estimated size) for the client; written at once while the stream takes writes. */
  push(message: M, bytes: number): void {
    if (this.failure !== null || this.call.cancelled) return;
    if (this.pumping === null && this.waiting.length === 0) {
      if (!this.call.write(message)) this.pumping = this.pump();
      return;
    }
    if (this.unread + bytes > MAX_UNREAD_BYTES || unreadTotal + bytes > MAX_UNREAD_BYTES_TOTAL) {
      this.fail();
      return;
    }
    this.waiting.push({ message, bytes });
    this.unread += bytes;
    unreadTotal += bytes;
  }

  /** Resolves when everything pushed has been handed to gRPC; throws if the call was ended for a slow client. */
  async finish(): Promise<void> {
    if (this.pumping !== null) await this.pumping;
    if (this.failure !== null) throw this.failure;
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        await Promise.race([whenWritable(this.call), this.stopped]);
        if (this.call.cancelled || this.failure !== null) return;
        let more = true;
        while (more && this.waiting.length > 0) {
          const next = this.waiting.shift()!;
          this.release(next.bytes);
          more = this.call.write(next.message);
        }
        if (more) return;
      }
    } finally {
      this.pumping = null;
    }
  }

  private fail(): void {
    this.failure = new TenantdError(
      Status.RESOURCE_EXHAUSTED,
      'CLIENT_TOO_SLOW',
      `the client read this Query's result too slowly: more than ${MAX_UNREAD_BYTES} bytes waited for it (or ${MAX_UNREAD_BYTES_TOTAL} for all calls); read it faster or page it with LIMIT and a key`,
    );
    for (const { bytes } of this.waiting) this.release(bytes);
    this.waiting.length = 0;
    this.stop();
  }

  private release(bytes: number): void {
    this.unread -= bytes;
    unreadTotal -= bytes;
  }
}
