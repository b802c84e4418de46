/**
 * Live delivery of appended events to a tenant's subscribers, on the front
 * end's thread. Append publishes after its shard has committed, so a
 * subscriber never sees an event that is not durable. A subscriber first
 * buffers what is published while it reads the backlog, then drains the
 * buffer past the last position it sent (positions make duplicates easy to
 * drop), then receives live.
 */
import type { LogEvent } from '../protocol.ts';

/** How many events a subscriber may have waiting (backlog phase or a slow reader) before it is ended. */
export const MAX_PENDING_EVENTS = 10_000;
/** The same in bytes of event data. */
export const MAX_PENDING_BYTES = 8 * 1024 * 1024;
/** Subscriptions one tenant may hold open at a time. */
export const MAX_SUBSCRIBERS_PER_TENANT = 16;

/** Why the hub ended a subscription. */
export type SubscriptionEnd = 'shutdown' | 'suspended' | 'deleted' | 'too_slow' | 'moved';

export interface Subscriber {
  /** Takes published events; returns false when the subscriber has too many waiting. */
  offer(events: readonly LogEvent[]): boolean;
  /** Ends the subscription from the hub's side. */
  end(reason: SubscriptionEnd): void;
}

export class EventHub {
  private readonly byTenant = new Map<string, Set<Subscriber>>();

  count(tenantId: string): number {
    return this.byTenant.get(tenantId)?.size ?? 0;
  }

  add(tenantId: string, subscriber: Subscriber): void {
    let set = this.byTenant.get(tenantId);
    if (!set) this.byTenant.set(tenantId, (set = new Set()));
    set.add(subscriber);
  }

  remove(tenantId: string, subscriber: Subscriber): void {
    const set = this.byTenant.get(tenantId);
    if (!set) return;
    set.delete(subscriber);
    if (set.size === 0) this.byTenant.delete(tenantId);
  }

  publish(tenantId: string, events: readonly LogEvent[]): void {
    const set = this.byTenant.get(tenantId);
    if (!set) return;
    for (const subscriber of [...set]) {
      if (!subscriber.offer(events)) {
        this.remove(tenantId, subscriber);
        subscriber.end('too_slow');
      }
    }
  }

  /** Ends every subscription of `tenantId`, or of every tenant. */
  endAll(reason: SubscriptionEnd, tenantId?: string): void {
    const tenants = tenantId === undefined ? [...this.byTenant.keys()] : [tenantId];
    for (const id of tenants) {
      const set = this.byTenant.get(id);
      this.byTenant.delete(id);
      for (const subscriber of set ?? []) subscriber.end(reason);
    }
  }
}
