/**
 * Which tenants use each shard lately, for the work-conserving side of
 * shard_ms_per_second: a tenant past its share is refused only while another
 * tenant of its shard has called within NEIGHBOUR_WINDOW_MS; on a shard that
 * nobody else uses, refusing it would protect no one.
 *
 * Per shard it keeps the last two distinct tenants that called and when:
 * the most recent call of a tenant other than X is the newest of the two
 * that is not X. Two numbers per shard, no per-tenant state, O(1) a call.
 */

/**
 * How recently another tenant must have called for a tenant over its share
 * to be refused: one second, the period the quota is stated over. A neighbour
 * idle for longer is taken as gone; its next call waits for at most the one
 * over-share statement then running (the shard puts it ahead of the over-share
 * tenant's queued calls), after which the over-share tenant is refused again.
 */
export const NEIGHBOUR_WINDOW_MS = 1000;

export class ShardActivity {
  private readonly lastSlot: Int32Array;
  private readonly lastMs: Float64Array;
  private readonly otherSlot: Int32Array;
  private readonly otherMs: Float64Array;

  constructor(shards: number) {
    this.lastSlot = new Int32Array(shards).fill(-1);
    this.lastMs = new Float64Array(shards).fill(-Infinity);
    this.otherSlot = new Int32Array(shards).fill(-1);
    this.otherMs = new Float64Array(shards).fill(-Infinity);
  }

  /**
   * Notes a call of the tenant in `slot` on `shard` at `nowMs` (admitted or
   * not: a refused neighbour still wants the shard) and says whether another
   * tenant called there within NEIGHBOUR_WINDOW_MS before it.
   */
  touch(shard: number, slot: number, nowMs: number): boolean {
    const last = this.lastSlot[shard]!;
    const otherMs = last === slot ? this.otherMs[shard]! : this.lastMs[shard]!;
    if (last !== slot) {
      this.otherSlot[shard] = last;
      this.otherMs[shard] = this.lastMs[shard]!;
      this.lastSlot[shard] = slot;
    }
    this.lastMs[shard] = nowMs;
    return nowMs - otherMs < NEIGHBOUR_WINDOW_MS;
  }

  /** Whether any tenant called `shard` within NEIGHBOUR_WINDOW_MS before `nowMs`. */
  calledRecently(shard: number, nowMs: number): boolean {
    return nowMs - this.lastMs[shard]! < NEIGHBOUR_WINDOW_MS;
  }
}
