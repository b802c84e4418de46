/**
 * The operator's `tenantd <command>`: admin calls against a running server.
 * Each command group lives in its own file, imported only when it runs, so
 * the CLI starts fast. Errors: `CODE REASON: message` on one line of stderr,
 * exit 1 when a call failed, 2 for wrong usage.
 *
 * The admin key comes from TENANTD_ADMIN_KEY or --admin-key-file (default
 * ./data/admin.key); never from a flag, which `ps` would show.
 */
import { GLOBAL_USAGE, UsageError, parse, shiftWord } from './args.ts';
import { Context, type CommandGroup } from './context.ts';

interface GroupEntry {
  summary: string;
  load(): Promise<CommandGroup>;
}

/** Every command group; `serve` is main.ts's own. */
export const GROUPS: Record<string, GroupEntry> = {
  tenants: { summary: 'list, get, create, update, suspend, activate and delete tenants', load: async () => (await import('./tenants.ts')).tenants },
  keys: { summary: "create, list and revoke a tenant's API keys", load: async () => (await import('./keys.ts')).keys },
  usage: { summary: "a tenant's usage against its quotas, once or --watch", load: async () => (await import('./usage.ts')).usage },
  sql: { summary: 'run one statement for a tenant', load: async () => (await import('./sql.ts')).sql },
  backup: { summary: "a tenant's database to a file", load: async () => (await import('./backup.ts')).backup },
  restore: { summary: 'a backup file to a new tenant, or over a suspended one', load: async () => (await import('./restore.ts')).restore },
  maintain: { summary: 'VACUUM, ANALYZE, OPTIMIZE or INTEGRITY_CHECK one tenant or all (-)', load: async () => (await import('./maintain.ts')).maintain },
  migrations: { summary: 'apply a schema migration to every tenant; get and list them', load: async () => (await import('./migrations.ts')).migrations },
};

export const CLI_COMMANDS = new Set(Object.keys(GROUPS));

export function cliUsage(): string {
  const width = Math.max(...Object.keys(GROUPS).map((g) => g.length));
  return [
    'usage: tenantd <command> [flags]       (tenantd <command> --help for its own)',
    '  serve'.padEnd(width + 4) + '  run the server (tenantd serve --help)',
    ...Object.entries(GROUPS).map(([name, g]) => `  ${name.padEnd(width + 2)}${g.summary}`),
    '',
    GLOBAL_USAGE,
  ].join('\n');
}

function groupUsage(group: CommandGroup): string {
  const lines = Object.values(group).map((c) => `  tenantd ${c.usage}\n      ${c.summary}`);
  return [`usage:`, ...lines, '', GLOBAL_USAGE].join('\n');
}

/** One line, whatever failed. */
function describeFailure(error: unknown): string {
  if (error instanceof Error && error.name === 'TenantdError') {
    const e = error as import('../client/errors.ts').TenantdError;
    const violations = e.fieldViolations.map((v) => `${v.field}: ${v.description}`).join('; ');
    return `${e.message}${violations ? ` (${violations})` : ''}`.replace(/\s*\n\s*/g, ' ').trim();
  }
  const errno = (error as NodeJS.ErrnoException).code;
  const message = error instanceof Error ? error.message : String(error);
  return `${typeof errno === 'string' ? `ERROR ${errno}` : 'ERROR'}: ${message}`.replace(/\s*\n\s*/g, ' ').trim();
}

/** Runs `tenantd <argv>` (argv without `tenantd`); resolves with the exit code. */
export async function cli(argv: string[]): Promise<number> {
  let context: Context | undefined;
  let groupName: string | undefined;
  try {
    const { word, rest } = shiftWord(argv);
    groupName = word;
    if (word === undefined || word === 'help') {
      const help = rest.includes('--help') || rest.includes('-h') || word === 'help';
      (help ? process.stdout : process.stderr).write(`${cliUsage()}\n`);
      return help ? 0 : 2;
    }
    const entry = GROUPS[word];
    if (!entry) throw new UsageError(`unknown command ${JSON.stringify(word)}; run tenantd --help for the list`);
    const group = await entry.load();
    let command = group[''];
    let args = rest;
    if (!command) {
      const sub = shiftWord(rest);
      if (sub.word === undefined) {
        const help = rest.includes('--help') || rest.includes('-h');
        (help ? process.stdout : process.stderr).write(`${groupUsage(group)}\n`);
        return help ? 0 : 2;
      }
      command = group[sub.word];
      if (!command) throw new UsageError(`unknown ${word} subcommand ${JSON.stringify(sub.word)}; one of ${Object.keys(group).join(', ')}`);
      args = sub.rest;
    }
    // --help wins over everything else on the line, and does not eat the next word.
    if (args.includes('--help') || args.includes('-h')) {
      process.stdout.write(`usage: tenantd ${command.usage}\n  ${command.summary}\n\n${GLOBAL_USAGE}\n`);
      return 0;
    }
    const parsed = parse(args, command.options ?? {});
    const [{ connect }, { Printer, outputFormat }] = await Promise.all([import('../client/index.ts'), import('./output.ts')]);
    context = new Context(parsed, connect, new Printer(outputFormat(parsed.values.output)));
    await command.run(context, context.parsed.positionals);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`tenantd${groupName && GROUPS[groupName] ? ` ${groupName}` : ''}: ${error.message} (see --help)\n`);
      return 2;
    }
    process.stderr.write(`${describeFailure(error)}\n`);
    return 1;
  } finally {
    context?.close();
  }
}
