/**
 * Child process: runs one group of loads (bench/lib/loadgen.ts `runLoad`)
 * concurrently, so the load generator has an event loop of its own, apart
 * from the parent and from other groups. Protocol over IPC:
 *
 *   parent -> {type: 'run', specs}      child warms every load up, then
 *   child  -> {type: 'warm'}            once all of its loads are warm,
 *   parent -> {type: 'go'}              sent when every group is warm,
 *   child  -> {type: 'reports', reports, cpuMs} one ghz report (with details)
 *                                       per spec, and the process's CPU since 'go'.
 */
import { packageDefinition } from '../../src/protos.ts';
import { runLoad } from '../lib/loadgen.ts';
import type { LoadSpec, ToLoadChild, FromLoadChild } from './clients.ts';

const send = (message: FromLoadChild) => process.send!(message);

function run(specs: LoadSpec[]): void {
  const def = packageDefinition();
  let warm = 0;
  let go: () => void;
  let cpuAtGo = process.cpuUsage();
  const started = new Promise<void>((resolve) => (go = resolve));
  process.on('message', (message: ToLoadChild) => {
    if (message.type !== 'go') return;
    cpuAtGo = process.cpuUsage();
    go();
  });
  const beforeMeasure = () => {
    if (++warm === specs.length) send({ type: 'warm' });
    return started;
  };
  Promise.all(specs.map((spec) => runLoad({ ...spec, packageDefinition: def, details: true, beforeMeasure }))).then(
    (results) => {
      const cpu = process.cpuUsage(cpuAtGo);
      send({ type: 'reports', reports: results.map((r) => r.report), cpuMs: (cpu.user + cpu.system) / 1000 });
    },
    (error: unknown) => send({ type: 'error', message: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
  );
}

process.once('message', (message: ToLoadChild) => {
  if (message.type === 'run') run(message.specs);
});
process.on('disconnect', () => process.exit(0));
