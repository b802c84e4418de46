/**
 * tenantd.v1.ClusterService (admin key): where things live, moves, the
 * rebalance, and the internal ReceiveTenant that a move's source streams a
 * tenant to.
 */
import { createHash } from 'node:crypto';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { status as Status, type ServerReadableStream, type ServerUnaryCall, type ServerWritableStream } from '@grpc/grpc-js';
import { TenantdError, invalidArgument } from '../errors.ts';
import type { KeyRecord, TenantRecord } from '../catalog/catalog.ts';
import type { Access } from '../grpc/access.ts';
import { clientStream, serverStream, unary, type Handlers } from '../grpc/handlers.ts';
import type { ServiceObserver } from '../grpc/rpcObserver.ts';
import { tenantToProto, type ProtoTenant } from '../grpc/tenantMessages.ts';
import type { Backups } from '../tenants/backups.ts';
import { checkTenantId, type TenantManager } from '../tenants/manager.ts';
import type { MoveFences, MoveReport, Mover } from './moves.ts';
import { offsetBytes } from './pageDelta.ts';
import type { Placement } from './placement.ts';
import type { Rebalancer } from './rebalance.ts';
import type { StagedCopies } from './staging.ts';
import { SLOT_COUNT, slotOf } from './slots.ts';

/** A MoveProgress line as proto-loader gives it (also what `tenantd cluster` prints). */
export interface ProtoProgress {
  subject: string;
  stage: string;
  message: string;
  bytes: string;
  write_pause_ms: string;
  slots_done: number;
  slots_total: number;
}

interface ReceiveHeader {
  catalog_json: string;
  epoch: string;
  sha256: string;
  size: string;
  stage: boolean;
  base: string;
}

type ReceivePart =
  | { part: 'header'; header: ReceiveHeader }
  | { part: 'chunk'; chunk: Buffer }
  | { part: 'patch'; patch: { offset: string; data: Buffer } };

export function toProgress(r: MoveReport & { slotsDone?: number; slotsTotal?: number }): ProtoProgress {
  return {
    subject: r.subject,
    stage: r.stage,
    message: r.message ?? '',
    bytes: String(r.bytes ?? 0),
    write_pause_ms: String(r.writePauseMs ?? 0),
    slots_done: r.slotsDone ?? 0,
    slots_total: r.slotsTotal ?? 0,
  };
}

export interface ClusterServiceDeps {
  self: string;
  access: Access;
  placement: Placement;
  mover: Mover;
  rebalancer: Rebalancer;
  manager: TenantManager;
  backups: Backups;
  fences: MoveFences;
  /** Copies staged here by phase 1 of moves to this node. */
  staged: StagedCopies;
  onLog: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

function parseCatalog(json: string): { record: TenantRecord; keys: KeyRecord[] } {
  try {
    const parsed = JSON.parse(json) as { record: TenantRecord; keys: (Omit<KeyRecord, 'hash'> & { hash: string })[] };
    checkTenantId(parsed.record.tenantId, 'header.catalog_json.record.tenantId');
    return { record: parsed.record, keys: parsed.keys.map((k) => ({ ...k, hash: Buffer.from(k.hash, 'base64') })) };
  } catch (error) {
    if (error instanceof TenantdError) throw error;
    throw invalidArgument('header.catalog_json', `not the catalog rows of a tenant: ${(error as Error).message}`);
  }
}

/** The stream's messages; a stream closed before its end (the sender went away) is CANCELLED, not a bug. */
async function* readParts(call: ServerReadableStream<ReceivePart, unknown>): AsyncGenerator<ReceivePart> {
  try {
    for await (const message of call as AsyncIterable<ReceivePart>) yield message;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE') {
      throw new TenantdError(Status.CANCELLED, 'CANCELLED', 'the sender closed the transfer before its end');
    }
    throw error;
  }
}

