/** `tenantd sql <tenant> <statement>`: one statement, run as the tenant by the admin key. */
import { expect } from './args.ts';
import type { CommandGroup } from './context.ts';
import { formatTable } from './output.ts';

export const sql: CommandGroup = {
  '': {
    usage: 'sql <tenant> <statement>',
    summary: 'runs one statement for the tenant and prints its result',
    async run(context, positionals) {
      const [id, statement] = expect(positionals, ['tenant', 'statement']);
      const channel = context.connect().channel;
      const response = await channel.unary<any>('SqlService', 'Execute', { sql: statement }, { ...context.callOptions, tenant: id! });
      if (context.printer.format === 'json' || response.columns.length === 0) {
        context.printer.one({ type: 'tenantd.v1.ExecuteResponse', value: response });
        return;
      }
      const text = (v: any) => (v.kind === 'null_value' || v.kind === undefined ? 'NULL' : v.kind === 'blob_value' ? `x'${Buffer.from(v.blob_value).toString('hex')}'` : String(v[v.kind]));
      process.stdout.write(`${formatTable(response.columns.map((c: any) => c.name), response.rows.map((r: any) => r.values.map(text)))}\n`);
    },
  },
};
