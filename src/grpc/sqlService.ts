/**
 * tenantd.v1.SqlService: admit the call and hand it to the tenant's shard.
 * The shard answers with the response already in protobuf bytes
 * (workers/resultWire.ts), which go to gRPC as they are
 * (encodedResponses.ts).
 */
import type { ServerUnaryCall, ServerWritableStream } from '@grpc/grpc-js';
import { invalidArgument } from '../errors.ts';
import type { EncodedMessage, ExecuteResult } from '../protocol.ts';
import type { ShardHandle } from '../routing/shardHandle.ts';
import type { ShardRouter } from '../routing/shardRouter.ts';
import type { Migrator } from '../schema/migrator.ts';
import type { Access, TenantCall } from './access.ts';
import { writeBytesOf, type Admit } from './admit.ts';
import { serverStream, unary, type Handlers } from './handlers.ts';
import { QueryOutlet, type UnreadBudget } from './queryOutlet.ts';
import { callLimits } from './limits.ts';
import type { ObservedCall, ServiceObserver } from './rpcObserver.ts';
import { toProtoValue, toStatement, type ProtoStatement, type ProtoValue } from './values.ts';
import { checkRequestId } from './requestId.ts';
import { runTransaction, type OpenTransactions, type TransactionCall } from './transaction.ts';
import { bidiStream } from './handlers.ts';

const MAX_BATCH_STATEMENTS = 1_000;
const DEFAULT_ROWS_PER_CHUNK = 500;
const MAX_ROWS_PER_CHUNK = 10_000;

interface ProtoColumn {
  name: string;
  decl_type: string;
}

interface ProtoExecuteResponse {
  columns: ProtoColumn[];
  rows: { values: ProtoValue[] }[];
  rows_affected: string;
  last_insert_rowid: string;
}

/**
 * ExecuteResult -> ExecuteResponse as objects, for a Transaction's answers
 * (the shard encodes Execute, Batch and Query answers itself).
 */
function toResponse(result: ExecuteResult): ProtoExecuteResponse {
  return {
    columns: result.columns.map((c) => ({ name: c.name, decl_type: c.declType })),
    rows: result.rows.map((row) => ({ values: row.map(toProtoValue) })),
    rows_affected: String(result.rowsAffected),
    last_insert_rowid: result.lastInsertRowid.toString(),
  };
}

