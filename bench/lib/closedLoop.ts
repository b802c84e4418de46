/** A closed loop: keeps `inFlight` calls running for `ms`, measuring the main thread's cost per call. */
import { cpuDelta, cpuSample } from './procStat.ts';

export interface LoopResult {
  calls: number;
  wallMs: number;
  callsPerSecond: number;
  /** Main-thread CPU per call (Linux /proc, 10 ms ticks), µs; null elsewhere. */
  mainThreadUsPerCall: number | null;
  /** Event-loop busy time per call, µs (includes time descheduled on a busy box). */
  eluUsPerCall: number;
  /** Whole-process CPU per call (main thread + workers), µs. */
  processUsPerCall: number;
}

/** `start(i, done)` begins call i and must call `done` once it ends. */
export async function closedLoop(inFlight: number, ms: number, start: (i: number, done: () => void) => void): Promise<LoopResult> {
  let issued = 0;
  let completed = 0;
  let stop = false;
  const before = cpuSample();
  await new Promise<void>((resolve) => {
    let running = inFlight;
    const next = () => {
      if (stop) {
        if (--running === 0) resolve();
        return;
      }
      start(issued++, () => {
        completed++;
        next();
      });
    };
    setTimeout(() => (stop = true), ms);
    for (let i = 0; i < inFlight; i++) next();
  });
  const d = cpuDelta(before, cpuSample());
  return {
    calls: completed,
    wallMs: d.wallMs,
    callsPerSecond: (completed / d.wallMs) * 1000,
    mainThreadUsPerCall: d.mainThreadMs === null ? null : (d.mainThreadMs * 1000) / completed,
    eluUsPerCall: (d.elu * d.wallMs * 1000) / completed,
    processUsPerCall: (d.processMs * 1000) / completed,
  };
}
