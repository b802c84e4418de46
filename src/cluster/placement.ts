/**
 * Where every tenant lives, as this node last saw it in etcd.
 *
 * etcd holds, under one prefix:
 *   slots/<n>           {"node": id, "epoch": e}  one per assigned slot (16,384 at most)
 *   overrides/<tenant>  {"node": id, "epoch": e}  a tenant moved alone, away from its slot's node
 *   nodes/<id>          {"grpc": addr, "internal": addr}  under the node's lease
 *
 * The cache is loaded once and then kept by a watch that resumes from the
 * last revision seen, so an etcd restart or a network cut leaves the node
 * serving from what it knew (moves, which write etcd, wait for it to come
 * back). Every change bumps the owner's epoch: a node that installs a
 * tenant at epoch e refuses writes stamped with an older one.
 */
import { EventEmitter } from 'node:events';
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import { SLOT_COUNT, slotOf } from './slots.ts';

export const PREFIX = '/tenantd/';
export const SLOTS = `${PREFIX}slots/`;
export const OVERRIDES = `${PREFIX}overrides/`;
export const NODES = `${PREFIX}nodes/`;
/** How often placement is compared with etcd, in case the watch stopped delivering (Placement.probe). */
const PROBE_MS = 3_000;

export interface Assignment {
  node: string;
  epoch: number;
  /** etcd's mod revision of the key: a move's transaction compares it. */
  modRevision: string;
}

export interface NodeInfo {
  id: string;
  /** Where clients and other nodes call this node's gRPC API. */
  grpc: string;
  /** Where other nodes send it tenants being moved (may equal grpc). */
  internal: string;
}

export interface Owner extends Assignment {
  /** The assignment came from a per-tenant override, not the slot. */
  override: boolean;
  slot: number;
  /** null when the owner has no live lease: it is down or fenced. */
  info: NodeInfo | null;
}

function parseAssignment(kv: IKeyValue): Assignment | null {
  try {
    const value = JSON.parse(kv.value.toString()) as { node?: unknown; epoch?: unknown };
    if (typeof value.node !== 'string' || typeof value.epoch !== 'number') return null;
    return { node: value.node, epoch: value.epoch, modRevision: kv.mod_revision };
  } catch {
    return null;
  }
}

function parseNode(id: string, kv: IKeyValue): NodeInfo | null {
  try {
    const value = JSON.parse(kv.value.toString()) as { grpc?: unknown; internal?: unknown };
    if (typeof value.grpc !== 'string') return null;
    return { id, grpc: value.grpc, internal: typeof value.internal === 'string' ? value.internal : value.grpc };
  } catch {
    return null;
  }
}

export declare interface Placement {
  /** After any change to slots, overrides or nodes. */
  on(event: 'change', listener: () => void): this;
  /** After placement was read again from etcd because its watch had stopped delivering. */
  on(event: 'resync', listener: (why: string) => void): this;
}

export class Placement extends EventEmitter {
  private readonly slots: (Assignment | null)[] = new Array<Assignment | null>(SLOT_COUNT).fill(null);
  private readonly overrides = new Map<string, Assignment>();
  private readonly nodes = new Map<string, NodeInfo>();
  private watcher: Watcher | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private resyncing: Promise<void> | null = null;
  private staleOnLastProbe = false;
  private stopped = false;
  /** The last etcd revision this cache reflects. */
  revision = '0';

  constructor(private readonly etcd: Etcd3) {
    super();
  }

  /** Loads everything under the prefix, then follows changes, and checks now and then that it still does. */
  async start(): Promise<void> {
    await this.reload();
    await this.watch();
    this.probeTimer = setInterval(() => void this.probe(), PROBE_MS);
    this.probeTimer.unref();
  }

  private async watch(): Promise<void> {
    const watcher = await this.etcd
      .watch()
      .prefix(PREFIX)
      .startRevision(String(BigInt(this.revision) + 1n))
      .create();
    watcher.on('put', (kv) => this.apply(kv, false));
    watcher.on('delete', (kv) => this.apply(kv, true));
    // The watcher reconnects by itself and resumes from the last revision it saw; but a watch
    // that etcd cancels is dropped by the library for good, with this one error: follow anew.
    watcher.on('error', () => void this.resync('the watch was cancelled'));
    this.watcher = watcher;
  }

