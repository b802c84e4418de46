/**
 * A load generator over grpc-js that speaks ghz's vocabulary (call, -c, -n,
 * -z, --rps, --connections, -t, -m, -d, --skipFirst) and reports in ghz's JSON
 * shape (see report.ts). Unary calls only.
 *
 * Calls go through `Client.makeUnaryRequest` with the method's own
 * serializers: the cheapest path grpc-js offers, so the generator costs as
 * little CPU as a grpc-js client can. Latency is process.hrtime from just
 * before the call is started to its callback.
 */
import { cpus } from 'node:os';
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition, PackageDefinition } from '@grpc/proto-loader';
import { Recorder } from './recorder.ts';
import { buildReport, codeName, type EndReason, type GhzOptions, type GhzReport } from './report.ts';
import { compileData, type Builder, type CallContext, type Compiled } from './template.ts';

export interface LoadOptions {
  /** `package.Service.Method` or `package.Service/Method`. */
  call: string;
  /** host:port */
  host: string;
  packageDefinition: PackageDefinition;
  /** -c: calls kept in flight (ghz's workers). Default 50. */
  concurrency?: number;
  /** -n: calls to make. Default 200; ignored when `duration` is set. */
  total?: number;
  /** -z: run for this long ("10s", "500ms", "1m30s" or ms). */
  duration?: string | number;
  /** --rps: calls started per second over all workers; 0 = unthrottled. */
  rps?: number;
  /** --connections: separate grpc-js channels (TCP connections). Default 1. */
  connections?: number;
  /** -t: per-call deadline ("20s" or ms); 0 = none. Default 20s. */
  timeout?: string | number;
  /** -m: an object, or an array round-robined per request. String templates allowed. */
  metadata?: Compiled | Record<string, string> | Record<string, string>[];
  /** -d: an object, or an array round-robined per request. String templates allowed. */
  data?: Compiled | unknown;
  /** Calls to make (number) or time to run (string) before measuring; not recorded. */
  warmup?: number | string;
  /** --skipFirst: completed calls left out of the report. */
  skipFirst?: number;
  /** Keep per-call details (timestamp, latency, status, error) in the report. */
  details?: boolean;
  insecure?: boolean;
  name?: string;
  /** For the report's options only. */
  proto?: string;
  importPaths?: string[];
  /** Awaited after the warm-up, right before the measured phase starts. */
  beforeMeasure?: () => Promise<unknown> | unknown;
  /** Extra channel options, applied to every connection. */
  channelOptions?: grpc.ChannelOptions;
}

const UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go's time.ParseDuration subset ("10s", "1m30s", "250ms"); a bare number is ms. */
export function parseDuration(value: string | number, what = 'duration'): number {
  if (typeof value === 'number') return value;
  if (/^\d+(\.\d+)?$/.test(value)) return Number(value);
  let ms = 0;
  let rest = value.trim();
  if (rest === '') throw new Error(`${what}: empty duration`);
  while (rest.length > 0) {
    const m = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/.exec(rest);
    if (!m) throw new Error(`${what}: cannot parse ${JSON.stringify(value)}; use e.g. 10s, 500ms, 1m30s`);
    ms += Number(m[1]) * UNITS[m[2]!]!;
    rest = rest.slice(m[0].length);
  }
  return ms;
}

function resolveMethod(def: PackageDefinition, call: string) {
  const cut = call.includes('/') ? call.lastIndexOf('/') : call.lastIndexOf('.');
  const serviceName = call.slice(0, cut);
  const methodName = call.slice(cut + 1);
  const service = def[serviceName] as Record<string, MethodDefinition<object, object>> | undefined;
  if (!service || typeof service !== 'object' || 'format' in service) {
    const known = Object.keys(def).filter((k) => !('format' in (def[k] as object)));
    throw new Error(`--call ${call}: unknown service ${serviceName}; known: ${known.join(', ')}`);
  }
  const method = service[methodName];
  if (!method) throw new Error(`--call ${call}: ${serviceName} has no method ${methodName}; it has ${Object.keys(service).join(', ')}`);
  if (method.requestStream || method.responseStream) throw new Error(`--call ${call}: only unary methods are supported`);
  const shortName = (type: unknown) => String((type as { name?: string } | undefined)?.name ?? '');
  return {
    method,
    ctx: {
      fullyQualifiedName: `${serviceName}.${methodName}`,
      methodName,
      serviceName,
      inputName: shortName(method.requestType?.type),
      outputName: shortName(method.responseType?.type),
    },
  };
}

