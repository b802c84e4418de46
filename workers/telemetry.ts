/**
 * The shard's part in tracing and metrics. A worker has no tracer and no
 * meter: an SDK per thread would need its own exporter and would lose what
 * it buffered when the thread dies. Instead, for a call that carries a trace
 * context the worker reports when it ran (a `span` message, posted before
 * the call's answer on the same port, so it arrives first), and the front
 * end makes the child span under the caller's span (src/routing/shardSpans.ts).
 * Gauges the front end cannot see go up as `stats` messages when they change,
 * and the notes of closed tenants' event sweeps as `sweeps` messages.
 *
 * Nothing here throws: telemetry must not change a call's answer.
 */
import { readlinkSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parentPort } from 'node:worker_threads';
import type { ShardRequest, ShardResponse, ShardSpan, ShardStats } from '../src/protocol.ts';
import type { DbPool } from './dbPool.ts';

/** Epoch ms with sub-ms precision; the front end's clock is on the same scale. */
export function shardClock(): number {
  return performance.timeOrigin + performance.now();
}

function post(message: ShardResponse): void {
  try {
    parentPort?.postMessage(message);
  } catch {
    // Telemetry never throws.
  }
}

function reportSpan(request: ShardRequest, span: ShardSpan): void {
  post({ id: request.id, kind: 'span', span });
}

/**
 * Runs `fn` (the shard's work on `request`) and, when the call is traced,
 * reports its start and end. Untraced calls pay one property check.
 */
export function withShardSpan<T>(request: ShardRequest, fn: () => T): T {
  if (request.trace === undefined) return fn();
  const startMs = shardClock();
  try {
    return fn();
  } finally {
    reportSpan(request, { startMs, endMs: shardClock() });
  }
}

/** For work that spans turns of the event loop (a snapshot): reports it from `startMs` to now, when traced. */
export function reportSpanSince(request: ShardRequest, startMs: number): void {
  if (request.trace !== undefined) reportSpan(request, { startMs, endMs: shardClock() });
}

/**
 * For calls that ran together and share one commit: reports each traced one
 * with the group's start (`shardClock()` taken before the group ran) and end
 * (now, after the commit). Call it before posting the group's answers.
 */
export function reportGroupSpans(outcomes: readonly { request: ShardRequest }[], startMs: number): void {
  const endMs = shardClock();
  for (const { request } of outcomes) {
    if (request.trace !== undefined) reportSpan(request, { startMs, endMs, groupSize: outcomes.length });
  }
}

/** Counted by the shard as it commits; read by reportStats. */
export const commitStats = { commits: 0, committedCalls: 0, syncs: 0, filesystemSyncs: 0 };

/** Whether each commit syncs (--sync full without the shared flush); the shared flush counts its own syncs. */
let syncPerCommit = false;

export function setSyncPerCommit(on: boolean): void {
  syncPerCommit = on;
}

/** Notes one shared sync (sharedFlush.ts) that made the commits before it durable: of one file, or of the filesystem. */
export function countSync(kind: 'file' | 'filesystem'): void {
  commitStats.syncs++;
  if (kind === 'filesystem') commitStats.filesystemSyncs++;
}

/** Notes one commit that made `calls` calls' writes durable. */
export function countCommit(calls: number): void {
  commitStats.commits++;
  commitStats.committedCalls += calls;
  if (syncPerCommit) commitStats.syncs++;
}

/** Tells the front end how the pool's notes of closed tenants' event sweeps changed, for the catalog. */
export function reportSweeps(pool: DbPool): void {
  const changes = pool.takeSweepChanges();
  if (changes) post({ id: 0, kind: 'sweeps', ...changes });
}

/** This thread's OS id, from /proc/thread-self (`<pid>/task/<tid>`); null where there is no /proc. */
function osThreadId(): number | null {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isInteger(tid) ? tid : null;
  } catch {
    return null;
  }
}

const reported: ShardStats = { openDatabases: -1, commits: 0, committedCalls: 0, syncs: 0, filesystemSyncs: 0, osThreadId: osThreadId() };

/** Tells the front end the shard's gauges and counters; posts only when something changed. */
export function reportStats(openDatabases: number): void {
  if (openDatabases === reported.openDatabases && commitStats.commits === reported.commits && commitStats.syncs === reported.syncs) return;
  reported.openDatabases = openDatabases;
  reported.commits = commitStats.commits;
  reported.committedCalls = commitStats.committedCalls;
  reported.syncs = commitStats.syncs;
  reported.filesystemSyncs = commitStats.filesystemSyncs;
  post({ id: 0, kind: 'stats', stats: { ...reported } });
}
