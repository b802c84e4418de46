/**
 * SQL values between JavaScript and the wire's `tenantd.v1.Value`.
 *
 * Sent: bigint and safe-integer numbers as INTEGER, other numbers as REAL,
 * strings as TEXT, Uint8Array as BLOB, null/undefined as NULL, booleans as 0/1.
 * Received: INTEGER always as bigint, so every int64 comes back exact.
 */

export type SqlValue = bigint | number | string | Uint8Array | null;
/** What may be bound: SqlValue plus booleans and undefined (NULL). */
export type SqlInput = SqlValue | boolean | undefined;
/** Positional (`?`) or named (`:name`, `@name`, `$name`, given without the prefix). */
export type Params = readonly SqlInput[] | Readonly<Record<string, SqlInput>>;

/** The wire shape, as grpc-js with proto-loader's options carries it. */
export type WireValue =
  | { integer_value: string }
  | { real_value: number }
  | { text_value: string }
  | { blob_value: Buffer }
  | { null_value: 'NULL_VALUE' };

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

export function toWire(value: SqlInput, where = 'value'): WireValue {
  if (value === null || value === undefined) return { null_value: 'NULL_VALUE' };
  if (typeof value === 'bigint') {
    if (value < INT64_MIN || value > INT64_MAX) throw new RangeError(`${where}: ${value} is outside SQLite's 64-bit integers`);
    return { integer_value: value.toString() };
  }
  if (typeof value === 'number') return Number.isSafeInteger(value) ? { integer_value: String(value) } : { real_value: value };
  if (typeof value === 'boolean') return { integer_value: value ? '1' : '0' };
  if (typeof value === 'string') return { text_value: value };
  if (value instanceof Uint8Array) return { blob_value: Buffer.from(value.buffer, value.byteOffset, value.byteLength) };
  throw new TypeError(`${where}: cannot bind a ${typeof value} (use bigint, number, string, Uint8Array or null)`);
}

interface ReceivedValue {
  kind?: string;
  integer_value?: string;
  real_value?: number;
  text_value?: string;
  blob_value?: Buffer;
}

export function fromWire(value: ReceivedValue): SqlValue {
  switch (value.kind) {
    case 'integer_value':
      return BigInt(value.integer_value!);
    case 'real_value':
      return value.real_value!;
    case 'text_value':
      return value.text_value!;
    case 'blob_value':
      return new Uint8Array(value.blob_value!);
    default:
      return null;
  }
}

/** `params` and `named_params` of a request. */
export function bindings(params: Params | undefined): { params: WireValue[]; named_params: Record<string, WireValue> } {
  if (params === undefined) return { params: [], named_params: {} };
  if (Array.isArray(params)) return { params: params.map((p, i) => toWire(p, `params[${i}]`)), named_params: {} };
  const named: Record<string, WireValue> = {};
  for (const [name, value] of Object.entries(params)) named[name.replace(/^[:@$]/, '')] = toWire(value, `params.${name}`);
  return { params: [], named_params: named };
}
