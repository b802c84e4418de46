/**
 * A throwaway PostgreSQL cluster for bench:peer: Debian's `postgresql`
 * package (binaries in /usr/lib/postgresql/<major>/bin), `initdb` into a
 * temporary directory, run as the `postgres` user (the server refuses to
 * run as root), listening on 127.0.0.1 only, fsync and synchronous_commit
 * on as shipped. `stop()` shuts it down and removes the directory; the
 * caller makes sure it runs on Ctrl-C too.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../test/support/freePort.ts';

/** USER_HZ, the unit of /proc/<pid>/stat times. */
const TICK_MS = 10;

export interface PostgresCluster {
  port: number;
  dir: string;
  /** CPU ms of every process of the cluster so far: the postmaster, each backend and helper, and those that exited. */
  cpuMs(): number;
  /** Proportional set size of all its processes, bytes (shared buffers counted once across them). */
  pssBytes(): number;
  stop(): Promise<void>;
}

export function findPostgresBin(): string {
  const root = '/usr/lib/postgresql';
  const majors = existsSync(root) ? readdirSync(root).filter((d) => existsSync(join(root, d, 'bin', 'postgres'))) : [];
  if (majors.length === 0) throw new Error('PostgreSQL is not installed: apt-get install -y postgresql (Debian: /usr/lib/postgresql/<major>/bin)');
  return join(root, majors.sort((a, b) => Number(b) - Number(a))[0]!, 'bin');
}

function procStat(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** The postmaster and every process whose parent it is. */
function clusterPids(postmaster: number): number[] {
  const pids = [postmaster];
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === postmaster) continue;
    const fields = procStat(pid);
    // fields[1] is field 4, ppid.
    if (fields && Number(fields[1]) === postmaster) pids.push(pid);
  }
  return pids;
}

function asPostgres(): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

export async function startPostgres(maxConnections: number): Promise<PostgresCluster> {
  const bin = findPostgresBin();
  const dir = mkdtempSync(join(tmpdir(), 'tenantd-peer-pg-'));
  const data = join(dir, 'data');
  const ids = process.getuid?.() === 0 ? asPostgres() : null;
  if (ids) chownSync(dir, ids.uid, ids.gid);
  const as = ids ? { uid: ids.uid, gid: ids.gid } : {};
  let postmaster: ChildProcess | null = null;
  const cleanup = () => {
    if (postmaster?.exitCode === null) postmaster.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    execFileSync(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '--no-instructions', '-E', 'UTF8', '--locale=C'], {
      ...as,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const port = await freePort();
    postmaster = spawn(
      join(bin, 'postgres'),
      [
        '-D', data,
        '-p', String(port),
        '-c', 'listen_addresses=127.0.0.1',
        '-c', `unix_socket_directories=${dir}`,
        '-c', `max_connections=${maxConnections}`,
        // Durable as shipped: every commit waits for its WAL flush.
        '-c', 'fsync=on',
        '-c', 'synchronous_commit=on',
        '-c', 'plan_cache_mode=force_generic_plan',
        '-c', 'logging_collector=off',
      ],
      // Its own process group: Ctrl-C reaches the bench, which stops the cluster and then removes its files.
      { ...as, stdio: ['ignore', 'ignore', 'pipe'], detached: true },
    );
    let log = '';
    postmaster.stderr!.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-4000)));
    const pm = postmaster;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`postgres did not start in 30 s:\n${log}`)), 30_000);
      pm.once('exit', (code) => reject(new Error(`postgres exited with ${code}:\n${log}`)));
      const poll = setInterval(() => {
        if (/ready to accept connections/.test(log)) {
          clearInterval(poll);
          clearTimeout(timer);
          resolve();
        }
      }, 50);
    });
    let exitedChildrenMs = 0;
    return {
      port,
      dir,
      cpuMs() {
        let ms = 0;
        for (const pid of clusterPids(pm.pid!)) {
          const f = procStat(pid);
          if (!f) continue;
          // utime, stime (fields 14, 15); for the postmaster also cutime, cstime (16, 17): its children that exited.
          ms += (Number(f[11]) + Number(f[12])) * TICK_MS;
          if (pid === pm.pid) exitedChildrenMs = (Number(f[13]) + Number(f[14])) * TICK_MS;
        }
        return ms + exitedChildrenMs;
      },
      pssBytes() {
        let kb = 0;
        for (const pid of clusterPids(pm.pid!)) {
          try {
            const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
            kb += Number(m?.[1] ?? 0);
          } catch {
            // Gone meanwhile.
          }
        }
        return kb * 1024;
      },
      async stop() {
        if (pm.exitCode === null) {
          const exited = new Promise((r) => pm.once('exit', r));
          // SIGINT: fast shutdown (disconnects clients, checkpoints, exits).
          pm.kill('SIGINT');
          const timer = setTimeout(() => pm.kill('SIGKILL'), 15_000);
          await exited;
          clearTimeout(timer);
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    cleanup();
    throw error;
  }
}