  /** Reads everything again and follows changes from there. */
  private resync(why: string): Promise<void> {
    this.resyncing ??= (async () => {
      const old = this.watcher;
      this.watcher = null;
      await old?.cancel().catch(() => undefined);
      while (!this.stopped) {
        try {
          await this.reload();
          await this.watch();
          this.emit('resync', why);
          return;
        } catch {
          // etcd unreachable: the cached placement serves meanwhile.
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    })().finally(() => (this.resyncing = null));
    return this.resyncing;
  }

  /**
   * A watch can also stop delivering without a word (seen after etcd was
   * killed and restarted: a node then never learnt that another had come
   * back). So every PROBE_MS this node reads the live nodes (a few keys,
   * with etcd's revision); when etcd lists other nodes, or has changes under
   * the prefix that were not applied, on two probes in a row (one could be an
   * event still on its way), it reads everything again. Whether a revision
   * ahead of what was applied is a change under the prefix (and not another
   * writer's elsewhere in a shared etcd) is asked only then: the newest
   * change under the prefix is a range sorted over every slot key.
   */
  private async probe(): Promise<void> {
    if (this.stopped || this.resyncing !== null || this.watcher === null) return;
    try {
      const nodes = await this.etcd.getAll().prefix(NODES).exec();
      let behind = BigInt(nodes.header.revision) > BigInt(this.revision);
      if (behind && this.staleOnLastProbe) {
        const newest = await this.etcd.getAll().prefix(PREFIX).sort('Mod', 'Descend').limit(1).exec();
        behind = BigInt(newest.kvs[0]?.mod_revision ?? '0') > BigInt(this.revision);
        // Nothing under the prefix is newer: the revision moved elsewhere (or by a delete,
        // which the node check covers for nodes). Caught up to it, so as not to ask again.
        if (!behind) this.revision = nodes.header.revision;
      }
      const ids = nodes.kvs.map((kv) => kv.key.toString().slice(NODES.length));
      const otherNodes = ids.length !== this.nodes.size || ids.some((id) => !this.nodes.has(id));
      const stale = behind || otherNodes;
      if (stale && this.staleOnLastProbe) {
        this.staleOnLastProbe = false;
        await this.resync(behind ? 'etcd has changes the watch did not deliver' : 'etcd lists other live nodes than the watch did');
        return;
      }
      this.staleOnLastProbe = stale;
    } catch {
      // etcd unreachable: nothing to compare with; the cached placement serves.
    }
  }

  /** Reads the whole prefix again (after a lost lease: a zombie must not trust what it cached). */
  async reload(): Promise<void> {
    const result = await this.etcd.getAll().prefix(PREFIX).exec();
    this.slots.fill(null);
    this.overrides.clear();
    this.nodes.clear();
    for (const kv of result.kvs) this.apply(kv, false, false);
    this.revision = result.header.revision;
    this.emit('change');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.probeTimer) clearInterval(this.probeTimer);
    await this.resyncing?.catch(() => undefined);
    await this.watcher?.cancel();
    this.watcher = null;
  }

  private apply(kv: IKeyValue, deleted: boolean, notify = true): void {
    const key = kv.key.toString();
    if (BigInt(kv.mod_revision) > BigInt(this.revision)) this.revision = kv.mod_revision;
    if (key.startsWith(SLOTS)) {
      const slot = Number(key.slice(SLOTS.length));
      if (!Number.isInteger(slot) || slot < 0 || slot >= SLOT_COUNT) return;
      this.slots[slot] = deleted ? null : parseAssignment(kv);
    } else if (key.startsWith(OVERRIDES)) {
      const tenantId = key.slice(OVERRIDES.length);
      const assignment = deleted ? null : parseAssignment(kv);
      if (assignment) this.overrides.set(tenantId, assignment);
      else this.overrides.delete(tenantId);
    } else if (key.startsWith(NODES)) {
      const id = key.slice(NODES.length);
      const info = deleted ? null : parseNode(id, kv);
      if (info) this.nodes.set(id, info);
      else this.nodes.delete(id);
    } else {
      return;
    }
    if (notify) this.emit('change');
  }

  ownerOf(tenantId: string): Owner | null {
    const slot = slotOf(tenantId);
    const override = this.overrides.get(tenantId);
    const assignment = override ?? this.slots[slot];
    if (!assignment) return null;
    return { ...assignment, override: override !== undefined, slot, info: this.nodes.get(assignment.node) ?? null };
  }

  slot(slot: number): Assignment | null {
    return this.slots[slot] ?? null;
  }

  override(tenantId: string): Assignment | null {
    return this.overrides.get(tenantId) ?? null;
  }

  allOverrides(): ReadonlyMap<string, Assignment> {
    return this.overrides;
  }

  liveNodes(): NodeInfo[] {
    return [...this.nodes.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  node(id: string): NodeInfo | null {
    return this.nodes.get(id) ?? null;
  }

  /** Slots per owner; unassigned slots under "". */
  slotsByNode(): Map<string, number[]> {
    const byNode = new Map<string, number[]>();
    this.slots.forEach((assignment, slot) => {
      const node = assignment?.node ?? '';
      let list = byNode.get(node);
      if (!list) byNode.set(node, (list = []));
      list.push(slot);
    });
    return byNode;
  }
}
