/**
 * Child process: a real tenantd (startServer: catalog, shard workers, gRPC)
 * on 127.0.0.1:0 with the bench config (unlimited `bench` plan as default)
 * plus `groupCommit`, which bench/lib/serveTenantd.ts does not set.
 * argv[2] is TenantdArgs as JSON.
 */
import { createLogger } from '../../src/log.ts';
import { startServer } from '../../src/server.ts';
import { benchConfig } from '../lib/benchConfig.ts';
import { failToParent, serveParent } from '../lib/child.ts';
import type { TenantdArgs } from './common.ts';

try {
  const args = JSON.parse(process.argv[2]!) as TenantdArgs;
  const config = { ...benchConfig(args), groupCommit: args.groupCommit };
  const server = await startServer(config, createLogger(config.logLevel));
  serveParent(
    { type: 'ready', port: server.port, adminKey: server.adminKey.key, shards: config.shards, pid: process.pid },
    () => server.shutdown(),
    // What the shards report of their commits (the tenantd.shard.commits / committed_calls metrics).
    () => ({
      commits: server.router.shards.reduce((sum, shard) => sum + shard.commits, 0),
      committedCalls: server.router.shards.reduce((sum, shard) => sum + shard.committedCalls, 0),
    }),
  );
} catch (error) {
  failToParent(error);
}
