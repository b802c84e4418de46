/**
 * The gRPC plumbing under the typed client: one grpc-js client per service on
 * one address, the caller's key and tenant as metadata, and every failure
 * turned into a TenantdError. Test helpers use it directly for calls the
 * typed API does not cover (malformed requests, raw messages).
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { serviceDefinition } from '../protoRoot.ts';
import { fromServiceError } from './errors.ts';

/** TLS to the server: PEM contents or file paths. `true`: the system's roots, no client certificate. */
export interface TlsOptions {
  /** The CA to trust instead of the system's roots (PEM text or a Buffer). */
  ca?: string | Buffer;
  /** For mutual TLS: this client's certificate and key. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Another name to expect in the server's certificate than the address's host. */
  serverName?: string;
}

export interface ChannelOptions {
  /** host:port. */
  address: string;
  /** An API key (`tdk_...`) or the admin key, sent as `authorization: Bearer ...`. */
  key?: string | null;
  /** Sent as `x-tenant-id`: the tenant an admin key acts for, and what a cluster proxy routes on. */
  tenant?: string | null;
  /** Off (plaintext) unless given. */
  tls?: TlsOptions | boolean | null;
}

/** Per call. */
export interface CallOptions {
  /** Milliseconds from now. */
  deadlineMs?: number;
  /** Instead of the channel's key; null sends none. */
  key?: string | null;
  /** Instead of the channel's tenant. */
  tenant?: string | null;
  /** More request metadata, e.g. `traceparent`. */
  metadata?: Record<string, string>;
  /** Aborts the call (a cancel on the wire). */
  signal?: AbortSignal;
}

export type ServiceName = 'TenantService' | 'SqlService' | 'SchemaService' | 'EventService' | 'Health' | (string & {});

type Callback = (error: grpc.ServiceError | null, response: unknown) => void;
type Method = (...args: unknown[]) => grpc.Call;
type ServiceClient = grpc.Client & Record<string, Method>;
type ServiceConstructor = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => ServiceClient;

const constructors = new Map<string, ServiceConstructor>();

/** Only the service asked for is built: a CLI command pays for one service, not the whole API. */
function serviceConstructor(service: string): ServiceConstructor {
  const fullName = service.startsWith('grpc.') ? 'grpc.health.v1.Health' : `tenantd.v1.${service}`;
  let found = constructors.get(fullName);
  if (!found) {
    let definition: grpc.ServiceDefinition;
    try {
      definition = serviceDefinition(fullName);
    } catch {
      throw new TypeError(`unknown service ${JSON.stringify(service)}`);
    }
    found = grpc.makeGenericClientConstructor(definition, fullName.slice(fullName.lastIndexOf('.') + 1)) as unknown as ServiceConstructor;
    constructors.set(fullName, found);
  }
  return found;
}

/** PEM text, a Buffer, or a path to a PEM file. */
function pem(value: string | Buffer | undefined): Buffer | null {
  if (value === undefined) return null;
  if (Buffer.isBuffer(value)) return value;
  return value.includes('-----BEGIN') ? Buffer.from(value) : readFileSync(value);
}

export function channelCredentials(tls: ChannelOptions['tls']): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  if (tls === true) return grpc.credentials.createSsl();
  const cert = pem(tls.cert);
  const key = pem(tls.key);
  if ((cert === null) !== (key === null)) throw new TypeError('tls: "cert" and "key" go together (mutual TLS needs both)');
  return grpc.credentials.createSsl(pem(tls.ca), key, cert);
}

export class Channel {
  readonly address: string;
  private readonly credentials: grpc.ChannelCredentials;
  private readonly grpcOptions: grpc.ChannelOptions;
  private readonly clients = new Map<string, ServiceClient>();

  constructor(readonly options: ChannelOptions) {
    this.address = options.address;
    this.credentials = channelCredentials(options.tls);
    // channelz: grpc-js's own bookkeeping for its admin service, which nothing here reads.
    this.grpcOptions = { 'grpc.enable_channelz': 0 };
    if (typeof options.tls === 'object' && options.tls?.serverName) this.grpcOptions['grpc.ssl_target_name_override'] = options.tls.serverName;
  }

