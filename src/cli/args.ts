/**
 * Argument parsing for every CLI command: `node:util` parseArgs, strict, with
 * the global flags merged into each command's own so they work anywhere.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** Wrong usage: printed as one line, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** Accepted by every command, before or after it. */
export const GLOBAL_OPTIONS = {
  address: { type: 'string', multiple: true },
  'admin-key-file': { type: 'string' },
  output: { type: 'string', short: 'o' },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'timeout-ms': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies OptionSpec;

export const GLOBAL_USAGE = `global flags (anywhere on the line):
  --address HOST:PORT        the server (default TENANTD_ADDRESS, else 127.0.0.1:7070); repeat or comma-separate a cluster's
                             nodes for \`tenants list\` and \`maintain -\`
  --admin-key-file FILE      the admin key (default ./data/admin.key; TENANTD_ADMIN_KEY wins)
  -o, --output json|table    canonical proto3 JSON, or a table (the default on a terminal)
  --tls-ca FILE              speak TLS, trusting this CA (PEM)
  --tls-cert FILE --tls-key FILE   a client certificate, for a server that requires mutual TLS
  --timeout-ms N             a deadline for each call (default none)
  -h, --help                 this command's help`;

export interface Parsed {
  positionals: string[];
  values: Record<string, string | boolean | string[] | undefined>;
}

function explain(error: unknown): never {
  const message = (error as Error).message
    // parseArgs's messages end with a hint about `--` that does not apply here.
    .replace(/\. To specify a positional argument starting with a '-'.*$/s, '')
    .replace(/^Unknown option '(.*?)'.*$/s, 'unknown flag $1');
  throw new UsageError(message);
}

/**
 * `--force=false` means what it says (parseArgs alone would refuse it, and
 * the old CLI took it as --force): booleans take =true/=false as well as
 * --name and --no-name.
 */
function spelledOut(arg: string, options: OptionSpec): string {
  const match = /^--([^=]+)=(.*)$/.exec(arg);
  if (!match || options[match[1]!]?.type !== 'boolean') return arg;
  const value = match[2]!.toLowerCase();
  if (value === 'true') return `--${match[1]}`;
  if (value === 'false') return `--no-${match[1]}`;
  throw new UsageError(`--${match[1]}: expected true or false, got ${JSON.stringify(match[2])}`);
}

/** Parses a command's arguments (after its name) with its options and the global ones. */
export function parse(args: string[], options: OptionSpec): Parsed {
  const all: OptionSpec = { ...GLOBAL_OPTIONS, ...options };
  try {
    const { positionals, values } = parseArgs({ args: args.map((a) => spelledOut(a, all)), options: all, strict: true, allowPositionals: true, allowNegative: true });
    return { positionals, values: values as Parsed['values'] };
  } catch (error) {
    explain(error);
  }
}

/**
 * Takes the first word that is not a global flag or a global flag's value:
 * the command (or a group's subcommand); the other arguments keep their order.
 */
export function shiftWord(argv: string[]): { word: string | undefined; rest: string[] } {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') break;
    if (arg.startsWith('-')) {
      const name = arg.replace(/^--?/, '').replace(/=.*$/, '');
      const spec = Object.entries(GLOBAL_OPTIONS).find(([long, o]) => long === name || ('short' in o && o.short === name))?.[1];
      if (spec?.type === 'string' && !arg.includes('=')) i++;
      continue;
    }
    return { word: arg, rest: [...argv.slice(0, i), ...argv.slice(i + 1)] };
  }
  return { word: undefined, rest: argv };
}

/** The positionals a command needs, or a UsageError naming them. */
export function expect(positionals: string[], names: string[], optional: string[] = []): string[] {
  if (positionals.length < names.length) throw new UsageError(`missing ${names.slice(positionals.length).map((n) => `<${n}>`).join(' ')}`);
  if (positionals.length > names.length + optional.length) {
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[names.length + optional.length])}`);
  }
  return positionals;
}

export function integerFlag(value: unknown, flag: string, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${flag}: expected an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}
