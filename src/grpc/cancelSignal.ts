/**
 * The cancel signal every call carries to its shard (and to the file-task
 * pool): the part of AbortSignal tenantd uses, in a plain object. An
 * AbortController is an EventTarget, and making one per call cost ~6 µs of
 * the main thread's time per point read (bench:sql profile, 3.4 %); this
 * costs an allocation. AbortSignal itself fits the interface, so callers
 * outside the gRPC path may pass one.
 */
export interface CancelSignal {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** A call's cancel: aborts once; listeners added after that are not called (check `aborted` first), as with AbortSignal. */
export class CallCancel implements CancelSignal {
  aborted = false;
  private listeners: (() => void)[] | null = null;

  addEventListener(_type: 'abort', listener: () => void): void {
    if (!this.aborted) (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const listeners = this.listeners;
    if (listeners === null) return;
    const at = listeners.indexOf(listener);
    if (at >= 0) listeners.splice(at, 1);
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const listeners = this.listeners;
    this.listeners = null;
    for (const listener of listeners ?? []) {
      try {
        listener();
      } catch (error) {
        // As an EventTarget does: the other listeners still run, the error is reported (processGuard counts it).
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
