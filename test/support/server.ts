/**
 * Starts a real tenantd (real worker threads, fresh data directory) on
 * 127.0.0.1:0 and gives tests a real gRPC client for it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { defaultConfig, type Config } from '../../src/config.ts';
import type { MetricsHandler } from '../../src/httpHealth.ts';
import { createLogger, type Logger } from '../../src/log.ts';
import { packageDefinition, rpcTypes } from '../../src/protos.ts';
import { startServer, type StartedServer } from '../../src/server.ts';
import { internalErrorCount } from '../../src/telemetry/internalErrors.ts';

type Callback = (error: grpc.ServiceError | null, response: any) => void;
type AnyClient = grpc.Client & Record<string, (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => grpc.ClientUnaryCall>;

const loaded = grpc.loadPackageDefinition(packageDefinition()) as any;

export interface DecodedStatus {
  code: grpc.status;
  message: string;
  reason: string;
  domain: string;
  errorMetadata: Record<string, string>;
  fieldViolations: { field: string; description: string }[];
  quotaViolations: { quota_id: string; quota_value: string; subject: string }[];
  retryDelayMs: number | null;
}

/** Decodes grpc-status-details-bin the way any client would. */
export function decodeStatus(error: grpc.ServiceError): DecodedStatus {
  const raw = error.metadata?.get('grpc-status-details-bin')[0];
  const decoded: DecodedStatus = {
    code: error.code,
    message: error.details,
    reason: '',
    domain: '',
    errorMetadata: {},
    fieldViolations: [],
    quotaViolations: [],
    retryDelayMs: null,
  };
  if (!(raw instanceof Buffer)) return decoded;
  const root = rpcTypes();
  const status = root.lookupType('google.rpc.Status').toObject(root.lookupType('google.rpc.Status').decode(raw), { longs: String }) as any;
  for (const any of status.details ?? []) {
    const typeName = String(any.type_url).split('/').pop()!;
    const type = root.lookupType(typeName);
    const detail = type.toObject(type.decode(any.value), { longs: String, defaults: true }) as any;
    if (typeName === 'google.rpc.ErrorInfo') {
      decoded.reason = detail.reason;
      decoded.domain = detail.domain;
      decoded.errorMetadata = detail.metadata ?? {};
    } else if (typeName === 'google.rpc.BadRequest') {
      decoded.fieldViolations = detail.field_violations;
    } else if (typeName === 'google.rpc.QuotaFailure') {
      decoded.quotaViolations = detail.violations;
    } else if (typeName === 'google.rpc.RetryInfo') {
      decoded.retryDelayMs = Number(detail.retry_delay.seconds) * 1000 + detail.retry_delay.nanos / 1e6;
    }
  }
  return decoded;
}

export class RpcError extends Error {
  constructor(readonly status: DecodedStatus) {
    super(`${grpc.status[status.code]} ${status.reason}: ${status.message}`);
  }
}

export interface CallOptions {
  key?: string | null;
  tenantId?: string;
  deadlineMs?: number;
  /** More request metadata, e.g. `traceparent`. */
  metadata?: Record<string, string>;
}

export class TestClient {
  private readonly clients = new Map<string, AnyClient>();

  constructor(readonly address: string) {}

  private client(service: string): AnyClient {
    let client = this.clients.get(service);
    if (!client) {
      const [pkg, name] = service.startsWith('grpc.') ? [loaded.grpc.health.v1, 'Health'] : [loaded.tenantd.v1, service];
      client = new pkg[name](this.address, grpc.credentials.createInsecure()) as AnyClient;
      this.clients.set(service, client);
    }
    return client;
  }

  metadata(options: CallOptions): grpc.Metadata {
    const md = new grpc.Metadata();
    if (options.key) md.set('authorization', `Bearer ${options.key}`);
    if (options.tenantId) md.set('x-tenant-id', options.tenantId);
    for (const [name, value] of Object.entries(options.metadata ?? {})) md.set(name, value);
    return md;
  }

