/**
 * Evening the cluster out, one rebalance at a time.
 *
 * Whoever is asked takes the cluster's leader lock in etcd first, so two
 * rebalances never run at once (a second is refused ABORTED
 * REBALANCE_RUNNING). Then:
 *   - unassigned slots go to the live nodes with the fewest (nothing moves:
 *     no tenant can live in a slot no node owned);
 *   - each node's share is S/N slots (the remainder to the nodes that have
 *     the most already), and only the excess of the nodes above their share
 *     moves: tenants whose slot stays put are never touched;
 *   - with `drain`, the drained node's share is 0, and tenants moved onto it
 *     alone (overrides) move off too.
 * Slot moves run on their source node (MoveSlots), `parallelism` at a time.
 */
import * as grpc from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';
import { TenantdError } from '../errors.ts';
import type { MoveReport } from './moves.ts';
import { SLOTS, type NodeInfo, type Placement } from './placement.ts';
import { SLOT_COUNT } from './slots.ts';

const LOCK_KEY = '/tenantd/leader';
/** A leader that dies frees the key after this long. */
const LEADER_TTL_S = 15;
/** Slots per MoveSlots call: a source moves them in etcd transactions of 60. */
const SLOTS_PER_CALL = 240;
const ASSIGN_PER_TXN = 60;

export interface RemoteMoves {
  moveSlots(source: NodeInfo, slots: number[], target: string, onProgress: (r: MoveReport) => void): Promise<void>;
  moveTenant(source: NodeInfo, tenantId: string, target: string, onProgress: (r: MoveReport) => void): Promise<void>;
}

export interface RebalanceOptions {
  drain: string | null;
  parallelism: number;
  dryRun: boolean;
}

export interface PlannedMove {
  from: string;
  to: string;
  slots: number[];
}

/** The fewest slot moves that give every node its share; pure, for tests and dry runs. */
export function planMoves(owners: readonly (string | null)[], nodes: readonly string[], drain: string | null): { assign: Map<string, number[]>; moves: PlannedMove[] } {
  const keep = nodes.filter((n) => n !== drain);
  if (keep.length === 0) throw new TenantdError(grpc.status.FAILED_PRECONDITION, 'NO_LIVE_NODES', 'no live node to place slots on');
  const held = new Map<string, number[]>(keep.map((n) => [n, []]));
  const loose: number[] = [];
  const donors = new Map<string, number[]>();
  owners.forEach((owner, slot) => {
    if (owner === null) loose.push(slot);
    else if (held.has(owner)) held.get(owner)!.push(slot);
    else (donors.get(owner) ?? donors.set(owner, []).get(owner)!).push(slot);
  });
  // Shares: the remainder goes to whoever holds the most already (fewer moves).
  const ranked = [...keep].sort((a, b) => held.get(b)!.length - held.get(a)!.length || (a < b ? -1 : 1));
  const base = Math.floor(owners.length / keep.length);
  const share = new Map(ranked.map((n, i) => [n, base + (i < owners.length % keep.length ? 1 : 0)]));
  // Above their share: give away the excess (highest slots first).
  for (const n of keep) {
    const slots = held.get(n)!;
    const excess = slots.length - share.get(n)!;
    if (excess > 0) donors.set(n, [...(donors.get(n) ?? []), ...slots.splice(slots.length - excess, excess)]);
  }
  const needy = () => keep.filter((n) => held.get(n)!.length < share.get(n)!);
  const assign = new Map<string, number[]>();
  for (const slot of loose) {
    const to = needy()[0] ?? ranked[ranked.length - 1]!;
    held.get(to)!.push(slot);
    (assign.get(to) ?? assign.set(to, []).get(to)!).push(slot);
  }
  const moves: PlannedMove[] = [];
  for (const [from, slots] of donors) {
    for (const slot of slots) {
      const to = needy()[0] ?? ranked[ranked.length - 1]!;
      held.get(to)!.push(slot);
      let move = moves.find((m) => m.from === from && m.to === to && m.slots.length < SLOTS_PER_CALL);
      if (!move) moves.push((move = { from, to, slots: [] }));
      move.slots.push(slot);
    }
  }
  return { assign, moves };
}

export class Rebalancer {
  constructor(
    private readonly etcd: Etcd3,
    private readonly placement: Placement,
    private readonly remote: RemoteMoves,
    /** This node's id, written as the leader key's value. */
    private readonly self: string,
  ) {}

