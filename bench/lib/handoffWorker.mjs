// The worker of bench/handoff.ts: answers each request at once, by the means
// workerData.mode names. It first reports its OS thread id, so that the bench
// can read its CPU time from /proc.
import { readFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

const { mode, doorbell } = workerData;
parentPort.postMessage(Number(readFileSync('/proc/thread-self/stat', 'utf8').split(' ')[0]));

if (mode === 'post') {
  parentPort.on('message', (n) => parentPort.postMessage(n));
} else {
  // futex: [0] the last request, [1] the last answer; -1 in [0] ends it. The thread sleeps in
  // Atomics.wait (a futex), never in its event loop, so it is woken by Atomics.notify alone.
  const slots = new Int32Array(doorbell);
  parentPort.once('message', () => {
    for (let seen = 0; ; ) {
      Atomics.wait(slots, 0, seen);
      seen = Atomics.load(slots, 0);
      if (seen < 0) break;
      Atomics.store(slots, 1, seen);
      Atomics.notify(slots, 1);
    }
    parentPort.close();
  });
}
