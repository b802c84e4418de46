/**
 * Tenants map to a fixed number of slots; slots, not tenants, are what the
 * cluster places on nodes, so etcd holds O(slots + overrides) entries and a
 * new node takes whole slots.
 *
 * The hash is CRC-32 (zlib's, ISO-HDLC) of the tenant id's UTF-8 bytes: the
 * same function HAProxy's `crc32` converter computes, so the proxy finds a
 * tenant's slot from `x-tenant-id` with no code of ours (deploy/haproxy.cfg:
 * `req.hdr(x-tenant-id),crc32,mod(16384)`). It must never change: every
 * placement in etcd depends on it.
 */
import { crc32 } from 'node:zlib';

export const SLOT_COUNT = 16_384;

export function slotOf(tenantId: string): number {
  return crc32(tenantId) % SLOT_COUNT;
}
