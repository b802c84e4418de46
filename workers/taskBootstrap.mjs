// Entry shim for the piscina pool of file checks (src/tenants/fileChecks.ts),
// as bootstrap.mjs is for the shards: under tsx the real module is
// TypeScript, and a worker thread does not inherit the parent's module hooks
// on Node 20, so it registers tsx itself before importing it. No top-level
// await: piscina may load this file with require().
import { workerData } from 'piscina';

let handler = null;

async function load() {
  const entry = workerData.entry;
  if (entry.endsWith('.ts')) {
    const { register } = await import('tsx/esm/api');
    register();
  }
  return (await import(entry)).default;
}

export default async function run(task) {
  handler ??= load();
  // 'warm': only load the module (a pool kept warm pays the import before its first real task).
  if (task === 'warm') {
    await handler;
    return null;
  }
  return (await handler)(task);
}