export function clusterService(d: ClusterServiceDeps, service: ServiceObserver): Handlers {
  return {
    GetPlacement: unary(service, 'GetPlacement', (call: ServerUnaryCall<{ tenant_id: string }, unknown>) => {
      d.access.admin(call.metadata);
      const bySlots = d.placement.slotsByNode();
      const nodes = d.placement.liveNodes().map((n) => ({
        node_id: n.id,
        grpc_address: n.grpc,
        internal_address: n.internal,
        slots: bySlots.get(n.id)?.length ?? 0,
      }));
      const tenantId = call.request.tenant_id;
      const owner = tenantId ? d.placement.ownerOf(tenantId) : null;
      return {
        node_id: d.self,
        nodes,
        unassigned_slots: bySlots.get('')?.length ?? 0,
        overrides: d.placement.allOverrides().size,
        slot: tenantId ? slotOf(tenantId) : 0,
        owner: owner?.node ?? '',
        epoch: String(owner?.epoch ?? 0),
        revision: d.placement.revision,
      };
    }),

    MoveTenant: serverStream(service, 'MoveTenant', async (call: ServerWritableStream<{ tenant_id: string; target_node: string }, ProtoProgress>) => {
      d.access.admin(call.metadata);
      const { tenant_id: tenantId, target_node: target } = call.request;
      checkTenantId(tenantId, 'tenant_id');
      await d.mover.moveTenant(tenantId, target, (r) => call.write(toProgress(r)));
      call.write(toProgress({ subject: `tenants/${tenantId}`, stage: 'DONE' }));
    }),

    MoveSlots: serverStream(service, 'MoveSlots', async (call: ServerWritableStream<{ slots: number[]; target_node: string }, ProtoProgress>) => {
      d.access.admin(call.metadata);
      const { slots, target_node: target } = call.request;
      slots.forEach((slot, i) => {
        if (!Number.isInteger(slot) || slot < 0 || slot >= SLOT_COUNT) throw invalidArgument(`slots[${i}]`, `a slot from 0 to ${SLOT_COUNT - 1}`);
      });
      await d.mover.moveSlots(slots, target, (r) => call.write(toProgress(r)));
    }),

    Rebalance: serverStream(
      service,
      'Rebalance',
      async (call: ServerWritableStream<{ drain_node: string; parallelism: number; dry_run: boolean }, ProtoProgress>) => {
        d.access.admin(call.metadata);
        const { drain_node: drain, parallelism, dry_run: dryRun } = call.request;
        if (parallelism < 0 || parallelism > 64) throw invalidArgument('parallelism', 'from 1 to 64, or 0 for 4');
        await d.rebalancer.run({ drain: drain || null, parallelism: parallelism || 4, dryRun }, (r) => call.write(toProgress(r)));
      },
    ),

    ReceiveTenant: clientStream(service, 'ReceiveTenant', async (call: ServerReadableStream<ReceivePart, { tenant?: ProtoTenant; staged?: string }>) => {
      d.access.admin(call.metadata);
      call.on('cancelled', () => call.destroy(new TenantdError(Status.CANCELLED, 'CANCELLED', 'the sender cancelled the transfer')));
      const started = performance.now();
      let header: ReceiveHeader | null = null;
      let rows: { record: TenantRecord; keys: KeyRecord[] } | null = null;
      const hash = createHash('sha256');
      let file: string | null = null;
      let kept = false;
      let handle: FileHandle | null = null;
      let size = 0;
      let bytes = 0;
      try {
        for await (const message of readParts(call)) {
          if (header === null) {
            if (message.part !== 'header') throw invalidArgument('header', 'the first message must be the header');
            header = message.header;
            rows = parseCatalog(header.catalog_json);
            const tenantId = rows.record.tenantId;
            const owner = d.placement.ownerOf(tenantId);
            // Never over a copy this node serves: only a tenant owned elsewhere can be sent here.
            if (owner?.node === d.self) {
              throw new TenantdError(Status.FAILED_PRECONDITION, 'ALREADY_OWNER', `node ${d.self} already owns tenants/${tenantId}`);
            }
            if (!header.stage && owner && Number(header.epoch) <= owner.epoch) {
              throw new TenantdError(Status.FAILED_PRECONDITION, 'STALE_EPOCH', `epoch ${header.epoch} is not newer than ${owner.epoch}`);
            }
            size = Number(header.size);
            if (!Number.isSafeInteger(size) || size < 0) throw invalidArgument('header.size', 'the database\'s size in bytes');
            if (header.base) {
              if (header.stage) throw invalidArgument('header.base', 'a stage starts from nothing: set stage or base, not both');
              file = d.staged.take(header.base, tenantId);
              if (file === null) {
                throw new TenantdError(Status.FAILED_PRECONDITION, 'STAGE_NOT_FOUND', `node ${d.self} holds no staged copy ${header.base} of tenants/${tenantId}`);
              }
              handle = await open(file, 'r+');
            } else {
              file = d.backups.tmpFile('restore');
              handle = await open(file, 'wx+');
            }
            continue;
          }
          if (header.base) {
            if (message.part !== 'patch') throw invalidArgument('patch', 'phase 2 of a move sends only patches after its header');
            const offset = Number(message.patch.offset);
            const data = message.patch.data;
            if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > size) {
              throw invalidArgument('patch.offset', `bytes within the database's ${size}; got ${data.length} at ${message.patch.offset}`);
            }
            hash.update(offsetBytes(offset));
            hash.update(data);
            bytes += data.length;
            await handle!.write(data, 0, data.length, offset);
            continue;
          }
          if (message.part !== 'chunk') throw invalidArgument('chunk', 'a snapshot is sent as chunks after its header');
          bytes += message.chunk.length;
          hash.update(message.chunk);
          await handle!.write(message.chunk);
        }
        if (header === null || rows === null) throw invalidArgument('header', 'the stream ended before its header');
        const tenantId = rows.record.tenantId;
        if (header.base) await handle!.truncate(size);
        await handle!.close();
        handle = null;
        const digest = hash.digest('hex');
        if (digest !== header.sha256 || (!header.base && bytes !== size)) {
          throw invalidArgument('chunk', `received ${bytes} bytes hashing to ${digest}; the sender said ${header.size} bytes, ${header.sha256}`, 'CHECKSUM_MISMATCH');
        }
        const received = performance.now();
        if (header.stage) {
          let problems: string[];
          try {
            problems = await d.backups.checkCopy(file!, tenantId);
          } catch (error) {
            if (error instanceof TenantdError && error.code !== Status.INTERNAL) throw error;
            throw new TenantdError(Status.INVALID_ARGUMENT, 'BACKUP_UNUSABLE', `the staged copy is not a database tenantd can use: ${(error as Error).message}`);
          }
          if (problems.length > 0) {
            throw new TenantdError(Status.INVALID_ARGUMENT, 'BACKUP_CORRUPT', `the staged copy fails integrity_check: ${problems.slice(0, 5).join('; ')}`);
          }
          const staged = d.staged.keep(tenantId, file!);
          kept = true;
          d.onLog('info', 'tenant staged', { tenant: tenantId, bytes, transferMs: Math.round(received - started), checkMs: Math.round(performance.now() - received) });
          return { staged };
        }
        const live = await d.manager.adopt(rows.record, rows.keys, file!, Boolean(header.base));
        d.fences.noteAdopted(tenantId, Number(header.epoch));
        d.onLog('info', 'tenant received', {
          tenant: tenantId,
          bytes,
          epoch: Number(header.epoch),
          patched: Boolean(header.base),
          transferMs: Math.round(received - started),
          installMs: Math.round(performance.now() - received),
        });
        return { tenant: tenantToProto(live) };
      } finally {
        await handle?.close();
        if (file !== null && !kept) await rm(file, { force: true });
      }
    }),
  };
}

