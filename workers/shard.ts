/**
 * The shard worker: owns its tenants' databases outright and runs their calls
 * one at a time, in the order the front end sent them. Every request gets
 * exactly one final answer (`ok` or `error`); a Query also sends chunks first.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { status as Status } from '@grpc/grpc-js';
import type { WireError } from '../src/errors.ts';
import type { ShardRequest, ShardResponse, ShardResults, ShardWorkerData } from '../src/protocol.ts';
import { DbPool } from './dbPool.ts';
import { ShardError } from './tenantDb.ts';

const data = workerData as ShardWorkerData;
const port = parentPort!;
const pool = new DbPool(data.dataDir, data.sync, data.maxOpenDbs);

function handle(request: ShardRequest): ShardResults[ShardRequest['op']] {
  switch (request.op) {
    case 'execute':
      return pool.get(request.tenantId).execute(request.statement, request.limits);
    case 'batch':
      return pool.get(request.tenantId).batch(request.statements, request.limits);
    case 'query': {
      const id = request.id;
      const rowCount = pool
        .get(request.tenantId)
        .query(request.statement, request.limits, request.rowsPerChunk, (chunk) => {
          port.postMessage({ id, kind: 'chunk', chunk } satisfies ShardResponse);
        });
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
      // Thrown outside the message handler's try, as a real bug would be.
      setImmediate(() => {
        throw new Error('injected shard crash');
      });
      return undefined as never;
  }
}

port.on('message', (request: ShardRequest) => {
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
