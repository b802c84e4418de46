/**
 * Canonical proto3 JSON, what grpcurl and every protobuf library print: field
 * names in lowerCamelCase, int64 as strings, enums as names, Timestamps as
 * RFC 3339, bytes as base64, default values and unset fields left out, no
 * oneof discriminators. Walks the grpc-js message with the type from proto/.
 */
import protobuf from 'protobufjs';
import { apiTypes as types } from '../protoRoot.ts';

const camel = (name: string) => name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

const INT64 = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);

/** seconds + nanos -> `2026-01-02T03:04:05.120Z`, with 0, 3, 6 or 9 fraction digits as protojson does. */
export function rfc3339(seconds: string | number, nanos: number): string {
  const base = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  if (!nanos) return `${base}Z`;
  const digits = String(nanos).padStart(9, '0');
  const fraction = digits.endsWith('000000') ? digits.slice(0, 3) : digits.endsWith('000') ? digits.slice(0, 6) : digits;
  return `${base}.${fraction}Z`;
}

function isDefault(field: protobuf.Field, value: unknown): boolean {
  if (value === null || value === undefined) return true;
  if (field.resolvedType instanceof protobuf.Type) return false;
  if (field.resolvedType instanceof protobuf.Enum) return value === 0 || value === field.resolvedType.valuesById[0];
  if (field.type === 'bytes') return (value as Uint8Array).length === 0;
  if (field.type === 'string') return value === '';
  if (field.type === 'bool') return value === false;
  return Number(value) === 0 && !Object.is(Number(value), -0);
}

function scalar(field: protobuf.Field, value: unknown): unknown {
  const type = field.resolvedType;
  if (type instanceof protobuf.Type) return message(type, value as Record<string, unknown>);
  if (type instanceof protobuf.Enum) {
    if (type.fullName === '.google.protobuf.NullValue') return null;
    return typeof value === 'number' ? (type.valuesById[value] ?? value) : value;
  }
  if (INT64.has(field.type)) return String(value);
  if (field.type === 'bytes') return Buffer.from(value as Uint8Array).toString('base64');
  if (field.type === 'double' || field.type === 'float') {
    const n = Number(value);
    return Number.isFinite(n) ? n : String(n);
  }
  return value;
}

function wellKnown(type: protobuf.Type, value: Record<string, unknown>): unknown {
  switch (type.fullName) {
    case '.google.protobuf.Timestamp':
      return rfc3339(value.seconds as string, Number(value.nanos ?? 0));
    case '.google.protobuf.Duration': {
      const nanos = Number(value.nanos ?? 0);
      return `${String(value.seconds ?? 0)}${nanos ? `.${String(Math.abs(nanos)).padStart(9, '0').replace(/0+$/, '')}` : ''}s`;
    }
    case '.google.protobuf.FieldMask':
      return ((value.paths as string[]) ?? []).map(camel).join(',');
    case '.google.protobuf.Empty':
      return {};
    default:
      return undefined;
  }
}

/** A message as grpc-js gave it -> its canonical JSON value. */
export function message(type: protobuf.Type, value: Record<string, unknown>): unknown {
  const known = wellKnown(type, value);
  if (known !== undefined) return known;
  const out: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    const v = value[field.name];
    const oneof = field.partOf;
    if (field.map) {
      const entries = Object.entries((v ?? {}) as Record<string, unknown>);
      if (entries.length > 0) out[camel(field.name)] = Object.fromEntries(entries.map(([k, e]) => [k, scalar(field, e)]));
    } else if (field.repeated) {
      if (Array.isArray(v) && v.length > 0) out[camel(field.name)] = v.map((e) => scalar(field, e));
    } else if (oneof && !(oneof.fieldsArray.length === 1 && oneof.name.startsWith('_'))) {
      // A real oneof: the member that is set is printed even when it holds a default value.
      const chosen = value[oneof.name];
      if (chosen === field.name || (chosen === undefined && v !== undefined && v !== null)) out[camel(field.name)] = scalar(field, v);
    } else if (oneof) {
      // proto3 `optional`: present means set.
      if (v !== undefined && v !== null) out[camel(field.name)] = scalar(field, v);
    } else if (!isDefault(field, v)) {
      out[camel(field.name)] = scalar(field, v);
    }
  }
  return out;
}

/** `tenantd.v1.Tenant` (or any type in proto/) -> canonical JSON value of `value`. */
export function toProtoJson(typeName: string, value: unknown): unknown {
  return message(types().lookupType(typeName), value as Record<string, unknown>);
}
