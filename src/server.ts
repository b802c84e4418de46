/**
 * tenantd serve: the catalog, the shard workers and the gRPC front end,
 * started in that order and stopped in the reverse one.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Server as HttpServer } from 'node:http';
import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import type { Config } from './config.ts';
import { setUnexpectedErrorLogger } from './errors.ts';
import { createLogger, type Logger } from './log.ts';
import { packageDefinition } from './protos.ts';
import { Catalog } from './catalog/catalog.ts';
import { Authenticator } from './auth/authenticator.ts';
import { ensureAdminKey, type AdminKey } from './auth/adminKey.ts';
import { ShardHandle } from './routing/shardHandle.ts';
import { ShardRouter, shardOf } from './routing/shardRouter.ts';
import { TenantRegistry } from './tenants/registry.ts';
import { QuotaTable } from './quota/quotaTable.ts';
import { Admitter } from './quota/admission.ts';
import { createAdmit } from './grpc/admit.ts';
import { ShardActivity } from './quota/shardActivity.ts';
import { usageService } from './grpc/usageService.ts';
import { backupService } from './grpc/backupService.ts';
import { eventService } from './grpc/eventService.ts';
import { EventHub } from './events/hub.ts';
import { Backups } from './tenants/backups.ts';
import { FileChecks } from './tenants/fileChecks.ts';
import { UnreadBudget } from './grpc/queryOutlet.ts';
import { emptyTrash, recoverInterruptedRestores } from './tenants/restoreFiles.ts';
import { TenantManager } from './tenants/manager.ts';
import { bootstrapTenants } from './tenants/bootstrap.ts';
import { Access } from './grpc/access.ts';
import { HealthState } from './grpc/healthService.ts';
import { sqlService } from './grpc/sqlService.ts';
import { tenantService } from './grpc/tenantService.ts';
import { schemaService } from './grpc/schemaService.ts';
import { Migrator } from './schema/migrator.ts';
import { startHttpHealth, type MetricsHandler } from './httpHealth.ts';
import { RpcObserver } from './grpc/rpcObserver.ts';
import { ServerMetrics } from './telemetry/serverMetrics.ts';

const SERVICES = ['tenantd.v1.TenantService', 'tenantd.v1.SqlService', 'tenantd.v1.SchemaService', 'tenantd.v1.EventService'];

/** Messages up to 16 MiB in: large Batch calls and blobs; SQLite's own limit is 16 MiB per value. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface StartedServer {
  /** The port gRPC listens on (useful with `--listen 127.0.0.1:0`). */
  port: number;
  /** The HTTP health port, or null when disabled. */
  httpPort: number | null;
  adminKey: AdminKey;
  router: ShardRouter;
  registry: TenantRegistry;
  health: HealthState;
  shutdown(): Promise<void>;
}

export interface ServerOptions {
  /**
   * Serves `/metrics` on the metrics address: the Prometheus exporter's
   * handler, from the SDK that the entry point installed (telemetry/sdk.ts).
   */
  metricsHandler?: MetricsHandler | null;
}

