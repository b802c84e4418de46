/**
 * Admin calls about every tenant, answered for the whole cluster by any
 * node: the call goes to every live node (this one included, over loopback
 * like the others, marked with the hop header so it runs there as a plain
 * single-node call) and the answers are merged.
 *
 *   ListTenants      a merge of every node's page, in tenant id order; a
 *                    tenant counts only on the node that owns it (a moved
 *                    tenant's old copy, kept for a grace period, does not)
 *   ApplyMigration   applied on every node; the answer sums their progress
 *   GetMigration     the sum of every node's progress
 *   ListMigrations   the called node's list, with progress summed
 *   RunMaintenance   `tenants/-` streams every node's lines, numbered anew
 */
import * as grpc from '@grpc/grpc-js';
import { TenantdError, toServiceError } from '../errors.ts';
import type { Access } from '../grpc/access.ts';
import { decodePageToken, encodePageToken } from '../grpc/tenantMessages.ts';
import { HOP_HEADER, relayError, type Forwarder, type MethodDefinition } from './forward.ts';
import type { NodeInfo, Placement } from './placement.ts';
import type { HandlerMap } from './route.ts';

type Unary = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => void;
type ServerStream = (call: grpc.ServerWritableStream<unknown, unknown>) => void;

interface ProtoMigration {
  state: string;
  tenants_done: string;
  tenants_pending: string;
  tenants_failed: string;
  failures: { tenant: string; error: string }[];
  [field: string]: unknown;
}

const MAX_FAILURES = 100;

export class FanOut {
  private readonly clients = new Map<string, grpc.Client>();

  constructor(
    private readonly placement: Placement,
    private readonly forwarder: Forwarder,
    private readonly access: Access,
    private readonly credentials: () => grpc.ChannelCredentials = () => grpc.credentials.createInsecure(),
  ) {}

  private client(address: string): grpc.Client {
    let client = this.clients.get(address);
    if (!client) this.clients.set(address, (client = new grpc.Client(address, this.credentials())));
    return client;
  }

  private nodes(): NodeInfo[] {
    const nodes = this.placement.liveNodes();
    if (nodes.length === 0) throw new TenantdError(grpc.status.UNAVAILABLE, 'NO_LIVE_NODES', 'no live node in the cluster', { retryDelayMs: 1000 });
    return nodes;
  }

  private callAll(method: MethodDefinition, call: grpc.ServerUnaryCall<unknown, unknown>, request = call.request): Promise<{ node: NodeInfo; response: unknown }[]> {
    const metadata = this.forwarder.outgoingMetadata(call.metadata);
    const deadline = call.getDeadline();
    return Promise.all(
      this.nodes().map(
        (node) =>
          new Promise<{ node: NodeInfo; response: unknown }>((resolve, reject) => {
            this.client(node.grpc).makeUnaryRequest(
              method.path,
              method.requestSerialize,
              method.responseDeserialize,
              request,
              metadata,
              deadline instanceof Date || Number.isFinite(deadline) ? { deadline } : {},
              (error, response) => (error ? reject(error) : resolve({ node, response })),
            );
          }),
      ),
    );
  }

  /** Runs `fanout` unless the call was already fanned out to this node, then it is a local call. */
  private unary(method: MethodDefinition, local: Unary, fanout: (call: grpc.ServerUnaryCall<unknown, unknown>) => Promise<unknown>): Unary {
    return (call, callback) => {
      if (call.metadata.get(HOP_HEADER).length > 0) return local(call, callback);
      try {
        // Refused here, before it costs every node a call.
        this.access.admin(call.metadata);
      } catch (error) {
        return callback(toServiceError(error, { method: method.path }));
      }
      fanout(call).then(
        (response) => callback(null, response),
        (error: unknown) => callback(isServiceError(error) ? relayError(error) : toServiceError(error, { method: method.path })),
      );
    };
  }