export function sqlService(
  access: Access,
  admit: Admit,
  router: ShardRouter,
  migrator: Migrator,
  service: ServiceObserver,
  /** What may wait for slow Query clients (Config.queryUnreadLimits). */
  unread: UnreadBudget,
  /** Interactive transactions: the ones open, and Config.transactionIdleMs. */
  transactions: { open: OpenTransactions; idleMs: number },
): Handlers {
  /**
   * Sends the call once the tenant's schema is current: a tenant whose turn
   * in a migration pass has not come yet is migrated first. The common case
   * is one integer comparison.
   */
  function dispatch<T>(call: TenantCall, send: () => Promise<T>): Promise<T> {
    if (call.tenant.record.schemaVersion >= migrator.latest) return send();
    return migrator.ensureCurrent(call.tenant).then(send);
  }

  /** The tenant's shard, noted on the call for its span and access log. */
  function shardFor(call: TenantCall, rpc: ObservedCall): ShardHandle {
    const tenantId = call.tenant.record.tenantId;
    const shard = router.forTenant(tenantId);
    rpc.routed(tenantId, shard.index);
    return shard;
  }

  return {
    Execute: unary(service, 'Execute', (call: ServerUnaryCall<ProtoStatement & { request_id?: string }, EncodedMessage>, trailer, rpc) => {
      const tenantCall = access.tenant(call.metadata);
      const shard = shardFor(tenantCall, rpc);
      const statement = toStatement(call.request, '');
      // A READ_ONLY key's calls write nothing to retry safely: its request_id is checked, not recorded.
      const requestId = tenantCall.readOnly ? (checkRequestId(call.request.request_id), null) : checkRequestId(call.request.request_id);
      rpc.statement(statement.sql);
      const limits = callLimits(tenantCall, call);
      const tenantId = tenantCall.tenant.record.tenantId;
      const bytes = writeBytesOf(statement.sql, statement.params, statement.named);
      return admit(tenantCall, bytes, trailer, () =>
        dispatch(tenantCall, () =>
          shard.call(requestId === null ? { op: 'execute', tenantId, limits, statement } : { op: 'execute', tenantId, limits, statement, requestId }, undefined, rpc.signal),
        ),
      );
    }),

    Batch: unary(service, 'Batch', (call: ServerUnaryCall<{ statements: ProtoStatement[]; request_id?: string }, EncodedMessage>, trailer, rpc) => {
      const tenantCall = access.tenant(call.metadata);
      const shard = shardFor(tenantCall, rpc);
      const { statements } = call.request;
      if (statements.length === 0) throw invalidArgument('statements', 'at least one statement', 'INVALID_SQL');
      if (statements.length > MAX_BATCH_STATEMENTS) {
        throw invalidArgument('statements', `at most ${MAX_BATCH_STATEMENTS} statements`, 'INVALID_SQL');
      }
      const inputs = statements.map((s, i) => toStatement(s, `statements[${i}]`));
      const requestId = tenantCall.readOnly ? (checkRequestId(call.request.request_id), null) : checkRequestId(call.request.request_id);
      rpc.statement(() => inputs.map((s) => s.sql).join('; '));
      const limits = callLimits(tenantCall, call);
      const tenantId = tenantCall.tenant.record.tenantId;
      const bytes = inputs.reduce((sum, s) => sum + writeBytesOf(s.sql, s.params, s.named), 0);
      return admit(tenantCall, bytes, trailer, () =>
        dispatch(tenantCall, () =>
          shard.call(
            requestId === null ? { op: 'batch', tenantId, limits, statements: inputs } : { op: 'batch', tenantId, limits, statements: inputs, requestId },
            undefined,
            rpc.signal,
          ),
        ),
      );
    }),

    Transaction: bidiStream(service, 'Transaction', (call: TransactionCall, rpc) =>
      runTransaction({ access, admit, router, migrator, open: transactions.open, idleMs: transactions.idleMs, toResponse }, call, rpc),
    ),

    Query: serverStream(
      service,
      'Query',
      async (
        call: ServerWritableStream<ProtoStatement & { rows_per_chunk: number }, Uint8Array>,
        trailer,
        rpc,
      ) => {
        const tenantCall = access.tenant(call.metadata);
        const shard = shardFor(tenantCall, rpc);
        const statement = toStatement(call.request, '');
        rpc.statement(statement.sql);
        const requested = call.request.rows_per_chunk;
        if (requested < 0 || requested > MAX_ROWS_PER_CHUNK) {
          throw invalidArgument('rows_per_chunk', `from 1 to ${MAX_ROWS_PER_CHUNK}, or 0 for ${DEFAULT_ROWS_PER_CHUNK}`);
        }
        const limits = callLimits(tenantCall, call);
        const tenantId = tenantCall.tenant.record.tenantId;
        const bytes = writeBytesOf(statement.sql, statement.params, statement.named);
        const outlet = new QueryOutlet(call, unread, tenantId);
        try {
          await admit(tenantCall, bytes, trailer, async () => {
            await dispatch(tenantCall, () =>
              shard.call(
                { op: 'query', tenantId, limits, statement, rowsPerChunk: requested || DEFAULT_ROWS_PER_CHUNK },
                (chunk) => outlet.push(chunk.bytes, chunk.bytes.byteLength),
                rpc.signal,
              ),
            );
            // The call ends after its last chunk has gone to gRPC.
            await outlet.finish();
          });
        } finally {
          // A result that failed partway leaves chunks waiting and perhaps a pump waiting for the client.
          await outlet.close();
        }
      },
    ),
  };
}
