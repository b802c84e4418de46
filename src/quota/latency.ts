/**
 * Per-tenant call latency over a recent window: a log-scale histogram (each
 * bucket 20 % wider than the last, 50 µs to ~2 min), kept for the current and
 * the previous minute. Created on a tenant's first call and dropped once the
 * tenant has had no call for two minutes (see {@link LatencyWindow.expired}),
 * so only recently active tenants cost memory: 656 bytes of counters each.
 * Percentiles are accurate to the bucket width (±10 %).
 */
const kFirstBoundMs = 0.05;
const kGrowth = 1.2;
const kLatencyBuckets = 82;
const kWindowMs = 60_000;
const LOG_GROWTH = Math.log(kGrowth);

function bucketOf(ms: number): number {
  if (ms <= kFirstBoundMs) return 0;
  return Math.min(kLatencyBuckets - 1, 1 + Math.floor(Math.log(ms / kFirstBoundMs) / LOG_GROWTH));
}

/** The upper bound of a bucket, in ms. */
function boundOf(bucket: number): number {
  return kFirstBoundMs * kGrowth ** bucket;
}

export class LatencyWindow {
  /** Both minutes in one array (one allocation): the current one starts at `current`, the previous one at the other half. */
  private readonly counts = new Uint32Array(2 * kLatencyBuckets);
  private current = 0;
  private windowStart: number;
  private lastRecord: number;

  constructor(now: number = Date.now()) {
    this.windowStart = now;
    this.lastRecord = now;
  }

  private rotate(now: number): void {
    const elapsed = now - this.windowStart;
    if (elapsed < kWindowMs) return;
    if (elapsed < 2 * kWindowMs) {
      // The current minute becomes the previous one; the old previous one is cleared and reused.
      this.current = kLatencyBuckets - this.current;
      this.counts.fill(0, this.current, this.current + kLatencyBuckets);
    } else {
      this.counts.fill(0);
    }
    this.windowStart = now - (elapsed % kWindowMs);
  }

  record(ms: number, now: number = Date.now()): void {
    this.rotate(now);
    this.lastRecord = now;
    this.counts[this.current + bucketOf(ms)]!++;
  }

  /**
   * True once every call recorded has left the window: percentiles() would
   * answer zeros, so the window can be dropped and made anew at the next call.
   */
  expired(now: number = Date.now()): boolean {
    return now - this.lastRecord >= 2 * kWindowMs;
  }

  /** The given percentiles (0-100) in ms over the last one to two minutes; 0 when there were no calls. */
  percentiles(ps: readonly number[], now: number = Date.now()): number[] {
    this.rotate(now);
    const counts = this.counts;
    let total = 0;
    for (let i = 0; i < counts.length; i++) total += counts[i]!;
    if (total === 0) return ps.map(() => 0);
    return ps.map((p) => {
      const rank = Math.max(1, Math.ceil((p / 100) * total));
      let seen = 0;
      for (let i = 0; i < kLatencyBuckets; i++) {
        seen += counts[i]! + counts[kLatencyBuckets + i]!;
        if (seen >= rank) return boundOf(i);
      }
      return boundOf(kLatencyBuckets - 1);
    });
  }
}
