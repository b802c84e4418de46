/**
 * What the CLI prints on stdout: canonical proto3 JSON (for jq, scripts and
 * anyone who knows grpcurl) or a table for people. One answer is printed
 * indented; the items of a listing or a stream one JSON document per line.
 */
import { toProtoJson } from './protoJson.ts';
import { UsageError } from './args.ts';

export type Format = 'json' | 'table';

export function outputFormat(flag: unknown): Format {
  if (flag === undefined) return process.stdout.isTTY ? 'table' : 'json';
  if (flag === 'json' || flag === 'table') return flag;
  throw new UsageError(`--output: expected json or table, got ${JSON.stringify(flag)}`);
}

/** A message's canonical JSON value (`type` as in proto/, e.g. `tenantd.v1.Tenant`), or a plain value (`type` null). */
export interface Printable {
  type: string | null;
  value: unknown;
}

const json = ({ type, value }: Printable) => (type === null ? value : toProtoJson(type, value));

function cell(value: unknown): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** Nested objects as `a.b` keys: one row per leaf, for a single answer shown as a table. */
function flatten(value: unknown, prefix = '', into: [string, string][] = []): [string, string][] {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, into);
  } else {
    into.push([prefix, cell(value)]);
  }
  return into;
}

export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export class Printer {
  constructor(readonly format: Format) {}

  /** One answer. */
  one(item: Printable): void {
    const value = json(item);
    if (this.format === 'json') process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
    else process.stdout.write(`${formatTable(['FIELD', 'VALUE'], flatten(value))}\n`);
  }

  /** One item of a stream, as it comes: a JSON line. */
  line(item: Printable): void {
    process.stdout.write(`${JSON.stringify(json(item))}\n`);
  }

  /**
   * Items of one kind. JSON: one line each, as they come. Table: `columns`
   * (JSON field names) of all of them, printed once the list is complete.
   */
  many(type: string, columns: string[]): { add(value: unknown): void; end(): void } {
    const rows: string[][] = [];
    return {
      add: (value) => {
        const item = toProtoJson(type, value) as Record<string, unknown>;
        if (this.format === 'json') process.stdout.write(`${JSON.stringify(item)}\n`);
        else rows.push(columns.map((c) => cell(c.split('.').reduce<any>((o, k) => o?.[k], item))));
      },
      end: () => {
        if (this.format === 'table') process.stdout.write(`${formatTable(columns.map((c) => c.toUpperCase()), rows)}\n`);
      },
    };
  }
}
