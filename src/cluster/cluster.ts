/**
 * A node's part in a cluster (`serve --cluster-etcd ...`): the placement it
 * follows, its lease, the router in front of every service, the admin
 * fan-out, and moves. Started in two steps: `create` loads the placement
 * before the server binds (so the first call is routed), `join` registers
 * the node once its port is known.
 */
import * as grpc from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';
import { etcdClient } from './etcdClient.ts';
import type { ClusterConfig } from '../config.ts';
import type { Logger } from '../log.ts';
import type { Access } from '../grpc/access.ts';
import type { Authenticator } from '../auth/authenticator.ts';
import type { ServiceObserver } from '../grpc/rpcObserver.ts';
import type { Backups } from '../tenants/backups.ts';
import type { TenantManager } from '../tenants/manager.ts';
import type { TenantRegistry } from '../tenants/registry.ts';
import { clusterService } from './clusterService.ts';
import { FanOut } from './fanout.ts';
import { Forwarder, type MethodDefinition } from './forward.ts';
import { Membership } from './membership.ts';
import { OrphanSweeper } from './orphans.ts';
import { GrpcTenantTransport, MoveFences, Mover, type MoveReport } from './moves.ts';
import { Placement, type NodeInfo } from './placement.ts';
import { Rebalancer, type RemoteMoves } from './rebalance.ts';
import { ClusterRouter, type HandlerMap } from './route.ts';
import { StagedCopies } from './staging.ts';

export interface ClusterDeps {
  config: ClusterConfig;
  dataDir: string;
  /** How this node reaches the others: TLS when it serves TLS itself. */
  credentials: () => grpc.ChannelCredentials;
  registry: TenantRegistry;
  manager: TenantManager;
  backups: Backups;
  auth: Authenticator;
  access: Access;
  adminKey: () => string;
  logger: Logger;
  /** The services' definitions, by short name (TenantService, SqlService, ..., ClusterService). */
  definitions: Record<string, grpc.ServiceDefinition>;
}

export class ClusterNode {
  readonly fences = new MoveFences();
  private readonly staged = new StagedCopies();
  private readonly etcd: Etcd3;
  readonly placement: Placement;
  private membership!: Membership;
  private readonly forwarder: Forwarder;
  private router!: ClusterRouter;
  private readonly fanout: FanOut;
  private mover!: Mover;
  private orphans!: OrphanSweeper;
  private transport!: GrpcTenantTransport;
  private self: NodeInfo = { id: '', grpc: '', internal: '' };

  private constructor(private readonly d: ClusterDeps) {
    this.etcd = etcdClient(d.config.etcd);
    this.placement = new Placement(this.etcd);
    this.forwarder = new Forwarder(d.config.nodeId, d.credentials);
    this.fanout = new FanOut(this.placement, this.forwarder, d.access, d.credentials);
  }

  static async create(d: ClusterDeps): Promise<ClusterNode> {
    const node = new ClusterNode(d);
    try {
      await node.placement.start();
    } catch (error) {
      node.etcd.close();
      throw new Error(`cannot read the cluster placement from etcd (${d.config.etcd.join(', ')}): ${(error as Error).message}`, { cause: error });
    }
    node.build();
    return node;
  }

  private build(): void {
    const { config, registry, manager, backups, auth, logger, definitions } = this.d;
    const log = (level: 'info' | 'warn', msg: string, fields: Record<string, unknown> = {}) => logger[level](msg, { node: config.nodeId, ...fields });
    this.placement.on('resync', (why: string) => log('warn', 'placement read again from etcd', { why }));
    this.membership = new Membership(this.etcd, this.placement, this.self, { ttlSeconds: config.leaseTtlSeconds, onLog: log });
    this.router = new ClusterRouter({
      self: config.nodeId,
      placement: this.placement,
      membership: this.membership,
      forwarder: this.forwarder,
      fences: this.fences,
      auth,
    });
    const receive = definitions.ClusterService!.ReceiveTenant as MethodDefinition;
    this.transport = new GrpcTenantTransport(receive, this.d.adminKey, this.d.credentials);
    this.mover = new Mover({
      self: config.nodeId,
      etcd: this.etcd,
      placement: this.placement,
      fences: this.fences,
      registry,
      manager,
      backups,
      transport: this.transport,
      graceMs: config.moveGraceMs,
      onLog: log,
    });
    this.orphans = new OrphanSweeper({
      self: config.nodeId,
      dataDir: this.d.dataDir,
      placement: this.placement,
      membership: this.membership,
      fences: this.fences,
      registry,
      manager,
      graceMs: config.orphanGraceMs,
      onLog: log,
    });
  }

