/**
 * How long a request may take to arrive. grpc-js holds a call whose client
 * sends headers and then never finishes its body for as long as the
 * connection lives, and has no per-request read timeout. This interceptor
 * ends such a call: the request (every message up to the client's
 * half-close) must arrive within `timeoutMs` of the call's start; for a
 * client stream the clock restarts with each message, so a long upload that
 * keeps moving is never cut. Once the request is complete, the client's
 * deadline and the tenant's query timeout take over.
 */
import http2, { type ServerHttp2Stream } from 'node:http2';
import { ServerInterceptingCall, status as Status, type ServerInterceptor } from '@grpc/grpc-js';
import type { PartialStatusObject } from '@grpc/grpc-js/build/src/call-interface.js';
import { BaseServerInterceptingCall } from '@grpc/grpc-js/build/src/server-interceptors.js';
import { TenantdError, toServiceError } from '../errors.ts';

export function requestDeadlineInterceptor(timeoutMs: number): ServerInterceptor {
  return (method, call) => {
    let timer: NodeJS.Timeout | null = null;
    const disarm = (): void => {
      if (timer !== null) clearTimeout(timer);
      timer = null;
    };
    const expire = (): void => {
      timer = null;
      const error = new TenantdError(
        Status.DEADLINE_EXCEEDED,
        'REQUEST_INCOMPLETE',
        `the request did not arrive in full within ${timeoutMs} ms of the call's start (or of its last message)`,
      );
      const { code, details, metadata } = toServiceError(error, { method: method.path });
      call.sendStatus({ code: code!, details: details!, metadata: metadata ?? null });
    };
    const arm = (): void => {
      disarm();
      timer = setTimeout(expire, timeoutMs);
    };
    return new ServerInterceptingCall(call, {
      start: (next) => {
        arm();
        next({
          onReceiveMessage: (message: unknown, nextMessage) => {
            if (method.requestStream) arm();
            nextMessage(message);
          },
          onReceiveHalfClose: (nextHalfClose) => {
            disarm();
            nextHalfClose();
          },
          onCancel: disarm,
        });
      },
      sendStatus: (status, next) => {
        disarm();
        next(status);
      },
    });
  };
}

interface BaseCallInternals {
  stream: ServerHttp2Stream;
  metadataSent: boolean;
  receivedHalfClose: boolean;
}

let installed = false;

/**
 * grpc-js sends a status without closing a stream whose client has not
 * finished its request, so the stream stays open (and counts against the
 * connection's concurrent streams) until the client ends it, which an
 * attacker never does. The gRPC HTTP/2 protocol says the server then
 * resets the stream with NO_ERROR once its status is out; this does that,
 * after the trailers (a reset before them would lose the status). Once per process.
 */
export function resetUnfinishedRequests(): void {
  if (installed) return;
  installed = true;
  const prototype = BaseServerInterceptingCall.prototype;
  const sendStatus = prototype.sendStatus;
  prototype.sendStatus = function (this: BaseServerInterceptingCall, status: PartialStatusObject): void {
    const call = this as unknown as BaseCallInternals;
    const open = !call.receivedHalfClose && !call.stream.destroyed && !call.stream.closed;
    const afterTrailers = call.metadataSent;
    sendStatus.call(this, status);
    if (!open) return;
    const reset = (): void => {
      if (!call.stream.destroyed && !call.stream.closed) call.stream.close(http2.constants.NGHTTP2_NO_ERROR);
    };
    // grpc-js sends trailers from its own 'wantTrailers' listener, registered before this one.
    if (afterTrailers) call.stream.once('wantTrailers', () => setImmediate(reset));
    else setImmediate(reset);
  };
}
