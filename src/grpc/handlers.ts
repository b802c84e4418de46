/**
 * Adapters from async functions to grpc-js handlers. Every failure goes
 * through `toServiceError`, the one place errors become statuses.
 */
import {
  Metadata,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServerReadableStream,
  type sendUnaryData,
  type UntypedHandleCall,
} from '@grpc/grpc-js';
import { toServiceError } from '../errors.ts';

/** `trailer` is sent as trailing metadata with a successful response. */
export function unary<Req, Res>(method: string, fn: (call: ServerUnaryCall<Req, Res>, trailer: Metadata) => Promise<Res> | Res) {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
    let result: Promise<Res> | Res;
    const trailer = new Metadata();
    try {
      result = fn(call, trailer);
    } catch (error) {
      callback(toServiceError(error, { method }));
      return;
    }
    Promise.resolve(result).then(
      (response) => callback(null, response, trailer),
      (error: unknown) => callback(toServiceError(error, { method })),
    );
  };
}

export function serverStream<Req, Res>(method: string, fn: (call: ServerWritableStream<Req, Res>, trailer: Metadata) => Promise<void>) {
  return (call: ServerWritableStream<Req, Res>): void => {
    const trailer = new Metadata();
    fn(call, trailer).then(
      () => call.end(trailer),
      (error: unknown) => {
        if (!call.cancelled) call.emit('error', toServiceError(error, { method }));
      },
    );
  };
}

export function clientStream<Req, Res>(method: string, fn: (call: ServerReadableStream<Req, Res>) => Promise<Res>) {
  return (call: ServerReadableStream<Req, Res>, callback: sendUnaryData<Res>): void => {
    fn(call).then(
      (response) => callback(null, response),
      (error: unknown) => callback(toServiceError(error, { method })),
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
