/**
 * Servers under test run in child processes so the load generator never
 * shares a thread (or an event loop) with them. The parent side starts one
 * and asks it for its CPU counters; the child side answers.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PACKAGE_ROOT } from '../../src/paths.ts';
import { cpuSample, type CpuSample } from './procStat.ts';

/**
 * Compiles src/, workers/ and bench/ to dist/ (tsconfig.bench.json), as
 * `npm start` does for the server, so a child can run as plain JavaScript:
 * what users run, without the TypeScript loader's memory (about 80 MB).
 */
export function buildCompiled(): void {
  const tsc = join(PACKAGE_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', join(PACKAGE_ROOT, 'tsconfig.bench.json')], { stdio: 'inherit' });
}

/** The compiled counterpart of a TypeScript file of this package (after buildCompiled). */
export function compiledUrl(script: URL): URL {
  const rel = relative(PACKAGE_ROOT, fileURLToPath(script)).replace(/\.ts$/, '.js');
  return pathToFileURL(join(PACKAGE_ROOT, 'dist', rel));
}

export interface Ready {
  type: 'ready';
  port: number;
  [key: string]: unknown;
}

type ToChild = { type: 'sample'; id: number } | { type: 'stop' } | { type: 'profile'; id: number; action: 'start' | 'stop'; dir: string; label: string };
type FromChild =
  | Ready
  | { type: 'sample'; id: number; sample: CpuSample }
  | { type: 'profiled'; id: number; files: string[] }
  | { type: 'error'; message: string };

export interface ChildServer {
  ready: Ready;
  /** The child's CPU counters now. */
  sample(): Promise<CpuSample>;
  /**
   * CPU profiles of every thread of the child (lib/profiler.ts) between
   * `start` and `stop`; `stop` writes them to `dir` and returns the files.
   */
  profile(action: 'start' | 'stop', dir: string, label: string): Promise<string[]>;
  stop(): Promise<void>;
}

/**
 * Starts `script` with `args` as JSON in argv[2]; resolves once it is
 * listening. TypeScript through tsx, or with `compiled` its compiled copy
 * under dist/ with plain node (call buildCompiled first).
 */
export function startChild(script: URL, args: unknown, execArgv: string[] = [], compiled = false): Promise<ChildServer> {
  const proc: ChildProcess = fork(compiled ? compiledUrl(script) : script, [JSON.stringify(args)], {
    execArgv: compiled ? execArgv : ['--import', 'tsx', ...execArgv],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const waiting = new Map<number, (s: CpuSample) => void>();
  const profiling = new Map<number, (files: string[]) => void>();
  let nextId = 1;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    proc.once('exit', (code) => reject(new Error(`${script.pathname} exited with code ${code} before it was ready`)));
    proc.on('message', (message: FromChild) => {
      if (message.type === 'error') reject(new Error(`${script.pathname}: ${message.message}`));
      else if (message.type === 'sample') waiting.get(message.id)?.(message.sample);
      else if (message.type === 'profiled') profiling.get(message.id)?.(message.files);
      else if (message.type === 'ready') {
        resolve({
          ready: message,
          sample: () =>
            new Promise((done) => {
              const id = nextId++;
              waiting.set(id, done);
              proc.send({ type: 'sample', id } satisfies ToChild);
            }),
          profile: (action, dir, label) =>
            new Promise((done) => {
              const id = nextId++;
              profiling.set(id, done);
              proc.send({ type: 'profile', id, action, dir, label } satisfies ToChild);
            }),
          stop: async () => {
            if (proc.exitCode === null) proc.send({ type: 'stop' } satisfies ToChild);
            const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
            await exited;
            clearTimeout(timer);
          },
        });
      }
    });
  });
}

/**
 * Child side: report `ready`, answer samples (CPU, and `counters()` when
 * given), run `stop` then exit when asked.
 */
export function serveParent(ready: Ready, stop: () => Promise<void>, counters?: () => Record<string, number>): void {
  let stopping: Promise<void> | null = null;
  const stopOnce = () => (stopping ??= stop().catch((e) => void process.stderr.write(`stop failed: ${String(e)}\n`)));
  if (!process.send) {
    // Started by hand (not forked): say where it listens, stop on Ctrl-C.
    process.stdout.write(`${JSON.stringify(ready)}\n`);
    process.once('SIGINT', () => void stopOnce().then(() => process.exit(0)));
    return;
  }
  process.send(ready);
  let profiler: import('./profiler.ts').ThreadProfiler | undefined;
  process.on('message', (message: ToChild) => {
    if (message.type === 'sample') {
      const sample = { ...cpuSample(), ...(counters ? { counters: counters() } : {}) };
      process.send!({ type: 'sample', id: message.id, sample } satisfies FromChild);
    }
    else if (message.type === 'profile') {
      void (async () => {
        const { ThreadProfiler } = await import('./profiler.ts');
        profiler ??= new ThreadProfiler();
        const files = message.action === 'start' ? (await profiler.start(), []) : await profiler.stop(message.dir, message.label);
        process.send!({ type: 'profiled', id: message.id, files } satisfies FromChild);
      })();
    }
    else if (message.type === 'stop') {
      void stopOnce().then(() => process.exit(0));
    }
  });
  process.on('disconnect', () => void stopOnce().then(() => process.exit(0)));
}

/** Child side: report a startup failure to the parent. */
export function failToParent(error: unknown): never {
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
  process.send?.({ type: 'error', message } satisfies FromChild);
  process.stderr.write(`${message}\n`);
  process.exit(1);
}
