/**
 * Metadata that was sent but that grpc-js could not read. grpc-js drops a
 * header value with bytes outside printable ASCII (CR, LF, non-ASCII,
 * invalid UTF-8), logs it, and hands the handler the rest: an
 * `x-tenant-id` that cannot be read would look like one never sent, and the
 * call would run for the key's own tenant, or for an admin key with no
 * tenant named. So for the headers access decisions rest on, the raw HTTP/2
 * headers are compared with what grpc-js made of them, at the one place it
 * makes it (Metadata.fromHttp2Headers, called for every incoming call), and
 * the names whose values were lost are remembered for that call's metadata.
 */
import { Metadata } from '@grpc/grpc-js';
import type { IncomingHttpHeaders } from 'node:http2';

/** The headers who may call and for which tenant depend on. */
const WATCHED = ['authorization', 'x-tenant-id'] as const;

const lost = new WeakMap<Metadata, string[]>();

/** The watched header names that were sent with a value grpc-js dropped. */
export function unreadableFields(metadata: Metadata): readonly string[] {
  return lost.get(metadata) ?? [];
}

let installed = false;

/** Wraps Metadata.fromHttp2Headers for the process. */
export function watchUnreadableMetadata(): void {
  if (installed) return;
  installed = true;
  const fromHttp2Headers = Metadata.fromHttp2Headers.bind(Metadata);
  Metadata.fromHttp2Headers = (headers: IncomingHttpHeaders): Metadata => {
    const { readable, dropped } = withoutUnreadable(headers);
    const metadata = fromHttp2Headers(readable);
    if (dropped !== null) {
      const names = WATCHED.filter((name) => dropped.has(name));
      if (names.length > 0) lost.set(metadata, names);
    }
    return metadata;
  };
}

/** grpc-js's own test for a text value (metadata.js): printable ASCII only. */
const LEGAL_TEXT_VALUE = /^[ -~]*$/;

/**
 * The headers without the text values grpc-js would drop. Dropping them here
 * first also keeps grpc-js from logging each one at ERROR level with its
 * value, which for `authorization` is the caller's key: a secret in the log,
 * and a way for anyone to flood it.
 */
function withoutUnreadable(headers: IncomingHttpHeaders): { readable: IncomingHttpHeaders; dropped: Set<string> | null } {
  // Every call passes here: nothing is allocated unless a value is dropped.
  let dropped: Set<string> | null = null;
  let readable = headers;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || name.startsWith(':') || name.endsWith('-bin')) continue;
    if (typeof value === 'string' ? LEGAL_TEXT_VALUE.test(value) : value.every((v) => LEGAL_TEXT_VALUE.test(v))) continue;
    const values = Array.isArray(value) ? value : [value];
    const kept = values.filter((v) => LEGAL_TEXT_VALUE.test(v));
    (dropped ??= new Set()).add(name);
    if (readable === headers) readable = { ...headers };
    if (kept.length === 0) delete readable[name];
    else readable[name] = Array.isArray(value) ? kept : kept[0];
  }
  return { readable, dropped };
}
