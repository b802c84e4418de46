/**
 * npm run bench:dispatch [-- --quick | --seconds 3] [--threads N] [--in-flight 64]
 *
 * The measurement behind tenantd's dispatch design: how the front end hands a
 * call to a worker thread. The same trivial task (a Map lookup, a small object
 * back) dispatched by
 *   - plain Workers with postMessage, request/response correlated by id, the
 *     tenant pinned to a worker by FNV-1a (what src/routing/shardHandle.ts does);
 *   - the same with the calls of one event-loop turn batched into one message;
 *   - piscina 5 run(), its defaults (least-busy balancer, 1 task per worker);
 *   - piscina run() with concurrentTasksPerWorker raised so all calls are posted;
 *   - piscina run() with a custom loadBalancer that pins each tenant to one
 *     worker (piscina 5's `loadBalancer` option + `queueOptionsSymbol`).
 * All with the same number of calls in flight and the same number of threads.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { Piscina, queueOptionsSymbol } from 'piscina';
import { shardOf } from '../src/routing/shardRouter.ts';
import { closedLoop, type LoopResult } from './lib/closedLoop.ts';

type Balancer = NonNullable<NonNullable<ConstructorParameters<typeof Piscina>[0]>['loadBalancer']>;

const FLAGS = ['--quick', '--seconds', '--threads', '--in-flight'];
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i++) {
  const arg = process.argv[i]!;
  if (!FLAGS.includes(arg)) throw new Error(`unknown flag ${arg}; known: ${FLAGS.join(' ')}`);
  args.set(arg, arg === '--quick' ? 'true' : (process.argv[++i] ?? ''));
}
const seconds = Number(args.get('--seconds') ?? (args.has('--quick') ? 1 : 3));
const threads = Number(args.get('--threads') ?? availableParallelism());
const inFlight = Number(args.get('--in-flight') ?? 64);
const TASK = new URL('./lib/dispatchTask.mjs', import.meta.url).href;
const WORKER = new URL('./lib/dispatchWorker.mjs', import.meta.url);
const tenants = Array.from({ length: 1000 }, (_, i) => `bench${String(i).padStart(5, '0')}`);

interface Dispatcher {
  call(tenantId: string): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * ShardHandle's scheme in miniature: one pending map per worker, ids in the
 * message. `batched`: calls made in the same event-loop turn go to their
 * worker as one message (one wake-up, one clone), answered as one message.
 */
function plainWorkers(batched = false): Dispatcher {
  const handles = Array.from({ length: threads }, () => {
    const worker = new Worker(WORKER);
    const pending = new Map<number, (r: unknown) => void>();
    let nextId = 1;
    let queue: { id: number; tenantId: string }[] = [];
    const settle = (m: { id: number }) => {
      const resolve = pending.get(m.id);
      pending.delete(m.id);
      resolve?.(m);
    };
    worker.on('message', (m: { id: number } | { id: number }[]) => (Array.isArray(m) ? m.forEach(settle) : settle(m)));
    const flush = () => {
      worker.postMessage(queue);
      queue = [];
    };
    return {
      worker,
      call: (tenantId: string) =>
        new Promise<unknown>((resolve) => {
          const id = nextId++;
          pending.set(id, resolve);
          if (!batched) return worker.postMessage({ id, tenantId });
          if (queue.push({ id, tenantId }) === 1) setImmediate(flush);
        }),
    };
  });
  return {
    call: (tenantId) => handles[shardOf(tenantId, threads)]!.call(tenantId),
    close: async () => void (await Promise.all(handles.map((h) => h.worker.terminate()))),
  };
}

