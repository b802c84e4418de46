/**
 * Moving tenants between nodes, on the node that owns them (the source).
 *
 * A tenant's move:
 *   0. (two-phase, for a tenant of TWO_PHASE_MIN_BYTES or more) while its
 *      calls go on as usual, snapshot the database and stream it to the
 *      target, which checks it (integrity_check) and keeps it staged;
 *   1. fence: new calls are held while the calls in flight finish; then reads
 *      run here again, as READ_ONLY, and writes wait in a bounded queue;
 *   2. snapshot the database (the backup path: the shard's online backup)
 *      and stream it, with the tenant's catalog rows, to the target, which
 *      checks it (integrity_check, migrations) and installs it at epoch + 1;
 *      in a two-phase move only the pages that differ from the staged copy
 *      travel (pageDelta.ts), and the target installs its copy patched
 *      with them, verified by their hash, without checking it again;
 *   3. flip the placement in one etcd transaction guarded by the mod revision
 *      of what this node read, so a placement changed meanwhile fails the move;
 *   4. pass the queued writes, in order, to the new owner;
 *   5. remove this node's copy after a grace period.
 * A failure before the flip rolls back: the fence lifts and the queued
 * writes run here. Nothing acknowledged is lost either way: no write was
 * acknowledged after the fence, and everything acknowledged before it is in
 * the snapshot.
 *
 * The transfer itself (snapshot → target) is behind `TenantTransport`, so a
 * replicator that already keeps a copy on the target can replace step 2.
 */
