/** `tenantd tenants ...`: the tenant lifecycle. */
import { UsageError, expect } from './args.ts';
import type { CommandGroup, Context } from './context.ts';

const TENANT = 'tenantd.v1.Tenant';
const LIST_COLUMNS = ['tenantId', 'plan', 'state', 'displayName', 'createTime'];

function labels(values: unknown): Record<string, string> | undefined {
  if (values === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const pair of values as string[]) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--label: expected key=value, got ${JSON.stringify(pair)}`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

async function printTenant(context: Context, call: Promise<unknown>): Promise<void> {
  context.printer.one({ type: TENANT, value: await call });
}

export const tenants: CommandGroup = {
  list: {
    usage: 'tenants list [--state ACTIVE|SUSPENDED]',
    summary: 'every tenant (of every node given with --address)',
    options: { state: { type: 'string' } },
    async run(context, positionals) {
      expect(positionals, []);
      const state = (context.values.state as string | undefined)?.toUpperCase() ?? '';
      if (state !== '' && state !== 'ACTIVE' && state !== 'SUSPENDED') throw new UsageError(`--state: expected ACTIVE or SUSPENDED, got ${JSON.stringify(state)}`);
      const list = context.printer.many(TENANT, LIST_COLUMNS);
      for (const client of context.connectAll(true)) {
        for await (const tenant of client.admin.listTenants(state as '' | 'ACTIVE' | 'SUSPENDED', context.callOptions)) list.add(tenant);
      }
      list.end();
    },
  },
  get: {
    usage: 'tenants get <tenant>',
    summary: 'one tenant, with its plan, quotas and state',
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      await printTenant(context, context.connect().admin.getTenant(id!, context.callOptions));
    },
  },
  create: {
    usage: 'tenants create <tenant> [--plan P] [--display-name N] [--label k=v ...]',
    summary: 'a new tenant and its first READ_WRITE key (printed once)',
    options: { plan: { type: 'string' }, 'display-name': { type: 'string' }, label: { type: 'string', multiple: true } },
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      const spec = {
        plan: (context.values.plan as string | undefined) ?? '',
        display_name: (context.values['display-name'] as string | undefined) ?? '',
        labels: labels(context.values.label) ?? {},
      };
      const created = await context.connect().admin.createTenant(id!, spec, context.callOptions);
      context.printer.one({ type: 'tenantd.v1.CreateTenantResponse', value: created });
    },
  },
  update: {
    usage: 'tenants update <tenant> [--plan P] [--display-name N] [--label k=v ...]',
    summary: 'changes the fields given, and only those',
    options: { plan: { type: 'string' }, 'display-name': { type: 'string' }, label: { type: 'string', multiple: true } },
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      const spec: Record<string, unknown> = {};
      const paths: string[] = [];
      if (context.values.plan !== undefined) (spec.plan = context.values.plan), paths.push('plan');
      if (context.values['display-name'] !== undefined) (spec.display_name = context.values['display-name']), paths.push('display_name');
      if (context.values.label !== undefined) (spec.labels = labels(context.values.label)), paths.push('labels');
      if (paths.length === 0) throw new UsageError('nothing to update: give --plan, --display-name or --label');
      await printTenant(context, context.connect().admin.updateTenant(id!, spec, paths, context.callOptions));
    },
  },
  suspend: {
    usage: 'tenants suspend <tenant>',
    summary: 'refuses its calls until activated; its data stays',
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      await printTenant(context, context.connect().admin.suspendTenant(id!, context.callOptions));
    },
  },
  activate: {
    usage: 'tenants activate <tenant>',
    summary: 'serves a suspended tenant again',
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      await printTenant(context, context.connect().admin.activateTenant(id!, context.callOptions));
    },
  },
  delete: {
    usage: 'tenants delete <tenant> [--force]',
    summary: 'deletes a SUSPENDED tenant and its data; --force deletes an ACTIVE one too',
    options: { force: { type: 'boolean' } },
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      await context.connect().admin.deleteTenant(id!, context.values.force === true, context.callOptions);
      context.printer.one({ type: null, value: { deleted: `tenants/${id}` } });
    },
  },
};
