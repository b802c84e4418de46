/**
 * grpc.health.v1.Health. The server as a whole ("") and each tenantd
 * service report SERVING until shutdown begins, then NOT_SERVING, so load
 * balancers stop sending new calls while the ones in flight drain.
 */
import { status as Status, type ServerUnaryCall, type ServerWritableStream } from '@grpc/grpc-js';
import { TenantdError } from '../errors.ts';
import { serverStream, unary, type Handlers } from './handlers.ts';
import type { ServiceObserver } from './rpcObserver.ts';

type ServingStatus = 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

interface HealthRequest {
  service: string;
}
interface HealthResponse {
  status: ServingStatus;
}

export class HealthState {
  private serving = true;
  private readonly watchers = new Set<() => void>();
  private readonly enders = new Set<() => void>();

  constructor(private readonly services: readonly string[]) {}

  statusOf(service: string): ServingStatus | null {
    if (service !== '' && !this.services.includes(service)) return null;
    return this.serving ? 'SERVING' : 'NOT_SERVING';
  }

  setServing(serving: boolean): void {
    if (this.serving === serving) return;
    this.serving = serving;
    for (const notify of this.watchers) notify();
  }

  /** Ends every Watch stream (after they have seen NOT_SERVING), so they do not hold up shutdown. */
  endWatches(): void {
    for (const end of this.enders) end();
  }

  get isServing(): boolean {
    return this.serving;
  }

  handlers(observer: ServiceObserver): Handlers {
    return {
      Check: unary(observer, 'Check', (call: ServerUnaryCall<HealthRequest, HealthResponse>) => {
        const status = this.statusOf(call.request.service);
        if (status === null) {
          throw new TenantdError(Status.NOT_FOUND, 'SERVICE_UNKNOWN', `unknown service ${JSON.stringify(call.request.service)}`);
        }
        return { status };
      }),
      Watch: serverStream(observer, 'Watch', (call: ServerWritableStream<HealthRequest, HealthResponse>) => {
        const service = call.request.service;
        return new Promise<void>((resolve) => {
          let last: ServingStatus | null = null;
          const send = () => {
            const status = this.statusOf(service) ?? 'SERVICE_UNKNOWN';
            if (status !== last) call.write({ status });
            last = status;
          };
          const stop = () => {
            this.watchers.delete(send);
            this.enders.delete(stop);
            resolve();
          };
          this.watchers.add(send);
          this.enders.add(stop);
          call.on('cancelled', stop);
          call.on('close', stop);
          send();
        });
      }),
    };
  }
}
