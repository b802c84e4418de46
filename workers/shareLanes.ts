/**
 * The shard's side of shard_ms_per_second: the order of turns. Admission
 * (src/quota/admission.ts) lets a tenant past its share in only when no other
 * tenant of the shard has called lately; here, its calls then wait behind
 * every tenant within its share. Together: a tenant alone on its shard is
 * never refused, and a neighbour that turns up waits for at most the one
 * over-share call running.
 *
 * The ledger is the shard's own account of each tenant's time, a bucket like
 * admission's (one second's worth at the tenant's rate, refilled at that
 * rate), measured here as the calls run, so the lane is decided without
 * waiting for the tenant's next admission.
 */

interface Account {
  /** How far the bucket is drawn down (µs) at `atMs`. */
  debtUs: number;
  atMs: number;
  shareMs: number;
}

/** Debt past this many seconds' worth is not kept: it only decides a lane, and the tenant comes back within its share this soon once it stops. */
const MAX_DEBT_SECONDS = 2;

export class ShareLedger {
  private readonly accounts = new Map<string, Account>();

  /** Adds `ms` of the tenant's shard time, at its rate `shareMs` (ms per second; negative is unlimited). */
  charge(tenantId: string, shareMs: number | undefined, ms: number, nowMs: number): void {
    if (shareMs === undefined || shareMs < 0) {
      this.accounts.delete(tenantId);
      return;
    }
    const account = this.accounts.get(tenantId);
    const debt = account === undefined ? 0 : this.debtOf(account, nowMs);
    const next = Math.min(debt + ms * 1000, shareMs * 1000 * MAX_DEBT_SECONDS);
    if (account === undefined) this.accounts.set(tenantId, { debtUs: next, atMs: nowMs, shareMs });
    else {
      account.debtUs = next;
      account.atMs = nowMs;
      account.shareMs = shareMs;
    }
  }

  /** Whether the tenant has used more than its share: its bucket is drawn past one second's worth. */
  overShare(tenantId: string, nowMs: number): boolean {
    const account = this.accounts.get(tenantId);
    if (account === undefined) return false;
    return this.debtOf(account, nowMs) >= account.shareMs * 1000;
  }

  /** Forgets the tenants whose buckets are full again. */
  prune(nowMs: number): void {
    for (const [tenantId, account] of this.accounts) if (this.debtOf(account, nowMs) === 0) this.accounts.delete(tenantId);
  }

  private debtOf(account: Account, nowMs: number): number {
    return Math.max(0, account.debtUs - Math.max(0, nowMs - account.atMs) * account.shareMs);
  }
}

/** A line of tenants waiting for their turn, taken from the head; the part served is dropped now and then. */
export class TurnLine {
  private items: string[] = [];
  private head = 0;

  push(tenantId: string): void {
    this.items.push(tenantId);
  }

  /** The next tenant in line; undefined when the line is empty (and then reset). */
  shift(): string | undefined {
    if (this.head >= this.items.length) {
      this.items = [];
      this.head = 0;
      return undefined;
    }
    const tenantId = this.items[this.head++]!;
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      // Under steady load the line never empties: drop the part already served.
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return tenantId;
  }
}
