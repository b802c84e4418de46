/** A tenant's event log: append, read, and a subscription that survives disconnects. */
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import type { CallOptions, Channel } from './channel.ts';
import { TenantdError } from './errors.ts';

export interface NewEvent {
  type: string;
  /** Bytes, or text stored as UTF-8. */
  data?: Uint8Array | string;
  metadata?: Record<string, string>;
}

export interface Event {
  position: bigint;
  type: string;
  data: Uint8Array;
  metadata: Record<string, string>;
  time: Date | null;
}

export interface ReadOptions extends CallOptions {
  /** The first position to return (inclusive); 1 is the log's start. */
  from?: bigint | number;
  limit?: number;
  types?: string[];
}

export interface SubscribeOptions {
  /** The first position to deliver (inclusive); default 1. */
  from?: bigint | number;
  types?: string[];
  /** Stops the subscription; the iterator then ends without an error. */
  signal?: AbortSignal;
  /** The longest wait between reconnection attempts; default 5000 ms. */
  maxBackoffMs?: number;
}

interface WireEvent {
  position: string;
  type: string;
  data: Buffer;
  metadata: Record<string, string>;
  time: { seconds: string; nanos: number } | null;
}

function eventOf(wire: WireEvent): Event {
  return {
    position: BigInt(wire.position),
    type: wire.type,
    data: new Uint8Array(wire.data),
    metadata: wire.metadata ?? {},
    time: wire.time ? new Date(Number(wire.time.seconds) * 1000 + Math.floor(wire.time.nanos / 1e6)) : null,
  };
}

/**
 * Failures after which a subscription reconnects: the connection or the
 * server went away (a restart, a drain), not a refusal of the request itself.
 */
const TRANSIENT = new Set([status.UNAVAILABLE, status.INTERNAL, status.UNKNOWN, status.CANCELLED]);

export class Events {
  constructor(private readonly channel: Channel) {}

  /** Appends events; resolves with their positions. `expectedPosition`: ABORTED unless the log ends there. */
  async append(events: NewEvent[], options: CallOptions & { expectedPosition?: bigint | number } = {}): Promise<bigint[]> {
    const request: Record<string, unknown> = {
      events: events.map((e) => ({
        type: e.type,
        data: typeof e.data === 'string' ? Buffer.from(e.data) : Buffer.from(e.data ?? new Uint8Array()),
        metadata: e.metadata ?? {},
      })),
    };
    if (options.expectedPosition !== undefined) request.expected_position = String(options.expectedPosition);
    const response = await this.channel.unary<{ positions: string[] }>('EventService', 'Append', request, options);
    return response.positions.map((p) => BigInt(p));
  }

  async read(options: ReadOptions = {}): Promise<{ events: Event[]; nextPosition: bigint }> {
    const response = await this.channel.unary<{ events: WireEvent[]; next_position: string }>(
      'EventService',
      'Read',
      { from_position: String(options.from ?? 1), limit: options.limit ?? 0, types: options.types ?? [] },
      options,
    );
    return { events: response.events.map(eventOf), nextPosition: BigInt(response.next_position) };
  }

  /**
   * Every event from `from` on, then new ones as they are appended. When the
   * stream breaks (server restart, network), it reconnects with backoff and
   * resumes after the last event delivered, so none is skipped or repeated.
   * Errors about the request itself (auth, arguments) end it with a TenantdError.
   */
  async *subscribe(options: SubscribeOptions = {}): AsyncGenerator<Event, void, undefined> {
    let next = BigInt(options.from ?? 1);
    let backoffMs = 50;
    const maxBackoffMs = options.maxBackoffMs ?? 5_000;
    while (!options.signal?.aborted) {
      const stream = this.channel.serverStream<WireEvent>('EventService', 'Subscribe', { from_position: String(next), types: options.types ?? [] }, { signal: options.signal });
      try {
        for await (const wire of stream) {
          const event = eventOf(wire);
          next = event.position + 1n;
          backoffMs = 50;
          yield event;
        }
        // The server ended the stream (a drain): reconnect like after a break.
      } catch (error) {
        if (options.signal?.aborted) return;
        if (!(error instanceof TenantdError) || !TRANSIENT.has(error.code)) throw error;
      }
      try {
        await sleep(backoffMs, undefined, { signal: options.signal });
      } catch {
        return;
      }
      backoffMs = Math.min(maxBackoffMs, backoffMs * 2);
    }
  }
}
