/**
 * CPU profiles of a process's main thread and of every worker thread over a
 * window the bench chooses (the measured load, not start-up or tenant
 * creation, which `--cpu-prof` would include). Runs inside the server child:
 * one inspector session on the main thread, and the NodeWorker domain to
 * reach each worker's own profiler through it.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

interface Attached {
  sessionId: string;
  title: string;
}

export class ThreadProfiler {
  private readonly session = new Session();
  private readonly workers: Attached[] = [];
  private nextId = 1;
  private readonly waiting = new Map<number, (result: unknown) => void>();

  constructor() {
    this.session.connect();
    this.session.on('NodeWorker.attachedToWorker', (m: { params: { sessionId: string; workerInfo: { title: string } } }) => {
      this.workers.push({ sessionId: m.params.sessionId, title: m.params.workerInfo.title });
    });
    this.session.on('NodeWorker.receivedMessageFromWorker', (m: { params: { message: string } }) => {
      const reply = JSON.parse(m.params.message) as { id?: number; result?: unknown };
      if (reply.id !== undefined) this.waiting.get(reply.id)?.(reply.result);
    });
  }

  private post<T>(method: string, params: object = {}): Promise<T> {
    return new Promise((resolve, reject) =>
      this.session.post(method, params, (error, result) => (error ? reject(error) : resolve(result as T))),
    );
  }

  private inWorker<T>(worker: Attached, method: string, params: object = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve as (r: unknown) => void);
      void this.post('NodeWorker.sendMessageToWorker', { sessionId: worker.sessionId, message: JSON.stringify({ id, method, params }) });
    });
  }

  async start(): Promise<void> {
    await this.post('NodeWorker.enable', { waitForDebuggerOnStart: false });
    // attachedToWorker arrives for the workers that already run, just after enable.
    await new Promise((resolve) => setTimeout(resolve, 200));
    for (const w of this.workers) {
      await this.inWorker(w, 'Profiler.enable');
      await this.inWorker(w, 'Profiler.setSamplingInterval', { interval: 200 });
      await this.inWorker(w, 'Profiler.start');
    }
    // The main thread's last, so that starting the workers' is not in its profile.
    await this.post('Profiler.enable');
    await this.post('Profiler.setSamplingInterval', { interval: 200 });
    await this.post('Profiler.start');
  }

  /** Stops every profile and writes them to `dir`; returns the files. */
  async stop(dir: string, label: string): Promise<string[]> {
    const files: string[] = [];
    const main = await this.post<{ profile: unknown }>('Profiler.stop');
    files.push(join(dir, `${label}-main.cpuprofile`));
    writeFileSync(files.at(-1)!, JSON.stringify(main.profile));
    for (const w of this.workers) {
      const r = await this.inWorker<{ profile: unknown }>(w, 'Profiler.stop');
      files.push(join(dir, `${label}-${w.title.replace(/[^a-z0-9-]+/gi, '_')}.cpuprofile`));
      writeFileSync(files.at(-1)!, JSON.stringify(r.profile));
    }
    return files;
  }
}
