/**
 * SQL results as protobuf bytes, written in the shard as rows are read:
 * ExecuteResponse, BatchResponse and QueryResponse. The front end hands
 * these bytes to gRPC untouched (src/grpc/encodedResponses.ts), so a
 * result is never rebuilt as objects on the main thread, never converted
 * by proto-loader (int64 through Long and decimal strings), and crosses
 * the thread boundary as one byte array instead of nested arrays of
 * bigints. A row costs its wire size plus the one array better-sqlite3
 * hands us, and only until it is written.
 *
 * Field numbers and types come from the proto files (protobufjs reads them
 * once per thread); the encoder refuses to load if a field it writes
 * changed type, so the bytes always mean what the .proto says.
 */
import { join } from 'node:path';
import protobuf from 'protobufjs';
import type { ColumnInfo, EncodedMessage, ExecuteResult, SqlValue } from '../src/protocol.ts';
import { PACKAGE_ROOT } from '../src/paths.ts';

const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;

interface Tags {
  columnName: number;
  columnDeclType: number;
  /** ExecuteResponse and QueryResponse share these two (checked at load). */
  columns: number;
  rows: number;
  rowsAffected: number;
  lastInsertRowid: number;
  rowValues: number;
  nullValue: number;
  integerValue: number;
  realValue: number;
  textValue: number;
  blobValue: number;
  batchResults: number;
}

function loadTags(): Tags {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : join(PACKAGE_ROOT, 'proto', target));
  root.loadSync(['tenantd/v1/sql_service.proto'], { keepCase: true });
  root.resolveAll();
  const tag = (typeName: string, fieldName: string, type: string, wire: number, repeated = false): number => {
    const field = root.lookupType(typeName).fields[fieldName];
    if (!field || field.type !== type || field.repeated !== repeated) {
      throw new Error(`resultWire: ${typeName}.${fieldName} is not ${repeated ? 'repeated ' : ''}${type} in the proto files any more`);
    }
    return (field.id << 3) | wire;
  };
  const tags: Tags = {
    columnName: tag('tenantd.v1.Column', 'name', 'string', LEN),
    columnDeclType: tag('tenantd.v1.Column', 'decl_type', 'string', LEN),
    columns: tag('tenantd.v1.ExecuteResponse', 'columns', 'Column', LEN, true),
    rows: tag('tenantd.v1.ExecuteResponse', 'rows', 'Row', LEN, true),
    rowsAffected: tag('tenantd.v1.ExecuteResponse', 'rows_affected', 'int64', VARINT),
    lastInsertRowid: tag('tenantd.v1.ExecuteResponse', 'last_insert_rowid', 'sint64', VARINT),
    rowValues: tag('tenantd.v1.Row', 'values', 'Value', LEN, true),
    nullValue: tag('tenantd.v1.Value', 'null_value', 'google.protobuf.NullValue', VARINT),
    integerValue: tag('tenantd.v1.Value', 'integer_value', 'sint64', VARINT),
    realValue: tag('tenantd.v1.Value', 'real_value', 'double', FIXED64),
    textValue: tag('tenantd.v1.Value', 'text_value', 'string', LEN),
    blobValue: tag('tenantd.v1.Value', 'blob_value', 'bytes', LEN),
    batchResults: tag('tenantd.v1.BatchResponse', 'results', 'ExecuteResponse', LEN, true),
  };
  if (tag('tenantd.v1.QueryResponse', 'columns', 'Column', LEN, true) !== tags.columns || tag('tenantd.v1.QueryResponse', 'rows', 'Row', LEN, true) !== tags.rows) {
    throw new Error('resultWire: QueryResponse no longer shares ExecuteResponse field numbers for columns and rows');
  }
  return tags;
}

const T = loadTags();

