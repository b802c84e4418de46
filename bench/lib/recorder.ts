/** Per-call results, kept in typed arrays so a long run costs little memory and no GC pressure. */
import type { Recorded } from './report.ts';

export class Recorder implements Recorded {
  count = 0;
  latencies = new Float64Array(1 << 16);
  codes = new Uint8Array(1 << 16);
  errorDistribution = new Map<string, number>();
  details: { startMs: Float64Array; errors: (string | undefined)[] } | null;
  private skipped = 0;

  constructor(
    private readonly skipFirst: number,
    withDetails: boolean,
  ) {
    this.details = withDetails ? { startMs: new Float64Array(1 << 16), errors: [] } : null;
  }

  add(latencyNs: number, code: number, error: string | undefined, startMs: number): void {
    if (this.skipped < this.skipFirst) {
      this.skipped++;
      return;
    }
    const i = this.count++;
    if (i === this.latencies.length) {
      const grow = <T extends Float64Array | Uint8Array>(a: T, make: (n: number) => T) => {
        const b = make(a.length * 2);
        b.set(a);
        return b;
      };
      this.latencies = grow(this.latencies, (n) => new Float64Array(n));
      this.codes = grow(this.codes, (n) => new Uint8Array(n));
      if (this.details) this.details.startMs = grow(this.details.startMs, (n) => new Float64Array(n));
    }
    this.latencies[i] = latencyNs;
    this.codes[i] = code;
    if (error !== undefined) this.errorDistribution.set(error, (this.errorDistribution.get(error) ?? 0) + 1);
    if (this.details) {
      this.details.startMs[i] = startMs;
      this.details.errors[i] = error;
    }
  }
}