  async run(options: RebalanceOptions, report: (r: MoveReport & { slotsDone?: number; slotsTotal?: number }) => void): Promise<void> {
    const release = await this.lead();
    try {
      const nodes = this.placement.liveNodes();
      const owners = Array.from({ length: SLOT_COUNT }, (_, slot) => this.placement.slot(slot)?.node ?? null);
      const { assign, moves } = planMoves(
        owners,
        nodes.map((n) => n.id),
        options.drain,
      );
      const total = moves.reduce((sum, m) => sum + m.slots.length, 0);
      const assigned = [...assign.values()].reduce((sum, s) => sum + s.length, 0);
      report({ subject: 'rebalance', stage: 'PLANNED', message: `${assigned} unassigned slots to assign, ${total} slots to move`, slotsTotal: total });
      if (options.dryRun) return;
      for (const [node, slots] of assign) {
        for (let i = 0; i < slots.length; i += ASSIGN_PER_TXN) {
          const batch = slots.slice(i, i + ASSIGN_PER_TXN);
          let txn = this.etcd.if(`${SLOTS}${batch[0]}`, 'Version', '==', 0);
          for (const slot of batch.slice(1)) txn = txn.and(`${SLOTS}${slot}`, 'Version', '==', 0);
          const put = (slot: number) => this.etcd.put(`${SLOTS}${slot}`).value(JSON.stringify({ node, epoch: 1 }));
          const result = await txn.then(...batch.map(put)).commit();
          if (result.succeeded) continue;
          // Some slot of the batch was assigned meanwhile: assign the others one by one.
          for (const slot of batch) await this.etcd.if(`${SLOTS}${slot}`, 'Version', '==', 0).then(put(slot)).commit();
        }
      }
      let done = 0;
      const queue = [...moves];
      const worker = async (): Promise<void> => {
        for (let move = queue.shift(); move; move = queue.shift()) {
          const source = this.placement.node(move.from);
          if (!source) {
            report({ subject: `node ${move.from}`, stage: 'FAILED', message: `node ${move.from} is not live; its slots cannot be copied` });
            continue;
          }
          await this.remote.moveSlots(source, move.slots, move.to, (r) => report(r));
          done += move.slots.length;
          report({ subject: 'rebalance', stage: 'PROGRESS', slotsDone: done, slotsTotal: total });
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, options.parallelism) }, worker));
      if (options.drain) {
        for (const [tenantId, assignment] of this.placement.allOverrides()) {
          if (assignment.node !== options.drain) continue;
          const source = this.placement.node(options.drain);
          const to = this.placement.ownerOf(tenantId);
          if (!source || !to) continue;
          // Back to its slot's owner, which the drain just made another node.
          const slotOwner = this.placement.slot(to.slot)?.node;
          if (slotOwner && slotOwner !== options.drain) await this.remote.moveTenant(source, tenantId, slotOwner, (r) => report(r));
        }
      }
      report({ subject: 'rebalance', stage: 'DONE', slotsDone: done, slotsTotal: total });
    } finally {
      await release();
    }
  }

  /**
   * Takes the cluster's leader key: created only if absent, under a lease that
   * this node keeps alive while it leads, so a leader that dies frees it
   * within LEADER_TTL_S. Resolves with the release.
   */
  private async lead(): Promise<() => Promise<void>> {
    const lease = this.etcd.lease(LEADER_TTL_S);
    lease.on('lost', () => undefined);
    try {
      await lease.grant();
      const taken = await this.etcd
        .if(LOCK_KEY, 'Create', '==', 0)
        .then(lease.put(LOCK_KEY).value(this.self))
        .else(this.etcd.get(LOCK_KEY))
        .commit();
      if (!taken.succeeded) {
        const holder = taken.responses[0]?.response_range?.kvs[0]?.value.toString() ?? 'another node';
        throw new TenantdError(grpc.status.ABORTED, 'REBALANCE_RUNNING', `a rebalance is running on ${holder}; wait for it to finish`, {
          retryDelayMs: 5000,
          metadata: { leader: holder },
        });
      }
    } catch (error) {
      await lease.revoke().catch(() => undefined);
      throw error;
    }
    return async () => {
      await lease.revoke().catch(async () => {
        // Revoking failed (etcd busy): remove the key if it is still ours, else its lease frees it.
        await this.etcd.if(LOCK_KEY, 'Value', '==', this.self).then(this.etcd.delete().key(LOCK_KEY)).commit().catch(() => undefined);
      });
    };
  }
}
