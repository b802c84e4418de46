/**
 * Calls passed on to the node that owns their tenant, as bytes: the request
 * is encoded again with the method's own serializer, the response goes back
 * to the caller undecoded (the server's serializers let bytes through, see
 * grpc/encodedResponses.ts), and the status, its details and the trailers come
 * back as the owner sent them. The caller's deadline travels with the call,
 * and `x-tenantd-hop` marks it as forwarded so it is never forwarded again.
 */
import * as grpc from '@grpc/grpc-js';

export const HOP_HEADER = 'x-tenantd-hop';

/** Headers that describe this hop's HTTP/2 stream, not the call. */
const HOP_BY_HOP = new Set(['grpc-timeout', 'grpc-encoding', 'grpc-accept-encoding', 'content-type', 'te', 'user-agent', 'host']);

const identity = (value: Buffer): Buffer => value;

export type MethodDefinition = grpc.MethodDefinition<unknown, unknown>;

export class Forwarder {
  private readonly clients = new Map<string, grpc.Client>();

  constructor(
    private readonly self: string,
    private readonly credentials: () => grpc.ChannelCredentials = () => grpc.credentials.createInsecure(),
  ) {}

  private client(address: string): grpc.Client {
    let client = this.clients.get(address);
    if (!client) {
      client = new grpc.Client(address, this.credentials(), {
        'grpc.max_receive_message_length': 64 * 1024 * 1024,
        'grpc.max_send_message_length': 64 * 1024 * 1024,
        'grpc.keepalive_time_ms': 30_000,
      });
      this.clients.set(address, client);
    }
    return client;
  }

  /** The caller's metadata for the owner, with this node added as the hop. */
  outgoingMetadata(incoming: grpc.Metadata): grpc.Metadata {
    const out = new grpc.Metadata();
    for (const key of Object.keys(incoming.getMap())) {
      if (HOP_BY_HOP.has(key) || key.startsWith(':')) continue;
      for (const v of incoming.get(key)) out.add(key, v);
    }
    out.set(HOP_HEADER, this.self);
    return out;
  }

  private options(call: { getDeadline(): grpc.Deadline }): grpc.CallOptions {
    const deadline = call.getDeadline();
    return deadline instanceof Date || (typeof deadline === 'number' && Number.isFinite(deadline)) ? { deadline } : {};
  }

  unary(address: string, method: MethodDefinition, call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>): void {
    const request = method.requestSerialize(call.request);
    let trailers: grpc.Metadata | undefined;
    const outgoing = this.client(address).makeUnaryRequest(
      method.path,
      identity,
      identity,
      request,
      this.outgoingMetadata(call.metadata),
      this.options(call),
      (error, response) => {
        if (error) callback(relayError(error));
        else callback(null, response, trailers);
      },
    );
    outgoing.on('status', (status: grpc.StatusObject) => (trailers = status.metadata));
    call.on('cancelled', () => outgoing.cancel());
  }

  serverStream(address: string, method: MethodDefinition, call: grpc.ServerWritableStream<unknown, unknown>): void {
    const outgoing = this.client(address).makeServerStreamRequest(
      method.path,
      identity,
      identity,
      method.requestSerialize(call.request),
      this.outgoingMetadata(call.metadata),
      this.options(call),
    );
    pipeResponses(outgoing, call);
  }

  /** A client stream whose first message was already read (it named the tenant). */
  clientStream(
    address: string,
    method: MethodDefinition,
    call: grpc.ServerReadableStream<unknown, unknown>,
    first: unknown[],
    callback: grpc.sendUnaryData<unknown>,
  ): void {
    let trailers: grpc.Metadata | undefined;
    const outgoing = this.client(address).makeClientStreamRequest(
      method.path,
      (value: unknown) => method.requestSerialize(value),
      identity,
      this.outgoingMetadata(call.metadata),
      this.options(call),
      (error, response) => {
        if (error) callback(relayError(error));
        else callback(null, response, trailers);
      },
    );
    outgoing.on('status', (status: grpc.StatusObject) => (trailers = status.metadata));
    for (const message of first) outgoing.write(message);
    call.on('data', (message: unknown) => outgoing.write(message));
    call.on('end', () => outgoing.end());
    call.on('cancelled', () => outgoing.cancel());
  }

  bidi(address: string, method: MethodDefinition, call: grpc.ServerDuplexStream<unknown, unknown>): void {
    const outgoing = this.client(address).makeBidiStreamRequest(
      method.path,
      (value: unknown) => method.requestSerialize(value),
      identity,
      this.outgoingMetadata(call.metadata),
      this.options(call),
    );
    call.on('data', (message: unknown) => outgoing.write(message));
    call.on('end', () => outgoing.end());
    pipeResponses(outgoing, call);
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}

/** The owner's status as the caller's: same code, message and details (grpc-status-details-bin). */
export function relayError(error: grpc.ServiceError): Partial<grpc.ServiceError> {
  const metadata = new grpc.Metadata();
  for (const [key, values] of Object.entries(error.metadata?.toJSON() ?? {})) {
    if (HOP_BY_HOP.has(key)) continue;
    for (const v of values) metadata.add(key, v);
  }
  return { code: error.code, details: error.details, metadata };
}

function pipeResponses(
  outgoing: grpc.ClientReadableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>,
  call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
): void {
  let ended = false;
  outgoing.on('data', (chunk: unknown) => {
    // Back-pressure: stop reading from the owner while the caller's stream is full.
    if (!call.write(chunk)) {
      outgoing.pause();
      call.once('drain', () => outgoing.resume());
    }
  });
  outgoing.on('status', (status: grpc.StatusObject) => {
    if (ended || status.code !== grpc.status.OK) return;
    ended = true;
    call.end(status.metadata);
  });
  outgoing.on('error', (error: grpc.ServiceError) => {
    if (ended) return;
    ended = true;
    if (!call.cancelled) call.emit('error', relayError(error));
  });
  call.on('cancelled', () => outgoing.cancel());
}
