/**
 * group-commit: 32 concurrent writers on ONE tenant, `--sync full`, group
 * commit on and then off (`--group-commit off`), each on a fresh server, in
 * the same run. Prints on/off.
 *
 * What bounds it: with group commit off every INSERT is its own commit and
 * waits for one fdatasync, one at a time per tenant (one shard thread), so
 * the ceiling is 1 / (commit latency), measured here with fsync.ts on the
 * same file system before and after the phases. With it on, one commit
 * carries up to 128 queued writes and the ceiling is CPU: the gRPC client,
 * the server's main thread and the shard share the same 2 cores. The ratio
 * can therefore not exceed (what the box does CPU-bound) x (commit latency).
 */
import { describeSyncLatency, measureSyncLatency, type SyncLatency } from './fsync.ts';
import { EXECUTE, fmt, INSERT_EVENT, SHARDS, type Context, type Row, type Scenario } from './common.ts';
import { runWrites } from './insert.ts';

const WRITERS = 32;
/**
 * One client process with 4 connections: on 2 cores, more processes only take
 * CPU from the server (measured: 1 process ~3.4k/s on, 2 ~2.8k/s, 4 ~1.6k/s).
 */
export const CLIENT_PROCESSES = 1;
const CONNECTIONS = 4;
const TARGET = 5;

/** Durable commits (one sync each) per call in a phase, from the server's counters. */
function perCall(row: Row): string {
  return row.callsPerCommit === undefined ? 'n/a' : `1/${row.callsPerCommit.toFixed(1)}`;
}

/** Cores busy during a phase: (server + client CPU per call) x calls/s. */
function coresBusy(row: Row): string {
  if (row.serverCpuUs === undefined || row.clientCpuUs === undefined) return 'n/a';
  return (((row.serverCpuUs + row.clientCpuUs) * row.rps) / 1e6).toFixed(2);
}

export const groupCommit: Scenario = {
  name: 'group-commit',
  description: `${WRITERS} writers on one tenant, --sync full, group commit on vs off (${CLIENT_PROCESSES} client process, ${CONNECTIONS} connections)`,
  async run(ctx: Context) {
    const probes: SyncLatency[] = [measureSyncLatency()];
    ctx.log(`group-commit: before: ${describeSyncLatency(probes[0]!)}`);
    const rows: Row[] = [];
    for (const on of [true, false]) {
      const row = await runWrites(ctx, {
        name: `group-commit-${on ? 'on' : 'off'}`,
        server: { sync: 'full', groupCommit: on },
        tenants: 1,
        writersPerTenant: WRITERS,
        processes: CLIENT_PROCESSES,
        connections: CONNECTIONS,
        call: EXECUTE,
        data: INSERT_EVENT,
        rowsPerCall: 1,
      });
      rows.push(row);
      ctx.addRow({ ...row, notes: `${row.notes.replace(/; [^;]*\.json$/, '')}; ${coresBusy(row)} of ${SHARDS} cores busy; ${row.notes.replace(/^.*; /, '')}` });
    }
    probes.push(measureSyncLatency());
    ctx.log(`group-commit: after: ${describeSyncLatency(probes[1]!)}`);
    const [on, off] = rows as [Row, Row];
    const ratio = on.rps / off.rps;
    const verdict = ratio >= TARGET ? `target >= ${TARGET}x met` : `target >= ${TARGET}x MISSED`;
    const commitRates = probes.map((p) => p.commitsPerSecond);
    const commitP50 = probes.map((p) => p.commitP50Us.toFixed(0)).join(' / ');
    const fsyncP50 = probes.map((p) => p.fdatasyncP50Us.toFixed(0)).join(' / ');
    const bound = Math.max(...commitRates);
    ctx.log(
      `group-commit: on ${on.rps.toFixed(0)} calls/s (p99 ${fmt(on.p99Ns)}) vs off ${off.rps.toFixed(0)} calls/s (p99 ${fmt(off.p99Ns)}): ` +
        `${ratio.toFixed(2)}x, ${verdict}; off ran at ${((100 * off.rps) / bound).toFixed(0)}% of one-commit-at-a-time (${bound.toFixed(0)} commits/s)`,
    );
    ctx.addRow({
      scenario: 'group-commit on/off',
      rps: ratio,
      p50Ns: on.p50Ns / Math.max(1, off.p50Ns),
      p99Ns: on.p99Ns / Math.max(1, off.p99Ns),
      errors: on.errors + off.errors,
      count: on.count + off.count,
      kind: 'ratio',
      notes:
        `throughput on/off ${ratio.toFixed(2)}x (${verdict}); the calls/s, p50 and p99 cells of this row are on/off ratios. ` +
        `Off is bounded by one durable commit per write on the tenant's shard thread: fdatasync p50 ${fsyncP50} µs and ` +
        `a WAL+FULL autocommit INSERT p50 ${commitP50} µs (probes before / after) allow ${commitRates.map((r) => r.toFixed(0)).join(' / ')} commits/s; ` +
        `off ran at ${((100 * off.rps) / bound).toFixed(0)}% of that. ` +
        `Syncs per call: on ${perCall(on)}, off ${perCall(off)} (the server's commit counters): what group commit saves whatever the disk. ` +
        `On is bounded by CPU (${coresBusy(on)} of ${SHARDS} cores busy, client and server together). ` +
        `${TARGET}x would need on >= ${(TARGET * off.rps).toFixed(0)} calls/s (compare the echo scenario: the bare grpc-js server with this client), ` +
        `or commits of ~${((TARGET * 1e6) / on.rps).toFixed(0)} µs or slower (a disk ~${((TARGET * 1e6) / on.rps / Math.min(...probes.map((p) => p.commitP50Us))).toFixed(0)}x slower than this one)`,
    });
  },
};