/** Bytes of a varint holding `n` (0 <= n < 2^53). */
function varintSize(n: number): number {
  let size = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

const SMALL = 2n ** 52n;

/** ZigZag of a signed 64-bit integer, as an unsigned bigint. */
function zigzag(v: bigint): bigint {
  return v >= 0n ? v << 1n : ((-v) << 1n) - 1n;
}

function integerSize(v: bigint): number {
  if (v < SMALL && v > -SMALL) {
    const n = Number(v);
    return varintSize(n >= 0 ? n * 2 : -n * 2 - 1);
  }
  let z = zigzag(BigInt.asIntN(64, v));
  let size = 1;
  while (z >= 128n) {
    z >>= 7n;
    size++;
  }
  return size;
}

function columnSize(c: ColumnInfo): number {
  const name = Buffer.byteLength(c.name, 'utf8');
  const decl = Buffer.byteLength(c.declType, 'utf8');
  return 1 + varintSize(name) + name + (decl > 0 ? 1 + varintSize(decl) + decl : 0);
}

/**
 * A growing protobuf buffer. A row is measured first (`measure`, so that
 * the caller can refuse it before it is written), then written (`row`).
 * `take()` returns exactly the bytes written in a buffer of their own: a
 * view into a larger one would carry the whole larger one across
 * postMessage.
 */
export class WireWriter {
  private buf: Buffer;
  private pos = 0;
  /** Of the row last measured: each value's Value size, and the UTF-8 length of its text or blob. */
  private sizes: number[] = [];
  private lengths: number[] = [];
  private measuredContent = 0;

  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafeSlow(initial);
  }

  get length(): number {
    return this.pos;
  }

  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafeSlow(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  private varint(n: number): void {
    while (n >= 128) {
      this.buf[this.pos++] = (n % 128) | 128;
      n = Math.floor(n / 128);
    }
    this.buf[this.pos++] = n;
  }

  private varint64(z: bigint): void {
    while (z >= 128n) {
      this.buf[this.pos++] = Number(z & 127n) | 128;
      z >>= 7n;
    }
    this.buf[this.pos++] = Number(z);
  }

  private string(tag: number, s: string, n: number): void {
    this.buf[this.pos++] = tag;
    this.varint(n);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }

  /** What `row` will add: the row's `rows` field, tag and length included. */
  measure(row: readonly SqlValue[]): number {
    let content = 0;
    const sizes = this.sizes;
    const lengths = this.lengths;
    for (let i = 0; i < row.length; i++) {
      const value = row[i]!;
      let size: number;
      switch (typeof value) {
        case 'bigint':
          size = 1 + integerSize(value);
          break;
        case 'number':
          size = 9;
          break;
        case 'string': {
          const n = Buffer.byteLength(value, 'utf8');
          lengths[i] = n;
          size = 1 + varintSize(n) + n;
          break;
        }
        default:
          if (value === null) size = 2;
          else {
            lengths[i] = value.byteLength;
            size = 1 + varintSize(value.byteLength) + value.byteLength;
          }
      }
      sizes[i] = size;
      content += 1 + varintSize(size) + size;
    }
    this.measuredContent = content;
    return 1 + varintSize(content) + content;
  }

  /** Appends the row last measured. */
  row(row: readonly SqlValue[]): void {
    const content = this.measuredContent;
    this.reserve(1 + 5 + content);
    this.buf[this.pos++] = T.rows;
    this.varint(content);
    for (let i = 0; i < row.length; i++) {
      const value = row[i]!;
      this.buf[this.pos++] = T.rowValues;
      this.varint(this.sizes[i]!);
      switch (typeof value) {
        case 'bigint':
          this.buf[this.pos++] = T.integerValue;
          if (value < SMALL && value > -SMALL) {
            const n = Number(value);
            this.varint(n >= 0 ? n * 2 : -n * 2 - 1);
          } else this.varint64(zigzag(BigInt.asIntN(64, value)));
          break;
        case 'number':
          this.buf[this.pos++] = T.realValue;
          this.buf.writeDoubleLE(value, this.pos);
          this.pos += 8;
          break;
        case 'string':
          this.string(T.textValue, value, this.lengths[i]!);
          break;
        default:
          if (value === null) {
            this.buf[this.pos++] = T.nullValue;
            this.buf[this.pos++] = 0;
          } else {
            this.buf[this.pos++] = T.blobValue;
            this.varint(value.byteLength);
            this.buf.set(value, this.pos);
            this.pos += value.byteLength;
          }
      }
    }
  }

  columns(columns: readonly ColumnInfo[]): void {
    for (const c of columns) {
      const size = columnSize(c);
      this.reserve(1 + 5 + size);
      this.buf[this.pos++] = T.columns;
      this.varint(size);
      this.string(T.columnName, c.name, Buffer.byteLength(c.name, 'utf8'));
      const decl = Buffer.byteLength(c.declType, 'utf8');
      if (decl > 0) this.string(T.columnDeclType, c.declType, decl);
    }
  }

  /** ExecuteResponse's two scalars, left out when zero as proto3 does. */
  counts(rowsAffected: number, lastInsertRowid: bigint): void {
    this.reserve(2 + 10 + 10);
    if (rowsAffected !== 0) {
      // int64, not sint64: never negative here, so a plain varint.
      this.buf[this.pos++] = T.rowsAffected;
      this.varint(rowsAffected);
    }
    if (lastInsertRowid !== 0n) {
      this.buf[this.pos++] = T.lastInsertRowid;
      this.varint64(zigzag(BigInt.asIntN(64, lastInsertRowid)));
    }
  }

  /** What has been written so far, valid until the next write or reset. */
  view(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }

  reset(): void {
    this.pos = 0;
  }

  /** A nested message already encoded (a BatchResponse's ExecuteResponses). */
  message(tag: number, bytes: Uint8Array): void {
    this.reserve(1 + 5 + bytes.byteLength);
    this.buf[this.pos++] = tag;
    this.varint(bytes.byteLength);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.byteLength;
  }

  /**
   * The bytes written, to post to the front end; the writer starts over.
   * Up to SMALL_MESSAGE_BYTES as a one-byte string (see EncodedMessage),
   * larger in a buffer of their own.
   */
  takeMessage(): EncodedMessage {
    if (this.pos > SMALL_MESSAGE_BYTES) return this.take();
    const s = this.buf.toString('latin1', 0, this.pos);
    this.pos = 0;
    return s;
  }

  /** The bytes written, in a buffer of their own (to transfer); the writer starts over. */
  take(): Uint8Array {
    const out = new Uint8Array(this.pos);
    out.set(this.buf.subarray(0, this.pos));
    this.pos = 0;
    return out;
  }
}

/**
 * Results up to this size cross the port as a string: cloning a one-byte
 * string is a copy on the V8 heap, while every ArrayBuffer costs a backing
 * store allocated, tracked as external memory and freed by the GC, on both
 * threads (a bench:sql profile: 7 % of a shard's busy time allocating them,
 * and GC at 40 %).
 */
const SMALL_MESSAGE_BYTES = 64 * 1024;

/** One per thread, reused by every call: a writer's buffer only grows. */
const scratch = new WireWriter(4096);
const batchScratch = new WireWriter(4096);

function writeExecuteResponse(result: ExecuteResult, writer: WireWriter): void {
  writer.columns(result.columns);
  for (const row of result.rows) {
    writer.measure(row);
    writer.row(row);
  }
  writer.counts(result.rowsAffected, result.lastInsertRowid);
}

/** ExecuteResponse bytes of one statement's result. */
export function encodeExecuteResponse(result: ExecuteResult): EncodedMessage {
  writeExecuteResponse(result, scratch);
  return scratch.takeMessage();
}

/** BatchResponse bytes: one ExecuteResponse per statement, in order. */
export function encodeBatchResponse(results: readonly ExecuteResult[]): EncodedMessage {
  for (const result of results) {
    writeExecuteResponse(result, scratch);
    batchScratch.message(T.batchResults, scratch.view());
    scratch.reset();
  }
  return batchScratch.takeMessage();
}
