/**
 * The operator's side of the `tenantd` command: admin calls against a running
 * server, answers printed as JSON, errors as `CODE REASON: message` on stderr
 * with exit code 1. Backups go to and from files, which grpcurl cannot do.
 *
 * The admin key comes from TENANTD_ADMIN_KEY or from --admin-key-file
 * (default ./data/admin.key); never from a flag, which `ps` would show.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition, rpcTypes } from './protos.ts';

export const CLI_USAGE = `usage: tenantd <command> [--address 127.0.0.1:7070[,node2:7070,...]] [--admin-key-file ./data/admin.key]
  tenants list [--state ACTIVE|SUSPENDED]
  tenants get <tenant>
  tenants create <tenant> [--plan P] [--display-name N]
  tenants suspend|activate <tenant>
  tenants delete <tenant> [--force]
  keys create <tenant> [--read-only]
  keys list <tenant>
  usage <tenant>
  sql <tenant> <statement>
  backup <tenant> <file>
  restore <tenant> <file> [--plan P]       (a new tenant, or over a suspended one)
  maintain <tenant|-> VACUUM|ANALYZE|OPTIMIZE|INTEGRITY_CHECK
Several --address values (a cluster's nodes) serve tenants list and maintain -, node by node.
The admin key: TENANTD_ADMIN_KEY, or the file --admin-key-file names.`;

/** Commands this module serves; `serve` is main.ts's own. */
export const CLI_COMMANDS = new Set(['tenants', 'keys', 'usage', 'sql', 'backup', 'restore', 'maintain']);

class UsageError extends Error {}

interface Parsed {
  positional: string[];
  flags: Map<string, string>;
}

const BOOLEAN_FLAGS = new Set(['--force', '--read-only']);

function parse(argv: string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (BOOLEAN_FLAGS.has(name)) flags.set(name, 'true');
    else {
      const value = eq === -1 ? argv[++i] : arg.slice(eq + 1);
      if (value === undefined) throw new UsageError(`${name} needs a value`);
      flags.set(name, value);
    }
  }
  return { positional, flags };
}

type AnyClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

class AdminClient {
  private readonly clients = new Map<string, AnyClient>();
  private readonly metadata = new grpc.Metadata();

  constructor(
    private readonly address: string,
    adminKey: string,
  ) {
    this.metadata.set('authorization', `Bearer ${adminKey}`);
  }

  client(service: string): AnyClient {
    let client = this.clients.get(service);
    if (!client) {
      const loaded = grpc.loadPackageDefinition(packageDefinition()) as unknown as {
        tenantd: { v1: Record<string, new (address: string, credentials: grpc.ChannelCredentials) => AnyClient> };
      };
      client = new loaded.tenantd.v1[service]!(this.address, grpc.credentials.createInsecure());
      this.clients.set(service, client);
    }
    return client;
  }

  withTenant(tenantId: string): grpc.Metadata {
    const md = this.metadata.clone();
    md.set('x-tenant-id', tenantId);
    return md;
  }

  unary<T = unknown>(service: string, method: string, request: unknown, metadata = this.metadata): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client(service)[method]!(request, metadata, (error: grpc.ServiceError | null, response: T) => (error ? reject(error) : resolve(response)));
    });
  }

  serverStream(service: string, method: string, request: unknown, metadata = this.metadata): grpc.ClientReadableStream<unknown> {
    return this.client(service)[method]!(request, metadata) as grpc.ClientReadableStream<unknown>;
  }

  clientStream<T>(
    service: string,
    method: string,
    metadata: grpc.Metadata,
    callback: (error: grpc.ServiceError | null, response: T) => void,
  ): grpc.ClientWritableStream<unknown> {
    return this.client(service)[method]!(metadata, callback) as grpc.ClientWritableStream<unknown>;
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
  }
}

