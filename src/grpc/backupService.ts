/**
 * TenantService's backup, restore and maintenance methods (admin key):
 * BackupTenant streams a consistent snapshot in chunks with its SHA-256,
 * RestoreTenant takes one back (a new tenant, or a suspended one's
 * database), RunMaintenance streams a line per tenant as each finishes.
 */
import { createHash } from 'node:crypto';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { status as Status, type ServerReadableStream, type ServerWritableStream } from '@grpc/grpc-js';
import { TenantdError, invalidArgument } from '../errors.ts';
import type { MaintenanceOperation } from '../protocol.ts';
import type { Backups } from '../tenants/backups.ts';
import { checkTenantId, type TenantFields, type TenantManager } from '../tenants/manager.ts';
import type { Access } from './access.ts';
import { clientStream, serverStream, whenWritable, type Handlers } from './handlers.ts';
import type { ServiceObserver } from './rpcObserver.ts';
import { fieldsFromProto, parseTenantName, tenantToProto, timestamp, type ProtoTenant } from './tenantMessages.ts';

const DEFAULT_CHUNK_BYTES = 1024 * 1024;
const MAX_CHUNK_BYTES = 4 * 1024 * 1024;
/** Every SQLite database file starts with these 16 bytes. */
const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');
const OPERATIONS: readonly MaintenanceOperation[] = ['VACUUM', 'ANALYZE', 'OPTIMIZE', 'INTEGRITY_CHECK'];

interface BackupChunk {
  data: Buffer;
  offset: string;
  total_size: string;
  sha256: string;
}

type RestorePart =
  | { part: 'header'; header: { tenant_id: string; tenant: ProtoTenant | null; sha256: string } }
  | { part: 'chunk'; chunk: Buffer };

