/**
 * The cluster's front door on every node: each call is served here when this
 * node owns its tenant, passed on to the owner when another node does, and
 * answered UNAVAILABLE with RetryInfo when no live node does. Admin calls
 * about every tenant fan out (fanout.ts). A stale proxy map therefore costs
 * one hop, never a wrong answer.
 *
 * Which tenant a call is about: `x-tenant-id` when sent (required behind the
 * proxy for tenant keys, whose tenant only the owner's catalog knows), else
 * the tenant named in the request (`tenant_id`, `name`, `parent`).
 *
 * While a tenant is being moved away, its calls meet its MoveFence
 * (moves.ts): held for the moment its writes in flight drain, then reads go
 * on here while writes wait, in order, to be passed to the new owner (or run
 * here again if the move is rolled back).
 */
import * as grpc from '@grpc/grpc-js';
import { TenantdError, toServiceError } from '../errors.ts';
import type { Authenticator } from '../auth/authenticator.ts';
import { TENANT_ID_PATTERN } from '../tenants/manager.ts';
import { Forwarder, HOP_HEADER, type MethodDefinition } from './forward.ts';
import type { Membership } from './membership.ts';
import type { MoveFences } from './moves.ts';
import type { Placement } from './placement.ts';
import { slotOf } from './slots.ts';

type Handler = grpc.UntypedHandleCall;
export type HandlerMap = Record<string, Handler>;

/** How long a caller should wait before trying again when placement is settling. */
const RETRY_PLACEMENT_MS = 250;

/**
 * Methods that may change a tenant's data or catalog rows: refused by a node
 * whose lease is stale (it may no longer own the tenant), and held while the
 * tenant is being moved.
 */
const WRITES = new Set([
  'Execute',
  'Batch',
  'Query',
  'Transaction',
  'Append',
  'CreateTenant',
  'UpdateTenant',
  'SuspendTenant',
  'ActivateTenant',
  'DeleteTenant',
  'CreateApiKey',
  'RevokeApiKey',
  'RestoreTenant',
  'RunMaintenance',
]);

/**
 * Always answered by the node called: they are about the cluster, not one
 * tenant, or are the node-to-node half of a move (ReceiveTenant names the
 * tenant it brings, which the receiver does not own yet).
 */
const LOCAL_ONLY = new Set(['GetPlacement', 'Rebalance', 'MoveSlots', 'ReceiveTenant', 'Check', 'Watch']);

/** Methods that run while a tenant's writes are fenced; a write they attempt is refused READ_ONLY and held. */
const FENCED_READS = new Set(['Execute', 'Batch']);

export interface ClusterRouterOptions {
  self: string;
  placement: Placement;
  membership: Membership;
  forwarder: Forwarder;
  fences: MoveFences;
  auth: Authenticator;
}

function tenantFromRequest(request: unknown): string | null {
  if (typeof request !== 'object' || request === null) return null;
  const r = request as Record<string, unknown>;
  if (typeof r.tenant_id === 'string' && r.tenant_id !== '') return r.tenant_id;
  for (const field of [r.name, r.parent, (r.tenant as Record<string, unknown> | undefined)?.name]) {
    if (typeof field !== 'string') continue;
    const match = /^tenants\/([^/]+)/.exec(field);
    if (match && match[1] !== '-') return match[1]!;
  }
  return null;
}

function headerTenant(metadata: grpc.Metadata): string | null {
  const values = metadata.get('x-tenant-id');
  return values.length > 0 && typeof values[0] === 'string' ? values[0] : null;
}

function fail(error: TenantdError, method: string): Partial<grpc.ServiceError> {
  return toServiceError(error, { method });
}

type Decision =
  | { kind: 'local' }
  | { kind: 'forward'; address: string }
  | { kind: 'hold' }
  | { kind: 'fenced-read' }
  | { kind: 'error'; error: TenantdError };

export class ClusterRouter {
  constructor(private readonly o: ClusterRouterOptions) {}

