/**
 * API keys: `tdk_` (tenant) or `tda_` (admin), a public key id, and 32 random
 * bytes. Only the SHA-256 of the whole key is stored; a slow hash would add
 * nothing because the secret has 256 bits of entropy.
 */
import { hash, randomBytes, timingSafeEqual } from 'node:crypto';

export interface NewKey {
  keyId: string;
  /** The secret as shown to the user, once. */
  key: string;
  hash: Buffer;
}

/** A key's SHA-256, as stored. One-shot `crypto.hash`: every call hashes its key, and a Hash object costs ~8x as much. */
export function hashKey(key: string): Buffer {
  return hash('sha256', key, 'buffer');
}

/** {@link hashKey} as base64, without the Buffer: what the authenticator's cache is keyed by. */
export function keyDigest(key: string): string {
  return hash('sha256', key, 'base64');
}

export function newKeyId(): string {
  return randomBytes(6).toString('hex');
}

export function generateKey(kind: 'admin' | 'tenant'): NewKey {
  const keyId = newKeyId();
  const key = `${kind === 'admin' ? 'tda' : 'tdk'}_${keyId}_${randomBytes(32).toString('base64url')}`;
  return { keyId, key, hash: hashKey(key) };
}

const MIN_KEY_LENGTH = 43;
const MAX_KEY_LENGTH = 512;
/** What 32 random bytes carry; a key given by an operator must estimate at least this much. */
const MIN_ESTIMATED_BITS = 128;

/**
 * Why an operator-supplied key (tenants file, --admin-key-file) is weaker
 * than the ones tenantd makes, or null when it is not: length, alphabet
 * (base64, base64url, hex and our own `tdk_`/`tda_` keys), and entropy as
 * estimated from the key itself (character frequencies times length,
 * discounted for runs and sequences), so `aaaa…` or `abcabc…` is refused
 * while the output of `openssl rand -base64 32` or `-hex 32` passes.
 */
export function keyWeakness(key: string): string | null {
  if (key.length < MIN_KEY_LENGTH) return `it has ${key.length} characters; at least ${MIN_KEY_LENGTH} characters are needed (32 random bytes in base64)`;
  if (key.length > MAX_KEY_LENGTH) return `it has ${key.length} characters; at most ${MAX_KEY_LENGTH} are allowed`;
  const bad = /[^A-Za-z0-9._~+/=_-]/.exec(key);
  if (bad) return `it contains ${JSON.stringify(bad[0])}; keys use only A-Z a-z 0-9 and . _ ~ + / = -`;
  const counts = new Map<string, number>();
  for (const c of key) counts.set(c, (counts.get(c) ?? 0) + 1);
  let perChar = 0;
  for (const n of counts.values()) perChar -= (n / key.length) * Math.log2(n / key.length);
  // Characters that repeat or continue their predecessor (aaaa, abcd, 1234), or that end a
  // four-character run seen earlier in the key (a repeated word), add next to nothing.
  let predictable = 0;
  const grams = new Set<string>();
  for (let i = 1; i < key.length; i++) {
    const step = key.charCodeAt(i) - key.charCodeAt(i - 1);
    const gram = i >= 3 ? key.slice(i - 3, i + 1) : null;
    if (step === 0 || step === 1 || step === -1 || (gram !== null && grams.has(gram))) predictable++;
    if (gram !== null) grams.add(gram);
  }
  const bits = perChar * (key.length - predictable);
  if (counts.size < 12 || bits < MIN_ESTIMATED_BITS) {
    return `it looks far from random (about ${Math.floor(bits)} bits estimated, ${MIN_ESTIMATED_BITS} needed): use \`openssl rand -base64 32\``;
  }
  return null;
}

/** Keys given by an operator (tenants.yaml, --admin-key-file) must be at least as strong as ours. */
export function isAcceptableKey(key: string): boolean {
  return keyWeakness(key) === null;
}

/** Whether two key hashes are equal, in time that does not depend on where they differ. */
export function sameHash(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
