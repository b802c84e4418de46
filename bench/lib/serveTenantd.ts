/**
 * Child process: a real tenantd (startServer: catalog, shard workers, gRPC)
 * on 127.0.0.1:0 with the bench config. argv[2] is BenchServerArgs as JSON.
 */
import { createLogger } from '../../src/log.ts';
import { startServer } from '../../src/server.ts';
import { benchConfig, type BenchServerArgs } from './benchConfig.ts';
import { failToParent, serveParent } from './child.ts';

try {
  const args = JSON.parse(process.argv[2]!) as BenchServerArgs;
  const config = benchConfig(args);
  const server = await startServer(config, createLogger(config.logLevel));
  serveParent({ type: 'ready', port: server.port, adminKey: server.adminKey.key, shards: config.shards }, () => server.shutdown());
} catch (error) {
  failToParent(error);
}
