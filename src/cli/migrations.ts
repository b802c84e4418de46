/** `tenantd migrations ...`: schema migrations, applied to every tenant; retried where they failed. */
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { UsageError, expect } from './args.ts';
import type { CommandGroup } from './context.ts';
import { Progress } from './progress.ts';

const MIGRATION = 'tenantd.v1.Migration';
const FINAL = new Set(['SUCCEEDED', 'FAILED', 'VALIDATED']);

export const migrations: CommandGroup = {
  apply: {
    usage: 'migrations apply <migration-id> (<file.sql> | --sql SQL) [--validate-only] [--no-wait]',
    summary: 'applies to every tenant; waits for the end (progress on a terminal) and exits 1 if it FAILED',
    options: { sql: { type: 'string' }, 'validate-only': { type: 'boolean' }, wait: { type: 'boolean', default: true } },
    async run(context, positionals) {
      const [id, file] = expect(positionals, ['migration-id'], ['file.sql']);
      const inline = context.values.sql as string | undefined;
      if ((file === undefined) === (inline === undefined)) throw new UsageError('give the migration as a file or as --sql, one of the two');
      const sql = inline ?? (await readFile(file!, 'utf8'));
      const client = context.connect();
      let migration = await client.admin.applyMigration(id!, sql, context.values['validate-only'] === true, context.callOptions);
      if (context.values.wait !== false) {
        const progress = new Progress(`migration ${id}`, 'tenants');
        while (!FINAL.has(migration.state)) {
          const done = Number(migration.tenants_done) + Number(migration.tenants_failed);
          progress.update(done, done + Number(migration.tenants_pending));
          await sleep(200);
          migration = await client.admin.getMigration(id!, context.callOptions);
        }
        const done = Number(migration.tenants_done) + Number(migration.tenants_failed);
        progress.update(done, done + Number(migration.tenants_pending), true);
        progress.done();
      }
      context.printer.one({ type: MIGRATION, value: migration });
      if (migration.state === 'FAILED') process.exitCode = 1;
    },
  },
  get: {
    usage: 'migrations get <migration-id>',
    summary: 'its state and tenants done, pending and failed',
    async run(context, positionals) {
      const [id] = expect(positionals, ['migration-id']);
      context.printer.one({ type: MIGRATION, value: await context.connect().admin.getMigration(id!, context.callOptions) });
    },
  },
  retry: {
    usage: 'migrations retry <migration-id>',
    summary: 'runs it again on the tenants it failed on',
    async run(context, positionals) {
      const [id] = expect(positionals, ['migration-id']);
      context.printer.one({ type: MIGRATION, value: await context.connect().admin.retryMigration(id!, context.callOptions) });
    },
  },
  list: {
    usage: 'migrations list',
    summary: 'every migration, oldest first',
    async run(context, positionals) {
      expect(positionals, []);
      const list = context.printer.many(MIGRATION, ['migrationId', 'version', 'state', 'tenantsDone', 'tenantsPending', 'tenantsFailed']);
      for (const migration of await context.connect().admin.listMigrations(context.callOptions)) list.add(migration);
      list.end();
    },
  },
};
