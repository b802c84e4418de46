/**
 * tenantd serve: the catalog, the shard workers and the gRPC front end,
 * started in that order and stopped in the reverse one.
 */
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Server as HttpServer } from 'node:http';
import * as grpc from '@grpc/grpc-js';
import type { Config } from './config.ts';
import { setUnexpectedErrorLogger } from './errors.ts';
import { lockDataDir } from './dataDirLock.ts';
import { CallCanceller } from '../workers/guard.ts';
import { createLogger, type Logger } from './log.ts';
import { descriptorSetBytes, fileDescriptors, packageDefinition } from './protos.ts';
import { DescriptorIndex, REFLECTION_SERVICES, reflectionService, splitDescriptorSet } from './grpc/reflectionService.ts';
import { Catalog } from './catalog/catalog.ts';
import { Authenticator } from './auth/authenticator.ts';
import { ensureAdminKey, type AdminKey } from './auth/adminKey.ts';
import { ShardHandle } from './routing/shardHandle.ts';
import { ShardRouter, shardOf } from './routing/shardRouter.ts';
import { ShardQueueBudget } from './routing/shardQueueBudget.ts';
import { TenantRegistry } from './tenants/registry.ts';
import { QuotaTable } from './quota/quotaTable.ts';
import { Admitter } from './quota/admission.ts';
import { acceptEncodedResponses } from './grpc/encodedResponses.ts';
import { createAdmit } from './grpc/admit.ts';
import { ShardActivity } from './quota/shardActivity.ts';
import { usageService } from './grpc/usageService.ts';
import { backupService } from './grpc/backupService.ts';
import { eventService } from './grpc/eventService.ts';
import { EventHub } from './events/hub.ts';
import { Backups } from './tenants/backups.ts';
import { FileChecks } from './tenants/fileChecks.ts';
import { UnreadBudget } from './grpc/queryOutlet.ts';
import { emptyTrash, recoverInterruptedRestores, trashOrphans } from './tenants/restoreFiles.ts';
import { TenantManager } from './tenants/manager.ts';
import { bootstrapTenants } from './tenants/bootstrap.ts';
import { Access } from './grpc/access.ts';
import { HealthState } from './grpc/healthService.ts';
import { readVarintsWhole } from './grpc/varints.ts';
import { watchUnreadableMetadata } from './grpc/unreadableMetadata.ts';
import { limitHeaderList, transportOptions } from './grpc/transportOptions.ts';
import { requestDeadlineInterceptor, resetUnfinishedRequests } from './grpc/requestDeadline.ts';
import { addServicesMalformedSafe, malformedRequestInterceptor, translateTransportStatuses } from './grpc/malformed.ts';
import { sqlService } from './grpc/sqlService.ts';
import { OpenTransactions } from './grpc/transaction.ts';
import { tenantService } from './grpc/tenantService.ts';
import { schemaService } from './grpc/schemaService.ts';
import { Migrator } from './schema/migrator.ts';
import { startHttpHealth, type MetricsHandler } from './httpHealth.ts';
import { RpcObserver } from './grpc/rpcObserver.ts';
import { ServerMetrics } from './telemetry/serverMetrics.ts';
import type { Handlers } from './grpc/handlers.ts';
import { ClusterNode } from './cluster/cluster.ts';
import { clusterDisabled } from './cluster/clusterService.ts';
import { channelCredentials } from './tls/clientCredentials.ts';
import { grpcServerCredentials, ReloadingCertificates } from './tls/certificates.ts';

const SERVICES = ['tenantd.v1.TenantService', 'tenantd.v1.SqlService', 'tenantd.v1.SchemaService', 'tenantd.v1.EventService'];

