/**
 * Child process: a real tenantd (startServer: catalog, registry loaded from
 * it, shard workers, gRPC) on 127.0.0.1:0 with the stock plans, so the
 * client never shares a thread or an event loop with the server. argv[2] is
 * ServerArgs as JSON. The ready message says how long the start took.
 */
import { performance } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { defaultConfig, type Config, type SyncFlushMode, type SyncMode } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import { startServer } from '../../src/server.ts';
import { failToParent, serveParent } from '../lib/child.ts';

export interface ServerArgs {
  dataDir: string;
  shards?: number;
  sync?: SyncMode;
  syncFlush?: SyncFlushMode;
  maxOpenDbs?: number;
}

export type ServerReady = {
  type: 'ready';
  port: number;
  adminKey: string;
  pid: number;
  shards: number;
  maxOpenDbs: number;
  /** Tenants the registry holds after loading the catalog. */
  tenants: number;
  /** Pages of shared quota state allocated. */
  quotaPages: number;
  /** Wall time of startServer() alone (catalog open, registry load, workers spawned, gRPC bound). */
  startServerMs: number;
  /** From this process's start (performance.timeOrigin) to ready: Node + tsx + imports + startServer. */
  sinceProcessStartMs: number;
};

try {
  const args = JSON.parse(process.argv[2]!) as ServerArgs;
  const base = defaultConfig();
  const config: Config = {
    ...base,
    listen: '127.0.0.1:0',
    dataDir: args.dataDir,
    shards: args.shards ?? base.shards,
    sync: args.sync ?? base.sync,
    syncFlush: args.syncFlush ?? base.syncFlush,
    maxOpenDbs: args.maxOpenDbs ?? base.maxOpenDbs,
    metricsListen: null,
    logLevel: 'warn',
    drainTimeoutMs: 5_000,
  };
  const t0 = performance.now();
  const server = await startServer(config, createLogger(config.logLevel));
  const startServerMs = performance.now() - t0;
  const ready: ServerReady = {
    type: 'ready',
    port: server.port,
    adminKey: server.adminKey.key,
    pid: process.pid,
    shards: config.shards,
    maxOpenDbs: config.maxOpenDbs,
    tenants: server.registry.size,
    quotaPages: server.registry.table.pageCount,
    startServerMs,
    sinceProcessStartMs: performance.now(),
  };
  // What the main thread holds, for bench:scale's memory figures (the shard threads' heaps are not in it).
  const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;
  serveParent(ready, () => server.shutdown(), () => {
    // Started with --expose-gc (bench:scale does): what is live, not what garbage awaits collection.
    (globalThis as { gc?: () => void }).gc?.();
    const heap = getHeapStatistics();
    return {
      mainHeapUsedMiB: mib(heap.used_heap_size),
      mainHeapTotalMiB: mib(heap.total_heap_size),
      externalMiB: mib(process.memoryUsage().external),
      latencyWindows: server.registry.latencyWindows,
    };
  });
} catch (error) {
  failToParent(error);
}