  /** Where a call about `tenantId` goes, as this node sees placement now. */
  decide(method: string, metadata: grpc.Metadata, tenantId: string | null): Decision {
    if (tenantId === null || !TENANT_ID_PATTERN.test(tenantId)) return { kind: 'local' };
    const fence = this.o.fences.get(tenantId);
    // 'copying' (phase 1 of a two-phase move): served here as usual.
    if (fence && fence.state !== 'copying') {
      if (fence.state === 'draining') return { kind: 'hold' };
      if (fence.state === 'fenced') {
        if (FENCED_READS.has(method)) return { kind: 'fenced-read' };
        return WRITES.has(method) ? { kind: 'hold' } : { kind: 'local' };
      }
      // 'moved': the new owner serves it, whatever this node's cache says yet.
      return { kind: 'forward', address: fence.targetAddress };
    }
    const owner = this.o.placement.ownerOf(tenantId);
    // A new tenant in a slot being moved waits for the slot's new owner.
    if ((method === 'CreateTenant' || method === 'RestoreTenant') && owner && this.o.fences.slotMoving(owner.slot)) return { kind: 'hold' };
    if (owner === null) {
      return {
        kind: 'error',
        error: new TenantdError(grpc.status.UNAVAILABLE, 'OWNER_UNKNOWN', `no node owns tenants/${tenantId} yet (its slot ${this.slotOf(tenantId)} is unassigned)`, {
          retryDelayMs: 1000,
          metadata: { tenant: tenantId },
        }),
      };
    }
    if (owner.node === this.o.self) {
      if (WRITES.has(method) && !this.o.membership.fresh()) {
        return {
          kind: 'error',
          error: new TenantdError(
            grpc.status.UNAVAILABLE,
            'NODE_FENCED',
            `this node's cluster lease was last renewed ${this.o.membership.staleForMs()} ms ago; it takes no writes until it is renewed`,
            { retryDelayMs: 1000, metadata: { node: this.o.self } },
          ),
        };
      }
      return { kind: 'local' };
    }
    const hop = metadata.get(HOP_HEADER);
    // Passed on by a node that has seen a flip this node has not: a tenant just moved here.
    if (hop.length > 0 && this.o.fences.adoptedEpoch(tenantId, owner.epoch, false) !== undefined) return { kind: 'local' };
    if (hop.length > 0) {
      // The sender thinks this node owns the tenant; one of the two caches is behind.
      return {
        kind: 'error',
        error: new TenantdError(grpc.status.UNAVAILABLE, 'PLACEMENT_CHANGING', `tenants/${tenantId} is changing owner; retry`, {
          retryDelayMs: RETRY_PLACEMENT_MS,
          metadata: { tenant: tenantId, from: String(hop[0]), owner: owner.node },
        }),
      };
    }
    if (owner.info === null) {
      return {
        kind: 'error',
        error: new TenantdError(grpc.status.UNAVAILABLE, 'OWNER_DOWN', `node ${owner.node}, which owns tenants/${tenantId}, is not live`, {
          retryDelayMs: 1000,
          metadata: { tenant: tenantId, owner: owner.node },
        }),
      };
    }
    return { kind: 'forward', address: owner.info.grpc };
  }

  private slotOf(tenantId: string): number {
    return slotOf(tenantId);
  }

  /** The handlers of one service, routed. `fanout` handlers replace the local ones outright. */
  wrap(definition: grpc.ServiceDefinition, handlers: HandlerMap, fanout: HandlerMap = {}): HandlerMap {
    const wrapped: HandlerMap = {};
    for (const [name, method] of Object.entries(definition) as [string, MethodDefinition][]) {
      const local = handlers[name];
      if (!local) continue;
      if (fanout[name]) {
        wrapped[name] = fanout[name];
        continue;
      }
      if (LOCAL_ONLY.has(name)) {
        wrapped[name] = local;
        continue;
      }
      if (!method.requestStream && !method.responseStream) wrapped[name] = this.unary(name, method, local as never);
      else if (!method.requestStream) wrapped[name] = this.serverStream(name, method, local as never);
      else if (!method.responseStream) wrapped[name] = this.clientStream(name, method, local as never);
      else wrapped[name] = this.bidi(name, method, local as never);
    }
    return wrapped;
  }