export interface StartedServer {
  /** The port gRPC listens on (useful with `--listen 127.0.0.1:0`). */
  port: number;
  /** The HTTP health port, or null when disabled. */
  httpPort: number | null;
  adminKey: AdminKey;
  router: ShardRouter;
  registry: TenantRegistry;
  health: HealthState;
  /** Re-reads the TLS files (SIGHUP); false if they were bad (the old ones stay) or TLS is off. */
  reloadCertificates(): boolean;
  /** How many RPCs the server has received and not yet answered: unary calls and server or client streams (Transaction streams are counted apart, by the open transactions). */
  callsInFlight(): number;
  shutdown(): Promise<void>;
  /**
   * Interrupts every statement running in the process (an exit that cannot
   * wait: a worker in a statement holds the exit up, and one interrupted
   * while it is being terminated crashes the process).
   */
  interruptAll(): void;
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
  mkdirSync(join(dataDir, 'tenants'), { recursive: true, mode: 0o700 });
  // Before anything reads or repairs the directory: a second server exits here (main.ts: code 2).
  const dirLock = lockDataDir(dataDir);
  // A data dir made by an older version (0755) is tightened; one we do not own is left as it is.
  for (const dir of [dataDir, join(dataDir, 'tenants')]) {
    try {
      if ((statSync(dir).mode & 0o077) !== 0) chmodSync(dir, 0o700);
    } catch (error) {
      logger.warn('could not make the data directory private (mode 0700)', { dir, error: String(error) });
    }
  }
  for (const dir of recoverInterruptedRestores(dataDir)) logger.warn('repaired a restore cut short by a crash', { dir });
  setUnexpectedErrorLogger((msg, fields) => logger.error(msg, fields));

  const catalog = new Catalog(join(dataDir, 'catalog.db'));
  let adminKey: AdminKey;
  try {
    adminKey = ensureAdminKey(catalog, dataDir, config.adminKeyFile);
  } catch (error) {
    catalog.close();
    dirLock.release();
    throw error;
  }
  if (adminKey.revoked.length > 0) {
    logger.warn('admin keys revoked: this start was given another admin key, and only one may be valid', {
      audit: true,
      action: 'RevokeAdminKeys',
      principal: adminKey.keyId,
      revoked: adminKey.revoked,
      result: 'OK',
    });
  }
  // Pages made before the shards exist reach them through quotaPages() at spawn.
  let shardsForPages: ShardHandle[] = [];
  const table = new QuotaTable((pageIndex, buffers) => {
    for (const shard of shardsForPages) shard.addQuotaPage(pageIndex, buffers);
  });
  const registry = new TenantRegistry(config, table);
  registry.load(catalog);
  for (const tenantId of trashOrphans(dataDir, (id) => registry.get(id) !== undefined)) {
    logger.warn('removed the files of a tenant the catalog does not list (a create, restore or delete cut short)', { tenant: tenantId });
  }
  emptyTrash(dataDir);
  const auth = new Authenticator(catalog);

  // Interrupts the statement of a cancelled call on whichever worker thread runs it.
  const canceller = new CallCanceller();
  const queueBudget = new ShardQueueBudget(config.shardQueueLimits);
  const shards: ShardHandle[] = [];
  for (let i = 0; i < config.shards; i++) {
    shards.push(
      new ShardHandle({
        shardIndex: i,
        dataDir,
        sync: config.sync,
        syncFlush: config.syncFlush,
        maxOpenDbs: Math.max(1, Math.ceil(config.maxOpenDbs / config.shards)),
        faultInjection: config.faultInjection,
        groupCommit: config.groupCommit,
        eventSweepMs: config.eventSweepMs,
        idempotencyWindowMs: config.idempotencyWindowHours * 3_600_000,
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
        canceller,
        queueBudget,
      }),
    );
  }
  shardsForPages = shards;
  const router = new ShardRouter(shards);
  const fileChecks = new FileChecks(config.sync, config.cluster.etcd.length > 0, canceller);
  // Which shards tenants call: the admission's work-conserving shard time and the migration pass's pacing.
  const activity = new ShardActivity(config.shards);
  const migrator = new Migrator(catalog, registry, router, logger, fileChecks, config.migrationTimeoutMs, activity);
  const hub = new EventHub();
  // Query results and events waiting for slow clients: one budget, server-wide.
  const unread = new UnreadBudget(config.queryUnreadLimits);
  const openTransactions = new OpenTransactions();
  const manager = new TenantManager(catalog, registry, router, auth, dataDir, fileChecks, hub);
  manager.onOrphan = (tenantId, error) =>
    logger.warn('a deleted tenant\'s files stay until the next start', { tenant: tenantId, error: String(error) });
  const backups = new Backups(dataDir, registry, router, fileChecks);
  if (config.tenantsFile) {
    try {
      await bootstrapTenants(config.tenantsFile, manager, catalog, logger);
    } catch (error) {
      await router.stop();
      await fileChecks.close();
      catalog.close();
      dirLock.release();
      throw error;
    }
  }

