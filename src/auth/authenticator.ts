/**
 * `authorization: Bearer <key>` -> Principal. Known keys are cached by their
 * SHA-256, never by their text: a lookup's timing can then tell an attacker
 * about a digest, nothing about a key, and the match found is confirmed with
 * a constant-time compare. Unknown keys are never cached (an attacker could
 * fill the cache with them) and cost one indexed lookup.
 * Revocation and tenant deletion evict from the cache at once, so they take
 * effect on the next call.
 */
import { status as Status, type Metadata } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { keyDigest, sameHash } from './keys.ts';
import type { Principal } from './principal.ts';

const MAX_CACHED_KEYS = 200_000;
const MAX_KEY_LENGTH = 512;

function unauthenticated(reason: string, message: string): TenantdError {
  return new TenantdError(Status.UNAUTHENTICATED, reason, message);
}

export class Authenticator {
  private readonly byKey = new Map<string, Principal>();
  private readonly digestById = new Map<string, string>();

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
    const text = header.slice(space + 1).trim();
    if (text.length === 0 || text.length > MAX_KEY_LENGTH) {
      throw unauthenticated('INVALID_CREDENTIALS', 'unknown or revoked API key');
    }
    const key = keyDigest(text);
    const cached = this.byKey.get(key);
    if (cached) return cached;
    const hash = Buffer.from(key, 'base64');
    const record = this.catalog.keyByHash(hash);
    if (!record || record.revokeTime !== null || !sameHash(record.hash, hash)) {
      throw unauthenticated('INVALID_CREDENTIALS', 'unknown or revoked API key');
    }
    const principal: Principal = { keyId: record.keyId, role: record.role, tenantId: record.tenantId };
    if (this.byKey.size >= MAX_CACHED_KEYS) this.evictOldest();
    this.byKey.set(key, principal);
    this.digestById.set(record.keyId, key);
    return principal;
  }

  /** The key id a call's credentials belong to, for audit lines; null when they name no active key. Never throws. */
  keyIdOf(metadata: Metadata): string | null {
    try {
      return this.authenticate(metadata).keyId;
    } catch {
      return null;
    }
  }

  /** Forget a key (revoked, or its tenant deleted). */
  evict(keyId: string): void {
    const key = this.digestById.get(keyId);
    if (key === undefined) return;
    this.digestById.delete(keyId);
    this.byKey.delete(key);
  }

  evictTenant(tenantId: string): void {
    for (const [key, principal] of this.byKey) {
      if (principal.tenantId === tenantId) {
        this.byKey.delete(key);
        this.digestById.delete(principal.keyId);
      }
    }
  }

  private evictOldest(): void {
    const [key, principal] = this.byKey.entries().next().value!;
    this.byKey.delete(key);
    this.digestById.delete(principal.keyId);
  }
}
