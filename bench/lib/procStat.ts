/**
 * CPU time of the calling process's main thread (Linux /proc), to tell the
 * front end's own cost per call apart from its worker threads'. Node 20 has
 * no per-thread CPU clock (process.threadCpuUsage arrived in Node 23.9).
 */
import { readFileSync } from 'node:fs';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';

/** USER_HZ: the unit of utime/stime in /proc; 100 on every mainstream Linux. */
const TICK_MS = 10;

/** Milliseconds of CPU the main thread has used, or null where /proc is missing. */
export function mainThreadCpuMs(): number | null {
  return threadCpuMs(process.pid);
}

/** Milliseconds of CPU one thread of this process (by OS thread id) has used, or null where /proc is missing. */
export function threadCpuMs(tid: number): number | null {
  return statCpuMs(`/proc/self/task/${tid}/stat`);
}

/** Milliseconds of CPU another process (all its threads) has used, or null where it or /proc is missing. */
export function processCpuMs(pid: number): number | null {
  return statCpuMs(`/proc/${pid}/stat`);
}

/** utime + stime of a /proc stat file. */
function statCpuMs(path: string): number | null {
  try {
    const stat = readFileSync(path, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
  } catch {
    return null;
  }
}

export interface CpuSample {
  /** Whole process (all threads), ms. */
  processMs: number;
  /** Main thread only, ms; null off Linux. */
  mainThreadMs: number | null;
  elu: EventLoopUtilization;
  wallMs: number;
  /** Counters the child reports beside its CPU (serveParent's `counters`), e.g. tenantd's commits. */
  counters?: Record<string, number>;
}

export function cpuSample(): CpuSample {
  const usage = process.cpuUsage();
  return {
    processMs: (usage.user + usage.system) / 1000,
    mainThreadMs: mainThreadCpuMs(),
    elu: performance.eventLoopUtilization(),
    wallMs: performance.now(),
  };
}

export interface CpuDelta {
  processMs: number;
  mainThreadMs: number | null;
  /** Event-loop utilization of the main thread over the interval, 0..1. */
  elu: number;
  wallMs: number;
}

export function cpuDelta(before: CpuSample, after: CpuSample): CpuDelta {
  return {
    processMs: after.processMs - before.processMs,
    mainThreadMs: before.mainThreadMs === null || after.mainThreadMs === null ? null : after.mainThreadMs - before.mainThreadMs,
    elu: performance.eventLoopUtilization(after.elu, before.elu).utilization,
    wallMs: after.wallMs - before.wallMs,
  };
}

/**
 * Milliseconds of CPU the hypervisor gave to others while this virtual
 * machine wanted it (steal, all cores together, /proc/stat), or null where
 * there is no /proc. Time the server could not run that no code of ours
 * decides: benches print it beside latencies measured on a shared host.
 */
export function cpuStealMs(): number | null {
  try {
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/);
    // cpu user nice system idle iowait irq softirq steal ...
    return Number(cpu[8]) * TICK_MS;
  } catch {
    return null;
  }
}
