// Worker entry shim. Under `npm start` and vitest the sources are TypeScript
// run through tsx, but a worker thread does not inherit the parent's module
// hooks on Node 20, so the worker registers tsx itself before importing the
// real entry. Compiled JavaScript entries are imported directly.
import { workerData } from 'node:worker_threads';

const entry = workerData.entry;
if (entry.endsWith('.ts')) {
  const { register } = await import('tsx/esm/api');
  register();
}
await import(entry);