  // Instruments come from whatever meter provider the entry point installed (a no-op one if none).
  const metrics = config.telemetry
    ? new ServerMetrics({ shards, storageBytes: () => table.totalStorageBytes() }, config.metricsPerTenant)
    : null;
  const observer = new RpcObserver(metrics, logger, (metadata) => auth.keyIdOf(metadata));
  const health = new HealthState(SERVICES);
  // In a cluster, a tenant being moved away has its writes fenced (cluster/moves.ts).
  let cluster: ClusterNode | null = null;
  const access = new Access(auth, registry, (tenantId) => cluster?.writeFenced(tenantId) ?? false);
  const definition = packageDefinition();
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    tenantd: { v1: Record<string, { service: grpc.ServiceDefinition }> };
    grpc: {
      health: { v1: { Health: { service: grpc.ServiceDefinition } } };
      reflection: Record<string, { ServerReflection: { service: grpc.ServiceDefinition } }>;
    };
  };
  // Every method also accepts a response already in protobuf bytes: the shards
  // answer SqlService calls that way, and a call passed on to another
  // cluster node comes back that way.
  const definitions: Record<string, grpc.ServiceDefinition> = Object.fromEntries(
    [
      ...Object.entries(loaded.tenantd.v1).flatMap(([name, value]) => (value?.service ? [[name, value.service] as const] : [])),
      ['Health', loaded.grpc.health.v1.Health.service] as const,
    ].map(([name, service]) => [name, acceptEncodedResponses(service)]),
  );
  if (config.cluster.etcd.length > 0) {
    try {
      const tls = config.tlsCert !== null;
      const credentials = channelCredentials(
        tls ? { tls: true, ca: config.cluster.tlsCa ?? config.tlsClientCa, cert: config.tlsCert, key: config.tlsKey } : {},
      );
      cluster = await ClusterNode.create({
        config: config.cluster,
        dataDir: config.dataDir,
        credentials: () => credentials,
        registry,
        manager,
        backups,
        auth,
        access,
        adminKey: () => adminKey.key,
        logger,
        definitions,
      });
    } catch (error) {
      await router.stop();
      await fileChecks.close();
      catalog.close();
      throw error;
    }
  }
  translateTransportStatuses();
  readVarintsWhole();
  watchUnreadableMetadata();
  resetUnfinishedRequests();
  // Transport limits and their reasons: grpc/transportOptions.ts and README "Transport limits".
  const server = new grpc.Server({
    ...transportOptions(),
    // channelz (grpc-js's introspection service, which tenantd does not serve) counts every call: ~2.5 % of the main thread (bench:sql --profile).
    'grpc.enable_channelz': 0,
    interceptors: [requestDeadlineInterceptor(config.requestReadTimeoutMs), malformedRequestInterceptor],
  });
  limitHeaderList(server);
  // Every service added from here on, reflection's too, decodes requests without throwing.
  addServicesMalformedSafe(server);
  const admitter = new Admitter(table);
  const tenantObserver = observer.service('tenantd.v1.TenantService');
  const admit = createAdmit(admitter, registry, metrics, { shards: config.shards, tracker: activity });
  const local: Record<string, Handlers> = {
    TenantService: {
      ...tenantService(access, manager, catalog, tenantObserver),
      ...usageService(access, manager, table, admitter, dataDir, tenantObserver),
      ...backupService(access, manager, backups, tenantObserver),
    },
    SqlService: sqlService(access, admit, router, migrator, observer.service('tenantd.v1.SqlService'), unread, {
      open: openTransactions,
      idleMs: config.transactionIdleMs,
    }),
    EventService: eventService(access, admit, router, hub, observer.service('tenantd.v1.EventService'), unread),
    SchemaService: schemaService(access, migrator, catalog, observer.service('tenantd.v1.SchemaService')),
    Health: health.handlers(observer.service('grpc.health.v1.Health')),
  };
  local.ClusterService = cluster
    ? cluster.serviceHandlers(observer.service('tenantd.v1.ClusterService'))
    : clusterDisabled(access, observer.service('tenantd.v1.ClusterService'));
  // Every call passes the cluster's router first: served here, passed to its tenant's owner, or fanned out.
  const fanout = cluster?.fanoutHandlers(local) ?? {};
  for (const [name, handlers] of Object.entries(local)) {
    const routed = cluster ? cluster.route(name, handlers, fanout) : { definition: definitions[name]!, handlers };
    server.addService(routed.definition, routed.handlers as grpc.UntypedServiceImplementation);
  }
  const descriptorIndex = new DescriptorIndex(splitDescriptorSet(descriptorSetBytes()), fileDescriptors());
  const served = [...SERVICES, 'tenantd.v1.ClusterService', 'grpc.health.v1.Health', ...REFLECTION_SERVICES];
  const reflection = reflectionService(descriptorIndex, served);
  for (const version of ['v1', 'v1alpha']) server.addService(loaded.grpc.reflection[version]!.ServerReflection.service, reflection);

  // Checked at config time too; read again here because the files may have changed since.
  const certs = config.tlsCert && config.tlsKey
    ? new ReloadingCertificates({ cert: config.tlsCert, key: config.tlsKey, clientCa: config.tlsClientCa }, logger)
    : null;
  const port = await new Promise<number>((resolvePort, reject) => {
    server.bindAsync(config.listen, certs ? grpcServerCredentials(certs) : grpc.ServerCredentials.createInsecure(), (error, boundPort) =>
      error ? reject(new Error(`cannot listen on ${config.listen}: ${error.message}`)) : resolvePort(boundPort),
    );
  });

  let http: HttpServer | null = null;
  let httpPort: number | null = null;
  if (config.metricsListen) {
    const started = await startHttpHealth(
      config.metricsListen,
      health,
      config.telemetry ? options.metricsHandler ?? null : null,
      config.metricsTls ? certs : null,
    );
    http = started.server;
    httpPort = started.port;
  }
  if (cluster) {
    try {
      await cluster.join(port);
    } catch (error) {
      server.forceShutdown();
      await cluster.stop().catch(() => undefined);
      await router.stop();
      await fileChecks.close();
      catalog.close();
      throw new Error(`cannot join the cluster: ${(error as Error).message}`, { cause: error });
    }
  }
  // Tenants left behind by a restart in the middle of a pass catch up in the background
  // (safe to leave: a pass never rejects, it logs its failure; shutdown awaits it).
  void migrator.startPass();
  logger.info('tenantd serving', {
    listen: config.listen,
    port,
    dataDir,
    shards: config.shards,
    sync: config.sync,
    tenants: registry.size,
    httpPort,
    node: cluster ? config.cluster.nodeId : undefined,
    tls: certs ? (certs.mutual ? 'mutual' : 'server') : 'off',
  });

  const interruptAll = (): void => {
    try {
      canceller.interruptAll();
    } catch (error) {
      logger.warn('could not interrupt running statements', { error: String(error) });
    }
  };
  let stopping: Promise<void> | null = null;
  const shutdown = (): Promise<void> => {
    stopping ??= (async () => {
      logger.info('draining', { drainTimeoutMs: config.drainTimeoutMs });
      health.setServing(false);
      health.endWatches();
      // Subscriptions never end on their own: end them so the drain can finish.
      hub.endAll('shutdown');
      // Open transactions would hold the drain until their idle limit: they roll back now.
      openTransactions.endAll();
      // Every other stream (Query, WatchUsage, BackupTenant, ...) ends now too, UNAVAILABLE: clients move on at once.
      observer.calls.endStreams();
      await new Promise<void>((done) => {
        const timer = setTimeout(() => {
          logger.warn('drain timed out; cancelling calls in flight', { open: observer.calls.size });
          // Interrupts their statements in the shards, and drops what is still queued there.
          observer.calls.cancelAll();
          for (const shard of shards) shard.cancelAll();
          interruptAll();
          server.forceShutdown();
          done();
        }, config.drainTimeoutMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          done();
        });
      });
      await migrator.stopped();
      await cluster?.stop().catch((error: unknown) => logger.warn('leaving the cluster failed', { error: String(error) }));
      await router.stop();
      // A VACUUM or integrity check still running would hold the exit for as long as it takes.
      fileChecks.interruptRunning();
      await fileChecks.close();
      metrics?.close();
      catalog.close();
      if (http) await new Promise((done) => http!.close(done));
      certs?.close();
      dirLock.release();
      logger.info('stopped');
    })();
    return stopping;
  };

  const reloadCertificates = (): boolean => certs?.reload('SIGHUP') ?? false;
  return { port, httpPort, adminKey, router, registry, health, reloadCertificates, callsInFlight: () => observer.calls.size, shutdown, interruptAll };
}
