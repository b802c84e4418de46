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
 *
 * `startGrpcioProbe` runs the same calls from a client on gRPC's C core
 * instead (probe_grpcio.py): grpc-js stops for its own scavenges, 5-13 ms
 * each on two busy cores, and the calls they overlap measure the client.
 */
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { status as Status } from '@grpc/grpc-js';
import type { MethodDefinition } from '@grpc/proto-loader';
import { PACKAGE_ROOT } from '../../src/paths.ts';
import { packageDefinition } from '../../src/protos.ts';
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

export interface Probe {
  run(address: string, sql: string, rows: number, calls: ProbeCall[]): Promise<ProbeResult>;
  stop(): void;
}

/** Starts the probe process: compiled with plain node when the server is, else through tsx. */
export function startProbe(compiled: boolean): Probe {
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

const PYTHON = '/usr/bin/python3';

/**
 * The same probe with gRPC's C core (probe_grpcio.py, Debian's
 * python3-grpcio), or why not when /usr/bin/python3 cannot import grpc.
 * Requests are serialized and responses decoded here, with tenantd's own
 * message definitions; the Python side only times the calls.
 */
export function startGrpcioProbe(): Probe | { unavailable: string } {
  const env = { ...process.env, PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' };
  const check = spawnSync(PYTHON, ['-c', 'import grpc'], { encoding: 'utf8', env, timeout: 20_000 });
  if (check.error || check.status !== 0) {
    return { unavailable: `${PYTHON} cannot import grpc (apt-get install python3-grpcio): ${check.error ?? check.stderr.trim().split('\n').pop()}` };
  }
  const execute = (packageDefinition()['tenantd.v1.SqlService'] as Record<string, MethodDefinition<object, object>>)['Execute']!;
  const proc = spawn(PYTHON, [join(PACKAGE_ROOT, 'bench', 'quota', 'probe_grpcio.py')], { env, stdio: ['pipe', 'pipe', 'inherit'] });
  const answers = createInterface({ input: proc.stdout! });
  const waiting: { resolve: (line: string) => void; reject: (error: Error) => void }[] = [];
  answers.on('line', (line) => waiting.shift()?.resolve(line));
  proc.once('exit', (code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`probe_grpcio.py exited with code ${code}`));
  });
  return {
    async run(address, sql, rows, calls) {
      const requests = calls.map(({ key, i }) => ({
        key,
        request: execute.requestSerialize({ sql, params: [{ integer_value: String(1 + (i % rows)) }] }).toString('base64'),
      }));
      const answer = await new Promise<string>((resolve, reject) => {
        if (proc.exitCode !== null) return reject(new Error(`probe_grpcio.py exited with code ${proc.exitCode}`));
        waiting.push({ resolve, reject });
        proc.stdin!.write(`${JSON.stringify({ type: 'run', address, method: execute.path, calls: requests })}\n`);
      });
      const reply = JSON.parse(answer) as { type: 'result'; latencies: number[]; responses: string[] } | { type: 'error'; message: string };
      if (reply.type === 'error') throw new Error(`grpcio probe: ${reply.message}`);
      reply.responses.forEach((bytes, k) => {
        const response = execute.responseDeserialize(Buffer.from(bytes, 'base64')) as { rows: unknown[] };
        if (response.rows.length !== 1) throw new Error(`grpcio probe: Execute on tenant #${calls[k]!.i}: expected one row`);
      });
      // Its collector is off while it times; reference counting frees everything else.
      return { latencies: reply.latencies, inGc: reply.latencies.map(() => false), gc: { pauses: 0, totalMs: 0, maxMs: 0 } };
    },
    stop() {
      if (proc.exitCode === null) proc.stdin!.end(`${JSON.stringify({ type: 'stop' })}\n`);
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
