/**
 * gRPC spoken by hand over node:http2: what an attacker (or a broken client)
 * sends, byte for byte, with nothing in grpc-js's client to tidy it up. Used
 * by the fuzzer (bench/fuzz.ts) and the tests of malformed input.
 */
import { connect, type ClientHttp2Session, type OutgoingHttpHeaders } from 'node:http2';
import { rpcTypes } from '../../src/protos.ts';

export interface RawStatus {
  /** The gRPC status, or null when none came (the stream was reset or timed out). */
  code: number | null;
  message: string;
  /** ErrorInfo reason from grpc-status-details-bin, '' when there was none. */
  reason: string;
  /** BadRequest field names, if any. */
  fields: string[];
  httpStatus: number | null;
  /** Response message bytes received (framing included). */
  received: number;
  /** Set when the stream ended without a status: 'reset', 'timeout', 'error: ...'. */
  failure: string | null;
}

/** One length-prefixed message: flag byte, big-endian length, body. */
export function frame(body: Uint8Array, compressed = false, declaredLength = body.length): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(compressed ? 1 : 0, 0);
  head.writeUInt32BE(declaredLength >>> 0, 1);
  return Buffer.concat([head, body]);
}

export function open(port: number): ClientHttp2Session {
  const session = connect(`http://127.0.0.1:${port}`);
  // A session error (GOAWAY, reset socket) is an outcome the caller inspects, not a crash.
  session.on('error', () => {});
  return session;
}

function decodeDetails(raw: string | undefined): { reason: string; fields: string[] } {
  if (!raw) return { reason: '', fields: [] };
  const root = rpcTypes();
  const statusType = root.lookupType('google.rpc.Status');
  const decoded = statusType.toObject(statusType.decode(Buffer.from(raw, 'base64'))) as { details?: { type_url: string; value: Uint8Array }[] };
  let reason = '';
  const fields: string[] = [];
  for (const any of decoded.details ?? []) {
    const typeName = any.type_url.split('/').pop()!;
    const type = root.lookupType(typeName);
    const detail = type.toObject(type.decode(any.value)) as { reason?: string; field_violations?: { field: string }[] };
    if (typeName === 'google.rpc.ErrorInfo') reason = detail.reason ?? '';
    if (typeName === 'google.rpc.BadRequest') fields.push(...(detail.field_violations ?? []).map((v) => v.field));
  }
  return { reason, fields };
}

export interface RawCallOptions {
  /** false leaves the request open (half-open stream); default true. */
  end?: boolean;
  /** Give up (and reset the stream) after this long; default 10 s. */
  timeoutMs?: number;
}

/** Sends `headers` (gRPC's own are filled in unless given) and `body`, and resolves with what came back. */
export function rawCall(session: ClientHttp2Session, path: string, headers: OutgoingHttpHeaders, body: Buffer | null, options: RawCallOptions = {}): Promise<RawStatus> {
  const result: RawStatus = { code: null, message: '', reason: '', fields: [], httpStatus: null, received: 0, failure: null };
  return new Promise((resolve) => {
    let stream;
    try {
      stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers }, { endStream: false });
    } catch (error) {
      result.failure = `error: ${(error as Error).message}`;
      resolve(result);
      return;
    }
    const timer = setTimeout(() => {
      result.failure = 'timeout';
      stream.close();
    }, options.timeoutMs ?? 10_000);
    const take = (headers: Record<string, unknown>): void => {
      if (headers[':status'] !== undefined) result.httpStatus = Number(headers[':status']);
      if (headers['grpc-status'] !== undefined) {
        result.code = Number(headers['grpc-status']);
        result.message = decodeURIComponent(String(headers['grpc-message'] ?? ''));
        Object.assign(result, decodeDetails(headers['grpc-status-details-bin'] as string | undefined));
      }
    };
    stream.on('response', take);
    stream.on('trailers', take);
    stream.on('data', (chunk: Buffer) => (result.received += chunk.length));
    stream.on('error', (error) => {
      result.failure ??= `error: ${error.message}`;
    });
    stream.on('close', () => {
      clearTimeout(timer);
      if (result.code === null) result.failure ??= 'reset';
      resolve(result);
    });
    if (body !== null) stream.write(body);
    if (options.end ?? true) stream.end();
  });
}
