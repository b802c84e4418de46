// A plain worker for bench/dispatch.ts: request/response over postMessage,
// correlated by the request's id (as workers/shard.ts does). An array is a
// batch: answered with one array, in order.
import { parentPort } from 'node:worker_threads';
import task from './dispatchTask.mjs';

parentPort.on('message', (message) => {
  parentPort.postMessage(Array.isArray(message) ? message.map(task) : task(message));
});
