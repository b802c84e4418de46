/** `tenantd maintain <tenant|-> <operation>`: maintenance, streamed tenant by tenant. */
import { UsageError, expect } from './args.ts';
import type { CommandGroup } from './context.ts';
import { Progress } from './progress.ts';

const OPERATIONS = ['VACUUM', 'ANALYZE', 'OPTIMIZE', 'INTEGRITY_CHECK'] as const;

export const maintain: CommandGroup = {
  '': {
    usage: 'maintain <tenant|-> VACUUM|ANALYZE|OPTIMIZE|INTEGRITY_CHECK',
    summary: 'one tenant, or every tenant (-) of every node given; exits 1 when any tenant failed',
    async run(context, positionals) {
      const [id, op] = expect(positionals, ['tenant|-', 'operation']);
      const operation = op!.toUpperCase() as (typeof OPERATIONS)[number];
      if (!OPERATIONS.includes(operation)) throw new UsageError(`operation: expected one of ${OPERATIONS.join(', ')}, got ${JSON.stringify(op)}`);
      const list = context.printer.many('tenantd.v1.MaintenanceProgress', ['tenant', 'ok', 'message']);
      let failed = false;
      for (const client of context.connectAll(id === '-')) {
        const progress = new Progress(`${operation.toLowerCase()} ${client.channel.address}`, 'tenants');
        for await (const line of client.admin.maintain(id!, operation, context.callOptions)) {
          progress.update(Number(line.done), Number(line.total) || null, true);
          list.add(line);
          failed ||= !line.ok;
        }
        progress.done();
      }
      list.end();
      if (failed) process.exitCode = 1;
    },
  },
};