  handlers(definitions: Record<string, grpc.ServiceDefinition>, local: Record<string, HandlerMap>): Record<string, HandlerMap> {
    const tenants = definitions.TenantService!;
    const schema = definitions.SchemaService!;
    const out: Record<string, HandlerMap> = { TenantService: {}, SchemaService: {} };

    out.TenantService!.ListTenants = this.unary(tenants.ListTenants as MethodDefinition, local.TenantService!.ListTenants as Unary, async (call) => {
      const request = call.request as { page_size: number; page_token: string };
      const size = request.page_size > 0 ? Math.min(request.page_size, 1000) : 100;
      decodePageToken(request.page_token);
      const answers = await this.callAll(tenants.ListTenants as MethodDefinition, call, { ...request, page_size: size });
      const merged: { tenant_id: string }[] = [];
      let more = false;
      for (const { node, response } of answers) {
        const page = response as { tenants: { tenant_id: string }[]; next_page_token: string };
        if (page.next_page_token !== '') more = true;
        for (const tenant of page.tenants) if (this.placement.ownerOf(tenant.tenant_id)?.node === node.id) merged.push(tenant);
      }
      merged.sort((a, b) => (a.tenant_id < b.tenant_id ? -1 : a.tenant_id > b.tenant_id ? 1 : 0));
      const page = merged.slice(0, size);
      return {
        tenants: page,
        next_page_token: merged.length > size || (more && page.length > 0) ? encodePageToken(page.at(-1)!.tenant_id) : '',
      };
    }) as never;

    for (const name of ['ApplyMigration', 'GetMigration'] as const) {
      out.SchemaService![name] = this.unary(schema[name] as MethodDefinition, local.SchemaService![name] as Unary, async (call) => {
        const answers = await this.callAll(schema[name] as MethodDefinition, call);
        return sumMigrations(answers.map((a) => a.response as ProtoMigration));
      }) as never;
    }

    out.SchemaService!.ListMigrations = this.unary(schema.ListMigrations as MethodDefinition, local.SchemaService!.ListMigrations as Unary, async (call) => {
      const answers = await this.callAll(schema.ListMigrations as MethodDefinition, call);
      const lists = answers.map((a) => a.response as { migrations: ProtoMigration[]; next_page_token: string });
      const first = lists[0]!;
      return {
        next_page_token: first.next_page_token,
        migrations: first.migrations.map((m, i) => sumMigrations(lists.map((l) => l.migrations[i] ?? m))),
      };
    }) as never;

    const localMaintenance = local.TenantService!.RunMaintenance as ServerStream;
    const maintenance = tenants.RunMaintenance as MethodDefinition;
    out.TenantService!.RunMaintenance = ((call: grpc.ServerWritableStream<unknown, unknown>) => {
      const request = call.request as { name: string };
      if (call.metadata.get(HOP_HEADER).length > 0 || request.name !== 'tenants/-') return localMaintenance(call);
      try {
        this.access.admin(call.metadata);
        this.fanMaintenance(maintenance, call);
      } catch (error) {
        call.emit('error', toServiceError(error, { method: maintenance.path }));
      }
    }) as never;
    return out;
  }

  /** Every node's progress lines, in the order they come, with done/total counted across the cluster. */
  private fanMaintenance(method: MethodDefinition, call: grpc.ServerWritableStream<unknown, unknown>): void {
    const nodes = this.nodes();
    const metadata = this.forwarder.outgoingMetadata(call.metadata);
    const totals = new Map<string, number>();
    let done = 0;
    let open = nodes.length;
    let failed: grpc.ServiceError | null = null;
    const streams = nodes.map((node) => {
      const stream = this.client(node.grpc).makeServerStreamRequest(method.path, method.requestSerialize, method.responseDeserialize, call.request, metadata);
      stream.on('data', (line: { done: string; total: string }) => {
        totals.set(node.id, Number(line.total));
        done += 1;
        const total = [...totals.values()].reduce((a, b) => a + b, 0);
        call.write({ ...line, done: String(done), total: String(Math.max(total, done)) });
      });
      stream.on('error', (error: grpc.ServiceError) => (failed ??= error));
      stream.on('close', () => {
        if (--open > 0) return;
        if (failed) call.emit('error', relayError(failed));
        else call.end();
      });
      return stream;
    });
    call.on('cancelled', () => streams.forEach((s) => s.cancel()));
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
  }
}

function isServiceError(error: unknown): error is grpc.ServiceError {
  return typeof error === 'object' && error !== null && 'code' in error && 'metadata' in error && !(error instanceof TenantdError);
}

const STATE_RANK: Record<string, number> = { RUNNING: 3, FAILED: 2, SUCCEEDED: 1, VALIDATED: 0 };

function sumMigrations(all: ProtoMigration[]): ProtoMigration {
  const first = all[0]!;
  const sum = (field: 'tenants_done' | 'tenants_pending' | 'tenants_failed') => String(all.reduce((s, m) => s + Number(m[field]), 0));
  return {
    ...first,
    // Running while any node runs it; failed once all are done and any failed.
    state: all.reduce((s, m) => ((STATE_RANK[m.state] ?? 0) > (STATE_RANK[s] ?? 0) ? m.state : s), first.state),
    tenants_done: sum('tenants_done'),
    tenants_pending: sum('tenants_pending'),
    tenants_failed: sum('tenants_failed'),
    failures: all.flatMap((m) => m.failures).slice(0, MAX_FAILURES),
  };
}
