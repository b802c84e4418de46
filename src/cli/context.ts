/**
 * What every command gets: its parsed arguments, clients for the addresses
 * given (with the admin key and TLS), and the printer.
 */
import { readFileSync } from 'node:fs';
import type { CallOptions, TenantdClient, connect as Connect } from '../client/index.ts';
import { UsageError, integerFlag, type Parsed } from './args.ts';
import type { Printer } from './output.ts';

export class Context {
  readonly printer: Printer;
  readonly addresses: string[];
  private readonly clients: TenantdClient[] = [];
  /** Per call: the deadline from --timeout-ms. */
  readonly callOptions: CallOptions;

  /** `connect` and the printer: imported by the caller once it knows a call will be made (help needs neither gRPC nor protobufjs). */
  constructor(
    readonly parsed: Parsed,
    private readonly connectTo: typeof Connect,
    printer: Printer,
  ) {
    this.printer = printer;
    const addresses = (parsed.values.address as string[] | undefined) ?? [process.env.TENANTD_ADDRESS || '127.0.0.1:7070'];
    this.addresses = addresses.flatMap((a) => a.split(',')).filter((a) => a !== '');
    const timeout = integerFlag(parsed.values['timeout-ms'], 'timeout-ms', 1);
    this.callOptions = timeout === undefined ? {} : { deadlineMs: timeout };
  }

  get values(): Parsed['values'] {
    return this.parsed.values;
  }

  private adminKey(): string {
    const fromEnv = process.env.TENANTD_ADMIN_KEY;
    if (fromEnv) return fromEnv.trim();
    const file = (this.values['admin-key-file'] as string | undefined) ?? './data/admin.key';
    try {
      return readFileSync(file, 'utf8').trim();
    } catch (error) {
      throw new UsageError(`no admin key: set TENANTD_ADMIN_KEY or --admin-key-file (${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
    }
  }

  private tls(): { ca?: Buffer; cert?: Buffer; key?: Buffer } | null {
    const ca = this.values['tls-ca'] as string | undefined;
    const cert = this.values['tls-cert'] as string | undefined;
    const key = this.values['tls-key'] as string | undefined;
    if (!ca && !cert && !key) return null;
    if (!cert !== !key) throw new UsageError('--tls-cert and --tls-key go together');
    const read = (flag: string, file: string | undefined) => {
      if (!file) return undefined;
      try {
        return readFileSync(file);
      } catch (error) {
        throw new UsageError(`--${flag} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      }
    };
    const tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
    const caPem = read('tls-ca', ca);
    const certPem = read('tls-cert', cert);
    const keyPem = read('tls-key', key);
    if (caPem) tls.ca = caPem;
    if (certPem) tls.cert = certPem;
    if (keyPem) tls.key = keyPem;
    return tls;
  }

  /** One client per address; several only where `clusterWide`. */
  connectAll(clusterWide: boolean): TenantdClient[] {
    if (this.addresses.length > 1 && !clusterWide) {
      throw new UsageError('several --address values are for `tenants list` and `maintain -`; other commands go through one address');
    }
    const key = this.adminKey();
    const tls = this.tls();
    for (const address of this.addresses) this.clients.push(this.connectTo({ address, key, tls }));
    return this.clients;
  }

  connect(): TenantdClient {
    return this.connectAll(false)[0]!;
  }

  close(): void {
    for (const client of this.clients) client.close();
  }
}

/** One command of a group: its usage line, options and what it does. */
export interface Command {
  /** e.g. `tenants create <tenant> [--plan P] [--display-name N]`. */
  usage: string;
  summary: string;
  options?: import('./args.ts').OptionSpec;
  run(context: Context, positionals: string[]): Promise<void>;
}

/** A group's commands by subcommand name; '' for a group that is one command. */
export type CommandGroup = Record<string, Command>;
