/**
 * Requests that do not decode get INVALID_ARGUMENT with ErrorInfo reason
 * MALFORMED_REQUEST, never INTERNAL. grpc-js answers a throwing deserializer,
 * a `grpc-timeout` it cannot parse and a compressed body that does not
 * decompress with INTERNAL, all before any handler runs, which tells the
 * client the server failed when it was the request that was wrong.
 *
 * Two points, each as narrow as grpc-js allows:
 * - every method's `requestDeserialize` is wrapped (`malformedSafe`, applied
 *   to each service definition before addService): a failure becomes a
 *   MalformedRequest marker in place of the message, and the server
 *   interceptor below answers the call with the decoder's own words as details;
 * - what grpc-js itself refuses while reading the request (the header and the
 *   decompression) goes through BaseServerInterceptingCall.sendStatus, which no
 *   interceptor sees: `translateTransportStatuses` rewrites those statuses, and
 *   only those (matched by code and grpc-js's own details text), there.
 */
import {
  ServerInterceptingCall,
  status as Status,
  type Server,
  type ServerInterceptor,
  type ServiceDefinition,
} from '@grpc/grpc-js';
import type { PartialStatusObject } from '@grpc/grpc-js/build/src/call-interface.js';
import { BaseServerInterceptingCall } from '@grpc/grpc-js/build/src/server-interceptors.js';
import { invalidArgument, toServiceError, type TenantdError } from '../errors.ts';

/** Stands in for a request message that did not decode. */
export class MalformedRequest {
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {}

  error(): TenantdError {
    return malformed('request', `the request message does not decode as protobuf for ${this.path}: ${this.problem}`);
  }
}

function malformed(field: string, description: string): TenantdError {
  return invalidArgument(field, description, 'MALFORMED_REQUEST');
}

function statusOf(error: TenantdError, method: string): PartialStatusObject {
  const { code, details, metadata } = toServiceError(error, { method });
  return { code: code!, details: details!, metadata: metadata ?? null };
}

/** The service with every method's request deserializer made total: it returns a MalformedRequest instead of throwing. */
export function malformedSafe<T extends ServiceDefinition>(service: T): T {
  const safe: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(service)) {
    const decode = method.requestDeserialize;
    safe[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer): unknown => {
        try {
          return decode(bytes);
        } catch (error) {
          return new MalformedRequest(method.path, error instanceof Error ? error.message : String(error));
        }
      },
    };
  }
  return safe as T;
}

/** From now on, `server.addService` adds each service malformedSafe: one place for every service, including those added by libraries (reflection). */
export function addServicesMalformedSafe(server: Server): void {
  const addService = server.addService.bind(server);
  server.addService = (service, implementation) => addService(malformedSafe(service), implementation);
}

/**
 * Ends a call whose request was a MalformedRequest with INVALID_ARGUMENT; the
 * handler never sees it. Covers every method kind: a client stream's bad
 * message ends the stream at that message.
 */
export const malformedRequestInterceptor: ServerInterceptor = (method, call) => {
  let refused = false;
  return new ServerInterceptingCall(call, {
    start: (next) =>
      next({
        onReceiveMessage: (message: unknown, nextMessage) => {
          if (refused) return;
          if (message instanceof MalformedRequest) {
            refused = true;
            call.sendStatus(statusOf(message.error(), method.path));
            return;
          }
          nextMessage(message);
        },
        onReceiveHalfClose: (nextHalfClose) => {
          if (!refused) nextHalfClose();
        },
      }),
  });
};

/** grpc-js's own refusals while reading a request, by the start of their details (server-interceptors.js). */
const TRANSPORT_REFUSALS: { code: Status; details: string; field: string; description: (details: string) => string }[] = [
  {
    code: Status.INTERNAL,
    details: 'Invalid grpc-timeout value',
    field: 'grpc-timeout',
    description: (details) => `${details.replace(/^Invalid grpc-timeout value /, '').slice(0, 64)} is not a gRPC timeout (1 to 8 digits and a unit: H, M, S, m, u or n)`,
  },
  {
    code: Status.INTERNAL,
    details: 'Failed to decompress message',
    field: 'grpc-encoding',
    description: () => 'the request message is flagged compressed but does not decompress with its grpc-encoding',
  },
  {
    code: Status.INTERNAL,
    details: 'Error deserializing request',
    field: 'request',
    description: () => 'the request message does not decode as protobuf',
  },
];

let installed = false;

/** Rewrites grpc-js's INTERNAL answers to undecodable requests as INVALID_ARGUMENT MALFORMED_REQUEST. Once per process. */
export function translateTransportStatuses(): void {
  if (installed) return;
  installed = true;
  const prototype = BaseServerInterceptingCall.prototype;
  const sendStatus = prototype.sendStatus;
  prototype.sendStatus = function (this: BaseServerInterceptingCall, status: PartialStatusObject): void {
    const refusal = TRANSPORT_REFUSALS.find((r) => status.code === r.code && status.details?.startsWith(r.details));
    if (refusal === undefined) {
      sendStatus.call(this, status);
      return;
    }
    sendStatus.call(this, statusOf(malformed(refusal.field, refusal.description(status.details ?? '')), 'transport'));
  };
}
