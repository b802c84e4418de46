/**
 * `authorization: Bearer <key>` -> Principal. Known keys are cached by their
 * text so the hot path is one Map lookup; unknown keys are never cached (an
 * attacker could fill the cache with them) and cost one indexed lookup.
 * Revocation and tenant deletion evict from the cache at once, so they take
 * effect on the next call.
 */
import { status as Status, type Metadata } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { hashKey } from './keys.ts';
import type { Principal } from './principal.ts';

const MAX_CACHED_KEYS = 200_000;
const MAX_KEY_LENGTH = 512;

function unauthenticated(reason: string, message: string): TenantdError {
  return new TenantdError(Status.UNAUTHENTICATED, reason, message);
}

export class Authenticator {
  private readonly byKey = new Map<string, Principal>();
  private readonly keyTextById = new Map<string, string>();

  constructor(private readonly catalog: Catalog) {}

  authenticate(metadata: Metadata): Principal {
    const values = metadata.get('authorization');
    if (values.length === 0) {
      throw unauthenticated('MISSING_CREDENTIALS', 'missing "authorization: Bearer <key>" metadata');
    }
    const header = values[0];
    if (typeof header !== 'string' || values.length > 1) {
      throw unauthenticated('INVALID_CREDENTIALS', 'expected exactly one "authorization" metadata value');
    }
    const space = header.indexOf(' ');
    if (space === -1 || header.slice(0, space).toLowerCase() !== 'bearer') {
      throw unauthenticated('INVALID_CREDENTIALS', 'the "authorization" metadata must be "Bearer <key>"');
    }
    const key = header.slice(space + 1).trim();
    const cached = this.byKey.get(key);
    if (cached) return cached;
    if (key.length === 0 || key.length > MAX_KEY_LENGTH) {
      throw unauthenticated('INVALID_CREDENTIALS', 'unknown or revoked API key');
    }
    const record = this.catalog.keyByHash(hashKey(key));
    if (!record || record.revokeTime !== null) {
      throw unauthenticated('INVALID_CREDENTIALS', 'unknown or revoked API key');
    }
    const principal: Principal = { keyId: record.keyId, role: record.role, tenantId: record.tenantId };
    if (this.byKey.size >= MAX_CACHED_KEYS) this.evictOldest();
    this.byKey.set(key, principal);
    this.keyTextById.set(record.keyId, key);
    return principal;
  }

  /** Forget a key (revoked, or its tenant deleted). */
  evict(keyId: string): void {
    const key = this.keyTextById.get(keyId);
    if (key === undefined) return;
    this.keyTextById.delete(keyId);
    this.byKey.delete(key);
  }

  evictTenant(tenantId: string): void {
    for (const [key, principal] of this.byKey) {
      if (principal.tenantId === tenantId) {
        this.byKey.delete(key);
        this.keyTextById.delete(principal.keyId);
      }
    }
  }

  private evictOldest(): void {
    const [key, principal] = this.byKey.entries().next().value!;
    this.byKey.delete(key);
    this.keyTextById.delete(principal.keyId);
  }
}
