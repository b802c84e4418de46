/** tenantd.v1.SchemaService: migrations for every tenant. Admin key only. */
import type { ServerUnaryCall } from '@grpc/grpc-js';
import { invalidArgument, notFound } from '../errors.ts';
import type { Catalog, MigrationRecord } from '../catalog/catalog.ts';
import type { Migrator } from '../schema/migrator.ts';
import type { Access } from './access.ts';
import { unary, type Handlers } from './handlers.ts';
import type { ServiceObserver } from './rpcObserver.ts';
import { decodePageToken, encodePageToken, pageSize, timestamp } from './tenantMessages.ts';

type Call<Req> = ServerUnaryCall<Req, unknown>;

function parseMigrationName(name: string): string {
  const match = /^migrations\/([a-z][a-z0-9_-]{0,62})$/.exec(name);
  if (!match) throw invalidArgument('name', `expected "migrations/{migration_id}", got ${JSON.stringify(name.slice(0, 80))}`, 'INVALID_NAME');
  return match[1]!;
}

export function schemaService(access: Access, migrator: Migrator, catalog: Catalog, service: ServiceObserver): Handlers {
  const toProto = (m: MigrationRecord) => {
    const progress = migrator.progress(m.version);
    return {
      name: `migrations/${m.migrationId}`,
      migration_id: m.migrationId,
      version: String(m.version),
      sql: m.sql,
      state: progress.state,
      tenants_done: String(progress.done),
      tenants_pending: String(progress.pending),
      tenants_failed: String(progress.failed),
      failures: progress.failures.map((f) => ({ tenant: `tenants/${f.tenantId}`, error: f.error })),
      create_time: timestamp(m.createTime),
    };
  };
  const find = (migrationId: string) => {
    const record = catalog.migrations().find((m) => m.migrationId === migrationId);
    if (!record) throw notFound(`migrations/${migrationId}`, 'MIGRATION_NOT_FOUND');
    return record;
  };

  return {
    ApplyMigration: unary(service, 'ApplyMigration', async (call: Call<{ migration_id: string; sql: string; validate_only: boolean }>) => {
      access.admin(call.metadata);
      const { migration_id, sql, validate_only } = call.request;
      if (validate_only) {
        await migrator.validate(migration_id, sql);
        return {
          name: `migrations/${migration_id}`,
          migration_id,
          version: String(migrator.latest + 1),
          sql,
          state: 'VALIDATED',
        };
      }
      return toProto(await migrator.apply(migration_id, sql));
    }),

    GetMigration: unary(service, 'GetMigration', (call: Call<{ name: string }>) => {
      access.admin(call.metadata);
      return toProto(find(parseMigrationName(call.request.name)));
    }),

    RetryMigration: unary(service, 'RetryMigration', (call: Call<{ name: string }>) => {
      access.admin(call.metadata);
      const record = find(parseMigrationName(call.request.name));
      // The tenants failed for it, this migration's own failures and those behind an earlier one, go back into a pass.
      migrator.retry(record.version);
      return toProto(record);
    }),

    ListMigrations: unary(service, 'ListMigrations', (call: Call<{ page_size: number; page_token: string }>) => {
      access.admin(call.metadata);
      const size = pageSize(call.request.page_size);
      const after = Number(decodePageToken(call.request.page_token) || '0');
      const rest = catalog.migrations().filter((m) => m.version > after);
      const page = rest.slice(0, size);
      return {
        migrations: page.map(toProto),
        next_page_token: rest.length > size ? encodePageToken(String(page.at(-1)!.version)) : '',
      };
    }),
  };
}
