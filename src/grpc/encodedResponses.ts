/**
 * Lets a handler answer with protobuf bytes it already has. grpc-js
 * serializes each response with the method's `responseSerialize`; this
 * wraps it so that an EncodedMessage (what the shards produce for
 * SqlService, workers/resultWire.ts: a Uint8Array, or a small one as a
 * latin1 string) goes out as it is, and anything else through the
 * original serializer. No response message is ever a Uint8Array or a
 * string itself, so they cannot be confused.
 */
import type { ServiceDefinition } from '@grpc/grpc-js';

function passThrough(serialize: (value: unknown) => Buffer): (value: unknown) => Buffer {
  return (value) => {
    if (typeof value === 'string') return Buffer.from(value, 'latin1');
    if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    return serialize(value);
  };
}

/** A copy of `service` whose methods also accept encoded responses. */
export function acceptEncodedResponses(service: ServiceDefinition): ServiceDefinition {
  return Object.fromEntries(
    Object.entries(service).map(([name, method]) => [name, { ...method, responseSerialize: passThrough(method.responseSerialize as (value: unknown) => Buffer) }]),
  );
}
