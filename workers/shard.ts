/**
 * The shard worker: owns its tenants' databases outright and runs their calls
 * one at a time, in the order the front end sent them. Every request gets
 * exactly one final answer (`ok` or `error`); a Query also sends chunks first.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { status as Status } from '@grpc/grpc-js';
import type { WireError } from '../src/errors.ts';
import type { ShardRequest, ShardResponse, ShardResults, ShardWorkerData } from '../src/protocol.ts';
import { addRows, kSlotsPerPage, storeStoragePages, viewPage, kStoragePageBytes, type QuotaPage } from '../src/quota/layout.ts';
import { DbPool } from './dbPool.ts';
import { ShardError, type TenantDb } from './tenantDb.ts';

const data = workerData as ShardWorkerData;
const port = parentPort!;
const pool = new DbPool(data.dataDir, data.sync, data.maxOpenDbs);
const quotaPages: QuotaPage[] = data.quotaPages.map(viewPage);

/** Records what the call did in the tenant's shared usage slot. */
function record(db: TenantDb, slot: number, rowsRead: number, rowsWritten: number): void {
  const page = quotaPages[Math.floor(slot / kSlotsPerPage)];
  if (!page) return;
  const index = slot % kSlotsPerPage;
  addRows(page, index, rowsRead, rowsWritten);
  // The size changes only when something was written (or on first open).
  if (db.takeSizeChanged()) storeStoragePages(page, index, Math.ceil(db.sizeBytes() / kStoragePageBytes));
}

function handle(request: ShardRequest): ShardResults[ShardRequest['op']] {
  switch (request.op) {
    case 'execute': {
      const db = pool.get(request.tenantId);
      const result = db.execute(request.statement, request.limits);
      record(db, request.limits.slot, result.rows.length, result.rowsAffected);
      return result;
    }
    case 'batch': {
      const db = pool.get(request.tenantId);
      const results = db.batch(request.statements, request.limits);
      let read = 0;
      let written = 0;
      for (const result of results) {
        read += result.rows.length;
        written += result.rowsAffected;
      }
      record(db, request.limits.slot, read, written);
      return results;
    }
    case 'query': {
      const id = request.id;
      const db = pool.get(request.tenantId);
      const rowCount = db.query(request.statement, request.limits, request.rowsPerChunk, (chunk) => {
        port.postMessage({ id, kind: 'chunk', chunk } satisfies ShardResponse);
      });
      record(db, request.limits.slot, rowCount, 0);
      return { rowCount };
    }
    case 'create': {
      const db = pool.create(request.tenantId, request.adoptExisting);
      return { schemaVersion: db.migrate(request.migrations) };
    }
    case 'snapshot': {
      pool.get(request.tenantId).snapshot(request.file);
      return { bytes: 0 };
    }
    case 'drop':
      return { removed: pool.remove(request.tenantId) };
    case 'shutdown':
      return { closed: pool.closeAll() };
    case 'crash':
      if (!data.faultInjection) {
        throw new ShardError({ code: Status.PERMISSION_DENIED, reason: 'FAULT_INJECTION_DISABLED', message: 'crash is for tests' });
      }
      return undefined as never;
    case 'quotaPage':
      return undefined as never;
  }
}

port.on('message', (request: ShardRequest) => {
  if (request.op === 'quotaPage') {
    quotaPages[request.pageIndex] = viewPage(request.buffers);
    return;
  }
  if (request.op === 'crash' && data.faultInjection) {
    // Uncaught, as a real bug would be: the worker dies before it reads another message.
    throw new Error('injected shard crash');
  }
  let response: ShardResponse;
  try {
    response = { id: request.id, kind: 'ok', result: handle(request) };
  } catch (error) {
    let wire: WireError;
    if (error instanceof ShardError) {
      wire = error.wire;
    } else {
      // A bug or an environment failure (disk, permissions): the front end
      // answers INTERNAL; the details stay in the server log.
      process.stderr.write(
        `${JSON.stringify({
          level: 'error',
          msg: 'shard request failed',
          shard: data.shardIndex,
          op: request.op,
          tenant: request.tenantId,
          error: error instanceof Error ? error.stack : String(error),
        })}\n`,
      );
      wire = { code: Status.INTERNAL, reason: 'INTERNAL', message: 'internal error in the shard; see the server log' };
    }
    response = { id: request.id, kind: 'error', error: wire };
  }
  port.postMessage(response);
});