  /** The grpc-js client of a service (`SqlService`, or `grpc.health.v1.Health`). */
  client(service: ServiceName): ServiceClient {
    let client = this.clients.get(service);
    if (!client) {
      client = new (serviceConstructor(service))(this.address, this.credentials, this.grpcOptions);
      this.clients.set(service, client);
    }
    return client;
  }

  metadata(options: CallOptions = {}): grpc.Metadata {
    const md = new grpc.Metadata();
    const key = options.key !== undefined ? options.key : this.options.key;
    const tenant = options.tenant !== undefined ? options.tenant : this.options.tenant;
    if (key) md.set('authorization', `Bearer ${key}`);
    if (tenant) md.set('x-tenant-id', tenant);
    for (const [name, value] of Object.entries(options.metadata ?? {})) md.set(name, value);
    return md;
  }

  private callOptions(options: CallOptions): grpc.CallOptions {
    return options.deadlineMs !== undefined ? { deadline: Date.now() + options.deadlineMs } : {};
  }

  private method(service: ServiceName, method: string): Method {
    const client = this.client(service);
    const fn = client[method];
    if (typeof fn !== 'function') throw new TypeError(`${service} has no method ${JSON.stringify(method)}`);
    return fn.bind(client);
  }

  private abortWith(call: grpc.Call, signal: AbortSignal | undefined): void {
    if (!signal) return;
    if (signal.aborted) call.cancel();
    else signal.addEventListener('abort', () => call.cancel(), { once: true });
  }

  /** A unary call; rejects with TenantdError. `onStatus` sees the final status (trailers included). */
  unary<T>(service: ServiceName, method: string, request: unknown, options: CallOptions = {}, onStatus?: (status: grpc.StatusObject) => void): Promise<T> {
    return new Promise((resolve, reject) => {
      const callback: Callback = (error, response) => (error ? reject(fromServiceError(error)) : resolve(response as T));
      const call = this.method(service, method)(request, this.metadata(options), this.callOptions(options), callback);
      if (onStatus) call.on('status', onStatus);
      this.abortWith(call, options.signal);
    });
  }

  /** A server stream, to read with `for await`; iteration throws TenantdError. */
  serverStream<T>(service: ServiceName, method: string, request: unknown, options: CallOptions = {}): ServerStream<T> {
    const call = this.method(service, method)(request, this.metadata(options), this.callOptions(options)) as grpc.ClientReadableStream<T>;
    this.abortWith(call, options.signal);
    return new ServerStream(call);
  }

  /** A client stream: the grpc-js call to write to, and the response. */
  clientStream<T>(service: ServiceName, method: string, options: CallOptions = {}): { call: grpc.ClientWritableStream<unknown>; response: Promise<T> } {
    let call!: grpc.ClientWritableStream<unknown>;
    const response = new Promise<T>((resolve, reject) => {
      const callback: Callback = (error, value) => (error ? reject(fromServiceError(error)) : resolve(value as T));
      call = this.method(service, method)(this.metadata(options), this.callOptions(options), callback) as grpc.ClientWritableStream<unknown>;
    });
    this.abortWith(call, options.signal);
    return { call, response };
  }

  /** A bidirectional stream (the grpc-js call); errors on it are grpc-js errors: pass them to fromServiceError. */
  duplex<Req, Res>(service: ServiceName, method: string, options: CallOptions = {}): grpc.ClientDuplexStream<Req, Res> {
    const call = this.method(service, method)(this.metadata(options), this.callOptions(options)) as grpc.ClientDuplexStream<Req, Res>;
    this.abortWith(call, options.signal);
    return call;
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}

/** A server stream's messages as an async iterator; its end status turned into TenantdError. */
export class ServerStream<T> implements AsyncIterable<T> {
  constructor(readonly call: grpc.ClientReadableStream<T>) {}

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    try {
      for await (const message of this.call as AsyncIterable<T>) yield message;
    } catch (error) {
      throw typeof (error as grpc.ServiceError).code === 'number' ? fromServiceError(error as grpc.ServiceError) : error;
    } finally {
      // A reader that stops early (break, throw) cancels the call rather than leaving it open.
      this.call.cancel();
    }
  }

  cancel(): void {
    this.call.cancel();
  }
}