function piscina(options: { concurrentTasksPerWorker?: number; pinned?: boolean }): Dispatcher {
  const perWorker = options.concurrentTasksPerWorker ?? 1;
  // Pinning: the task carries its shard in piscina's queue options (a symbol
  // key, so it is not cloned to the worker); the balancer returns that worker
  // or null (queue it) when it is full. Worker order is stable: fixed-size pool.
  const pinned: Balancer = (task, workers) => {
    const shard = (task[queueOptionsSymbol] as { shard: number } | null)?.shard ?? 0;
    const worker = workers.length === threads ? workers[shard] : undefined;
    return worker && worker.currentUsage < perWorker ? worker : null;
  };
  const pool = new Piscina({
    filename: TASK,
    minThreads: threads,
    maxThreads: threads,
    idleTimeout: Infinity,
    concurrentTasksPerWorker: perWorker,
    maxQueue: Infinity,
    ...(options.pinned ? { loadBalancer: pinned } : {}),
  });
  let id = 0;
  return {
    call: (tenantId) => pool.run({ id: id++, tenantId, [queueOptionsSymbol]: { shard: shardOf(tenantId, threads) } }),
    close: () => pool.destroy(),
  };
}

async function measure(make: () => Dispatcher): Promise<LoopResult> {
  const dispatcher = make();
  try {
    const run = (ms: number) =>
      closedLoop(inFlight, ms, (i, done) => {
        dispatcher.call(tenants[i % tenants.length]!).then(done, (error: unknown) => {
          throw error;
        });
      });
    await run(Math.min(1000, seconds * 500)); // start the threads, warm the JIT
    return await run(seconds * 1000);
  } finally {
    await dispatcher.close();
  }
}

const line = (s = '') => process.stdout.write(`${s}\n`);
const fmt = (v: number | null, digits = 2) => (v === null ? 'n/a' : v.toFixed(digits));
line(
  `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores, Node ${process.version}, piscina ${Piscina.version}, ` +
    `load average ${loadavg()[0]!.toFixed(1)} at start`,
);
line(`task: Map lookup + small object back; ${threads} worker threads, ${inFlight} calls in flight, ${seconds} s per variant after warm-up`);
line();
line(`${'variant'.padEnd(60)} ${'tasks/s'.padStart(9)} ${'µs/task'.padStart(8)} ${'main CPU µs/task'.padStart(17)} ${'all CPU µs/task'.padStart(16)}`);
const variants: [string, () => Dispatcher][] = [
  ['plain Worker + postMessage, id-correlated, pinned by tenant', () => plainWorkers()],
  ['  same, batched: one postMessage per worker per loop turn', () => plainWorkers(true)],
  ['piscina run(), defaults (least busy, 1 task/worker)', () => piscina({})],
  [`piscina run(), concurrentTasksPerWorker ${Math.ceil(inFlight / threads)}`, () => piscina({ concurrentTasksPerWorker: Math.ceil(inFlight / threads) })],
  [`piscina run(), custom loadBalancer pinning tenant -> worker`, () => piscina({ concurrentTasksPerWorker: inFlight, pinned: true })],
];
const results: LoopResult[] = [];
for (const [name, make] of variants) {
  const r = await measure(make);
  results.push(r);
  line(
    `${name.padEnd(60)} ${r.callsPerSecond.toFixed(0).padStart(9)} ${(1e6 / r.callsPerSecond).toFixed(2).padStart(8)} ` +
      `${fmt(r.mainThreadUsPerCall).padStart(17)} ${fmt(r.processUsPerCall).padStart(16)}`,
  );
}
line();
const [plain, , ...pools] = results;
const best = pools.reduce((a, b) => (b.callsPerSecond > a.callsPerSecond ? b : a));
line(`plain postMessage vs best piscina variant: ${(plain!.callsPerSecond / best.callsPerSecond).toFixed(2)}x the throughput`);
line('µs/task is wall time per task at this concurrency (1 / throughput); main CPU is the dispatching thread\'s own CPU per task');
line('(/proc, 10 ms ticks), the figure that bounds a front end; all CPU adds the workers\' share.');
line(
  "piscina 5 does allow pinning: `loadBalancer(task, workers)` picks the worker, and a task object's " +
    '`[queueOptionsSymbol]` reaches the balancer without being cloned; a pinned task whose worker is full waits in the shared queue.',
);
