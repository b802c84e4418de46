/** `tenantd usage <tenant> [--watch]`: usage against quotas. */
import { status } from '@grpc/grpc-js';
import { TenantdError } from '../client/errors.ts';
import { expect, integerFlag } from './args.ts';
import type { CommandGroup } from './context.ts';

const USAGE = 'tenantd.v1.TenantUsage';

export const usage: CommandGroup = {
  '': {
    usage: 'usage <tenant> [--watch [--interval-ms N]]',
    summary: "a tenant's usage; --watch prints it again every interval until Ctrl-C",
    options: { watch: { type: 'boolean' }, 'interval-ms': { type: 'string' } },
    async run(context, positionals) {
      const [id] = expect(positionals, ['tenant']);
      const client = context.connect();
      if (context.values.watch !== true) {
        context.printer.one({ type: USAGE, value: await client.admin.usage(id!, context.callOptions) });
        return;
      }
      const interval = integerFlag(context.values['interval-ms'], 'interval-ms', 100) ?? 1000;
      const stream = client.admin.watchUsage(id!, interval, context.callOptions);
      process.once('SIGINT', () => stream.cancel());
      const redraw = context.printer.format === 'table' && process.stdout.isTTY;
      try {
        for await (const snapshot of stream) {
          // On a terminal the table is redrawn in place; elsewhere each snapshot is one JSON line.
          if (redraw) process.stdout.write('\x1b[H\x1b[2J');
          if (context.printer.format === 'json') context.printer.line({ type: USAGE, value: snapshot });
          else context.printer.one({ type: USAGE, value: snapshot });
        }
      } catch (error) {
        if (!(error instanceof TenantdError && error.code === status.CANCELLED)) throw error; // CANCELLED: Ctrl-C
      }
    },
  },
};
