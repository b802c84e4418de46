/**
 * Admission on the front end, before a call reaches a worker: calls in
 * flight, requests per second and write bytes per second, each over a
 * sliding one-second window of ten 100 ms buckets kept in shared memory,
 * and shard_ms_per_second, a bucket of shard time that the shard drains
 * (it adds each call's time to the slot) and admission refills.
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
  kShardDebtUs,
  kShardFields,
  kShardPendingUs,
  kShardRefillTick,
  kShardTickMs,
  kUint16Fields,
  kWindowEpoch,
  kWriteBpsLimit,
  kWriteBuckets,
} from './layout.ts';
import type { QuotaTable, SlotRef } from './quotaTable.ts';

export type RateQuota = 'requests_per_second' | 'write_bytes_per_second' | 'shard_ms_per_second';

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

/** Shard time is charged once a tenant has used this much since the last charge (µs). */
const CHARGE_MIN_US = 1000;
/** The pending counter as read; past int32 (36 minutes of shard time between two calls) it wrapped. */
function pendingOf(raw: number): number {
  return raw < 0 ? 0x7fffffff : raw;
}

function isUnlimitedShardTime(limitMs: number): boolean {
  return limitMs < 0 || limitMs > MAX_SHARD_MS_LIMIT;
}

/** The bucket's debt (µs) once refilled from its last tick to `tick` at `limitMs` ms per second (µs per ms), plus `pending`. */
function debtAfter(int32: Int32Array, base: number, limitMs: number, tick: number, pending: number): number {
  const elapsedTicks = Math.max(0, (tick - Atomics.load(int32, base + kShardRefillTick)) | 0);
  const refilled = Math.max(0, Atomics.load(int32, base + kShardDebtUs) - elapsedTicks * kShardTickMs * limitMs);
  return Math.min(0x7fffffff, refilled + pending);
}

/** Past this many ms per second the bucket (one second's worth, in µs) would not fit an int32: as good as unlimited. */
const MAX_SHARD_MS_LIMIT = 2_000_000;

export class Admitter {
  /** Epochs count from here so they fit in an int32 slot. */
  private readonly baseMs: number;
  /** Shard time (µs) the last admit() charged to its tenant: what its calls took since the one before. */
  lastChargedUs = 0;

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

  /**
   * Admission's part of shard_ms_per_second: takes the time the shard
   * reported since the tenant's last call (into lastChargedUs), refills the
   * bucket at the limit (ms per second) and stores how far it is drawn down,
   * in µs, which it returns; 0 when unlimited.
   */
  private chargeShardTime(ref: SlotRef, limitMs: number, nowMs: number, neighbourActive: boolean): number {
    const int32 = ref.page.shard;
    const base = ref.index * kShardFields;
    // The common case, a tenant of quick calls with its bucket full: two
    // loads. What it used stays pending until it adds up to a millisecond.
    if (Atomics.load(int32, base + kShardDebtUs) === 0) {
      const pending = Atomics.load(int32, base + kShardPendingUs);
      if (pending >= 0 && pending < CHARGE_MIN_US) {
        this.lastChargedUs = 0;
        return 0;
      }
    }
    const pending = pendingOf(Atomics.exchange(int32, base + kShardPendingUs, 0));
    this.lastChargedUs = pending;
    if (isUnlimitedShardTime(limitMs)) return 0;
    const tick = this.shardTickOf(nowMs);
    let debt = debtAfter(int32, base, limitMs, tick, pending);
    // Time taken while no other tenant wanted the shard kept no one waiting:
    // it is not owed. The bucket stays at most empty (one second's worth
    // drawn), so a neighbour that turns up gets the tenant held to its share
    // from then on, not locked out for all it ran alone.
    if (!neighbourActive) debt = Math.min(debt, limitMs * 1000);
    Atomics.store(int32, base + kShardDebtUs, debt);
    Atomics.store(int32, base + kShardRefillTick, tick);
    return debt;
  }

  /** Usage's part: how far the tenant's shard-time bucket is drawn down now, in µs, changing nothing. */
  shardDebtUs(ref: SlotRef, limitMs: number, nowMs: number): number {
    if (isUnlimitedShardTime(limitMs)) return 0;
    const base = ref.index * kShardFields;
    return debtAfter(ref.page.shard, base, limitMs, this.shardTickOf(nowMs), this.pendingShardUs(ref));
  }

  /** Shard time the shard reported that no admission has charged yet (µs). */
  pendingShardUs(ref: SlotRef): number {
    return pendingOf(Atomics.load(ref.page.shard, ref.index * kShardFields + kShardPendingUs));
  }

  /** The shard-time refill tick of `nowMs`, as stored (int32, wraps after 248 days of uptime). */
  private shardTickOf(nowMs: number): number {
    return Math.floor((nowMs - this.baseMs) / kShardTickMs) | 0;
  }

  /** Milliseconds until the bucket of `epoch` leaves the window. */
  private untilExpiry(epoch: number, nowMs: number): number {
    if (epoch < 0) return 0;
    return Math.max(1, this.baseMs + (epoch + kBuckets) * kBucketMs - nowMs);
  }

  /**
   * Admits the call (counting it in flight and in the window) or says which
   * quota refuses it. `release` must follow every admission exactly once.
   * `neighbourActive`: whether another tenant used the tenant's shard lately
   * (ShardActivity); without one, shard_ms_per_second refuses nothing.
   */
  admit(ref: SlotRef, writeBytes: number, nowMs: number = Date.now(), shardMsLimit = -1, neighbourActive = true): Admission | Refusal {
    const { int32, uint16 } = ref.page;
    const base = ref.index * kInt32Fields;

    const concurrency = Atomics.load(int32, base + kConcurrencyLimit);
    const inFlight = this.table.inFlight(ref);
    if (concurrency >= 0 && inFlight >= concurrency) {
      this.lastChargedUs = 0;
      return { quota: 'concurrent_requests', current: inFlight, limit: concurrency, retryAfterMs: null };
    }

    // A call's shard time is known only once it ran: the bucket may go deep
    // into debt (one long query), and while a neighbour wants the shard the
    // tenant waits until it is refilled to less than a second's worth. With
    // no neighbour it is served (work-conserving): the shard runs its calls
    // after any other tenant's within its share (workers/shareLanes.ts).
    const debt = this.chargeShardTime(ref, shardMsLimit, nowMs, neighbourActive);
    if (neighbourActive && debt > 0 && debt >= shardMsLimit * 1000) {
      return {
        quota: 'shard_ms_per_second',
        current: Math.ceil(debt / 1000),
        limit: shardMsLimit,
        // Refills come in ticks: one more, so that the retry is not refused again by a hair.
        retryAfterMs: Math.ceil((debt - shardMsLimit * 1000 + 1) / shardMsLimit) + kShardTickMs,
      };
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
