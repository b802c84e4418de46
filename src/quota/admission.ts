/**
 * Admission on the front end, before a call reaches a worker: calls in
 * flight, requests per second and write bytes per second, each over a
 * sliding one-second window of ten 100 ms buckets kept in shared memory.
 *
 * Only the front end's thread runs this, so a check-then-increment here is
 * not racy; Atomics keep the counters coherent for the workers and the
 * usage readers.
 */
import {
  kBucketMs,
  kBuckets,
  kConcurrencyLimit,
  kInt32Fields,
  kMaxBucketCount,
  kRequestBuckets,
  kRpsLimit,
  kUint16Fields,
  kWindowEpoch,
  kWriteBpsLimit,
  kWriteBuckets,
} from './layout.ts';
import type { QuotaTable, SlotRef } from './quotaTable.ts';

export type RateQuota = 'requests_per_second' | 'write_bytes_per_second';

export interface Refusal {
  quota: RateQuota | 'concurrent_requests';
  current: number;
  limit: number;
  /** When a retry can succeed; null when waiting cannot help. */
  retryAfterMs: number | null;
}

export interface Admission {
  /** Requests left in the current window after this one; -1 when unlimited. */
  remaining: number;
  /** Milliseconds until the window frees capacity again. */
  resetMs: number;
}

export interface WindowState {
  requests: number;
  writeBytes: number;
  /** Epoch of the oldest bucket that holds anything, or -1. */
  oldestBusyEpoch: number;
}

export class Admitter {
  /** Epochs count from here so they fit in an int32 slot. */
  private readonly baseMs: number;

  constructor(
    private readonly table: QuotaTable,
    now: number = Date.now(),
  ) {
    this.baseMs = now - kBucketMs * kBuckets;
  }

  epochOf(nowMs: number): number {
    return Math.floor((nowMs - this.baseMs) / kBucketMs);
  }

  /** Clears the buckets that slid out of the window since the last call. */
  private advance(ref: SlotRef, epoch: number): void {
    const { int32, uint16 } = ref.page;
    const base = ref.index * kInt32Fields;
    const last = Atomics.load(int32, base + kWindowEpoch);
    if (epoch <= last) return;
    const stale = Math.min(epoch - last, kBuckets);
    for (let k = 1; k <= stale; k++) {
      const bucket = (last + k) % kBuckets;
      Atomics.store(uint16, ref.index * kUint16Fields + kRequestBuckets + bucket, 0);
      Atomics.store(int32, base + kWriteBuckets + bucket, 0);
    }
    Atomics.store(int32, base + kWindowEpoch, epoch);
  }

  window(ref: SlotRef, nowMs: number): WindowState {
    const epoch = this.epochOf(nowMs);
    this.advance(ref, epoch);
    const { int32, uint16 } = ref.page;
    let requests = 0;
    let writeBytes = 0;
    let oldestBusyEpoch = -1;
    for (let age = kBuckets - 1; age >= 0; age--) {
      const bucket = (epoch - age) % kBuckets;
      const count = Atomics.load(uint16, ref.index * kUint16Fields + kRequestBuckets + bucket);
      const bytes = Atomics.load(int32, ref.index * kInt32Fields + kWriteBuckets + bucket);
      if ((count > 0 || bytes > 0) && oldestBusyEpoch === -1) oldestBusyEpoch = epoch - age;
      requests += count;
      writeBytes += bytes;
    }
    return { requests, writeBytes, oldestBusyEpoch };
  }

  /** Milliseconds until the bucket of `epoch` leaves the window. */
  private untilExpiry(epoch: number, nowMs: number): number {
    if (epoch < 0) return 0;
    return Math.max(1, this.baseMs + (epoch + kBuckets) * kBucketMs - nowMs);
  }

  /**
   * Admits the call (counting it in flight and in the window) or says which
   * quota refuses it. `release` must follow every admission exactly once.
   */
  admit(ref: SlotRef, writeBytes: number, nowMs: number = Date.now()): Admission | Refusal {
    const { int32, uint16 } = ref.page;
    const base = ref.index * kInt32Fields;

    const concurrency = Atomics.load(int32, base + kConcurrencyLimit);
    const inFlight = this.table.inFlight(ref);
    if (concurrency >= 0 && inFlight >= concurrency) {
      return { quota: 'concurrent_requests', current: inFlight, limit: concurrency, retryAfterMs: null };
    }

    const state = this.window(ref, nowMs);
    const rps = Atomics.load(int32, base + kRpsLimit);
    if (rps >= 0 && state.requests + 1 > rps) {
      return { quota: 'requests_per_second', current: state.requests, limit: rps, retryAfterMs: this.untilExpiry(state.oldestBusyEpoch, nowMs) };
    }
    const wbps = Atomics.load(int32, base + kWriteBpsLimit);
    if (wbps >= 0 && writeBytes > 0 && state.writeBytes + writeBytes > wbps) {
      return {
        quota: 'write_bytes_per_second',
        current: state.writeBytes,
        limit: wbps,
        // A call larger than the whole budget never fits.
        retryAfterMs: writeBytes > wbps ? null : this.untilExpiry(state.oldestBusyEpoch, nowMs),
      };
    }

    const bucket = this.epochOf(nowMs) % kBuckets;
    const countIndex = ref.index * kUint16Fields + kRequestBuckets + bucket;
    if (Atomics.load(uint16, countIndex) < kMaxBucketCount) Atomics.add(uint16, countIndex, 1);
    if (writeBytes > 0) {
      // Saturating: an unlimited tenant's bucket must not wrap negative.
      const index = base + kWriteBuckets + bucket;
      Atomics.store(int32, index, Math.min(0x7fffffff, Atomics.load(int32, index) + writeBytes));
    }
    this.table.enter(ref);
    return {
      remaining: rps < 0 ? -1 : rps - state.requests - 1,
      resetMs: this.untilExpiry(state.oldestBusyEpoch === -1 ? this.epochOf(nowMs) : state.oldestBusyEpoch, nowMs),
    };
  }
}

export function isRefusal(result: Admission | Refusal): result is Refusal {
  return (result as Refusal).quota !== undefined;
}
