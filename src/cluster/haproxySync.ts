/**
 * `tenantd cluster sync-proxy`: keeps HAProxy's routing equal to the
 * placement in etcd, live, through HAProxy's runtime API (no reloads).
 *
 * deploy/haproxy.cfg routes on two maps: `tenants.map` (a tenant moved alone
 * → backend) and `slots.map` (slot → backend), the slot being
 * `req.hdr(x-tenant-id),crc32,mod(16384)`, which is slotOf(). It declares
 * backends `node0`..`node{N-1}` with one placeholder server each; this
 * gives each node a backend (by node id order), points its server at the
 * node's advertised address and enables it, and disables the ones no live
 * node uses; backend `any` (calls without a tenant) gets every live node. Every change is a diff against what HAProxy holds now, so a
 * restart of either side converges. The maps are also written to disk, so
 * an HAProxy restarted from its files starts from the last placement.
 */
import { writeFileSync, renameSync } from 'node:fs';
import { connect } from 'node:net';
import { lookup } from 'node:dns/promises';
import { join } from 'node:path';
import type { Placement } from './placement.ts';
import { SLOT_COUNT } from './slots.ts';

/** Commands per runtime-API connection (separated by ';'). */
const COMMANDS_PER_BATCH = 400;

export interface ProxySyncOptions {
  /** The runtime API: `host:port` (a `stats socket ipv4@...` line) or a unix socket path. */
  socket: string;
  /** The map files' paths as HAProxy knows them (its `map()` arguments). */
  slotsMap: string;
  tenantsMap: string;
  /** How many node backends haproxy.cfg declares. */
  backends: number;
  /** Also write the maps here (the files HAProxy loads at start); null: do not. */
  writeFiles: boolean;
  onLog: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

/** Sends commands to the runtime API; resolves with everything it answered. */
export function runtimeApi(socket: string, commands: readonly string[]): Promise<string> {
  const [host, port] = socket.includes(':') && !socket.startsWith('/') ? [socket.slice(0, socket.lastIndexOf(':')), Number(socket.slice(socket.lastIndexOf(':') + 1))] : [null, 0];
  return new Promise((resolve, reject) => {
    const conn = host === null ? connect(socket) : connect(port, host);
    let out = '';
    conn.setEncoding('utf8');
    conn.on('data', (d: string) => (out += d));
    conn.on('error', reject);
    conn.on('close', () => resolve(out));
    conn.end(`${commands.join(';')}\n`);
  });
}

async function batched(socket: string, commands: readonly string[]): Promise<void> {
  for (let i = 0; i < commands.length; i += COMMANDS_PER_BATCH) {
    const answer = await runtimeApi(socket, commands.slice(i, i + COMMANDS_PER_BATCH));
    const bad = answer.split('\n').find((line) => /^(Unknown|No such|Invalid|Require|'.*' is not|Can't)/i.test(line.trim()));
    if (bad) throw new Error(`haproxy runtime API: ${bad.trim()}`);
  }
}

/** `show map` output: `0x... key value` lines. */
function parseMap(text: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of text.split('\n')) {
    const parts = line.trim().split(/\s+/);
    if (parts.length === 3 && parts[0]!.startsWith('0x')) map.set(parts[1]!, parts[2]!);
  }
  return map;
}

async function resolveAddress(address: string): Promise<{ ip: string; port: number }> {
  const at = address.lastIndexOf(':');
  const host = address.slice(0, at).replace(/^\[|\]$/g, '');
  const { address: ip } = await lookup(host);
  return { ip, port: Number(address.slice(at + 1)) };
}

export class ProxySync {
  private running: Promise<void> | null = null;
  private again = false;

  constructor(
    private readonly placement: Placement,
    private readonly o: ProxySyncOptions,
  ) {}

  /** Syncs now, and after every placement change (coalesced). */
  follow(): void {
    this.placement.on('change', () => this.kick());
    this.kick();
  }

  kick(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.sync()
      .then(() => undefined)
      .catch((error: unknown) => this.o.onLog('warn', 'proxy sync failed; retrying', { error: String(error) }))
      .finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          setTimeout(() => this.kick(), 50).unref();
        }
      });
  }

  /** One pass: backends, then the maps, as diffs. */
  async sync(): Promise<{ changed: number }> {
    const nodes = this.placement.liveNodes();
    if (nodes.length > this.o.backends) {
      this.o.onLog('warn', 'more live nodes than haproxy.cfg declares backends; the rest get no traffic', { nodes: nodes.length, backends: this.o.backends });
    }
    const backendOf = new Map(nodes.slice(0, this.o.backends).map((n, i) => [n.id, `node${i}`]));
    const commands: string[] = [];
    for (let i = 0; i < this.o.backends; i++) {
      const node = nodes[i];
      if (node) {
        const { ip, port } = await resolveAddress(node.grpc);
        commands.push(`set server node${i}/s addr ${ip} port ${port}`, `set server node${i}/s state ready`);
        commands.push(`set server any/n${i} addr ${ip} port ${port}`, `set server any/n${i} state ready`);
      } else {
        commands.push(`set server node${i}/s state maint`, `set server any/n${i} state maint`);
      }
    }
    await batched(this.o.socket, commands);

    const wantSlots = new Map<string, string>();
    for (let slot = 0; slot < SLOT_COUNT; slot++) {
      const owner = this.placement.slot(slot)?.node;
      const backend = owner === undefined ? undefined : backendOf.get(owner);
      if (backend) wantSlots.set(String(slot), backend);
    }
    const wantTenants = new Map<string, string>();
    for (const [tenantId, assignment] of this.placement.allOverrides()) {
      const backend = backendOf.get(assignment.node);
      if (backend) wantTenants.set(tenantId, backend);
    }
    const changed =
      (await this.syncMap(this.o.slotsMap, wantSlots)) + (await this.syncMap(this.o.tenantsMap, wantTenants));
    if (this.o.writeFiles) {
      writeMapFile(this.o.slotsMap, wantSlots);
      writeMapFile(this.o.tenantsMap, wantTenants);
    }
    if (changed > 0) this.o.onLog('info', 'proxy routing updated', { changed, nodes: backendOf.size, revision: this.placement.revision });
    return { changed };
  }

  private async syncMap(file: string, want: Map<string, string>): Promise<number> {
    const have = parseMap(await runtimeApi(this.o.socket, [`show map ${file}`]));
    const commands: string[] = [];
    for (const [key, value] of want) {
      const current = have.get(key);
      if (current === undefined) commands.push(`add map ${file} ${key} ${value}`);
      else if (current !== value) commands.push(`set map ${file} ${key} ${value}`);
    }
    for (const key of have.keys()) if (!want.has(key)) commands.push(`del map ${file} ${key}`);
    await batched(this.o.socket, commands);
    return commands.length;
  }
}

function writeMapFile(path: string, entries: Map<string, string>): void {
  const tmp = join(`${path}.tmp`);
  writeFileSync(tmp, [...entries].map(([k, v]) => `${k} ${v}\n`).join(''));
  renameSync(tmp, path);
}