import { createHash } from 'node:crypto';
import { createReadStream, rmSync, statSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';
import { fromServiceError } from '../client/errors.ts';
import { TenantdError } from '../errors.ts';
import type { TenantRegistry } from '../tenants/registry.ts';
import type { TenantManager } from '../tenants/manager.ts';
import type { Backups } from '../tenants/backups.ts';
import { pageDelta, readRuns, type PageDelta } from './pageDelta.ts';
import { OVERRIDES, SLOTS, type NodeInfo, type Placement } from './placement.ts';
import { slotOf } from './slots.ts';

/** Calls that may wait for one moving tenant before more are refused UNAVAILABLE. */
const MAX_HELD_CALLS = 10_000;
/** How long a move waits for the tenant's calls in flight when it fences it. */
const DRAIN_WAIT_MS = 10_000;
/** etcd's default limit is 128 operations per transaction: a compare and a put per slot. */
const SLOTS_PER_TXN = 60;
/**
 * Tenants from this size on move in two phases: a whole copy while writes go
 * on, then, fenced, only the pages written meanwhile. Below it one copy while
 * fenced is about as quick as the two (bench:cluster: 176 ms at 1 MB).
 */
const TWO_PHASE_MIN_BYTES = 2 * 1024 * 1024;
/** A delta past this share of the database goes as the whole file instead. */
const MAX_DELTA_SHARE = 0.5;

export interface MoveFence {
  /** 'copying': phase 1 of a two-phase move, calls run as usual. */
  state: 'copying' | 'draining' | 'fenced' | 'moved';
  /** The target's gRPC address: calls go there once the state is 'moved'. */
  targetAddress: string;
  held: (() => void)[];
}

/** The fences of tenants and slots being moved away from this node; the router consults them on every call. */
export class MoveFences {
  private readonly fences = new Map<string, MoveFence>();
  private readonly slots = new Map<number, (() => void)[]>();
  /** Tenants moved here whose flip this node's placement may not show yet: tenant → the epoch they came with, and when. */
  private readonly adopted = new Map<string, { epoch: number; at: number }>();

  noteAdopted(tenantId: string, epoch: number): void {
    this.adopted.set(tenantId, { epoch, at: Date.now() });
  }

  /** The epoch a tenant was moved here with, while placement has not caught up with it. */
  adoptedEpoch(tenantId: string, ownerEpoch: number, ownedHere: boolean): number | undefined {
    const adopted = this.adopted.get(tenantId);
    if (adopted !== undefined && (ownerEpoch >= adopted.epoch || ownedHere)) {
      this.adopted.delete(tenantId);
      return undefined;
    }
    return adopted?.epoch;
  }

  /** When a tenant whose flip placement has not shown yet was moved here (Date.now()), or undefined. */
  adoptedAt(tenantId: string): number | undefined {
    return this.adopted.get(tenantId)?.at;
  }

  get(tenantId: string): MoveFence | undefined {
    return this.fences.get(tenantId);
  }

  writeFenced(tenantId: string): boolean {
    return this.fences.get(tenantId)?.state === 'fenced';
  }

  slotMoving(slot: number): boolean {
    return this.slots.has(slot);
  }

  begin(tenantId: string, targetAddress: string, state: 'copying' | 'draining'): MoveFence {
    if (this.fences.has(tenantId)) {
      throw new TenantdError(grpc.status.ABORTED, 'MOVE_IN_PROGRESS', `tenants/${tenantId} is already being moved`);
    }
    const fence: MoveFence = { state, targetAddress, held: [] };
    this.fences.set(tenantId, fence);
    return fence;
  }

  /** Queues a call until the fence changes; false when the queue is full. */
  hold(tenantId: string, retry: () => void): boolean {
    const held = this.fences.get(tenantId)?.held ?? this.slots.get(slotOf(tenantId));
    if (!held) {
      // The fence lifted between the decision and now.
      queueMicrotask(retry);
      return true;
    }
    if (held.length >= MAX_HELD_CALLS) return false;
    held.push(retry);
    return true;
  }

  /** Runs the held calls again, in the order they came, against the fence's new state. */
  releaseHeld(tenantId: string): void {
    const fence = this.fences.get(tenantId);
    if (!fence) return;
    const held = fence.held.splice(0);
    for (const retry of held) retry();
  }

  end(tenantId: string): void {
    const fence = this.fences.get(tenantId);
    this.fences.delete(tenantId);
    for (const retry of fence?.held.splice(0) ?? []) retry();
  }

  beginSlot(slot: number): void {
    if (!this.slots.has(slot)) this.slots.set(slot, []);
  }

  endSlot(slot: number): void {
    const held = this.slots.get(slot) ?? [];
    this.slots.delete(slot);
    for (const retry of held) retry();
  }
}

/** How a tenant's data reaches its next owner. */
export interface TenantTransport {
  /** The whole snapshot `file`: the target checks it and installs it at `epoch`. */
  send(target: NodeInfo, tenantId: string, catalogJson: string, epoch: number, file: string): Promise<void>;
  /** Phase 1 of a two-phase move: the target checks `file` and keeps it; returns the staged copy's id. */
  stage?(target: NodeInfo, tenantId: string, catalogJson: string, file: string): Promise<string>;
  /**
   * Phase 2: the target installs its staged copy `base` with `delta`'s runs,
   * read from the snapshot `file`, written over it. Throws FAILED_PRECONDITION
   * STAGE_NOT_FOUND when the target no longer holds `base`.
   */
  sendDelta?(target: NodeInfo, tenantId: string, catalogJson: string, epoch: number, base: string, file: string, delta: PageDelta): Promise<void>;
}

export interface MoveReport {
  subject: string;
  stage: string;
  message?: string;
  bytes?: number;
  writePauseMs?: number;
}

export interface MoverOptions {
  self: string;
  etcd: Etcd3;
  placement: Placement;
  fences: MoveFences;
  registry: TenantRegistry;
  manager: TenantManager;
  backups: Backups;
  transport: TenantTransport;
  /** How long the source keeps its copy after a move (calls are forwarded meanwhile). */
  graceMs: number;
  onLog: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

export class Mover {
  private readonly releases = new Set<NodeJS.Timeout>();

  constructor(private readonly o: MoverOptions) {}

  private target(nodeId: string): NodeInfo {
    if (nodeId === this.o.self) throw new TenantdError(grpc.status.INVALID_ARGUMENT, 'MOVE_TO_SELF', `node ${nodeId} already owns it`);
    const node = this.o.placement.node(nodeId);
    if (!node) {
      throw new TenantdError(grpc.status.FAILED_PRECONDITION, 'NODE_NOT_LIVE', `node ${JSON.stringify(nodeId)} is not a live member of the cluster`, {
        metadata: { node: nodeId },
      });
    }
    return node;
  }

  /** This node's tenants in `slot` (not copies left behind by earlier moves). */
  tenantsIn(slot: number): string[] {
    const ids: string[] = [];
    for (const live of this.o.registry.all()) {
      const id = live.record.tenantId;
      if (live.deleting || slotOf(id) !== slot) continue;
      if (this.o.placement.ownerOf(id)?.node === this.o.self && !this.o.fences.get(id)) ids.push(id);
    }
    return ids;
  }

  /** Moves one tenant to `targetNode` as an override; rolls back on any failure before the flip. */
  async moveTenant(tenantId: string, targetNode: string, report: (r: MoveReport) => void): Promise<void> {
    const subject = `tenants/${tenantId}`;
    const owner = this.o.placement.ownerOf(tenantId);
    const live = this.o.registry.get(tenantId);
    if (!owner || owner.node !== this.o.self || !live || live.deleting) {
      throw new TenantdError(grpc.status.FAILED_PRECONDITION, 'NOT_OWNER', `node ${this.o.self} does not own ${subject}`);
    }
    const target = this.target(targetNode);
    const { stage, sendDelta } = this.o.transport;
    const twoPhase = stage !== undefined && sendDelta !== undefined && this.o.backups.liveBytes(tenantId) >= TWO_PHASE_MIN_BYTES;
    const fence = this.o.fences.begin(tenantId, target.grpc, twoPhase ? 'copying' : 'draining');
    let fencedAt = performance.now();
    let file: string | null = null;
    let base: string | null = null;
    let staged: string | null = null;
    try {
      const catalogJson = (): string => {
        const rows = this.o.manager.exportRows(tenantId);
        return JSON.stringify({ record: rows.record, keys: rows.keys.map((k) => ({ ...k, hash: k.hash.toString('base64') })) });
      };
      if (twoPhase) {
        const copyStarted = performance.now();
        base = await this.o.backups.snapshot(tenantId);
        staged = await stage.call(this.o.transport, target, tenantId, catalogJson(), base);
        report({ subject, stage: 'STAGED', bytes: statSync(base).size, message: `copied while writes went on, in ${Math.round(performance.now() - copyStarted)} ms` });
        fence.state = 'draining';
        fencedAt = performance.now();
      }
      if (!(await this.o.registry.waitIdle(live, DRAIN_WAIT_MS))) {
        throw new TenantdError(grpc.status.ABORTED, 'MOVE_DRAIN_TIMEOUT', `${subject} still had calls in flight after ${DRAIN_WAIT_MS} ms`);
      }
      fence.state = 'fenced';
      this.o.fences.releaseHeld(tenantId);
      const drained = performance.now();
      report({ subject, stage: 'FENCED' });
      file = await this.o.backups.snapshot(tenantId);
      const copied = performance.now();
      const bytes = statSync(file).size;
      const rows = catalogJson();
      let sent: string | null = null;
      const delta = staged === null || base === null ? null : await pageDelta(base, file, bytes * MAX_DELTA_SHARE);
      if (delta !== null) {
        try {
          await sendDelta!.call(this.o.transport, target, tenantId, rows, owner.epoch + 1, staged!, file, delta);
          sent = `${delta.bytes} bytes: ${delta.runs.length} runs of pages written since the staged copy`;
        } catch (error) {
          // The target lost its staged copy (it restarted): the whole file then, still fenced.
          if (!(error instanceof TenantdError && error.reason === 'STAGE_NOT_FOUND')) throw error;
          this.o.onLog('warn', 'the move\'s target lost its staged copy; sending the whole database', { tenant: tenantId, to: target.id });
        }
      }
      if (sent === null) {
        await this.o.transport.send(target, tenantId, rows, owner.epoch + 1, file);
        sent = `the whole database`;
      }
      const installed = performance.now();
      report({ subject, stage: 'INSTALLED', bytes, message: `sent ${sent}` });
      // Placement may have changed while the copy travelled: compare what was read.
      const overrideKey = `${OVERRIDES}${tenantId}`;
      const txn = owner.override
        ? this.o.etcd.if(overrideKey, 'Mod', '==', owner.modRevision)
        : this.o.etcd.if(overrideKey, 'Version', '==', 0).and(`${SLOTS}${owner.slot}`, 'Mod', '==', owner.modRevision);
      const flipped = await txn.then(this.o.etcd.put(overrideKey).value(JSON.stringify({ node: target.id, epoch: owner.epoch + 1 }))).commit();
      if (!flipped.succeeded) {
        throw new TenantdError(grpc.status.ABORTED, 'PLACEMENT_CHANGED', `the placement of ${subject} changed during the move; nothing was moved`);
      }
      fence.state = 'moved';
      const writePauseMs = Math.round(performance.now() - fencedAt);
      this.o.fences.releaseHeld(tenantId);
      const ms = (a: number, b: number) => Math.round(b - a);
      const message = `drain ${ms(fencedAt, drained)} ms, snapshot ${ms(drained, copied)} ms, transfer and install ${ms(copied, installed)} ms, flip ${ms(installed, performance.now())} ms`;
      report({ subject, stage: 'FLIPPED', bytes, writePauseMs, message });
      this.o.onLog('info', 'tenant moved', { tenant: tenantId, to: target.id, bytes, writePauseMs });
      this.scheduleRelease(tenantId);
    } catch (error) {
      this.o.fences.end(tenantId);
      report({ subject, stage: 'ROLLED_BACK', message: (error as Error).message });
      this.o.onLog('warn', 'tenant move rolled back', { tenant: tenantId, to: targetNode, error: (error as Error).message });
      throw error;
    } finally {
      for (const snapshot of [file, base]) if (snapshot) rmSync(snapshot, { force: true });
    }
  }

  /**
   * Moves whole slots: their tenants one by one (each as an override), then
   * the slots themselves, whose now redundant overrides go in the same
   * transaction. New tenants in a moving slot wait until it has moved.
   */
  async moveSlots(slots: readonly number[], targetNode: string, report: (r: MoveReport) => void): Promise<void> {
    const target = this.target(targetNode);
    for (const slot of slots) {
      const assignment = this.o.placement.slot(slot);
      if (assignment?.node !== this.o.self) {
        throw new TenantdError(grpc.status.FAILED_PRECONDITION, 'NOT_OWNER', `node ${this.o.self} does not own slots/${slot}`);
      }
    }
    for (let i = 0; i < slots.length; i += SLOTS_PER_TXN) {
      const batch = slots.slice(i, i + SLOTS_PER_TXN);
      for (const slot of batch) this.o.fences.beginSlot(slot);
      try {
        const moved: string[] = [];
        for (const slot of batch) {
          for (const tenantId of this.tenantsIn(slot)) {
            await this.moveTenant(tenantId, target.id, report);
            moved.push(tenantId);
          }
        }
        let txn = null as ReturnType<Etcd3['if']> | null;
        for (const slot of batch) {
          const assignment = this.o.placement.slot(slot)!;
          txn = txn ? txn.and(`${SLOTS}${slot}`, 'Mod', '==', assignment.modRevision) : this.o.etcd.if(`${SLOTS}${slot}`, 'Mod', '==', assignment.modRevision);
        }
        const ops = batch.map((slot) =>
          this.o.etcd.put(`${SLOTS}${slot}`).value(JSON.stringify({ node: target.id, epoch: this.o.placement.slot(slot)!.epoch + 1 })),
        );
        const flipped = await txn!.then(...ops).commit();
        if (!flipped.succeeded) {
          throw new TenantdError(grpc.status.ABORTED, 'PLACEMENT_CHANGED', `the placement of slots ${batch[0]}..${batch.at(-1)} changed during the move`);
        }
        // The tenants moved above now follow their slot; their overrides only repeat it.
        for (let j = 0; j < moved.length; j += SLOTS_PER_TXN * 2) {
          await this.o.etcd
            .if(`${SLOTS}${batch[0]}`, 'Version', '>', 0)
            .then(...moved.slice(j, j + SLOTS_PER_TXN * 2).map((id) => this.o.etcd.delete().key(`${OVERRIDES}${id}`)))
            .commit()
            .catch(() => undefined);
        }
        for (const slot of batch) report({ subject: `slots/${slot}`, stage: 'DONE' });
      } finally {
        for (const slot of batch) this.o.fences.endSlot(slot);
      }
    }
  }

  private scheduleRelease(tenantId: string): void {
    const timer = setTimeout(() => {
      this.releases.delete(timer);
      this.o.manager
        .release(tenantId)
        .then(() => this.o.fences.end(tenantId))
        .catch((error: unknown) => this.o.onLog('warn', 'could not remove a moved tenant\'s old copy', { tenant: tenantId, error: String(error) }));
    }, this.o.graceMs);
    timer.unref();
    this.releases.add(timer);
  }

  stop(): void {
    for (const timer of this.releases) clearTimeout(timer);
    this.releases.clear();
  }
}

/** The transfer over gRPC: ClusterService.ReceiveTenant on the target's internal address. */
export class GrpcTenantTransport implements TenantTransport {
  private readonly clients = new Map<string, grpc.Client>();

  constructor(
    private readonly method: grpc.MethodDefinition<unknown, unknown>,
    private readonly adminKey: () => string,
    private readonly credentials: () => grpc.ChannelCredentials = () => grpc.credentials.createInsecure(),
  ) {}

  async send(target: NodeInfo, tenantId: string, catalogJson: string, epoch: number, file: string): Promise<void> {
    const header = { catalog_json: catalogJson, epoch: String(epoch), sha256: await hashFile(file), size: String(statSync(file).size) };
    await this.transfer(target, tenantId, header, chunksOf(file));
  }

  async stage(target: NodeInfo, tenantId: string, catalogJson: string, file: string): Promise<string> {
    const header = { catalog_json: catalogJson, sha256: await hashFile(file), size: String(statSync(file).size), stage: true };
    const response = await this.transfer(target, tenantId, header, chunksOf(file));
    if (!response.staged) throw new TenantdError(grpc.status.INTERNAL, 'MOVE_TRANSFER_FAILED', `node ${target.id} staged nothing`);
    return response.staged;
  }

  async sendDelta(target: NodeInfo, tenantId: string, catalogJson: string, epoch: number, base: string, file: string, delta: PageDelta): Promise<void> {
    const header = { catalog_json: catalogJson, epoch: String(epoch), sha256: delta.sha256, size: String(delta.size), base };
    await this.transfer(target, tenantId, header, patchesOf(file, delta));
  }

  /** One ReceiveTenant call: the header, then `parts` as the stream takes them. */
  private async transfer(target: NodeInfo, tenantId: string, header: Record<string, unknown>, parts: AsyncIterable<Record<string, unknown>>): Promise<{ staged?: string }> {
    let client = this.clients.get(target.internal);
    if (!client) {
      client = new grpc.Client(target.internal, this.credentials(), { 'grpc.max_send_message_length': 8 * 1024 * 1024 });
      this.clients.set(target.internal, client);
    }
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this.adminKey()}`);
    metadata.set('x-tenant-id', tenantId);
    let call!: grpc.ClientWritableStream<unknown>;
    const answered = new Promise<{ staged?: string }>((resolve, reject) => {
      call = client.makeClientStreamRequest(
        this.method.path,
        (value: unknown) => this.method.requestSerialize(value),
        (bytes: Buffer) => this.method.responseDeserialize(bytes) as { staged?: string },
        metadata,
        { deadline: Date.now() + 10 * 60_000 },
        (error, response) => {
          if (!error) return resolve(response ?? {});
          const status = fromServiceError(error);
          reject(new TenantdError(error.code, status.reason || 'MOVE_TRANSFER_FAILED', `node ${target.id}: ${error.details}`));
        },
      );
    });
    // Settles when the call ends, however: a target that dies while the stream waits for
    // 'drain' never drains, and the wait must end with the call.
    let ended = false;
    const over = answered.then(
      () => void (ended = true),
      () => void (ended = true),
    );
    try {
      call.write({ header });
      for await (const part of parts) {
        if (ended) break;
        if (!call.write(part)) await Promise.race([new Promise((resolve) => call.once('drain', resolve)), over]);
      }
      if (!ended) call.end();
    } catch (error) {
      call.cancel();
      answered.catch(() => undefined);
      throw error;
    }
    return answered;
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
  }
}

async function* chunksOf(file: string): AsyncGenerator<{ chunk: Buffer }> {
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) yield { chunk: chunk as Buffer };
}

async function* patchesOf(file: string, delta: PageDelta): AsyncGenerator<{ patch: { offset: string; data: Buffer } }> {
  for await (const run of readRuns(file, delta.runs)) yield { patch: { offset: String(run.offset), data: run.data } };
}

async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
