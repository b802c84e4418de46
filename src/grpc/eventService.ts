/**
 * tenantd.v1.EventService: an append-only event log per tenant, kept in the
 * tenant's own database (`_tenantd_events`, out of reach of tenant SQL).
 * Append and Read are ordinary admitted calls; Subscribe is admitted page by
 * page while it reads the backlog, then receives what Append publishes on
 * this thread once its shard has committed (events/hub.ts).
 */
import { checkRequestId } from './requestId.ts';
import { status as Status, type ServerUnaryCall, type ServerWritableStream } from '@grpc/grpc-js';
import { TenantdError, invalidArgument } from '../errors.ts';
import { MAX_PENDING_BYTES, MAX_PENDING_EVENTS, MAX_SUBSCRIBERS_PER_TENANT, type EventHub, type Subscriber, type SubscriptionEnd } from '../events/hub.ts';
import type { LogEvent, NewEvent } from '../protocol.ts';
import type { ShardRouter } from '../routing/shardRouter.ts';
import type { Access, TenantCall } from './access.ts';
import type { Admit } from './admit.ts';
import type { UnreadBudget } from './queryOutlet.ts';
import { serverStream, unary, whenWritable, type Handlers } from './handlers.ts';
import { callLimits } from './limits.ts';
import type { ObservedCall, ServiceObserver } from './rpcObserver.ts';
import { timestamp, type ProtoTimestamp } from './tenantMessages.ts';

const MAX_EVENTS_PER_APPEND = 1_000;
const MAX_TYPE_LENGTH = 200;
const MAX_DATA_BYTES = 1024 * 1024;
const MAX_METADATA_ENTRIES = 64;
const MAX_METADATA_KEY = 128;
const MAX_METADATA_VALUE = 1_024;
const DEFAULT_READ_LIMIT = 100;
const MAX_READ_LIMIT = 1_000;
const MAX_TYPE_FILTERS = 100;
/** Events a Subscribe reads per page of its backlog. */
const BACKLOG_PAGE = 1_000;

interface ProtoEvent {
  position: string;
  type: string;
  data: Buffer;
  metadata: Record<string, string>;
  time: ProtoTimestamp | null;
}

function toProto(event: LogEvent): ProtoEvent {
  return { position: event.position.toString(), type: event.type, data: Buffer.from(event.data), metadata: event.metadata, time: timestamp(event.time) };
}

function timeOf(time: ProtoTimestamp | null, field: string): number {
  if (!time) return Date.now();
  const ms = Number(time.seconds) * 1000 + Math.floor((time.nanos ?? 0) / 1e6);
  if (!Number.isSafeInteger(ms) || ms < 0) throw invalidArgument(field, 'a time from 1970 on');
  return ms;
}

function position(value: string | undefined, field: string): bigint {
  try {
    return BigInt(value ?? '0');
  } catch {
    throw invalidArgument(field, `not an integer: ${JSON.stringify(String(value).slice(0, 40))}`);
  }
}

function checkTypes(types: readonly string[], field: string): string[] {
  if (types.length > MAX_TYPE_FILTERS) throw invalidArgument(field, `at most ${MAX_TYPE_FILTERS} types`);
  types.forEach((type, i) => {
    if (type.length === 0 || type.length > MAX_TYPE_LENGTH) throw invalidArgument(`${field}[${i}]`, `1 to ${MAX_TYPE_LENGTH} characters`);
  });
  return [...types];
}

/** An Append's events, checked, with the bytes they write (for write_bytes_per_second). */
function newEvents(events: readonly ProtoEvent[]): { events: NewEvent[]; bytes: number } {
  if (events.length === 0 || events.length > MAX_EVENTS_PER_APPEND) {
    throw invalidArgument('events', `from 1 to ${MAX_EVENTS_PER_APPEND} events per Append`);
  }
  let bytes = 0;
  const out = events.map((e, i) => {
    const at = `events[${i}]`;
    if (e.position !== undefined && e.position !== '0') throw invalidArgument(`${at}.position`, 'output only: the log assigns positions');
    if (e.type.length === 0 || e.type.length > MAX_TYPE_LENGTH) throw invalidArgument(`${at}.type`, `1 to ${MAX_TYPE_LENGTH} characters`);
    if (e.data.length > MAX_DATA_BYTES) throw invalidArgument(`${at}.data`, `at most ${MAX_DATA_BYTES} bytes`);
    const entries = Object.entries(e.metadata ?? {});
    if (entries.length > MAX_METADATA_ENTRIES) throw invalidArgument(`${at}.metadata`, `at most ${MAX_METADATA_ENTRIES} entries`);
    for (const [key, value] of entries) {
      if (key.length === 0 || key.length > MAX_METADATA_KEY || value.length > MAX_METADATA_VALUE) {
        throw invalidArgument(`${at}.metadata`, `keys 1 to ${MAX_METADATA_KEY} characters, values at most ${MAX_METADATA_VALUE}`);
      }
      bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
    }
    bytes += Buffer.byteLength(e.type) + e.data.length;
    return { type: e.type, data: e.data, metadata: Object.fromEntries(entries), time: timeOf(e.time, `${at}.time`) };
  });
  return { events: out, bytes };
}

