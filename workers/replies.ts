/**
 * How a shard's answers go back to the front end. Answers of quick reads
 * wait while the worker goes on with calls it has already received, and
 * reach the front end as one message: the main thread pays about 4 µs for
 * each message it receives (bench/sql.ts, the dispatch line). An answer must
 * not wait behind work that may be slow, so what is held is posted before a
 * call for a tenant whose database is not open or whose recent calls ran
 * ≥ 0.5 ms, once its oldest answer has waited 0.5 ms, at 64 answers, and
 * whenever the worker has nothing left to run. Answers of calls that wrote,
 * errors and every other op are posted at once, so a worker that dies never
 * takes an acknowledged write's answer with it; except with the shared flush
 * (sharedFlush.ts), where a write's answer is held too, so that one sync
 * serves the writes of many tenants: `beforePost` runs before anything is
 * posted, and makes every commit so far durable.
 */
import { performance } from 'node:perf_hooks';
import type { MessagePort } from 'node:worker_threads';
import type { PackedResult, ShardResponse } from '../src/protocol.ts';
import type { TenantDb } from './tenantDb.ts';

const HOLD_MS = 0.5;
const MAX_HELD = 64;

type Answer = PackedResult | ShardResponse;

export class Replies {
  private held: Answer[] = [];
  private heldSince = 0;
  /**
   * How slow each open tenant's calls have been lately, in ms: the longest
   * of its recent calls, halved with each call after it, so a tenant cannot
   * hide a slow call behind one quick one.
   */
  private readonly recentRunMs = new WeakMap<TenantDb, number>();

  constructor(
    private readonly port: Pick<MessagePort, 'postMessage'>,
    private readonly beforePost: () => void = () => undefined,
  ) {}

  /** Notes how long a call of `db`'s tenant ran (`db` undefined: its database is not open). */
  ran(db: TenantDb | undefined, ms: number): void {
    if (db !== undefined) this.recentRunMs.set(db, Math.max(ms, (this.recentRunMs.get(db) ?? 0) / 2));
  }

  /** Before running a call of `db`'s tenant: posts what is held unless the call is known to be quick. */
  beforeRun(db: TenantDb | undefined): void {
    if (this.held.length === 0) return;
    const recent = db === undefined ? undefined : this.recentRunMs.get(db);
    if (recent === undefined || recent >= HOLD_MS || performance.now() - this.heldSince >= HOLD_MS) this.flush();
  }

  /** Holds the answer of a quick read (with the shared flush, also a write's, for the turn's sync). */
  hold(answer: Answer): void {
    if (this.held.length === 0) this.heldSince = performance.now();
    this.held.push(answer);
    if (this.held.length >= MAX_HELD) this.flush();
  }

  /** Holds several answers (a group commit's, with the shared flush), posted with the rest. */
  holdAll(answers: readonly Answer[]): void {
    for (const answer of answers) this.hold(answer);
  }

  /** Posts `answer` now, after whatever is held (so that answers keep their order). */
  post(answer: Answer): void {
    if (this.held.length === 0) {
      this.beforePost();
      this.port.postMessage(answer);
      return;
    }
    this.held.push(answer);
    this.flush();
  }

  /**
   * Posts a Query's chunk now, its bytes transferred, not copied (answers of other calls that are
   * held may follow it: they are not its own). Through here, so that nothing leaves unsynced.
   */
  postChunk(chunk: ShardResponse & { kind: 'chunk' }): void {
    this.beforePost();
    this.port.postMessage(chunk, [chunk.chunk.bytes.buffer as ArrayBuffer]);
  }

  /** Posts several answers now, in one message with whatever is held. */
  postAll(answers: readonly Answer[]): void {
    for (const answer of answers) this.held.push(answer);
    this.flush();
  }

  flush(): void {
    if (this.held.length === 0) return;
    this.beforePost();
    this.port.postMessage(this.held);
    this.held = [];
  }
}
