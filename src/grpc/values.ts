/**
 * SQL values between their protobuf form (`tenantd.v1.Value`, int64 as a
 * decimal string) and the JS form the shards use (bigint for integers).
 */
import { invalidArgument } from '../errors.ts';
import type { SqlValue, StatementInput } from '../protocol.ts';

export interface ProtoValue {
  kind?: 'null_value' | 'integer_value' | 'real_value' | 'text_value' | 'blob_value';
  null_value?: string;
  integer_value?: string;
  real_value?: number;
  text_value?: string;
  blob_value?: Uint8Array;
}

export interface ProtoStatement {
  sql: string;
  params: ProtoValue[];
  named_params: Record<string, ProtoValue>;
}

const MAX_SQL_LENGTH = 1024 * 1024;
const MAX_PARAMS = 32_766;
const NAMED_PARAM = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function fromProtoValue(value: ProtoValue, field: string): SqlValue {
  switch (value.kind) {
    case 'integer_value':
      return BigInt(value.integer_value!);
    case 'real_value':
      return value.real_value!;
    case 'text_value':
      return value.text_value!;
    case 'blob_value':
      return value.blob_value!;
    case 'null_value':
      return null;
    default:
      throw invalidArgument(field, 'the value has none of null_value, integer_value, real_value, text_value, blob_value set', 'INVALID_PARAMETERS');
  }
}

const NULL: ProtoValue = { null_value: 'NULL_VALUE' };

export function toProtoValue(value: SqlValue): ProtoValue {
  switch (typeof value) {
    case 'bigint':
      return { integer_value: value.toString() };
    case 'number':
      return { real_value: value };
    case 'string':
      return { text_value: value };
    default:
      return value === null ? NULL : { blob_value: value };
  }
}

/** Checks a statement's shape at the edge; SQLite checks the rest. */
export function toStatement(input: ProtoStatement, prefix: string): StatementInput {
  const sqlField = prefix === '' ? 'sql' : `${prefix}.sql`;
  if (input.sql.trim() === '') throw invalidArgument(sqlField, 'the statement is empty', 'INVALID_SQL');
  if (input.sql.length > MAX_SQL_LENGTH) {
    throw invalidArgument(sqlField, `the statement is longer than ${MAX_SQL_LENGTH} characters`, 'INVALID_SQL');
  }
  const paramsField = prefix === '' ? 'params' : `${prefix}.params`;
  if (input.params.length > MAX_PARAMS) {
    throw invalidArgument(paramsField, `at most ${MAX_PARAMS} parameters`, 'INVALID_PARAMETERS');
  }
  const params = input.params.map((v, i) => fromProtoValue(v, `${paramsField}[${i}]`));
  let named: Record<string, SqlValue> | null = null;
  const namedField = prefix === '' ? 'named_params' : `${prefix}.named_params`;
  for (const [name, value] of Object.entries(input.named_params ?? {})) {
    if (!NAMED_PARAM.test(name)) {
      throw invalidArgument(`${namedField}[${JSON.stringify(name)}]`, 'parameter names are identifiers, without the :, @ or $ prefix', 'INVALID_PARAMETERS');
    }
    named ??= {};
    named[name] = fromProtoValue(value, `${namedField}[${name}]`);
  }
  return { sql: input.sql, params, named };
}
