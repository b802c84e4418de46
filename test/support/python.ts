/**
 * Runs a Python fixture under Debian's /usr/bin/python3 (python3-grpcio,
 * python3-grpc-tools, python3-protobuf) and parses the one JSON report it
 * prints. Asynchronous on purpose: the server under test runs on this event
 * loop, so spawnSync would deadlock.
 */
import { spawn, spawnSync } from 'node:child_process';

export const PYTHON = '/usr/bin/python3';

/** Why Python cannot run the fixtures here, or null when it can. */
export function pythonGrpcMissing(): string | null {
  const probe = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools'], { encoding: 'utf8', timeout: 20_000 });
  return probe.status === 0 ? null : `${PYTHON} cannot import grpc and grpc_tools: ${probe.stderr || probe.error}`;
}

export function runPython<T>(script: string, args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<{ report: T; code: number | null; stderr: string }> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1', ...env };
  delete childEnv.PYTHONPATH;
  delete childEnv.PYTHONHOME;
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [script, ...args], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const line = stdout.trim().split('\n').pop() ?? '';
      try {
        resolve({ report: JSON.parse(line) as T, code, stderr });
      } catch {
        reject(new Error(`${script} printed no JSON report (exit ${code}):\n${stdout}\n${stderr}`));
      }
    });
  });
}
