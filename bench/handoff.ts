/**
 * npm run bench:handoff [-- --seconds 3] [--rates 1000,3000,10000]
 *
 * What one hand-off to a worker thread and back costs in CPU when calls come
 * one at a time, at a steady rate: the case of a shard that has gone to sleep
 * between calls, which tenantd's shards are under any load below saturation
 * (bench:sql's fixed-rate pass). The same empty call, paced by a timer on the
 * main thread,
 *   - inline: answered on the main thread (what the pacing alone costs);
 *   - post: postMessage to a worker asleep in its event loop, answered by
 *     postMessage (what tenantd's ShardHandle and shards do);
 *   - futex: a worker asleep in Atomics.wait on a SharedArrayBuffer, woken by
 *     Atomics.notify, answering by Atomics.notify to an Atomics.waitAsync.
 * For each: CPU per round trip of the main thread, of the worker thread (from
 * /proc), and of the process; and the hand-off's own cost (minus inline).
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { threadCpuMs } from './lib/procStat.ts';

const FLAGS = ['--seconds', '--rates'];
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i++) {
  const arg = process.argv[i]!;
  if (!FLAGS.includes(arg)) throw new Error(`unknown flag ${arg}; known: ${FLAGS.join(' ')}`);
  const value = process.argv[++i];
  if (value === undefined) throw new Error(`${arg} needs a value`);
  args.set(arg, value);
}
const seconds = Number(args.get('--seconds') ?? 3);
const rates = (args.get('--rates') ?? '1000,3000,10000').split(',').map(Number);
if (!(seconds > 0) || rates.some((r) => !(r > 0))) throw new Error('--seconds and --rates take positive numbers');

type Mode = 'inline' | 'post' | 'futex';

/** Atomics.waitAsync (V8 8.7, Node 16): in ES2024's lib, which this project's target predates. */
const waitAsync = (Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number): { async: false; value: string } | { async: true; value: Promise<string> };
}).waitAsync;

interface Cost {
  mainUs: number;
  workerUs: number;
  processUs: number;
  achieved: number;
}

async function measure(mode: Mode, rate: number): Promise<Cost> {
  const doorbell = new SharedArrayBuffer(8);
  const slots = new Int32Array(doorbell);
  const worker = mode === 'inline' ? null : new Worker(new URL('./lib/handoffWorker.mjs', import.meta.url), { workerData: { mode, doorbell } });
  const workerTid = worker ? await new Promise<number>((resolve) => worker.once('message', resolve)) : 0;
  if (worker && mode === 'futex') worker.postMessage('start');
  let sent = 0;
  const roundTrip = (): Promise<unknown> => {
    sent++;
    if (worker === null) return Promise.resolve(sent);
    if (mode === 'post') {
      const answered = new Promise((resolve) => worker.once('message', resolve));
      worker.postMessage(sent);
      return answered;
    }
    const answer = waitAsync(slots, 1, sent - 1);
    Atomics.store(slots, 0, sent);
    Atomics.notify(slots, 0);
    return answer.async ? answer.value : Promise.resolve(answer.value);
  };
  const total = Math.round(rate * seconds);
  const cpu = () => ({ main: threadCpuMs(process.pid) ?? NaN, worker: worker ? (threadCpuMs(workerTid) ?? NaN) : 0, process: process.cpuUsage() });
  // A short warm-up at the same rate, so that neither thread's first calls (JIT, first wake) count.
  const pace = async (calls: number) => {
    const t0 = performance.now();
    for (let done = 0; done < calls; done++) {
      const wait = t0 + (done * 1000) / rate - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      await roundTrip();
    }
    return performance.now() - t0;
  };
  await pace(Math.min(total, rate / 4));
  const before = cpu();
  const wallMs = await pace(total);
  const after = cpu();
  if (worker) {
    if (mode === 'futex') {
      Atomics.store(slots, 0, -1);
      Atomics.notify(slots, 0);
    }
    await worker.terminate();
  }
  const per = (ms: number) => (ms * 1000) / total;
  const processMs = (after.process.user + after.process.system - before.process.user - before.process.system) / 1000;
  return { mainUs: per(after.main - before.main), workerUs: per(after.worker - before.worker), processUs: per(processMs), achieved: (total * 1000) / wallMs };
}

const line = (s = '') => process.stdout.write(`${s}\n`);
const us = (v: number) => `${v.toFixed(1)} µs`.padStart(9);
line(`machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)}; ${seconds} s per row, one call at a time`);
line('CPU per round trip: main thread, worker thread, whole process; hand-off = process minus inline at the same rate');
for (const rate of rates) {
  const inline = await measure('inline', rate);
  for (const mode of ['inline', 'post', 'futex'] as const) {
    const c = mode === 'inline' ? inline : await measure(mode, rate);
    const handoff = mode === 'inline' ? '' : `  hand-off ${us(c.processUs - inline.processUs)}`;
    line(`${String(rate).padStart(6)}/s ${mode.padEnd(7)} main ${us(c.mainUs)}  worker ${us(c.workerUs)}  process ${us(c.processUs)}${handoff}  (${c.achieved.toFixed(0)}/s)`);
  }
}
