/**
 * Shared by bench/quota-admission.ts, bench/quota-accuracy.ts and
 * bench/scale.ts: flags, the machine line, PASS/MISS, percentiles, a
 * grpc-js client on the method's own serializers, and error-detail decoding
 * (google.rpc.Status in `grpc-status-details-bin`, as any client reads it).
 */
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition } from '@grpc/proto-loader';
import { UNLIMITED_PROTO_QUOTAS } from '../lib/benchConfig.ts';
import { packageDefinition } from '../../src/protos.ts';
import { fromServiceError } from '../../src/client/errors.ts';

export const line = (s = ''): void => void process.stdout.write(`${s}\n`);
export const progress = (s: string): void => void process.stderr.write(`\r${s}\x1b[K`);

export function machineLine(): string {
  const cpu = cpus()[0]?.model?.trim() || 'unknown CPU';
  return `machine: ${cpu}, ${availableParallelism()} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${process.platform}/${process.arch}; ${loadLine()}`;
}

/** The 1/5/15-minute load averages: other work on the box shows up here. */
export function loadLine(): string {
  return `load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`;
}

/** `--name value`, `--name=value` and boolean `--name`; unknown flags are refused by name. */
export function parseFlags(argv: string[], valued: string[], booleans: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (booleans.includes(name)) out.set(name, 'true');
    else if (valued.includes(name)) {
      const value = eq === -1 ? argv[++i] : arg.slice(eq + 1);
      if (value === undefined) throw new Error(`${name} needs a value`);
      out.set(name, value);
    } else {
      throw new Error(`unknown flag ${name}; known: ${[...valued, ...booleans].join(' ')}`);
    }
  }
  return out;
}

export function numberFlag(flags: Map<string, string>, name: string, fallback: number): number {
  const raw = flags.get(name);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name}: expected a positive number, got ${raw}`);
  return value;
}

/** "PASS" or "MISS" against a target; `higherIsBetter` flips the comparison. */
export function verdict(value: number, target: number, higherIsBetter = false): 'PASS' | 'MISS' {
  return (higherIsBetter ? value >= target : value <= target) ? 'PASS' : 'MISS';
}

/** Nearest-rank percentile of an already sorted array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

export function sortedCopy(values: number[]): Float64Array {
  return Float64Array.from(values).sort();
}

export function median(values: number[]): number {
  return percentile(sortedCopy(values), 50);
}

/** VmRSS / VmHWM of a process in MiB, from /proc/<pid>/status; null off Linux. */
export function memoryOf(pid: number): { rssMiB: number; hwmMiB: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { rssMiB: kib('VmRSS') / 1024, hwmMiB: kib('VmHWM') / 1024 };
  } catch {
    return null;
  }
}

/** What a failed call carried, decoded from grpc-status-details-bin. */
export interface CallFailure {
  code: grpc.status;
  message: string;
  reason: string;
  /** From google.rpc.RetryInfo; null when the error had none. */
  retryDelayMs: number | null;
  quotaIds: string[];
}

/** Through the client's one google.rpc.Status decoder (src/client/errors.ts). */
export function decodeFailure(error: grpc.ServiceError): CallFailure {
  const decoded = fromServiceError(error);
  return {
    code: decoded.code,
    message: decoded.details,
    reason: decoded.reason,
    retryDelayMs: decoded.retryAfterMs,
    quotaIds: decoded.quotaViolations.map((v) => v.quotaId),
  };
}

export type UnaryResult<T> = { ok: true; response: T } | { ok: false; error: grpc.ServiceError };

/** A unary method called through Client.makeUnaryRequest with its own serializers. */
export type Unary = <T = any>(request: object, key: string, deadlineMs?: number) => Promise<UnaryResult<T>>;

export class RawClient {
  readonly client: grpc.Client;

  constructor(address: string) {
    this.client = new grpc.Client(address, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    });
  }

  method(service: 'TenantService' | 'SqlService' | 'SchemaService', name: string): Unary {
    const def = packageDefinition()[`tenantd.v1.${service}`] as Record<string, MethodDefinition<object, object>>;
    const m = def[name];
    if (!m) throw new Error(`tenantd.v1.${service} has no method ${name}`);
    const metadataByKey = new Map<string, grpc.Metadata>();
    return <T>(request: object, key: string, deadlineMs = 30_000) =>
      new Promise<UnaryResult<T>>((resolve) => {
        let md = metadataByKey.get(key);
        if (!md) {
          md = new grpc.Metadata();
          md.set('authorization', `Bearer ${key}`);
          // Only a few keys are reused call after call; do not keep one per tenant at scale.
          if (metadataByKey.size < 64) metadataByKey.set(key, md);
        }
        this.client.makeUnaryRequest(
          m.path,
          m.requestSerialize as (v: object) => Buffer,
          m.responseDeserialize as (b: Buffer) => object,
          request,
          md,
          { deadline: Date.now() + deadlineMs },
          (error, response) => resolve(error ? { ok: false, error } : { ok: true, response: response as T }),
        );
      });
  }

  /** A server-streaming method: resolves with every message, or rejects with the call's error. */
  serverStream(service: 'TenantService', name: string): <T = any>(request: object, key: string) => Promise<T[]> {
    const m = (packageDefinition()[`tenantd.v1.${service}`] as Record<string, MethodDefinition<object, object>>)[name];
    if (!m) throw new Error(`tenantd.v1.${service} has no method ${name}`);
    return <T>(request: object, key: string) =>
      new Promise<T[]>((resolve, reject) => {
        const md = new grpc.Metadata();
        md.set('authorization', `Bearer ${key}`);
        const call = this.client.makeServerStreamRequest(
          m.path,
          m.requestSerialize as (v: object) => Buffer,
          m.responseDeserialize as (b: Buffer) => object,
          request,
          md,
        );
        const messages: T[] = [];
        call.on('data', (message: T) => messages.push(message));
        call.on('error', reject);
        call.on('end', () => resolve(messages));
      });
  }

  close(): void {
    this.client.close();
  }
}

/** Every quota unlimited, as overrides on the wire. */
export const UNLIMITED_QUOTAS: Record<string, string> = UNLIMITED_PROTO_QUOTAS;

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function fmtUs(us: number): string {
  return `${us.toFixed(us < 10 ? 2 : 1)} µs`;
}

export function fmtMs(ms: number): string {
  return `${ms.toFixed(ms < 10 ? 3 : 1)} ms`;
}
