/**
 * A ghz-compatible command line over bench/lib/loadgen.ts:
 *
 *   npm run ghz -- --call tenantd.v1.SqlService.Execute --insecure \
 *     -d '{"sql":"SELECT 1"}' -m '{"authorization":"Bearer ..."}' -c 16 -n 2000 127.0.0.1:7070
 *
 * Without --proto it uses tenantd's own protos (src/protos.ts).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve, sep } from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { packageDefinition, LOADER_OPTIONS } from '../src/protos.ts';
import * as grpc from '@grpc/grpc-js';
import { runLoad } from './lib/loadgen.ts';
import { packageDefinitionByReflection } from './lib/reflection.ts';
import { render, type Format } from './lib/report.ts';
import { compileJson } from './lib/template.ts';

interface Flag {
  names: string[];
  key: string;
  boolean?: boolean;
  help: string;
}

const FLAGS: Flag[] = [
  { names: ['--call'], key: 'call', help: 'method: package.Service.Method or package.Service/Method' },
  { names: ['--proto'], key: 'proto', help: 'a .proto file (default: tenantd\'s own protos, else reflection)' },
  { names: ['--reflect'], key: 'reflect', boolean: true, help: 'ask the server for the protos (gRPC reflection v1)' },
  { names: ['-i', '--import-paths'], key: 'importPaths', help: 'comma-separated import paths for --proto' },
  { names: ['-d', '--data'], key: 'data', help: 'request JSON (an array round-robins; "@" reads stdin)' },
  { names: ['-D', '--data-file'], key: 'dataFile', help: 'file with the request JSON' },
  { names: ['-m', '--metadata'], key: 'metadata', help: 'metadata JSON object (an array round-robins)' },
  { names: ['-M', '--metadata-file'], key: 'metadataFile', help: 'file with the metadata JSON' },
  { names: ['-c', '--concurrency'], key: 'concurrency', help: 'calls in flight (default 50)' },
  { names: ['-n', '--total'], key: 'total', help: 'number of calls (default 200)' },
  { names: ['-z', '--duration'], key: 'duration', help: 'run this long, e.g. 10s (n is then ignored)' },
  { names: ['-r', '--rps'], key: 'rps', help: 'calls per second over all workers (default 0: unthrottled)' },
  { names: ['--connections'], key: 'connections', help: 'separate TCP connections (default 1)' },
  { names: ['-t', '--timeout'], key: 'timeout', help: 'per-call deadline, e.g. 20s; 0 = none (default 20s)' },
  { names: ['--insecure'], key: 'insecure', boolean: true, help: 'plaintext (the only mode supported)' },
  { names: ['-O', '--format'], key: 'format', help: 'summary | json | pretty | csv (default summary)' },
  { names: ['-o', '--output'], key: 'output', help: 'write the report here instead of stdout' },
  { names: ['--skipFirst'], key: 'skipFirst', help: 'leave the first N calls out of the report' },
  { names: ['--name'], key: 'name', help: 'a name for the run, kept in the report' },
  { names: ['--warmup'], key: 'warmup', help: 'calls (N) or time (e.g. 2s) to run before measuring (not in ghz)' },
  { names: ['--details'], key: 'details', boolean: true, help: 'keep per-call details in the JSON report' },
  { names: ['-h', '--help'], key: 'help', boolean: true, help: 'this help' },
];

class UsageError extends Error {}

function usage(): string {
  const lines = FLAGS.map((f) => `  ${f.names.join(', ').padEnd(24)} ${f.help}`);
  return `usage: npm run ghz -- [flags] host:port\n\n${lines.join('\n')}\n`;
}

function parseArgs(argv: string[]): { flags: Map<string, string>; host: string | null } {
  const flags = new Map<string, string>();
  let host: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('-') || arg === '-') {
      if (host !== null) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}: the host is already ${host}`);
      host = arg;
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const flag = FLAGS.find((f) => f.names.includes(name));
    if (!flag) throw new UsageError(`unknown flag ${name}; run with --help for the flags`);
    if (flag.boolean) {
      flags.set(flag.key, eq > 0 ? arg.slice(eq + 1) : 'true');
      continue;
    }
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new UsageError(`${name} needs a value`);
    flags.set(flag.key, value);
  }
  return { flags, host };
}

function integer(flags: Map<string, string>, key: string, flag: string, min: number): number | undefined {
  const raw = flags.get(key);
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new UsageError(`${flag}: expected an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return value;
}

/** --proto and -i as ghz takes them: the file is named relative to the import path that holds it. */
function loadProto(proto: string, importPaths: string[]): protoLoader.PackageDefinition {
  const file = resolve(proto);
  const dirs = [...importPaths.map((p) => resolve(p)), dirname(file)];
  const root = dirs.find((d) => file.startsWith(d + sep))!;
  try {
    return protoLoader.loadSync(relative(root, file), { ...LOADER_OPTIONS, includeDirs: dirs });
  } catch (error) {
    throw new Error(`--proto ${proto}: ${(error as Error).message} (imports are looked up in -i/--import-paths and the file's own directory)`);
  }
}

