/**
 * Starts a real tenantd (real worker threads, fresh data directory) on
 * 127.0.0.1:0 and gives tests a real gRPC client for it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { Channel, TenantdError, fromServiceError, type CallOptions as ClientCallOptions } from '../../src/client/index.ts';
import { defaultConfig, type Config } from '../../src/config.ts';
import type { MetricsHandler } from '../../src/httpHealth.ts';
import { createLogger, type Logger } from '../../src/log.ts';
import { startServer, type StartedServer } from '../../src/server.ts';
import { internalErrorCount } from '../../src/telemetry/internalErrors.ts';

/** The shape tests assert on; the decoding itself is the client's (src/client/errors.ts). */
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

function decodedOf(error: TenantdError): DecodedStatus {
  return {
    code: error.code,
    message: error.details,
    reason: error.reason,
    domain: error.domain,
    errorMetadata: error.metadata,
    fieldViolations: error.fieldViolations,
    quotaViolations: error.quotaViolations.map((v) => ({ quota_id: v.quotaId, quota_value: v.quotaValue, subject: v.subject })),
    retryDelayMs: error.retryAfterMs,
  };
}

/** Decodes grpc-status-details-bin the way any client would: through the client's one decoder. */
export function decodeStatus(error: grpc.ServiceError): DecodedStatus {
  return decodedOf(fromServiceError(error));
}

/** A TenantdError with the decoded fields under `status`, as tests have always read them. */
export class RpcError extends TenantdError {
  constructor(readonly status: DecodedStatus) {
    super({
      code: status.code,
      message: status.message,
      reason: status.reason,
      domain: status.domain,
      metadata: status.errorMetadata,
      fieldViolations: status.fieldViolations,
      quotaViolations: status.quotaViolations.map((v) => ({ quotaId: v.quota_id, quotaValue: v.quota_value, subject: v.subject, description: '' })),
      retryAfterMs: status.retryDelayMs,
    });
  }
}

function rethrow(error: unknown): never {
  throw error instanceof TenantdError ? new RpcError(decodedOf(error)) : error;
}

export interface CallOptions {
  key?: string | null;
  tenantId?: string;
  deadlineMs?: number;
  /** More request metadata, e.g. `traceparent`. */
  metadata?: Record<string, string>;
}

/** The client's Channel, with the calling conventions tests were written against. */
export class TestClient {
  readonly channel: Channel;

  /** `defaultDeadlineMs`: for every call that names none, so that a call nobody answers fails (with its stack) instead of hanging its test. */
  constructor(
    readonly address: string,
    private readonly defaultDeadlineMs: number | null = null,
  ) {
    this.channel = new Channel({ address });
  }

  /** `withDeadline` false: the calls that never took one (they are cancelled or read to their end). */
  private options(options: CallOptions, withDeadline = true): ClientCallOptions {
    return {
      key: options.key ?? null,
      tenant: options.tenantId ?? null,
      ...(withDeadline && (options.deadlineMs ?? this.defaultDeadlineMs) ? { deadlineMs: options.deadlineMs ?? this.defaultDeadlineMs! } : {}),
      ...(options.metadata ? { metadata: options.metadata } : {}),
    };
  }

  metadata(options: CallOptions): grpc.Metadata {
    return this.channel.metadata(this.options(options));
  }

  /** A unary call; rejects with RpcError carrying the decoded details. */
  call<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): Promise<T> {
    return this.channel.unary<T>(service, method, request, this.options(options)).catch(rethrow);
  }

  /** A unary call that also returns the trailing metadata of a success. */
  async callWithTrailers<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): Promise<{ response: T; trailers: Record<string, string> }> {
    const trailers: Record<string, string> = {};
    let statusSeen!: () => void;
    const seen = new Promise<void>((resolve) => (statusSeen = resolve));
    const response = await this.channel
      .unary<T>(service, method, request, this.options(options, false), (status) => {
        for (const [k, value] of Object.entries(status.metadata.getMap())) trailers[k] = String(value);
        statusSeen();
      })
      .catch(rethrow);
    // The callback can run before 'status': wait for the trailers.
    await seen;
    return { response, trailers };
  }

  /** Collects a server stream's messages; rejects with the final error, if any. */
  async stream<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): Promise<T[]> {
    const messages: T[] = [];
    try {
      for await (const message of this.channel.serverStream<T>(service, method, request, this.options(options))) messages.push(message);
    } catch (error) {
      rethrow(error);
    }
    return messages;
  }

  /** A server stream to read as it goes (and cancel): the grpc-js call itself. */
  openStream<T = any>(service: string, method: string, request: unknown, options: CallOptions = {}): grpc.ClientReadableStream<T> {
    return this.channel.serverStream<T>(service, method, request, this.options(options, false)).call;
  }

  /** A bidirectional stream: the grpc-js call itself. */
  openDuplex<Req = any, Res = any>(service: string, method: string, options: CallOptions = {}): grpc.ClientDuplexStream<Req, Res> {
    const opts: grpc.CallOptions = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
    return (this.channel.client(service) as any)[method](this.metadata(options), opts) as grpc.ClientDuplexStream<Req, Res>;
  }

  /** A client stream: writes `messages` in order, ends, and resolves with the response. */
  clientStream<T = any>(service: string, method: string, messages: unknown[], options: CallOptions = {}): Promise<T> {
    const { call, response } = this.channel.clientStream<T>(service, method, { key: options.key ?? null, tenant: options.tenantId ?? null });
    for (const message of messages) call.write(message);
    call.end();
    return response.catch(rethrow);
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
    this.channel.close();
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
  /** Resolves once the server has received at least `count` calls it has not answered yet (a call sent is not yet a call received). */
  untilCallsInFlight(count: number): Promise<void>;
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
    logLevel: (process.env.TENANTD_TEST_LOG_LEVEL as Config['logLevel'] | undefined) ?? 'silent',
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
    async untilCallsInFlight(count) {
      const giveUpAt = Date.now() + 10_000;
      while (server.callsInFlight() < count) {
        if (Date.now() > giveUpAt) throw new Error(`the server has ${server.callsInFlight()} call(s) in flight after 10 s, not ${count}`);
        await new Promise((r) => setTimeout(r, 5));
      }
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

/** Polls `condition` every 10 ms until it holds; throws after `timeoutMs` with what `what` says of the state then. */
export async function until(condition: () => boolean, what: () => string = () => String(condition), timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not met in ${timeoutMs} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