function isCompiled(value: unknown): value is Compiled {
  return typeof value === 'object' && value !== null && 'variants' in value && Array.isArray((value as Compiled).variants);
}

/** Round-robin over variants; constant metadata variants become ready Metadata objects. */
function metadataPicker(compiled: Compiled): (ctx: CallContext) => grpc.Metadata {
  const toMetadata = (obj: unknown) => {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries((obj ?? {}) as Record<string, unknown>)) md.set(k, String(v));
    return md;
  };
  const ready = compiled.variants.map((b: Builder) => (b.constant ? toMetadata(b.build({} as CallContext)) : null));
  const n = compiled.variants.length;
  return (ctx) => ready[ctx.requestNumber % n] ?? toMetadata(compiled.variants[ctx.requestNumber % n]!.build(ctx));
}

interface Phase {
  total: number;
  durationMs: number;
  recorder: Recorder | null;
}

export interface LoadResult {
  report: GhzReport;
  /** Wall time of the measured phase in ns (the report's `total`). */
  totalNs: number;
}

export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const concurrency = options.concurrency ?? 50;
  const connections = Math.max(1, Math.min(options.connections ?? 1, concurrency));
  const durationMs = options.duration !== undefined ? parseDuration(options.duration, '-z') : 0;
  const total = durationMs > 0 ? 0 : options.total || 200;
  const timeoutMs = parseDuration(options.timeout ?? '20s', '-t');
  const rps = options.rps ?? 0;
  const { method, ctx: methodCtx } = resolveMethod(options.packageDefinition, options.call);
  const data = isCompiled(options.data) ? options.data : compileData(options.data ?? {});
  const metadata = isCompiled(options.metadata) ? options.metadata : compileData(options.metadata ?? {});
  const pickMetadata = metadataPicker(metadata);
  const dataVariants = data.variants;

  const credentials = grpc.credentials.createInsecure();
  const clients = Array.from(
    { length: connections },
    (_, i) =>
      new grpc.Client(options.host, credentials, {
        ...options.channelOptions,
        // A local subchannel pool and a distinct argument per channel: grpc-js
        // would otherwise share one TCP connection among equal channels.
        'grpc.use_local_subchannel_pool': 1,
        'bench.connection_index': i,
      }),
  );
  const ready = (c: grpc.Client) =>
    new Promise<void>((resolve, reject) =>
      c.waitForReady(Date.now() + 10_000, (e) => (e ? reject(new Error(`cannot connect to ${options.host}: ${e.message}`)) : resolve())),
    );
  await Promise.all(clients.map(ready)).catch((error: unknown) => {
    for (const c of clients) c.close();
    throw error;
  });

  const path = method.path;
  const serialize = method.requestSerialize as (v: unknown) => Buffer;
  const deserialize = method.responseDeserialize as (b: Buffer) => unknown;

  function runPhase(phase: Phase): Promise<{ totalNs: number; endReason: EndReason }> {
    return new Promise((resolve) => {
      let issued = 0;
      let inFlight = 0;
      let stopped = false;
      let endReason: EndReason = 'normal';
      const t0 = process.hrtime.bigint();
      const t0Ms = Date.now();
      const timer =
        phase.durationMs > 0
          ? setTimeout(() => {
              stopped = true;
              endReason = 'timeout';
            }, phase.durationMs)
          : null;

      const finish = () => {
        if (timer) clearTimeout(timer);
        resolve({ totalNs: Number(process.hrtime.bigint() - t0), endReason });
      };

      const next = (worker: number): void => {
        if (stopped || (phase.total > 0 && issued >= phase.total)) {
          if (inFlight === 0) {
            stopped = true;
            finish();
          }
          return;
        }
        const requestNumber = issued++;
        inFlight++;
        if (rps > 0) {
          const waitMs = t0Ms + (requestNumber * 1000) / rps - Date.now();
          if (waitMs > 1) {
            setTimeout(() => send(worker, requestNumber), waitMs);
            return;
          }
        }
        send(worker, requestNumber);
      };

      const send = (worker: number, requestNumber: number): void => {
        const ctx: CallContext = { ...methodCtx, workerId: `g${worker}c${worker % connections}`, requestNumber };
        const request = dataVariants[requestNumber % dataVariants.length]!.build(ctx);
        const md = pickMetadata(ctx);
        const callOptions: grpc.CallOptions = timeoutMs > 0 ? { deadline: Date.now() + timeoutMs } : {};
        const startMs = phase.recorder?.details ? Date.now() : 0;
        const start = process.hrtime.bigint();
        clients[worker % connections]!.makeUnaryRequest(path, serialize, deserialize, request, md, callOptions, (error) => {
          const latency = Number(process.hrtime.bigint() - start);
          inFlight--;
          if (phase.recorder) {
            const code = error ? (error.code ?? grpc.status.UNKNOWN) : 0;
            const text = error ? `rpc error: code = ${codeName(code)} desc = ${error.details ?? error.message}` : undefined;
            phase.recorder.add(latency, code, text, startMs);
          }
          next(worker);
        });
      };

      for (let w = 0; w < concurrency; w++) next(w);
    });
  }

  try {
    if (options.warmup !== undefined && options.warmup !== 0 && options.warmup !== '0') {
      const warm = options.warmup;
      await runPhase(
        typeof warm === 'number' ? { total: warm, durationMs: 0, recorder: null } : { total: 0, durationMs: parseDuration(warm, 'warmup'), recorder: null },
      );
    }
    await options.beforeMeasure?.();
    const recorder = new Recorder(options.skipFirst ?? 0, options.details ?? false);
    const { totalNs, endReason } = await runPhase({ total, durationMs, recorder });
    const ghzOptions: GhzOptions = {
      call: options.call,
      host: options.host,
      ...(options.proto ? { proto: options.proto } : {}),
      ...(options.importPaths?.length ? { 'import-paths': options.importPaths } : {}),
      insecure: options.insecure ?? true,
      ...(rps > 0 ? { rps } : {}),
      'load-schedule': 'const',
      'load-start': 0,
      'load-end': 0,
      'load-step': 0,
      'load-step-duration': 0,
      'load-max-duration': 0,
      concurrency,
      'concurrency-schedule': 'const',
      'concurrency-start': 0,
      'concurrency-end': 0,
      'concurrency-step': 0,
      'concurrency-step-duration': 0,
      'concurrency-max-duration': 0,
      ...(total > 0 ? { total } : {}),
      connections,
      ...(durationMs > 0 ? { duration: Math.round(durationMs * 1e6) } : {}),
      ...(timeoutMs > 0 ? { timeout: Math.round(timeoutMs * 1e6) } : {}),
      'dial-timeout': 10_000_000_000,
      data: data.parsed,
      binary: false,
      metadata: metadata.parsed,
      CPUs: cpus().length,
      ...(options.name ? { name: options.name } : {}),
      ...(options.skipFirst ? { skipFirst: options.skipFirst } : {}),
    };
    const report = buildReport(recorder, totalNs, endReason, ghzOptions, options.details ?? false, options.name);
    return { report, totalNs };
  } finally {
    for (const c of clients) c.close();
  }
}
