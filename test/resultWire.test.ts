import { describe, expect, it } from 'vitest';
import { packageDefinition } from '../src/protos.ts';
import type { EncodedMessage, ExecuteResult, SqlValue } from '../src/protocol.ts';
import { toProtoValue } from '../src/grpc/values.ts';
import { encodeBatchResponse, encodeExecuteResponse, WireWriter } from '../workers/resultWire.ts';
import { decodeQueryResponse } from './support/wire.ts';

type Method = { responseSerialize(value: unknown): Buffer; responseDeserialize(bytes: Buffer): unknown };
const sql = packageDefinition()['tenantd.v1.SqlService'] as unknown as Record<'Execute' | 'Batch' | 'Query', Method>;

/**
 * What the front end sent before the shards wrote bytes: objects through
 * proto-loader. (It also wrote zero counts, which proto3 leaves out; the
 * messages decode the same.)
 */
function viaProtoLoader(result: ExecuteResult): unknown {
  return decode(sql.Execute.responseSerialize({
    columns: result.columns.map((c) => ({ name: c.name, decl_type: c.declType })),
    rows: result.rows.map((row) => ({ values: row.map(toProtoValue) })),
    rows_affected: String(result.rowsAffected),
    last_insert_rowid: result.lastInsertRowid.toString(),
  }));
}

const decode = (m: EncodedMessage) => sql.Execute.responseDeserialize(typeof m === 'string' ? Buffer.from(m, 'latin1') : Buffer.from(m));

const EDGE_VALUES: SqlValue[] = [
  null,
  0n, 1n, -1n, 63n, -64n, 64n, 2n ** 31n - 1n, -(2n ** 31n), 2n ** 52n - 1n, 2n ** 52n, -(2n ** 52n), -(2n ** 52n) - 1n,
  2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n),
  0, -0, 1.5, -1e308, Number.MIN_VALUE, Infinity, -Infinity, NaN,
  '', 'a', 'é', '日本語', '😀 emoji', 'x'.repeat(127), 'y'.repeat(128), 'z'.repeat(20_000), '\u0000nul',
  new Uint8Array(0), new Uint8Array([0, 255, 1]), new Uint8Array(300).fill(7),
];

describe('results written as protobuf in the shard', () => {
  it('encodes every kind of value so that it decodes as what proto-loader encoded', () => {
    const result: ExecuteResult = {
      columns: [{ name: 'v', declType: 'ANY' }, { name: 'expr', declType: '' }, { name: 'ünï', declType: 'TEXT' }],
      rows: EDGE_VALUES.map((v, i) => [v, BigInt(i), i % 2 === 0 ? null : `row ${i}`]),
      rowsAffected: 0,
      lastInsertRowid: 0n,
    };
    expect(decode(encodeExecuteResponse(result))).toEqual(viaProtoLoader(result));
  });

  it('encodes the counts, empty results and wide rows as proto-loader does', () => {
    const cases: ExecuteResult[] = [
      { columns: [], rows: [], rowsAffected: 0, lastInsertRowid: 0n },
      { columns: [], rows: [], rowsAffected: 3, lastInsertRowid: 42n },
      { columns: [], rows: [], rowsAffected: 2 ** 40, lastInsertRowid: -(2n ** 63n) },
      { columns: [], rows: [], rowsAffected: 1, lastInsertRowid: 2n ** 63n - 1n },
      { columns: [{ name: 'a', declType: 'INTEGER' }], rows: [], rowsAffected: 0, lastInsertRowid: 0n },
      {
        columns: Array.from({ length: 2000 }, (_, i) => ({ name: `c${i}`, declType: 'BLOB' })),
        rows: [Array.from({ length: 2000 }, (_, i) => (i % 3 === 0 ? new Uint8Array(i % 200) : i % 3 === 1 ? BigInt(-i) : 'v'.repeat(i % 300)))],
        rowsAffected: 0,
        lastInsertRowid: 0n,
      },
      // Length prefixes of 2 and 3 bytes, at and past their edges.
      { columns: [], rows: [['x'.repeat(16_370)], ['x'.repeat(16_400)], [new Uint8Array(20_000)]], rowsAffected: 0, lastInsertRowid: 0n },
    ];
    for (const result of cases) expect(decode(encodeExecuteResponse(result))).toEqual(viaProtoLoader(result));
  });

  it('encodes a Batch as one ExecuteResponse per statement', () => {
    const results: ExecuteResult[] = [
      { columns: [{ name: 'n', declType: '' }], rows: [[1n], [2n]], rowsAffected: 0, lastInsertRowid: 0n },
      { columns: [], rows: [], rowsAffected: 0, lastInsertRowid: 0n },
      { columns: [], rows: [], rowsAffected: 5, lastInsertRowid: 9n },
    ];
    const batch = encodeBatchResponse(results);
    expect(sql.Batch.responseDeserialize(typeof batch === 'string' ? Buffer.from(batch, 'latin1') : Buffer.from(batch))).toEqual({ results: results.map(viaProtoLoader) });
  });

  it('measures a row at exactly the bytes it adds, and takes a buffer of its own', () => {
    const writer = new WireWriter(16);
    writer.columns([{ name: 'v', declType: '' }]);
    const before = writer.length;
    let measured = 0;
    for (const value of EDGE_VALUES) {
      measured += writer.measure([value, value]);
      writer.row([value, value]);
    }
    expect(writer.length - before).toBe(measured);
    const bytes = writer.take();
    // Only its own bytes cross postMessage: the buffer is no larger than the message.
    expect(bytes.buffer.byteLength).toBe(bytes.byteLength);
    const decoded = decodeQueryResponse(bytes);
    expect(decoded.columns).toEqual([{ name: 'v', decl_type: '' }]);
    expect(decoded.rows).toHaveLength(EDGE_VALUES.length);
    expect(writer.length).toBe(0);
  });
});
