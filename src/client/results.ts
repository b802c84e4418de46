/** What a statement returned, with values as JavaScript (values.ts). */
import { fromWire, type SqlValue } from './values.ts';

export interface Column {
  name: string;
  /** The declared type (`INTEGER`, `TEXT`...), '' for an expression. */
  declType: string;
}

/** One row: values by position, in `columns` order. */
export type Row = SqlValue[];

export interface ResultSet {
  columns: Column[];
  rows: Row[];
  rowsAffected: bigint;
  lastInsertRowid: bigint;
}

interface WireColumn {
  name: string;
  decl_type: string;
}
interface WireRow {
  values: Parameters<typeof fromWire>[0][];
}
export interface WireResult {
  columns: WireColumn[];
  rows: WireRow[];
  rows_affected: string;
  last_insert_rowid: string;
}

export const columnsOf = (columns: WireColumn[]): Column[] => columns.map((c) => ({ name: c.name, declType: c.decl_type }));
export const rowOf = (row: WireRow): Row => row.values.map(fromWire);

export function resultOf(wire: WireResult): ResultSet {
  return {
    columns: columnsOf(wire.columns),
    rows: wire.rows.map(rowOf),
    rowsAffected: BigInt(wire.rows_affected || 0),
    lastInsertRowid: BigInt(wire.last_insert_rowid || 0),
  };
}
