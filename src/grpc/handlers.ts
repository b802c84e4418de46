/**
 * Adapters from async functions to grpc-js handlers. Every failure goes
 * through `toServiceError` (by way of ObservedCall.fail), the one place
 * errors become statuses, and every call is observed: span, metrics, access
 * log and `x-request-id`, started before the handler runs and ended once.
 */
import {
  Metadata,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServerReadableStream,
  type ServerDuplexStream,
  type sendUnaryData,
  type UntypedHandleCall,
} from '@grpc/grpc-js';
import type { ObservedCall, ServiceObserver } from './rpcObserver.ts';
import { unavailable } from '../errors.ts';

/** `trailer` is sent as trailing metadata with a successful response. */
export function unary<Req, Res>(
  service: ServiceObserver,
  method: string,
  fn: (call: ServerUnaryCall<Req, Res>, trailer: Metadata, rpc: ObservedCall) => Promise<Res> | Res,
) {
  const observe = service.method(method);
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
    const rpc = observe.start(call.metadata, () => call.getPeer(), call.request);
    const open = service.observer.calls.track(call);
    rpc.signal = open.signal;
    let result: Promise<Res> | Res;
    const trailer = new Metadata();
    try {
      result = rpc.run(() => fn(call, trailer, rpc));
    } catch (error) {
      open.done();
      callback(rpc.fail(error));
      return;
    }
    Promise.resolve(result).then(
      (response) => {
        open.done();
        rpc.succeed(trailer);
        callback(null, response, trailer);
      },
      (error: unknown) => {
        open.done();
        callback(rpc.fail(error));
      },
    );
  };
}

export function serverStream<Req, Res>(
  service: ServiceObserver,
  method: string,
  fn: (call: ServerWritableStream<Req, Res>, trailer: Metadata, rpc: ObservedCall) => Promise<void>,
) {
  const observe = service.method(method);
  return (call: ServerWritableStream<Req, Res>): void => {
    const rpc = observe.start(call.metadata, () => call.getPeer(), call.request);
    const trailer = new Metadata();
    // Ended once: by the handler, or by the drain (UNAVAILABLE) while the handler still runs.
    let ended = false;
    const fail = (error: unknown): void => {
      if (ended) return;
      ended = true;
      open.done();
      const status = rpc.fail(error, call.cancelled);
      if (!call.cancelled) call.emit('error', status);
    };
    const open = service.observer.calls.track(call, () => fail(unavailable('SHUTTING_DOWN', 'the server is shutting down; reconnect to another node or retry')));
    rpc.signal = open.signal;
    let done: Promise<void>;
    try {
      done = rpc.run(() => fn(call, trailer, rpc));
    } catch (error) {
      done = Promise.reject(error);
    }
    done.then(
      () => {
        if (ended) return;
        ended = true;
        open.done();
        rpc.succeed(trailer);
        call.end(trailer);
      },
      fail,
    );
  };
}

/** A bidirectional stream: `fn` writes its responses; resolving ends the call OK, rejecting ends it with that status. */
export function bidiStream<Req, Res>(
  service: ServiceObserver,
  method: string,
  fn: (call: ServerDuplexStream<Req, Res>, rpc: ObservedCall) => Promise<void>,
) {
  const observe = service.method(method);
  return (call: ServerDuplexStream<Req, Res>): void => {
    const rpc = observe.start(call.metadata, () => call.getPeer());
    const trailer = new Metadata();
    let done: Promise<void>;
    try {
      done = rpc.run(() => fn(call, rpc));
    } catch (error) {
      done = Promise.reject(error);
    }
    done.then(
      () => {
        rpc.succeed(trailer);
        call.end(trailer);
      },
      (error: unknown) => {
        const status = rpc.fail(error, call.cancelled);
        if (!call.cancelled) call.emit('error', status);
      },
    );
  };
}

export function clientStream<Req, Res>(
  service: ServiceObserver,
  method: string,
  fn: (call: ServerReadableStream<Req, Res>, rpc: ObservedCall) => Promise<Res>,
) {
  const observe = service.method(method);
  return (call: ServerReadableStream<Req, Res>, callback: sendUnaryData<Res>): void => {
    const rpc = observe.start(call.metadata, () => call.getPeer());
    const open = service.observer.calls.track(call);
    rpc.signal = open.signal;
    const trailer = new Metadata();
    let done: Promise<Res>;
    try {
      done = rpc.run(() => fn(call, rpc));
    } catch (error) {
      done = Promise.reject(error);
    }
    done.then(
      (response) => {
        open.done();
        rpc.succeed(trailer);
        callback(null, response, trailer);
      },
      (error: unknown) => {
        open.done();
        callback(rpc.fail(error));
      },
    );
  };
}

export type Handlers = Record<string, UntypedHandleCall>;

/** Milliseconds left before the call's deadline; Infinity when it has none. */
export function remainingMs(call: { getDeadline(): Date | number }): number {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(at) ? at - Date.now() : Infinity;
}

/**
 * Resolves once a server stream can take more writes, or once it can take
 * none ever again (its client went, or the handler ended it: then
 * `call.cancelled` or a write no longer matters). Never rejects: `events.once`
 * would reject on the stream's 'error' event, which is how a handler ends
 * the call with a status, and a waiter nobody awaits any more would turn
 * that into an unhandled rejection.
 */
export function whenWritable(call: ServerWritableStream<unknown, unknown>): Promise<void> {
  return new Promise((resolve) => {
    const events = ['drain', 'cancelled', 'error', 'finish', 'close'] as const;
    const done = (): void => {
      for (const event of events) call.off(event, done);
      resolve();
    };
    if (call.cancelled || call.destroyed || call.writableEnded) {
      resolve();
      return;
    }
    for (const event of events) call.on(event, done);
  });
}