  private unary(
    name: string,
    method: MethodDefinition,
    local: (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => void,
  ): Handler {
    const run = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>): void => {
      const tenantId = headerTenant(call.metadata) ?? tenantFromRequest(call.request);
      const decision = this.decide(name, call.metadata, tenantId);
      switch (decision.kind) {
        case 'local':
          return local(call, callback);
        case 'forward':
          return this.o.forwarder.unary(decision.address, method, call, callback);
        case 'error':
          return callback(fail(decision.error, name));
        case 'hold':
          return this.hold(tenantId!, name, () => run(call, callback), (error) => callback(fail(error, name)));
        case 'fenced-read':
          // Runs with the tenant's writes refused; a refused write waits for the move like any other.
          return local(call, (error, ...rest) => {
            if (error && error.code === grpc.status.PERMISSION_DENIED && !this.readOnlyKey(call.metadata)) {
              this.hold(tenantId!, name, () => run(call, callback), (e) => callback(fail(e, name)));
              return;
            }
            callback(error, ...rest);
          });
      }
    };
    return run as Handler;
  }

  private serverStream(
    name: string,
    method: MethodDefinition,
    local: (call: grpc.ServerWritableStream<unknown, unknown>) => void,
  ): Handler {
    const run = (call: grpc.ServerWritableStream<unknown, unknown>): void => {
      const tenantId = headerTenant(call.metadata) ?? tenantFromRequest(call.request);
      const decision = this.decide(name, call.metadata, tenantId);
      switch (decision.kind) {
        case 'local':
          return local(call);
        case 'forward':
          return this.o.forwarder.serverStream(decision.address, method, call);
        case 'error':
          call.emit('error', fail(decision.error, name));
          return;
        case 'hold':
        case 'fenced-read':
          return this.hold(tenantId!, name, () => run(call), (error) => call.emit('error', fail(error, name)));
      }
    };
    return run as Handler;
  }

  /** Client streams name their tenant in x-tenant-id or in their first message (RestoreTenant's header). */
  private clientStream(
    name: string,
    method: MethodDefinition,
    local: (call: grpc.ServerReadableStream<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => void,
  ): Handler {
    return ((call: grpc.ServerReadableStream<unknown, unknown>, callback: grpc.sendUnaryData<unknown>): void => {
      const tenantId = headerTenant(call.metadata);
      const decision = this.decide(name, call.metadata, tenantId);
      switch (decision.kind) {
        case 'forward':
          return this.o.forwarder.clientStream(decision.address, method, call, [], callback);
        case 'error':
        case 'hold':
        case 'fenced-read':
          // A stream cannot be held without buffering what it sends; the client retries.
          return callback(
            fail(
              decision.kind === 'error'
                ? decision.error
                : new TenantdError(grpc.status.UNAVAILABLE, 'TENANT_MOVING', `tenants/${tenantId} is being moved; retry`, { retryDelayMs: 500 }),
              name,
            ),
          );
        case 'local':
          return local(call, callback);
      }
    }) as Handler;
  }

  private bidi(name: string, method: MethodDefinition, local: (call: grpc.ServerDuplexStream<unknown, unknown>) => void): Handler {
    return ((call: grpc.ServerDuplexStream<unknown, unknown>): void => {
      const tenantId = headerTenant(call.metadata);
      const decision = this.decide(name, call.metadata, tenantId);
      switch (decision.kind) {
        case 'forward':
          return this.o.forwarder.bidi(decision.address, method, call);
        case 'error':
        case 'hold':
        case 'fenced-read':
          call.emit(
            'error',
            fail(
              decision.kind === 'error'
                ? decision.error
                : new TenantdError(grpc.status.UNAVAILABLE, 'TENANT_MOVING', `tenants/${tenantId} is being moved; retry`, { retryDelayMs: 500 }),
              name,
            ),
          );
          return;
        case 'local':
          return local(call);
      }
    }) as Handler;
  }

  private hold(tenantId: string, method: string, retry: () => void, refuse: (error: TenantdError) => void): void {
    if (!this.o.fences.hold(tenantId, retry)) {
      refuse(
        new TenantdError(grpc.status.UNAVAILABLE, 'TENANT_MOVING', `tenants/${tenantId} is being moved and too many calls wait for it; retry`, {
          retryDelayMs: 500,
          metadata: { tenant: tenantId, method },
        }),
      );
    }
  }

  private readOnlyKey(metadata: grpc.Metadata): boolean {
    try {
      return this.o.auth.authenticate(metadata).role === 'READ_ONLY';
    } catch {
      return true;
    }
  }
}
