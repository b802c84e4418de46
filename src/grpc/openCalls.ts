/**
 * The calls a server has open, so that shutdown can end them on time: at
 * the start of the drain every server stream (Query, Subscribe, WatchUsage,
 * health Watch, BackupTenant) ends with UNAVAILABLE, and at the drain
 * timeout every call still running is cancelled, which interrupts its
 * statement in the shard (ShardHandle.call's signal). A client that cancels
 * or goes away aborts its call's signal too.
 */
import type { EventEmitter } from 'node:events';
import { CallCancel, type CancelSignal } from './cancelSignal.ts';

/** One open call, as its adapter (handlers.ts) tracks it. */
export interface OpenCall {
  /** Aborted when the client cancels or disconnects, or the server stops the call. */
  readonly signal: CancelSignal;
  /** The call has ended; forget it. */
  done(): void;
}

interface Entry {
  controller: CallCancel;
  /** Ends a stream early with UNAVAILABLE; null for calls that are not server streams. */
  endStream: (() => void) | null;
}

export class OpenCalls {
  private readonly entries = new Set<Entry>();
  private draining = false;

  /**
   * Tracks a call from its handler's start. `endStream`: how to end it as
   * the drain begins (server streams only). A call that starts while the
   * server drains gets an aborted signal and, for a stream, ends at once.
   */
  track(call: EventEmitter & { cancelled?: boolean }, endStream: (() => void) | null = null): OpenCall {
    const controller = new CallCancel();
    const entry: Entry = { controller, endStream };
    const onCancelled = (): void => controller.abort();
    call.once('cancelled', onCancelled);
    if (call.cancelled) controller.abort();
    this.entries.add(entry);
    if (this.draining && endStream) queueMicrotask(() => this.endStreamOf(entry));
    return {
      signal: controller,
      done: () => {
        this.entries.delete(entry);
        call.off('cancelled', onCancelled);
      },
    };
  }

  get size(): number {
    return this.entries.size;
  }

  /** The drain begins: every server stream ends now, with UNAVAILABLE. */
  endStreams(): void {
    this.draining = true;
    for (const entry of [...this.entries]) if (entry.endStream) this.endStreamOf(entry);
  }

  /** The drain timed out: every call still open is cancelled (its statement interrupted). */
  cancelAll(): void {
    for (const entry of this.entries) entry.controller.abort();
  }

  private endStreamOf(entry: Entry): void {
    if (!this.entries.has(entry)) return;
    // The stream's shard call stops too: nobody will read the rest.
    entry.controller.abort();
    entry.endStream?.();
  }
}