/** `CODE REASON: message`, with field violations, from a gRPC error and its google.rpc.Status details. */
export function describeError(error: grpc.ServiceError): string {
  let line = `${grpc.status[error.code] ?? error.code}: ${error.details}`;
  const raw = error.metadata?.get('grpc-status-details-bin')[0];
  if (Buffer.isBuffer(raw)) {
    try {
      const types = rpcTypes();
      const status = types.lookupType('google.rpc.Status').decode(raw) as unknown as { details: { type_url: string; value: Uint8Array }[] };
      for (const detail of status.details) {
        const name = detail.type_url.slice(detail.type_url.lastIndexOf('/') + 1);
        const message = types.lookupType(name).decode(detail.value) as unknown as Record<string, unknown>;
        if (name === 'google.rpc.ErrorInfo') line = `${grpc.status[error.code]} ${String(message.reason)}: ${error.details}`;
        if (name === 'google.rpc.BadRequest') {
          for (const v of (message.field_violations as { field: string; description: string }[]) ?? []) line += `\n  ${v.field}: ${v.description}`;
        }
      }
    } catch {
      // The plain status line is still right.
    }
  }
  return line;
}

function adminKey(flags: Map<string, string>): string {
  const fromEnv = process.env.TENANTD_ADMIN_KEY;
  if (fromEnv) return fromEnv.trim();
  const file = flags.get('--admin-key-file') ?? './data/admin.key';
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (error) {
    throw new UsageError(`no admin key: set TENANTD_ADMIN_KEY or --admin-key-file (${file}: ${(error as Error).message})`);
  }
}

function need(args: string[], count: number, what: string): string[] {
  if (args.length < count) throw new UsageError(`expected ${what}`);
  return args;
}

const bytesAsBase64 = (_key: string, value: unknown) => (Buffer.isBuffer(value) ? value.toString('base64') : value);

/** One answer, indented. */
function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, bytesAsBase64, 2)}\n`);
}

/** One item of a listing or a stream: a JSON line each, for jq and grep. */
function printLine(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, bytesAsBase64)}\n`);
}