  /** ClusterService's handlers. */
  serviceHandlers(observer: ServiceObserver): HandlerMap {
    const remote = this.remoteMoves();
    return clusterService(
      {
        self: this.d.config.nodeId,
        access: this.d.access,
        placement: this.placement,
        mover: this.mover,
        rebalancer: new Rebalancer(this.etcd, this.placement, remote, this.d.config.nodeId),
        manager: this.d.manager,
        backups: this.d.backups,
        fences: this.fences,
        staged: this.staged,
        onLog: (level, msg, fields = {}) => this.d.logger[level](msg, { node: this.d.config.nodeId, ...fields }),
      },
      observer,
    ) as HandlerMap;
  }

  /** One service's definition and handlers, routed: what goes to server.addService. */
  route(name: string, handlers: HandlerMap, fanoutHandlers: Record<string, HandlerMap>): { definition: grpc.ServiceDefinition; handlers: HandlerMap } {
    const definition = this.d.definitions[name]!;
    if (name === 'Health') return { definition, handlers };
    return { definition, handlers: this.router.wrap(definition, handlers, fanoutHandlers[name] ?? {}) };
  }

  fanoutHandlers(local: Record<string, HandlerMap>): Record<string, HandlerMap> {
    return this.fanout.handlers(this.d.definitions, local);
  }

  writeFenced(tenantId: string): boolean {
    return this.fences.writeFenced(tenantId);
  }

  /** Registers this node under its lease, once the server listens on `port`. */
  async join(port: number): Promise<void> {
    const { config } = this.d;
    const fill = (address: string | null) => (address ?? `127.0.0.1:${port}`).replace(/:0$/, `:${port}`);
    this.self.id = config.nodeId;
    this.self.grpc = fill(config.advertise);
    this.self.internal = config.internalAdvertise ? fill(config.internalAdvertise) : this.self.grpc;
    await this.membership.start();
    this.orphans.start();
  }

  private remoteMoves(): RemoteMoves {
    const cluster = this.d.definitions.ClusterService!;
    const call = (source: NodeInfo, method: string, request: unknown, onProgress: (r: MoveReport) => void): Promise<void> => {
      if (source.id === this.d.config.nodeId) {
        return method === 'MoveSlots'
          ? this.mover.moveSlots((request as { slots: number[] }).slots, (request as { target_node: string }).target_node, onProgress)
          : this.mover.moveTenant((request as { tenant_id: string }).tenant_id, (request as { target_node: string }).target_node, onProgress);
      }
      const definition = cluster[method] as MethodDefinition;
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${this.d.adminKey()}`);
      const client = new grpc.Client(source.internal, this.d.credentials());
      return new Promise<void>((resolve, reject) => {
        const stream = client.makeServerStreamRequest(definition.path, definition.requestSerialize, definition.responseDeserialize, request, metadata);
        stream.on('data', (p: { subject: string; stage: string; message: string; bytes: string; write_pause_ms: string }) =>
          onProgress({ subject: p.subject, stage: p.stage, message: p.message, bytes: Number(p.bytes), writePauseMs: Number(p.write_pause_ms) }),
        );
        stream.on('error', (error) => {
          client.close();
          reject(error);
        });
        stream.on('end', () => {
          client.close();
          resolve();
        });
      });
    };
    return {
      moveSlots: (source, slots, target, onProgress) => call(source, 'MoveSlots', { slots, target_node: target }, onProgress),
      moveTenant: (source, tenantId, target, onProgress) => call(source, 'MoveTenant', { tenant_id: tenantId, target_node: target }, onProgress),
    };
  }

  async stop(): Promise<void> {
    this.mover.stop();
    this.orphans.stop();
    this.staged.stop();
    await this.membership.stop();
    await this.placement.stop();
    this.forwarder.close();
    this.fanout.close();
    this.transport.close();
    this.etcd.close();
  }
}