/** The tenant's event_retention_hours in ms; 0 keeps everything. */
function retentionMs(call: TenantCall): number {
  const hours = call.tenant.quotas.eventRetentionHours;
  return hours > 0 ? hours * 3_600_000 : 0;
}

const ENDED: Record<SubscriptionEnd, () => TenantdError> = {
  shutdown: () => new TenantdError(Status.UNAVAILABLE, 'SHUTTING_DOWN', 'the server is shutting down; subscribe again from the next position'),
  suspended: () => new TenantdError(Status.FAILED_PRECONDITION, 'TENANT_SUSPENDED', 'the tenant was suspended'),
  deleted: () => new TenantdError(Status.NOT_FOUND, 'TENANT_NOT_FOUND', 'the tenant was deleted'),
  moved: () =>
    new TenantdError(Status.UNAVAILABLE, 'TENANT_MOVED', 'the tenant moved to another node; subscribe again from the next position', {
      retryDelayMs: 100,
    }),
  too_slow: () =>
    new TenantdError(
      Status.RESOURCE_EXHAUSTED,
      'SUBSCRIBER_TOO_SLOW',
      `more than ${MAX_PENDING_EVENTS} events or ${MAX_PENDING_BYTES} bytes waited for this subscriber, or the server's budget for data waiting for slow clients ran out; subscribe again from the next position`,
    ),
};

/** What an event waiting for a subscriber costs besides its data (the object, its type and metadata): an estimate. */
const EVENT_OVERHEAD_BYTES = 256;

/**
 * `unread`: the server-wide budget for data waiting for slow clients, which
 * Query results share; every subscriber's waiting events count against it.
 */
