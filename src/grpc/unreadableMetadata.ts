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
    const metadata = fromHttp2Headers(headers);
    const names: string[] = [];
    for (const name of WATCHED) {
      const raw = headers[name];
      const sent = raw === undefined ? 0 : Array.isArray(raw) ? raw.length : 1;
      if (sent > metadata.get(name).length) names.push(name);
    }
    if (names.length > 0) lost.set(metadata, names);
    return metadata;
  };
}
