/**
 * Child process: a real tenantd (startServer: catalog, shard workers, gRPC)
 * on 127.0.0.1:0 with the bench config. argv[2] is BenchServerArgs as JSON.
 */
import { createLogger } from '../../src/log.ts';
import { startServer } from '../../src/server.ts';
import { installTelemetry } from '../../src/telemetry/sdk.ts';
import { benchConfig, type BenchServerArgs } from './benchConfig.ts';
import { failToParent, serveParent } from './child.ts';
import { threadCpuMs } from './procStat.ts';

try {
  const args = JSON.parse(process.argv[2]!) as BenchServerArgs;
  const config = benchConfig(args);
  const logger = createLogger(config.logLevel);
  // As main.ts runs it: the SDK installed, metrics served (on an ephemeral port), so their cost is measured.
  const telemetry = installTelemetry(config, logger);
  const server = await startServer(config, logger, { metricsHandler: telemetry?.metricsHandler ?? null });
  serveParent({ type: 'ready', port: server.port, adminKey: server.adminKey.key, shards: config.shards }, async () => {
    await server.shutdown();
    await telemetry?.shutdown();
  }, () => {
    const m = process.memoryUsage();
    const memory = { rssBytes: m.rss, heapTotalBytes: m.heapTotal, externalBytes: m.external, arrayBuffersBytes: m.arrayBuffers };
    // The shard threads' CPU apart from the main thread's and the rest (V8's GC and compiler helpers, libuv's pool);
    // left out unless every shard has said which thread it is.
    const shardCpu = server.router.shards.map((shard) => (shard.osThreadId === null ? null : threadCpuMs(shard.osThreadId)));
    return shardCpu.includes(null) ? memory : { ...memory, shardThreadsCpuMs: (shardCpu as number[]).reduce((a, b) => a + b, 0) };
  });
} catch (error) {
  failToParent(error);
}