export function eventService(access: Access, admit: Admit, router: ShardRouter, hub: EventHub, service: ServiceObserver, unread: UnreadBudget): Handlers {
  function tenantFor(call: { metadata: ServerUnaryCall<unknown, unknown>['metadata'] }, rpc: ObservedCall): TenantCall {
    const tenantCall = access.tenant(call.metadata);
    const tenantId = tenantCall.tenant.record.tenantId;
    rpc.routed(tenantId, router.forTenant(tenantId).index);
    return tenantCall;
  }

  return {
    Append: unary(
      service,
      'Append',
      async (call: ServerUnaryCall<{ events: ProtoEvent[]; expected_position?: string | null; request_id?: string }, { positions: string[] }>, trailer, rpc) => {
        const tenantCall = tenantFor(call, rpc);
        if (tenantCall.readOnly) {
          throw new TenantdError(Status.PERMISSION_DENIED, 'READ_ONLY_KEY', 'a READ_ONLY key cannot append events');
        }
        const { events, bytes } = newEvents(call.request.events);
        const raw = call.request.expected_position;
        const expectedPosition = raw === undefined || raw === null ? null : position(raw, 'expected_position');
        const live = tenantCall.tenant;
        const tenantId = live.record.tenantId;
        const limits = callLimits(tenantCall, call);
        const requestId = checkRequestId(call.request.request_id);
        const { positions, replayed } = await admit(tenantCall, bytes, trailer, () =>
          router.forTenant(tenantId).call({ op: 'appendEvents', tenantId, limits, events, expectedPosition, retentionMs: retentionMs(tenantCall), ...(requestId === null ? {} : { requestId }) }, undefined, rpc.signal),
        );
        // A retry of an Append that already committed: its subscribers had these events.
        if (replayed) return { positions: positions.map(String) };
        live.eventsTotal += positions.length;
        if (hub.count(tenantId) > 0) hub.publish(tenantId, events.map((e, i) => ({ ...e, position: positions[i]! })));
        return { positions: positions.map(String) };
      },
    ),

    Read: unary(
      service,
      'Read',
      async (call: ServerUnaryCall<{ from_position: string; limit: number; types: string[] }, unknown>, trailer, rpc) => {
        const tenantCall = tenantFor(call, rpc);
        const { limit: requested } = call.request;
        if (requested < 0 || requested > MAX_READ_LIMIT) throw invalidArgument('limit', `from 1 to ${MAX_READ_LIMIT}, or 0 for ${DEFAULT_READ_LIMIT}`);
        const from = position(call.request.from_position, 'from_position');
        const types = checkTypes(call.request.types, 'types');
        const tenantId = tenantCall.tenant.record.tenantId;
        const limits = callLimits(tenantCall, call);
        const read = await admit(tenantCall, 0, trailer, () =>
          router.forTenant(tenantId).call({
            op: 'readEvents',
            tenantId,
            limits,
            fromPosition: from < 1n ? 1n : from,
            limit: requested || DEFAULT_READ_LIMIT,
            types,
            retentionMs: retentionMs(tenantCall),
          }, undefined, rpc.signal),
        );
        return { events: read.events.map(toProto), next_position: read.nextPosition.toString() };
      },
    ),

    Subscribe: serverStream(
      service,
      'Subscribe',
      async (call: ServerWritableStream<{ from_position: string; types: string[] }, ProtoEvent>, _trailer, rpc) => {
        const tenantCall = tenantFor(call, rpc);
        const tenantId = tenantCall.tenant.record.tenantId;
        let from = position(call.request.from_position, 'from_position');
        if (from < 1n) from = 1n;
        const types = checkTypes(call.request.types, 'types');
        const wanted = new Set(types);
        if (hub.count(tenantId) >= MAX_SUBSCRIBERS_PER_TENANT) {
          throw new TenantdError(Status.RESOURCE_EXHAUSTED, 'TOO_MANY_SUBSCRIBERS', `at most ${MAX_SUBSCRIBERS_PER_TENANT} subscriptions per tenant at a time`);
        }

        let pending: LogEvent[] = [];
        // Bytes of `pending`, and of the batch being written, taken from `unread`:
        // given back once the batch is in gRPC's hands, or when the call ends.
        let pendingBytes = 0;
        let sendingBytes = 0;
        let ended = null as SubscriptionEnd | null;
        let wake = null as (() => void) | null;
        const subscriber: Subscriber = {
          offer(events) {
            let bytes = 0;
            const kept = wanted.size > 0 ? events.filter((event) => wanted.has(event.type)) : events;
            for (const event of kept) bytes += event.data.length + EVENT_OVERHEAD_BYTES;
            if (!unread.take(tenantId, bytes)) return false;
            for (const event of kept) pending.push(event);
            pendingBytes += bytes;
            wake?.();
            return pending.length <= MAX_PENDING_EVENTS && pendingBytes <= MAX_PENDING_BYTES;
          },
          end(reason) {
            ended = reason;
            wake?.();
          },
        };
        const onCancel = () => wake?.();
        call.on('cancelled', onCancel);
        // Registered before the backlog is read, so nothing appended meanwhile is missed.
        hub.add(tenantId, subscriber);
        try {
          const send = async (event: LogEvent) => {
            if (event.position < from) return;
            from = event.position + 1n;
            if (!call.write(toProto(event))) await whenWritable(call);
          };
          for (;;) {
            const limits = callLimits(tenantCall, call);
            const page = await admit(tenantCall, 0, null, () =>
              router.forTenant(tenantId).call({ op: 'readEvents', tenantId, limits, fromPosition: from, limit: BACKLOG_PAGE, types, retentionMs: retentionMs(tenantCall) }, undefined, rpc.signal),
            );
            for (const event of page.events) {
              if (call.cancelled || ended) break;
              await send(event);
            }
            if (page.complete || call.cancelled || ended) break;
          }
          for (;;) {
            if (call.cancelled) return;
            if (ended) throw ENDED[ended]();
            const batch = pending;
            pending = [];
            sendingBytes = pendingBytes;
            pendingBytes = 0;
            for (const event of batch) {
              if (call.cancelled) return;
              await send(event);
            }
            unread.give(tenantId, sendingBytes);
            sendingBytes = 0;
            if (pending.length === 0 && !ended && !call.cancelled) {
              await new Promise<void>((resolve) => (wake = resolve));
              wake = null;
            }
          }
        } finally {
          call.off('cancelled', onCancel);
          hub.remove(tenantId, subscriber);
          unread.give(tenantId, pendingBytes + sendingBytes);
          pendingBytes = 0;
          sendingBytes = 0;
        }
      },
    ),
  };
}
