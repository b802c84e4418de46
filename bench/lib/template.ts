/**
 * ghz's call templates (`{{.RequestNumber}}`, `{{.WorkerID}}`, `{{newUUID}}`,
 * ...) compiled once into builders, so a request costs no JSON parse: the
 * data/metadata JSON is parsed up front and only its templated strings are
 * rebuilt per call. JSON that is not valid until templated (a bare
 * `{"id": {{.RequestNumber}}}`) falls back to templating the text and parsing.
 */
import { randomUUID } from 'node:crypto';

export interface CallContext {
  workerId: string;
  requestNumber: number;
  fullyQualifiedName: string;
  methodName: string;
  serviceName: string;
  inputName: string;
  outputName: string;
}

/** Builds a value for one call; `constant` is set when the value never changes. */
export interface Builder<T = unknown> {
  build(ctx: CallContext): T;
  constant: boolean;
}

const ACTION = /\{\{\s*([^}]*?)\s*\}\}/g;
const CHARSET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';

function randomString(length: number): string {
  const n = length > 0 ? length : 2 + Math.floor(Math.random() * 15);
  let s = '';
  for (let i = 0; i < n; i++) s += CHARSET[Math.floor(Math.random() * CHARSET.length)];
  return s;
}

type Piece = string | ((ctx: CallContext) => string);

function action(source: string): (ctx: CallContext) => string {
  const [head, ...args] = source.split(/\s+/);
  const now = () => Date.now();
  switch (head) {
    case '.RequestNumber':
      return (c) => String(c.requestNumber);
    case '.WorkerID':
      return (c) => c.workerId;
    case '.UUID':
    case 'newUUID':
      return () => randomUUID();
    case '.FullyQualifiedName':
      return (c) => c.fullyQualifiedName;
    case '.MethodName':
      return (c) => c.methodName;
    case '.ServiceName':
      return (c) => c.serviceName;
    case '.InputName':
      return (c) => c.inputName;
    case '.OutputName':
      return (c) => c.outputName;
    case '.IsClientStreaming':
    case '.IsServerStreaming':
      return () => 'false';
    case '.Timestamp':
      return () => new Date(now()).toISOString().replace(/\.\d{3}Z$/, 'Z');
    case '.TimestampUnix':
      return () => String(Math.floor(now() / 1000));
    case '.TimestampUnixMilli':
      return () => String(now());
    case '.TimestampUnixNano':
      return () => String(BigInt(now()) * 1_000_000n);
    case 'randomString': {
      const length = Number(args[0] ?? 0);
      return () => randomString(length);
    }
    case 'randomInt': {
      const min = Number(args[0]);
      const max = Number(args[1]);
      if (!Number.isInteger(min) || !Number.isInteger(max) || max <= min) {
        throw new Error(`template {{${source}}}: randomInt needs two integers min < max`);
      }
      return () => String(min + Math.floor(Math.random() * (max - min)));
    }
    default:
      throw new Error(
        `template {{${source}}}: unknown action; known: .RequestNumber .WorkerID .UUID .Timestamp .TimestampUnix ` +
          '.TimestampUnixMilli .TimestampUnixNano .FullyQualifiedName .MethodName .ServiceName .InputName .OutputName ' +
          'newUUID, randomString N, randomInt MIN MAX',
      );
  }
}

function compileString(text: string): Builder<string> {
  if (!text.includes('{{')) return { build: () => text, constant: true };
  const pieces: Piece[] = [];
  let last = 0;
  for (const match of text.matchAll(ACTION)) {
    if (match.index! > last) pieces.push(text.slice(last, match.index));
    pieces.push(action(match[1]!));
    last = match.index! + match[0].length;
  }
  if (last < text.length) pieces.push(text.slice(last));
  if (pieces.length === 1 && typeof pieces[0] === 'function') {
    const only = pieces[0];
    return { build: only, constant: false };
  }
  return {
    build: (ctx) => {
      let s = '';
      for (const p of pieces) s += typeof p === 'string' ? p : p(ctx);
      return s;
    },
    constant: false,
  };
}

/** A builder for a parsed JSON value: constant parts are shared, templated strings rebuilt. */
export function compileValue(value: unknown): Builder {
  if (typeof value === 'string') return compileString(value);
  if (Array.isArray(value)) {
    const items = value.map(compileValue);
    if (items.every((i) => i.constant)) return { build: () => value, constant: true };
    return { build: (ctx) => items.map((i) => i.build(ctx)), constant: false };
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value).map(([k, v]) => [k, compileValue(v)] as const);
    if (entries.every(([, b]) => b.constant)) return { build: () => value, constant: true };
    return {
      build: (ctx) => {
        const out: Record<string, unknown> = {};
        for (const [k, b] of entries) out[k] = b.build(ctx);
        return out;
      },
      constant: false,
    };
  }
  return { build: () => value, constant: true };
}

/** One builder per round-robin variant: a JSON array round-robins per request, as ghz does for unary calls. */
export interface Compiled {
  variants: Builder[];
  /** The value as given, for the report's options. */
  parsed: unknown;
}

export function compileData(value: unknown): Compiled {
  const variants = Array.isArray(value) && value.length > 0 ? value.map(compileValue) : [compileValue(value)];
  return { variants, parsed: value };
}

/** ghz's -d/-m text: JSON, possibly templated. */
export function compileJson(text: string, what: string): Compiled {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    if (!text.includes('{{')) throw new Error(`${what}: invalid JSON: ${(error as Error).message}`);
    // Only valid JSON once templated: template the text per call, then parse.
    const str = compileString(text);
    return { variants: [{ build: (ctx) => JSON.parse(str.build(ctx)), constant: false }], parsed: text };
  }
  return compileData(parsed);
}