export async function startServer(
  config: Config,
  logger: Logger = createLogger(config.logLevel),
  options: ServerOptions = {},
): Promise<StartedServer> {
  const dataDir = resolve(config.dataDir);
  mkdirSync(join(dataDir, 'tenants'), { recursive: true });
  for (const dir of recoverInterruptedRestores(dataDir)) logger.warn('repaired a restore cut short by a crash', { dir });
  emptyTrash(dataDir);
  setUnexpectedErrorLogger((msg, fields) => logger.error(msg, fields));

  const catalog = new Catalog(join(dataDir, 'catalog.db'));
  let adminKey: AdminKey;
  try {
    adminKey = ensureAdminKey(catalog, dataDir, config.adminKeyFile);
  } catch (error) {
    catalog.close();
    throw error;
  }
  // Pages made before the shards exist reach them through quotaPages() at spawn.
  let shardsForPages: ShardHandle[] = [];
  const table = new QuotaTable((pageIndex, buffers) => {
    for (const shard of shardsForPages) shard.addQuotaPage(pageIndex, buffers);
  });
  const registry = new TenantRegistry(config, table);
  registry.load(catalog);
  const auth = new Authenticator(catalog);

  const shards: ShardHandle[] = [];
  for (let i = 0; i < config.shards; i++) {
    shards.push(
      new ShardHandle({
        shardIndex: i,
        dataDir,
        sync: config.sync,
        maxOpenDbs: Math.max(1, Math.ceil(config.maxOpenDbs / config.shards)),
        faultInjection: config.faultInjection,
        groupCommit: config.groupCommit,
        eventSweepMs: config.eventSweepMs,
        quotaPages: () => table.allBuffers(),
        // Read at each worker start: the notes of the tenants this shard owns under today's shard count.
        closedSweeps: () => catalog.eventSweeps().filter((sweep) => shardOf(sweep.tenantId, config.shards) === i),
        onSweeps: (noted, cleared) => {
          try {
            catalog.saveEventSweeps(noted, cleared);
          } catch (error) {
            // Lost notes cost only a later sweep (the tenant's next events call does it).
            logger.warn('could not keep event sweep notes', { shard: i, error: String(error) });
          }
        },
        onLog: (level, msg, fields) => logger[level](msg, fields),
      }),
    );
  }
  shardsForPages = shards;
  const router = new ShardRouter(shards);
  const fileChecks = new FileChecks(config.sync);
  const migrator = new Migrator(catalog, registry, router, logger, fileChecks, config.migrationTimeoutMs);
  const hub = new EventHub();
  const manager = new TenantManager(catalog, registry, router, auth, dataDir, fileChecks, hub);
  const backups = new Backups(dataDir, registry, router, fileChecks);
  if (config.tenantsFile) {
    try {
      await bootstrapTenants(config.tenantsFile, manager, catalog, logger);
    } catch (error) {
      await router.stop();
      await fileChecks.close();
      catalog.close();
      throw error;
    }
  }

  // Instruments come from whatever meter provider the entry point installed (a no-op one if none).
  const metrics = config.telemetry
    ? new ServerMetrics({ shards, storageBytes: () => table.totalStorageBytes() }, config.metricsPerTenant)
    : null;
  const observer = new RpcObserver(metrics, logger);
  const health = new HealthState(SERVICES);
  const access = new Access(auth, registry);
  const definition = packageDefinition();
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    tenantd: { v1: Record<string, { service: grpc.ServiceDefinition }> };
    grpc: { health: { v1: { Health: { service: grpc.ServiceDefinition } } } };
  };
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  });
  const admitter = new Admitter(table);
  const tenantObserver = observer.service('tenantd.v1.TenantService');
  server.addService(loaded.tenantd.v1.TenantService!.service, {
    ...tenantService(access, manager, catalog, tenantObserver),
    ...usageService(access, manager, table, admitter, dataDir, tenantObserver),
    ...backupService(access, manager, backups, tenantObserver),
  });
  const admit = createAdmit(admitter, registry, metrics, { shards: config.shards, tracker: new ShardActivity(config.shards) });
  server.addService(
    loaded.tenantd.v1.SqlService!.service,
    sqlService(access, admit, router, migrator, observer.service('tenantd.v1.SqlService'), new UnreadBudget(config.queryUnreadLimits)),
  );
  server.addService(loaded.tenantd.v1.EventService!.service, eventService(access, admit, router, hub, observer.service('tenantd.v1.EventService')));
  server.addService(
    loaded.tenantd.v1.SchemaService!.service,
    schemaService(access, migrator, catalog, observer.service('tenantd.v1.SchemaService')),
  );
  server.addService(loaded.grpc.health.v1.Health.service, health.handlers(observer.service('grpc.health.v1.Health')));
  new ReflectionService(definition).addToServer(server);

  const port = await new Promise<number>((resolvePort, reject) => {
    server.bindAsync(config.listen, grpc.ServerCredentials.createInsecure(), (error, boundPort) =>
      error ? reject(new Error(`cannot listen on ${config.listen}: ${error.message}`)) : resolvePort(boundPort),
    );
  });

  let http: HttpServer | null = null;
  let httpPort: number | null = null;
  if (config.metricsListen) {
    const started = await startHttpHealth(config.metricsListen, health, config.telemetry ? options.metricsHandler ?? null : null);
    http = started.server;
    httpPort = started.port;
  }
  // Tenants left behind by a restart in the middle of a pass catch up in the background.
  void migrator.startPass();
  logger.info('tenantd serving', {
    listen: config.listen,
    port,
    dataDir,
    shards: config.shards,
    sync: config.sync,
    tenants: registry.size,
    httpPort,
  });

  let stopping: Promise<void> | null = null;
  const shutdown = (): Promise<void> => {
    stopping ??= (async () => {
      logger.info('draining', { drainTimeoutMs: config.drainTimeoutMs });
      health.setServing(false);
      health.endWatches();
      // Subscriptions never end on their own: end them so the drain can finish.
      hub.endAll('shutdown');
      await new Promise<void>((done) => {
        const timer = setTimeout(() => {
          logger.warn('drain timed out; cancelling calls in flight');
          server.forceShutdown();
          done();
        }, config.drainTimeoutMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          done();
        });
      });
      await migrator.stopped();
      await router.stop();
      await fileChecks.close();
      metrics?.close();
      catalog.close();
      if (http) await new Promise((done) => http!.close(done));
      logger.info('stopped');
    })();
    return stopping;
  };

  return { port, httpPort, adminKey, router, registry, health, shutdown };
}
