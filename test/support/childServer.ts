/**
 * `tenantd serve` as a child process, for what only a real process shows:
 * exit codes, signals, SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/tenantd.js', import.meta.url));

export interface ChildServer {
  child: ChildProcess;
  port: number;
  adminKey: string;
  /** Everything written so far (stdout + stderr). */
  output(): string;
  /** Resolves with the exit code (or the signal's name) once the process is gone. */
  exited: Promise<number | string>;
}

/** Spawns `tenantd serve` on 127.0.0.1:0 with `args`; resolves once it listens. */
export function serveChild(dataDir: string, args: string[] = [], startMs = 90_000): Promise<ChildServer> {
  const child = spawn(
    process.execPath,
    [BIN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--metrics-listen', 'off', '--shards', '2', '--log-level', 'warn', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not start: ${out}`));
    }, startMs);
    const onData = (): void => {
      const port = /listening on port (\d+)/.exec(out);
      if (!port) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      resolve({ child, port: Number(port[1]), adminKey: readFileSync(`${dataDir}/admin.key`, 'utf8').trim(), output: () => out, exited });
    };
    child.stdout!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${out}`));
    });
  });
}

/** Runs `tenantd serve` expecting it to fail at start: its exit code and output. */
export function serveChildFailing(dataDir: string, args: string[] = []): Promise<{ code: number | string; output: string }> {
  return serveChild(dataDir, args).then(
    (server) => {
      server.child.kill('SIGKILL');
      throw new Error('the server started');
    },
    (error: Error) => {
      const match = /^server exited with (\S+): ([\s\S]*)$/.exec(error.message);
      if (!match) throw error;
      return { code: Number.isNaN(Number(match[1])) ? match[1]! : Number(match[1]), output: match[2]! };
    },
  );
}
