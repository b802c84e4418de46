/**
 * Per-tenant call latency over a recent window: a log-scale histogram (each
 * bucket 20 % wider than the last, 50 µs to ~2 min), kept for the current and
 * the previous minute. Allocated on a tenant's first call, so idle tenants
 * cost nothing; percentiles are accurate to the bucket width (±10 %).
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
  private current = new Uint32Array(kLatencyBuckets);
  private previous = new Uint32Array(kLatencyBuckets);
  private windowStart: number;

  constructor(now: number = Date.now()) {
    this.windowStart = now;
  }

  private rotate(now: number): void {
    const elapsed = now - this.windowStart;
    if (elapsed < kWindowMs) return;
    if (elapsed < 2 * kWindowMs) {
      [this.previous, this.current] = [this.current, this.previous];
      this.current.fill(0);
    } else {
      this.current.fill(0);
      this.previous.fill(0);
    }
    this.windowStart = now - (elapsed % kWindowMs);
  }

  record(ms: number, now: number = Date.now()): void {
    this.rotate(now);
    this.current[bucketOf(ms)]!++;
  }

  /** The given percentiles (0-100) in ms over the last one to two minutes; 0 when there were no calls. */
  percentiles(ps: readonly number[], now: number = Date.now()): number[] {
    this.rotate(now);
    let total = 0;
    for (let i = 0; i < kLatencyBuckets; i++) total += this.current[i]! + this.previous[i]!;
    if (total === 0) return ps.map(() => 0);
    return ps.map((p) => {
      const rank = Math.max(1, Math.ceil((p / 100) * total));
      let seen = 0;
      for (let i = 0; i < kLatencyBuckets; i++) {
        seen += this.current[i]! + this.previous[i]!;
        if (seen >= rank) return boundOf(i);
      }
      return boundOf(kLatencyBuckets - 1);
    });
  }
}
