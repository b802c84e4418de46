/**
 * API keys: `tdk_` (tenant) or `tda_` (admin), a public key id, and 32 random
 * bytes. Only the SHA-256 of the whole key is stored; a slow hash would add
 * nothing because the secret has 256 bits of entropy.
 */
import { createHash, randomBytes } from 'node:crypto';

export interface NewKey {
  keyId: string;
  /** The secret as shown to the user, once. */
  key: string;
  hash: Buffer;
}

export function hashKey(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

export function newKeyId(): string {
  return randomBytes(6).toString('hex');
}

export function generateKey(kind: 'admin' | 'tenant'): NewKey {
  const keyId = newKeyId();
  const key = `${kind === 'admin' ? 'tda' : 'tdk'}_${keyId}_${randomBytes(32).toString('base64url')}`;
  return { keyId, key, hash: hashKey(key) };
}

/** Keys given by an operator (tenants.yaml) must be at least as strong as ours. */
export function isAcceptableKey(key: string): boolean {
  return /^[A-Za-z0-9._~+/=-]{43,512}$/.test(key);
}