async function main(): Promise<number> {
  const { flags, host } = parseArgs(process.argv.slice(2));
  if (flags.get('help') === 'true') {
    process.stdout.write(usage());
    return 0;
  }
  const call = flags.get('call');
  if (!call) throw new UsageError('--call is required, e.g. --call tenantd.v1.SqlService.Execute');
  if (!host) throw new UsageError('the target host:port is required as the last argument');
  const format = (flags.get('format') ?? 'summary') as Format;
  if (!['summary', 'json', 'pretty', 'csv'].includes(format)) {
    throw new UsageError(`-O/--format: expected summary, json, pretty or csv, got ${JSON.stringify(format)}`);
  }

  const importPaths = (flags.get('importPaths') ?? '').split(',').filter(Boolean);
  const proto = flags.get('proto');
  const service = call.slice(0, call.includes('/') ? call.lastIndexOf('/') : call.lastIndexOf('.'));
  const reflect = flags.get('reflect') === 'true' || (!proto && !(service in packageDefinition()));
  const definition = proto
    ? loadProto(proto, importPaths)
    : reflect
      ? await packageDefinitionByReflection(host, service, new grpc.Metadata(), LOADER_OPTIONS)
      : packageDefinition();

  let dataText = flags.get('data');
  if (dataText === '@') dataText = readFileSync(0, 'utf8');
  if (flags.has('dataFile')) dataText = readFileSync(flags.get('dataFile')!, 'utf8');
  let metadataText = flags.get('metadata');
  if (flags.has('metadataFile')) metadataText = readFileSync(flags.get('metadataFile')!, 'utf8');

  const warmupRaw = flags.get('warmup');
  const details = flags.get('details') === 'true' || format === 'csv';
  const { report } = await runLoad({
    call,
    host,
    packageDefinition: definition,
    concurrency: integer(flags, 'concurrency', '-c', 1),
    total: integer(flags, 'total', '-n', 1),
    duration: flags.get('duration'),
    rps: integer(flags, 'rps', '--rps', 0),
    connections: integer(flags, 'connections', '--connections', 1),
    timeout: flags.get('timeout'),
    data: dataText !== undefined ? compileJson(dataText, '-d') : undefined,
    metadata: metadataText !== undefined ? compileJson(metadataText, '-m') : undefined,
    warmup: warmupRaw === undefined ? undefined : /^\d+$/.test(warmupRaw) ? Number(warmupRaw) : warmupRaw,
    skipFirst: integer(flags, 'skipFirst', '--skipFirst', 0),
    details,
    insecure: true,
    name: flags.get('name'),
    proto,
    importPaths,
  });
  const text = render(report, format);
  const output = flags.get('output');
  if (output) writeFileSync(output, text.endsWith('\n') ? text : `${text}\n`);
  else process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`ghz: ${error.message}\n\n${usage()}`);
      process.exit(2);
    }
    process.stderr.write(`ghz: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
