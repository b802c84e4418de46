/**
 * The latency probe of bench/scale.ts, in a process of its own: point reads
 * over gRPC, one call at a time, from a client whose heap holds nothing but
 * the calls it is asked to make (as a separate load tool such as ghz would
 * be). The bench process itself holds 100,000 keys and the garbage of
 * seeding them, and its collector's pauses would land in the latencies.
 *
 * Driven over IPC by `startProbe` below: `{ type: 'run', address, calls }`
 * answers `{ type: 'result', latencies, gc }` with the latencies in ms in
 * call order and this process's GC pauses during the run.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { status as Status } from '@grpc/grpc-js';
import { compiledUrl } from '../lib/child.ts';
import { RawClient } from './common.ts';

export interface ProbeCall {
  key: string;
  /** Row id to read is 1 + (i % rows). */
  i: number;
}

export interface ProbeResult {
  latencies: number[];
  /** Per call: whether a GC pause of this process overlapped it (the client stopped, not the server). */
  inGc: boolean[];
  gc: { pauses: number; totalMs: number; maxMs: number };
}

type ToProbe = { type: 'run'; address: string; sql: string; rows: number; calls: ProbeCall[] } | { type: 'stop' };
type FromProbe = { type: 'result'; result: ProbeResult } | { type: 'error'; message: string };

/** Starts the probe process: compiled with plain node when the server is, else through tsx. */
export function startProbe(compiled: boolean): {
  run(address: string, sql: string, rows: number, calls: ProbeCall[]): Promise<ProbeResult>;
  stop(): void;
} {
  const script = new URL(import.meta.url);
  const proc: ChildProcess = fork(compiled ? compiledUrl(script) : script, ['--probe'], {
    execArgv: compiled ? [] : ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return {
    run(address, sql, rows, calls) {
      return new Promise((resolve, reject) => {
        proc.once('message', (message: FromProbe) => (message.type === 'result' ? resolve(message.result) : reject(new Error(message.message))));
        proc.send({ type: 'run', address, sql, rows, calls } satisfies ToProbe);
      });
    },
    stop() {
      if (proc.connected) proc.send({ type: 'stop' } satisfies ToProbe);
    },
  };
}

async function run(message: Extract<ToProbe, { type: 'run' }>, client: RawClient): Promise<ProbeResult> {
  const execute = client.method('SqlService', 'Execute');
  const gc = { pauses: 0, totalMs: 0, maxMs: 0 };
  const pauses: [start: number, end: number][] = [];
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      gc.pauses++;
      gc.totalMs += entry.duration;
      gc.maxMs = Math.max(gc.maxMs, entry.duration);
      pauses.push([entry.startTime, entry.startTime + entry.duration]);
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  const latencies: number[] = [];
  const spans: [start: number, end: number][] = [];
  try {
    for (const { key, i } of message.calls) {
      const t0 = performance.now();
      const r = await execute<any>({ sql: message.sql, params: [{ integer_value: String(1 + (i % message.rows)) }] }, key);
      const t1 = performance.now();
      latencies.push(t1 - t0);
      spans.push([t0, t1]);
      if (!r.ok) throw new Error(`Execute on tenant #${i}: ${Status[r.error.code]} ${r.error.details}`);
      if (r.response.rows.length !== 1) throw new Error(`Execute on tenant #${i}: expected one row`);
    }
  } finally {
    // Entries still buffered are delivered before disconnecting.
    await new Promise((resolve) => setImmediate(resolve));
    observer.disconnect();
  }
  const inGc = spans.map(([start, end]) => pauses.some(([from, to]) => from < end && to > start));
  return { latencies, inGc, gc };
}

if (process.argv[2] === '--probe') {
  let client: RawClient | null = null;
  process.on('message', (message: ToProbe) => {
    if (message.type === 'stop') {
      client?.close();
      process.disconnect();
      return;
    }
    client ??= new RawClient(message.address);
    run(message, client).then(
      (result) => process.send!({ type: 'result', result } satisfies FromProbe),
      (error: Error) => process.send!({ type: 'error', message: error.message } satisfies FromProbe),
    );
  });
}