async function run(client: AdminClient, command: string, args: string[], flags: Map<string, string>): Promise<void> {
  const sub = args[0];
  const name = (id: string) => `tenants/${id}`;
  if (command === 'tenants') {
    if (sub === 'list') {
      const state = flags.get('--state') ?? '';
      let token = '';
      do {
        const page = await client.unary<{ tenants: unknown[]; next_page_token: string }>('TenantService', 'ListTenants', {
          page_size: 1000,
          page_token: token,
          state,
        });
        for (const tenant of page.tenants) printLine(tenant);
        token = page.next_page_token;
      } while (token !== '');
      return;
    }
    const [, id] = need(args, 2, `tenants ${sub ?? '<subcommand>'} <tenant>`);
    // Calls about one tenant name it in x-tenant-id too: a cluster proxy routes on it.
    const md = client.withTenant(id!);
    if (sub === 'get') return print(await client.unary('TenantService', 'GetTenant', { name: name(id!) }, md));
    if (sub === 'create') {
      const tenant = { display_name: flags.get('--display-name') ?? '', plan: flags.get('--plan') ?? '' };
      return print(await client.unary('TenantService', 'CreateTenant', { tenant_id: id, tenant }, md));
    }
    if (sub === 'suspend') return print(await client.unary('TenantService', 'SuspendTenant', { name: name(id!) }, md));
    if (sub === 'activate') return print(await client.unary('TenantService', 'ActivateTenant', { name: name(id!) }, md));
    if (sub === 'delete') {
      await client.unary('TenantService', 'DeleteTenant', { name: name(id!), force: flags.has('--force') }, md);
      return print({ deleted: name(id!) });
    }
    throw new UsageError(`unknown tenants subcommand ${JSON.stringify(sub)}`);
  }
  if (command === 'keys') {
    const [, id] = need(args, 2, `keys ${sub ?? '<subcommand>'} <tenant>`);
    const md = client.withTenant(id!);
    if (sub === 'create') {
      const role = flags.has('--read-only') ? 'READ_ONLY' : 'READ_WRITE';
      return print(await client.unary('TenantService', 'CreateApiKey', { parent: name(id!), api_key: { role } }, md));
    }
    if (sub === 'list') return print(await client.unary('TenantService', 'ListApiKeys', { parent: name(id!), page_size: 1000 }, md));
    throw new UsageError(`unknown keys subcommand ${JSON.stringify(sub)}`);
  }
  if (command === 'usage') {
    const [id] = need(args, 1, 'usage <tenant>');
    return print(await client.unary('TenantService', 'GetTenantUsage', { name: name(id!) }, client.withTenant(id!)));
  }
  if (command === 'sql') {
    const [id, sql] = need(args, 2, 'sql <tenant> <statement>');
    return print(await client.unary('SqlService', 'Execute', { sql }, client.withTenant(id!)));
  }
  if (command === 'backup') {
    const [id, file] = need(args, 2, 'backup <tenant> <file>');
    if (existsSync(file!)) throw new UsageError(`${file} exists; a backup never overwrites a file`);
    // Written beside the target and renamed at the end: a failed backup leaves no file to mistake for one.
    const partial = `${file}.partial`;
    const out = createWriteStream(partial, { flags: 'wx' });
    try {
      const hash = createHash('sha256');
      let expected = '';
      let bytes = 0;
      const stream = client.serverStream('TenantService', 'BackupTenant', { name: name(id!) }, client.withTenant(id!));
      for await (const chunk of stream as AsyncIterable<{ data: Buffer; sha256: string }>) {
        hash.update(chunk.data);
        bytes += chunk.data.length;
        if (chunk.sha256) expected = chunk.sha256;
        if (!out.write(chunk.data)) await once(out, 'drain');
      }
      out.end();
      await once(out, 'finish');
      const actual = hash.digest('hex');
      if (expected !== actual) throw new Error(`the backup's SHA-256 is ${actual}, the server said ${expected || 'nothing'}`);
      renameSync(partial, file!);
      return print({ tenant: name(id!), file, bytes, sha256: actual });
    } finally {
      out.destroy();
      rmSync(partial, { force: true });
    }
  }
  if (command === 'restore') {
    const [id, file] = need(args, 2, 'restore <tenant> <file>');
    const sha256 = createHash('sha256').update(readFileSync(file!)).digest('hex');
    const restored = await new Promise<unknown>((resolve, reject) => {
      const call = client.clientStream('TenantService', 'RestoreTenant', client.withTenant(id!), (error, response) =>
        error ? reject(error) : resolve(response),
      );
      const tenant = flags.has('--plan') ? { plan: flags.get('--plan') } : null;
      call.write({ header: { tenant_id: id, tenant, sha256 } });
      const input = createReadStream(file!, { highWaterMark: 1024 * 1024 });
      input.on('data', (data) => {
        if (!call.write({ chunk: data })) {
          input.pause();
          call.once('drain', () => input.resume());
        }
      });
      input.on('end', () => call.end());
      input.on('error', (error) => {
        call.cancel();
        reject(error);
      });
    });
    return print(restored);
  }
  if (command === 'maintain') {
    const [id, operation] = need(args, 2, 'maintain <tenant|-> <operation>');
    let failed = false;
    const md = id === '-' ? undefined : client.withTenant(id!);
    const request = { name: name(id!), operation: operation!.toUpperCase() };
    for await (const line of client.serverStream('TenantService', 'RunMaintenance', request, md) as AsyncIterable<{ ok: boolean }>) {
      printLine(line);
      failed ||= !line.ok;
    }
    if (failed) process.exitCode = 1;
    return;
  }
  throw new UsageError(`unknown command ${JSON.stringify(command)}`);
}

/** Runs one CLI command; returns the exit code. */
export async function cli(command: string, argv: string[]): Promise<number> {
  const clients: AdminClient[] = [];
  try {
    const { positional, flags } = parse(argv);
    const key = adminKey(flags);
    const addresses = (flags.get('--address') ?? '127.0.0.1:7070').split(',').filter((a) => a !== '');
    // Several addresses: the nodes of a cluster, for the commands that span it.
    const clusterWide = (command === 'tenants' && positional[0] === 'list') || (command === 'maintain' && positional[0] === '-');
    if (addresses.length > 1 && !clusterWide) {
      throw new UsageError('several --address values are for `tenants list` and `maintain -`; other commands go through one address');
    }
    for (const address of addresses) {
      const client = new AdminClient(address, key);
      clients.push(client);
      await run(client, command, positional, flags);
    }
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`tenantd: ${error.message}\n${CLI_USAGE}\n`);
      return 2;
    }
    const serviceError = error as grpc.ServiceError;
    process.stderr.write(`tenantd: ${typeof serviceError.code === 'number' ? describeError(serviceError) : (error as Error).message}\n`);
    return 1;
  } finally {
    for (const client of clients) client.close();
  }
}
