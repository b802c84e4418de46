/**
 * What one HTTP/2 connection may cost the server, set deliberately rather
 * than left at grpc-js's defaults (which advertise 4294967295 streams and an
 * unbounded header list, and switch Node's session memory check off). Each
 * value and its reason is in the README, "Transport limits".
 */
import type { ChannelOptions, Server } from '@grpc/grpc-js';

/** Messages up to 16 MiB in: large Batch calls and blobs; SQLite's own limit is 16 MiB per value. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * Calls open at once on one connection. A tenant's own concurrency quota is
 * at most 1,024 (enterprise), and clients open more connections past this;
 * an attacker's half-open streams stop here, at ~1,000 × a few KiB.
 */
export const MAX_CONCURRENT_STREAMS = 1_000;

/** All request headers of one call together: keys, tenant id, traceparent are well under 1 KiB. */
export const MAX_HEADER_LIST_BYTES = 16 * 1024;

/** Node's per-connection nghttp2 memory bound, in MiB; past it new streams are refused (ENHANCE_YOUR_CALM). */
export const MAX_SESSION_MEMORY_MB = 64;

export function transportOptions(): ChannelOptions {
  return {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS,
    'grpc-node.max_session_memory': MAX_SESSION_MEMORY_MB,
    // A ping every 2 minutes on a connection with no traffic finds peers that vanished
    // (NAT drop, killed client) so their sockets do not linger; 20 s to answer it.
    'grpc.keepalive_time_ms': 120_000,
    'grpc.keepalive_timeout_ms': 20_000,
    // A connection with no call for 10 minutes is closed gracefully (GOAWAY); clients reconnect on their next call.
    'grpc.max_connection_idle_ms': 600_000,
    // Every connection is closed gracefully after about an hour (grpc-js adds jitter), so load
    // rebalances after nodes join and no connection holds state forever; calls in flight then
    // have 5 minutes to finish (a Subscribe or WatchUsage stream is ended and resumes on a new one).
    'grpc.max_connection_age_ms': 3_600_000,
    'grpc.max_connection_age_grace_ms': 300_000,
  };
}

/**
 * HTTP/2 settings grpc-js has no option for: the header list bound is
 * advertised to clients and enforced by Node (a larger header block resets
 * the stream). grpc-js passes `commonServerOptions` to http2.createServer
 * (and createSecureServer) at bind, so it is set there, before bindAsync.
 */
export function limitHeaderList(server: Server): void {
  const internals = server as unknown as { commonServerOptions?: { settings?: Record<string, number> } };
  if (internals.commonServerOptions === undefined) throw new Error('grpc-js changed: Server.commonServerOptions is gone; see grpc/transportOptions.ts');
  internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, maxHeaderListSize: MAX_HEADER_LIST_BYTES };
}