  /** A unary call; rejects with RpcError carrying the decoded details. */
  call<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): Promise<T> {
    const opts: grpc.CallOptions = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
    return new Promise((resolve, reject) => {
      this.client(service)[method]!(request, this.metadata(options), opts, (error, response) =>
        error ? reject(new RpcError(decodeStatus(error))) : resolve(response as T),
      );
    });
  }

  /** A unary call that also returns the trailing metadata of a success. */
  callWithTrailers<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): Promise<{ response: T; trailers: Record<string, string> }> {
    return new Promise((resolve, reject) => {
      let response: T;
      const call = this.client(service)[method]!(request, this.metadata(options), {}, (error, value) => {
        if (error) reject(new RpcError(decodeStatus(error)));
        else response = value as T;
      });
      call.on('status', (s: grpc.StatusObject) => {
        if (s.code !== grpc.status.OK) return;
        const trailers: Record<string, string> = {};
        for (const [k, value] of Object.entries(s.metadata.getMap())) trailers[k] = String(value);
        // The callback runs before 'status'; resolve on the next turn to be safe.
        setImmediate(() => resolve({ response, trailers }));
      });
    });
  }

  /** Collects a server stream's messages; rejects with the final error, if any. */
  stream<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): Promise<T[]> {
    const opts: grpc.CallOptions = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
    const call = (this.client(service) as any)[method](request, this.metadata(options), opts) as grpc.ClientReadableStream<T>;
    const messages: T[] = [];
    return new Promise((resolve, reject) => {
      call.on('data', (m: T) => messages.push(m));
      call.on('error', (error: grpc.ServiceError) => reject(new RpcError(decodeStatus(error))));
      call.on('end', () => resolve(messages));
    });
  }

  /** A server stream to read as it goes (and cancel): the grpc-js call itself. */
  openStream<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): grpc.ClientReadableStream<T> {
    return (this.client(service) as any)[method](request, this.metadata(options)) as grpc.ClientReadableStream<T>;
  }

  /** A bidirectional stream: the grpc-js call itself. */
  openDuplex<Req = any, Res = any>(service: string, method: string, options: CallOptions = {}): grpc.ClientDuplexStream<Req, Res> {
    const opts: grpc.CallOptions = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
    return (this.client(service) as any)[method](this.metadata(options), opts) as grpc.ClientDuplexStream<Req, Res>;
  }

  /** A client stream: writes `messages` in order, ends, and resolves with the response. */
  clientStream<T = any>(service: string, method: string, messages: unknown[], options: CallOptions = {}): Promise<T> {
    return new Promise((resolve, reject) => {
      const call = (this.client(service) as any)[method](this.metadata(options), (error: grpc.ServiceError | null, response: T) =>
        error ? reject(new RpcError(decodeStatus(error))) : resolve(response),
      ) as grpc.ClientWritableStream<unknown>;
      for (const message of messages) call.write(message);
      call.end();
    });
  }

  /** The status a call failed with; throws if it succeeded. */
  async failure(service: string, method: string, request: unknown, options: CallOptions = {}): Promise<DecodedStatus> {
    try {
      await this.call(service, method, request, options);
    } catch (error) {
      if (error instanceof RpcError) return error.status;
      throw error;
    }
    throw new Error(`${service}.${method} succeeded but was expected to fail`);
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
  }
}

export interface TestServer {
  server: StartedServer;
  client: TestClient;
  adminKey: string;
  dataDir: string;
  config: Config;
  /** Creates a tenant and returns its first (READ_WRITE) key. */
  createTenant(tenantId: string, tenant?: Record<string, unknown>): Promise<string>;
  /** Execute on behalf of a tenant key. */
  sql(key: string, sql: string, params?: unknown[], extra?: Record<string, unknown>): Promise<any>;
  stop(): Promise<void>;
}

/** The data directories this test file made: removed after it (cleanup.ts), whatever its tests did. */
const madeDirs = new Set<string>();

export function freshDataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tenantd-test-'));
  madeDirs.add(dir);
  return dir;
}

/** Removes every data directory freshDataDir made in this file. */
export function removeDataDirs(): void {
  for (const dir of madeDirs) rmSync(dir, { recursive: true, force: true });
  madeDirs.clear();
}

export interface TestServerOptions {
  keepDataDir?: boolean;
  /** Instead of one at `config.logLevel` on stderr (e.g. one that collects lines). */
  logger?: Logger;
  /** The Prometheus exporter's handler, from installTelemetry. */
  metricsHandler?: MetricsHandler | null;
}

export async function startTestServer(overrides: Partial<Config> = {}, options: TestServerOptions = {}): Promise<TestServer> {
  const dataDir = overrides.dataDir ?? freshDataDir();
  const config: Config = {
    ...defaultConfig(),
    listen: '127.0.0.1:0',
    shards: 2,
    metricsListen: null,
    logLevel: 'silent',
    drainTimeoutMs: 2_000,
    faultInjection: true,
    ...overrides,
    dataDir,
  };
  const internalErrorsBefore = internalErrorCount();
  const server = await startServer(config, options.logger ?? createLogger(config.logLevel), { metricsHandler: options.metricsHandler ?? null });
  const client = new TestClient(`127.0.0.1:${server.port}`);
  const adminKey = server.adminKey.key;
  return {
    server,
    client,
    adminKey,
    dataDir,
    config,
    async createTenant(tenantId, tenant = {}) {
      const response = await client.call('TenantService', 'CreateTenant', { tenant_id: tenantId, tenant }, { key: adminKey });
      return response.api_key.key as string;
    },
    sql(key, sql, params = [], extra = {}) {
      return client.call('SqlService', 'Execute', { sql, params, ...extra }, { key });
    },
    async stop() {
      client.close();
      await server.shutdown();
      if (!options.keepDataDir) rmSync(dataDir, { recursive: true, force: true });
      // Every unexpected error is a bug, even one the client never saw (tenantd_internal_errors_total).
      const internalErrors = internalErrorCount() - internalErrorsBefore;
      if (internalErrors !== 0) throw new Error(`the server counted ${internalErrors} internal error(s) (tenantd_internal_errors_total); its log says where`);
    },
  };
}

/** Value helpers for requests. */
export const v = {
  int: (x: bigint | number | string) => ({ integer_value: String(x) }),
  real: (x: number) => ({ real_value: x }),
  text: (x: string) => ({ text_value: x }),
  blob: (x: Uint8Array) => ({ blob_value: Buffer.from(x) }),
  null: () => ({ null_value: 'NULL_VALUE' }),
};

/** A response Value -> JS: bigint, number, string, Buffer or null. */
export function plain(value: any): unknown {
  switch (value.kind) {
    case 'integer_value':
      return BigInt(value.integer_value);
    case 'real_value':
      return value.real_value;
    case 'text_value':
      return value.text_value;
    case 'blob_value':
      return value.blob_value;
    default:
      return null;
  }
}

export function rowsOf(response: any): unknown[][] {
  return response.rows.map((row: any) => row.values.map(plain));
}