export function backupService(access: Access, manager: TenantManager, backups: Backups, service: ServiceObserver): Handlers {
  return {
    BackupTenant: serverStream(
      service,
      'BackupTenant',
      async (call: ServerWritableStream<{ name: string; chunk_size: number }, BackupChunk>, _trailer, rpc) => {
        access.admin(call.metadata);
        const tenantId = access.sameTenant(call.metadata, parseTenantName(call.request.name));
        const requested = call.request.chunk_size;
        if (requested < 0 || requested > MAX_CHUNK_BYTES) {
          throw invalidArgument('chunk_size', `from 1 to ${MAX_CHUNK_BYTES} bytes, or 0 for ${DEFAULT_CHUNK_BYTES}`);
        }
        // A 4 MiB chunk plus its message framing would not fit the 4 MiB a gRPC client accepts by default.
        const chunkBytes = Math.min(requested || DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES - 1024);
        manager.get(tenantId);
        rpc.routed(tenantId, backups.shardOf(tenantId));
        const file = await backups.snapshot(tenantId);
        let handle: FileHandle | null = null;
        try {
          handle = await open(file, 'r');
          const { size } = await handle.stat();
          const hash = createHash('sha256');
          for (let offset = 0; offset < size && !call.cancelled; ) {
            const data = Buffer.allocUnsafe(Math.min(chunkBytes, size - offset));
            const { bytesRead } = await handle.read(data, 0, data.length, offset);
            if (bytesRead === 0) throw new TenantdError(Status.INTERNAL, 'SNAPSHOT_TRUNCATED', 'the snapshot file ended early');
            hash.update(data.subarray(0, bytesRead));
            const last = offset + bytesRead >= size;
            const more = call.write({
              data: data.subarray(0, bytesRead),
              offset: String(offset),
              total_size: String(size),
              sha256: last ? hash.digest('hex') : '',
            });
            offset += bytesRead;
            if (!more && !last) await whenWritable(call);
          }
        } finally {
          await handle?.close();
          await rm(file, { force: true });
        }
      },
    ),

    RestoreTenant: clientStream(service, 'RestoreTenant', async (call: ServerReadableStream<RestorePart, ProtoTenant>, rpc) => {
      access.admin(call.metadata);
      // A client that goes away ends the loop below with an error, so the file is removed.
      call.on('cancelled', () => call.destroy(new TenantdError(Status.CANCELLED, 'CANCELLED', 'the client cancelled the restore')));
      let header: Extract<RestorePart, { part: 'header' }>['header'] | null = null;
      let fields: TenantFields | null = null;
      let limit = -1;
      let bytes = 0;
      let sha256Trailer: string | null = null;
      const hash = createHash('sha256');
      const file = backups.tmpFile('restore');
      let handle: FileHandle | null = null;
      try {
        for await (const message of call as AsyncIterable<RestorePart>) {
          if (header === null) {
            if (message.part !== 'header') throw invalidArgument('header', 'the first message must be the header', 'RESTORE_HEADER_MISSING');
            header = message.header;
            checkTenantId(header.tenant_id, 'header.tenant_id');
            fields = header.tenant ? fieldsFromProto(header.tenant) : null;
            // Refused before any byte is taken, not after the whole upload.
            if (fields) manager.validateFields(fields, 'header.tenant');
            limit = manager.restoreLimit(access.sameTenant(call.metadata, header.tenant_id), fields);
            rpc.routed(header.tenant_id, backups.shardOf(header.tenant_id));
            handle = await open(file, 'wx+');
            continue;
          }
          if (message.part !== 'chunk') {
            // A trailer: a client that hashes while it streams sends the digest last, with nothing else in it.
            const trailer = message.header;
            if (header.sha256 === '' && trailer.sha256 !== '' && trailer.tenant_id === '' && !trailer.tenant && sha256Trailer === null) {
              sha256Trailer = trailer.sha256;
              continue;
            }
            throw invalidArgument('header', 'only the first message may be a header (and a last one with only sha256)', 'RESTORE_HEADER_REPEATED');
          }
          if (sha256Trailer !== null) throw invalidArgument('chunk', 'a chunk after the sha256 trailer', 'RESTORE_HEADER_REPEATED');
          bytes += message.chunk.length;
          if (limit >= 0 && bytes > limit) {
            throw new TenantdError(
              Status.RESOURCE_EXHAUSTED,
              'QUOTA_EXCEEDED',
              `the backup is larger than the tenant's storage_bytes quota (${limit} bytes)`,
              {
                metadata: { quota: 'storage_bytes', current: String(bytes), limit: String(limit), tenant: header.tenant_id },
                quotaViolations: [{ quota: 'storage_bytes', current: bytes, limit, subject: `tenants/${header.tenant_id}` }],
              },
            );
          }
          hash.update(message.chunk);
          await handle!.write(message.chunk);
        }
        if (header === null) throw invalidArgument('header', 'the stream ended before its header', 'RESTORE_HEADER_MISSING');
        const head = Buffer.alloc(SQLITE_MAGIC.length);
        await handle!.read(head, 0, head.length, 0);
        await handle!.close();
        handle = null;
        if (!head.equals(SQLITE_MAGIC)) {
          throw invalidArgument('chunk', `${bytes} bytes that do not start like a SQLite database`, 'NOT_A_DATABASE');
        }
        const digest = hash.digest('hex');
        const expected = sha256Trailer ?? header.sha256;
        if (expected !== '' && expected.toLowerCase() !== digest) {
          throw invalidArgument('header.sha256', `the bytes received hash to ${digest}, not ${expected}`, 'CHECKSUM_MISMATCH');
        }
        const live = await manager.restore(header.tenant_id, fields, file);
        return tenantToProto(live);
      } finally {
        await handle?.close();
        await rm(file, { force: true });
      }
    }),

    RunMaintenance: serverStream(
      service,
      'RunMaintenance',
      async (call: ServerWritableStream<{ name: string; operation: string }, unknown>, _trailer, rpc) => {
        access.admin(call.metadata);
        const operation = call.request.operation as MaintenanceOperation;
        if (!OPERATIONS.includes(operation)) {
          throw invalidArgument('operation', `one of ${OPERATIONS.join(', ')}`, 'INVALID_OPERATION');
        }
        let tenantIds: string[] | null = null;
        if (call.request.name !== 'tenants/-') {
          const tenantId = access.sameTenant(call.metadata, parseTenantName(call.request.name));
          manager.get(tenantId);
          rpc.routed(tenantId, backups.shardOf(tenantId));
          tenantIds = [tenantId];
        }
        let writes = Promise.resolve();
        await backups.maintain(
          operation,
          tenantIds,
          (result, done, total) => {
            // One line per tenant, in the order they finish; a slow reader only delays the next line.
            writes = writes.then(async () => {
              if (call.cancelled) return;
              const more = call.write({ tenant: `tenants/${result.tenantId}`, ok: result.ok, message: result.message, done: String(done), total: String(total), time: timestamp(Date.now()) });
              if (!more) await whenWritable(call);
            });
          },
          rpc.signal,
        );
        await writes;
      },
    ),
  };
}
