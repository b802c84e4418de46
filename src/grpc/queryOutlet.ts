/**
 * Where a Query's chunks wait for its client. The shard produces a result as
 * fast as it can and cannot be paused mid-statement, so what the client has
 * not taken yet is held here. A result may be up to 256 MiB, and a slow
 * reader on a slow network should still get it; but a tenant must not be
 * able to fill the process's memory with calls whose clients never read.
 * So what waits is bounded per tenant (by default one whole result's worth)
 * and for all calls together; the call that would pass either bound is
 * ended with RESOURCE_EXHAUSTED and the rest of its result is dropped as it
 * arrives.
 */
import { status as Status, type ServerWritableStream } from '@grpc/grpc-js';
import type { UnreadLimits } from '../config.ts';
import { TenantdError } from '../errors.ts';
import { whenWritable } from './handlers.ts';

/** What waits for Query clients, per tenant and in all. One per server. */
export class UnreadBudget {
  private total = 0;
  private readonly byTenant = new Map<string, number>();

  constructor(readonly limits: UnreadLimits) {}

  /** Takes `bytes` for `tenantId`; false (nothing taken) when a bound would be passed. */
  take(tenantId: string, bytes: number): boolean {
    const tenant = this.byTenant.get(tenantId) ?? 0;
    if (tenant + bytes > this.limits.perTenant || this.total + bytes > this.limits.total) return false;
    this.byTenant.set(tenantId, tenant + bytes);
    this.total += bytes;
    return true;
  }

  give(tenantId: string, bytes: number): void {
    const tenant = (this.byTenant.get(tenantId) ?? 0) - bytes;
    if (tenant > 0) this.byTenant.set(tenantId, tenant);
    else this.byTenant.delete(tenantId);
    this.total -= bytes;
  }
}

export class QueryOutlet<M> {
  private readonly waiting: { message: M; bytes: number }[] = [];
  private pumping: Promise<void> | null = null;
  private failure: TenantdError | null = null;
  private closed = false;
  /** Resolved when the call is ended for a slow client: a pump waiting for a client that never reads stops. */
  private readonly stopped: Promise<void>;
  private stop!: () => void;

  constructor(
    private readonly call: ServerWritableStream<unknown, M>,
    private readonly budget: UnreadBudget,
    private readonly tenantId: string,
  ) {
    this.stopped = new Promise((resolve) => (this.stop = resolve));
  }

  /** A chunk of `bytes` (its estimated size) for the client; written at once while the stream takes writes. */
  push(message: M, bytes: number): void {
    if (this.failure !== null || this.closed || this.call.cancelled) return;
    if (this.pumping === null && this.waiting.length === 0) {
      if (!this.call.write(message)) this.pumping = this.pump();
      return;
    }
    if (!this.budget.take(this.tenantId, bytes)) {
      this.fail();
      return;
    }
    this.waiting.push({ message, bytes });
  }

  /** Resolves when everything pushed has been handed to gRPC; throws if the call was ended for a slow client. */
  async finish(): Promise<void> {
    if (this.pumping !== null) await this.pumping;
    if (this.failure !== null) throw this.failure;
  }

  /**
   * The call is over, whatever its outcome: a pump still waiting for the
   * client stops, what waits is dropped, and nothing pushed later is kept.
   * Returns once the pump has stopped. The handler calls it on every path,
   * so a failure partway through a result (the shard's error, the query
   * timeout, RESULT_TOO_LARGE) never leaves a pump running past the call.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.dropWaiting();
    this.stop();
    if (this.pumping !== null) await this.pumping;
  }

  /** Never rejects: whenWritable does not, and nothing else in the loop throws. */
  private async pump(): Promise<void> {
    try {
      for (;;) {
        await Promise.race([whenWritable(this.call), this.stopped]);
        if (this.call.cancelled || this.failure !== null || this.closed) return;
        let more = true;
        while (more && this.waiting.length > 0) {
          const next = this.waiting.shift()!;
          this.budget.give(this.tenantId, next.bytes);
          more = this.call.write(next.message);
        }
        if (more) return;
      }
    } finally {
      // A client that went away leaves nothing behind.
      this.dropWaiting();
      this.pumping = null;
    }
  }

  private fail(): void {
    const { perTenant, total } = this.budget.limits;
    this.failure = new TenantdError(
      Status.RESOURCE_EXHAUSTED,
      'CLIENT_TOO_SLOW',
      `the client read this Query's result too slowly: more than ${perTenant} bytes of this tenant's results (or ${total} of all tenants') waited to be read; read faster or page the result with LIMIT and a key`,
    );
    this.dropWaiting();
    this.stop();
  }

  private dropWaiting(): void {
    for (const { bytes } of this.waiting) this.budget.give(this.tenantId, bytes);
    this.waiting.length = 0;
  }
}