/**
 * ClusterService on a node that is not in a cluster: every method says so
 * (after checking the key, like any admin call), so the service reads the
 * same through reflection whether or not --cluster-etcd is set.
 */
export function clusterDisabled(access: Access, service: ServiceObserver): Handlers {
  const refuse = (metadata: Parameters<Access['admin']>[0]): never => {
    access.admin(metadata);
    throw new TenantdError(Status.FAILED_PRECONDITION, 'CLUSTER_DISABLED', 'this node is not part of a cluster (start it with --cluster-etcd)');
  };
  return {
    GetPlacement: unary(service, 'GetPlacement', (call: ServerUnaryCall<unknown, unknown>) => refuse(call.metadata)),
    MoveTenant: serverStream(service, 'MoveTenant', async (call: ServerWritableStream<unknown, unknown>) => refuse(call.metadata)),
    MoveSlots: serverStream(service, 'MoveSlots', async (call: ServerWritableStream<unknown, unknown>) => refuse(call.metadata)),
    Rebalance: serverStream(service, 'Rebalance', async (call: ServerWritableStream<unknown, unknown>) => refuse(call.metadata)),
    // Read to its end first: a message that does not decode is answered as such (MALFORMED_REQUEST).
    ReceiveTenant: clientStream(service, 'ReceiveTenant', async (call: ServerReadableStream<unknown, unknown>) => {
      await new Promise<void>((resolve) => {
        call.on('data', () => undefined);
        call.once('end', resolve);
        call.once('close', resolve);
        call.once('error', () => resolve());
      });
      return refuse(call.metadata);
    }),
  };
}
