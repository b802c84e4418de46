/**
 * `tenantd cluster ...`: the operator's commands for a cluster.
 *
 *   status [<tenant>]          nodes, slots per node, and where a tenant lives
 *   move <tenant> <node>       moves one tenant (an override of its slot)
 *   move-slots <node> <slot>…  moves whole slots to a node
 *   rebalance [--dry-run]      evens the live nodes out (and assigns free slots)
 *   drain <node>               moves every slot and tenant off a node
 *   sync-proxy                 keeps HAProxy's maps equal to the placement
 *
 * All but sync-proxy call any node (--address); the admin key comes from
 * TENANTD_ADMIN_KEY or --admin-key-file, never from a flag.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { etcdClient } from './etcdClient.ts';
import { serviceDefinition } from '../protoRoot.ts';
import { createLogger } from '../log.ts';
import { Placement } from './placement.ts';
import { ProxySync } from './haproxySync.ts';
import type { ProtoProgress } from './clusterService.ts';

export const CLUSTER_USAGE = `usage: tenantd cluster <command> [--address 127.0.0.1:7070] [--admin-key-file ./data/admin.key]
  status [<tenant>]
  move <tenant> <node>
  move-slots <node> <slot>...
  rebalance [--parallelism N] [--dry-run]
  drain <node> [--parallelism N]
  sync-proxy --etcd http://127.0.0.1:2379 --haproxy-socket 127.0.0.1:9999
             [--slots-map /usr/local/etc/haproxy/slots.map] [--tenants-map /usr/local/etc/haproxy/tenants.map]
             [--backends 8] [--write-files] [--once]`;

class UsageError extends Error {}

function clusterClient(address: string): grpc.Client & Record<string, (...args: unknown[]) => unknown> {
  const ClusterService = grpc.makeGenericClientConstructor(serviceDefinition('tenantd.v1.ClusterService'), 'ClusterService');
  return new ClusterService(address, grpc.credentials.createInsecure()) as never;
}

function adminKey(file: string): string {
  const fromEnv = process.env.TENANTD_ADMIN_KEY;
  if (fromEnv) return fromEnv.trim();
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (error) {
    throw new UsageError(`cannot read the admin key from ${file} (${(error as Error).message}); set TENANTD_ADMIN_KEY or --admin-key-file`);
  }
}

function stream(client: grpc.Client & Record<string, (...args: unknown[]) => unknown>, method: string, request: unknown, key: string): Promise<number> {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${key}`);
  return new Promise((resolve) => {
    const call = client[method]!(request, metadata) as grpc.ClientReadableStream<ProtoProgress>;
    call.on('data', (p: ProtoProgress) => {
      const parts = [p.subject, p.stage];
      if (p.slots_total > 0) parts.push(`${p.slots_done}/${p.slots_total} slots`);
      if (p.bytes !== '0') parts.push(`${p.bytes} bytes`);
      if (p.write_pause_ms !== '0') parts.push(`writes paused ${p.write_pause_ms} ms`);
      if (p.message) parts.push(p.message);
      process.stdout.write(`${parts.join('  ')}\n`);
    });
    call.on('error', (error: grpc.ServiceError) => {
      process.stderr.write(`${grpc.status[error.code]}: ${error.details}\n`);
      resolve(1);
    });
    call.on('end', () => resolve(0));
  });
}

export async function clusterCli(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        address: { type: 'string', default: '127.0.0.1:7070' },
        'admin-key-file': { type: 'string', default: './data/admin.key' },
        parallelism: { type: 'string', default: '4' },
        'dry-run': { type: 'boolean', default: false },
        etcd: { type: 'string' },
        'haproxy-socket': { type: 'string', default: '127.0.0.1:9999' },
        'slots-map': { type: 'string', default: '/usr/local/etc/haproxy/slots.map' },
        'tenants-map': { type: 'string', default: '/usr/local/etc/haproxy/tenants.map' },
        backends: { type: 'string', default: '8' },
        'write-files': { type: 'boolean', default: false },
        once: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (error) {
    process.stderr.write(`tenantd cluster: ${(error as Error).message}\n${CLUSTER_USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...args] = positionals;
  if (values.help || command === undefined) {
    process.stdout.write(`${CLUSTER_USAGE}\n`);
    return values.help ? 0 : 2;
  }
  try {
    if (command === 'sync-proxy') return await syncProxy(values);
    const key = adminKey(values['admin-key-file']);
    const client = clusterClient(values.address);
    const parallelism = Number(values.parallelism);
    if (!Number.isInteger(parallelism) || parallelism < 1 || parallelism > 64) throw new UsageError(`--parallelism: expected 1 to 64, got ${values.parallelism}`);
    try {
      switch (command) {
        case 'status':
          return await status(client, key, args[0] ?? '');
        case 'move':
          if (args.length !== 2) throw new UsageError('move takes <tenant> <node>');
          return await stream(client, 'MoveTenant', { tenant_id: args[0], target_node: args[1] }, key);
        case 'move-slots': {
          const [node, ...slots] = args;
          if (!node || slots.length === 0) throw new UsageError('move-slots takes <node> <slot>...');
          return await stream(client, 'MoveSlots', { target_node: node, slots: slots.map(Number) }, key);
        }
        case 'rebalance':
          return await stream(client, 'Rebalance', { parallelism, dry_run: values['dry-run'] }, key);
        case 'drain':
          if (args.length !== 1) throw new UsageError('drain takes <node>');
          return await stream(client, 'Rebalance', { drain_node: args[0], parallelism, dry_run: values['dry-run'] }, key);
        default:
          throw new UsageError(`unknown cluster command ${JSON.stringify(command)}`);
      }
    } finally {
      client.close();
    }
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`tenantd cluster: ${error.message}\n${CLUSTER_USAGE}\n`);
      return 2;
    }
    throw error;
  }
}

function status(client: grpc.Client & Record<string, (...args: unknown[]) => unknown>, key: string, tenantId: string): Promise<number> {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${key}`);
  return new Promise((resolve) => {
    client.GetPlacement!({ tenant_id: tenantId }, metadata, (error: grpc.ServiceError | null, p: {
      node_id: string;
      nodes: { node_id: string; grpc_address: string; slots: number }[];
      unassigned_slots: number;
      overrides: number;
      slot: number;
      owner: string;
      epoch: string;
      revision: string;
    }) => {
      if (error) {
        process.stderr.write(`${grpc.status[error.code]}: ${error.details}\n`);
        return resolve(1);
      }
      for (const n of p.nodes) process.stdout.write(`${n.node_id}\t${n.grpc_address}\t${n.slots} slots\n`);
      process.stdout.write(`unassigned slots: ${p.unassigned_slots}; tenants moved alone: ${p.overrides}; etcd revision ${p.revision} (as node ${p.node_id} sees it)\n`);
      if (tenantId) process.stdout.write(`tenants/${tenantId}: slot ${p.slot}, owner ${p.owner || '(none)'}, epoch ${p.epoch}\n`);
      resolve(0);
    });
  });
}

async function syncProxy(values: Record<string, string | boolean | undefined>): Promise<number> {
  const endpoints = String(values.etcd ?? process.env.TENANTD_CLUSTER_ETCD ?? '').split(',').filter(Boolean);
  if (endpoints.length === 0) throw new UsageError('sync-proxy needs --etcd (or TENANTD_CLUSTER_ETCD)');
  const backends = Number(values.backends);
  if (!Number.isInteger(backends) || backends < 1 || backends > 1024) throw new UsageError(`--backends: expected 1 to 1024, got ${values.backends}`);
  const logger = createLogger('info');
  const etcd = etcdClient(endpoints);
  const placement = new Placement(etcd);
  await placement.start();
  const sync = new ProxySync(placement, {
    socket: String(values['haproxy-socket']),
    slotsMap: String(values['slots-map']),
    tenantsMap: String(values['tenants-map']),
    backends,
    writeFiles: values['write-files'] === true,
    onLog: (level, msg, fields) => logger[level](msg, fields),
  });
  if (values.once) {
    const { changed } = await sync.sync();
    process.stdout.write(`proxy routing in sync (${changed} changes)\n`);
    await placement.stop();
    etcd.close();
    return 0;
  }
  sync.follow();
  logger.info('following the placement', { etcd: endpoints, socket: values['haproxy-socket'] });
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await placement.stop();
  etcd.close();
  return 0;
}
