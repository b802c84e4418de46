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
}

export class Placement extends EventEmitter {
  private readonly slots: (Assignment | null)[] = new Array<Assignment | null>(SLOT_COUNT).fill(null);
  private readonly overrides = new Map<string, Assignment>();
  private readonly nodes = new Map<string, NodeInfo>();
  private watcher: Watcher | null = null;
  /** The last etcd revision this cache reflects. */
  revision = '0';

  constructor(private readonly etcd: Etcd3) {
    super();
  }

  /** Loads everything under the prefix, then follows changes. */
  async start(): Promise<void> {
    await this.reload();
    const watcher = await this.etcd
      .watch()
      .prefix(PREFIX)
      .startRevision(String(BigInt(this.revision) + 1n))
      .create();
    watcher.on('put', (kv) => this.apply(kv, false));
    watcher.on('delete', (kv) => this.apply(kv, true));
    // The watcher reconnects by itself and resumes from the last revision it saw.
    watcher.on('error', () => undefined);
    this.watcher = watcher;
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
