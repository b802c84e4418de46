/** `tenantd keys ...`: a tenant's API keys. */
import { expect } from './args.ts';
import type { CommandGroup } from './context.ts';

const KEY = 'tenantd.v1.ApiKey';

export const keys: CommandGroup = {
  create: {
    usage: 'keys create <tenant> [--read-only] [--display-name N]',
    summary: 'a new key; the secret is printed once',
    options: { 'read-only': { type: 'boolean' }, 'display-name': { type: 'string' } },
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      const role = context.values['read-only'] === true ? 'READ_ONLY' : 'READ_WRITE';
      const displayName = context.values['display-name'] as string | undefined;
      const key = await context.connect().admin.createKey(id!, role, { ...context.callOptions, ...(displayName ? { displayName } : {}) });
      context.printer.one({ type: KEY, value: key });
    },
  },
  list: {
    usage: 'keys list <tenant> [--show-revoked]',
    summary: "the tenant's keys (ids and roles, never the secrets)",
    options: { 'show-revoked': { type: 'boolean' } },
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      const list = context.printer.many(KEY, ['keyId', 'role', 'displayName', 'createTime', 'revokeTime']);
      for (const key of await context.connect().admin.listKeys(id!, context.values['show-revoked'] === true, context.callOptions)) list.add(key);
      list.end();
    },
  },
  revoke: {
    usage: 'keys revoke <tenant> <key-id>',
    summary: 'the key stops working at once',
    async run(context, positionals) {
      const [id, keyId] = expect(positionals, ['tenant', 'key-id']);
      context.printer.one({ type: KEY, value: await context.connect().admin.revokeKey(id!, keyId!, context.callOptions) });
    },
  },
};
