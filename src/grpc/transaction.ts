/**
 * tenantd.v1.SqlService.Transaction: an interactive transaction over a
 * bidirectional stream. The front end owns its time limits: the idle limit
 * between requests (transaction_idle_ms), the tenant's
 * transaction_timeout_ms, the call's deadline; and its ends: cancel,
 * disconnect, shutdown. Whichever way it ends without a commit, the shard is
 * told to roll back. The shard owns the transaction itself
 * (workers/transactions.ts). docs/transactions.md is the reference.
 */
import { status as Status, type ServerDuplexStream } from '@grpc/grpc-js';
import { TenantdError, invalidArgument, statusMessage, unavailable } from '../errors.ts';
import type { ExecuteResult, StatementInput, TransactionMode } from '../protocol.ts';
import type { ShardRouter } from '../routing/shardRouter.ts';
import type { Migrator } from '../schema/migrator.ts';
import type { LiveTenant } from '../tenants/registry.ts';
import type { Access } from './access.ts';
import { writeBytesOf, type Admit } from './admit.ts';
import { remainingMs } from './handlers.ts';
import { callLimits } from './limits.ts';
import type { ObservedCall } from './rpcObserver.ts';
import { TransactionInbox } from './transactionInbox.ts';
import { toStatement, type ProtoStatement } from './values.ts';
import { checkRequestId } from './requestId.ts';

export interface ProtoTransactionRequest {
  kind?: 'begin' | 'statement' | 'batch' | 'commit' | 'rollback';
  begin?: { mode: string; request_id: string };
  statement?: ProtoStatement;
  batch?: { statements: ProtoStatement[] };
  commit?: object;
  rollback?: object;
}

export type TransactionCall = ServerDuplexStream<ProtoTransactionRequest, Record<string, unknown>>;

const MAX_BATCH_STATEMENTS = 1_000;
const MODES: Record<string, TransactionMode> = { MODE_UNSPECIFIED: 'DEFERRED', DEFERRED: 'DEFERRED', IMMEDIATE: 'IMMEDIATE', READ_ONLY: 'READ_ONLY' };

/** Transaction ids, unique in the process: the shards key their transactions by them. */
let nextTxId = 1;

/**
 * The transactions open on this server, so that shutdown can end them
 * without waiting out the drain (each is rolled back).
 */
export class OpenTransactions {
  private readonly inboxes = new Set<TransactionInbox>();
  /** Open per tenant, for concurrent_transactions. */
  private readonly perTenant = new WeakMap<LiveTenant, number>();

  enter(tenant: LiveTenant, inbox: TransactionInbox): void {
    const open = this.perTenant.get(tenant) ?? 0;
    const limit = tenant.quotas.concurrentTransactions;
    if (limit >= 0 && open >= limit) {
      throw new TenantdError(Status.RESOURCE_EXHAUSTED, 'QUOTA_EXCEEDED', `tenants/${tenant.record.tenantId} has ${open} transactions open, its limit (concurrent_transactions)`, {
        quotaViolations: [{ quota: 'concurrent_transactions', current: open, limit, subject: `tenants/${tenant.record.tenantId}` }],
      });
    }
    this.perTenant.set(tenant, open + 1);
    this.inboxes.add(inbox);
  }

  leave(tenant: LiveTenant, inbox: TransactionInbox): void {
    if (!this.inboxes.delete(inbox)) return;
    this.perTenant.set(tenant, Math.max(0, (this.perTenant.get(tenant) ?? 1) - 1));
  }

  /** Ends every open transaction (they roll back): the server is stopping. */
  endAll(): void {
    for (const inbox of this.inboxes) inbox.abort(unavailable('SHUTTING_DOWN', 'the server is shutting down; the transaction was rolled back'));
  }
}

export interface TransactionDeps {
  access: Access;
  admit: Admit;
  router: ShardRouter;
  migrator: Migrator;
  open: OpenTransactions;
  idleMs: number;
  /** ExecuteResult -> ExecuteResponse, as Execute answers. */
  toResponse(result: ExecuteResult): unknown;
}

function statementsOf(request: ProtoTransactionRequest): StatementInput[] {
  if (request.kind === 'statement') return [toStatement(request.statement!, 'statement')];
  const statements = request.batch?.statements ?? [];
  if (statements.length === 0) throw invalidArgument('batch.statements', 'at least one statement', 'INVALID_SQL');
  if (statements.length > MAX_BATCH_STATEMENTS) throw invalidArgument('batch.statements', `at most ${MAX_BATCH_STATEMENTS} statements`, 'INVALID_SQL');
  return statements.map((s, i) => toStatement(s, `batch.statements[${i}]`));
}

/** Runs one Transaction call to its end; resolves when the stream may end OK, rejects with its status otherwise. */
export async function runTransaction(deps: TransactionDeps, call: TransactionCall, rpc: ObservedCall): Promise<void> {
  const { access, admit, router, migrator, open } = deps;
  const inbox = new TransactionInbox(call);
  // Set once the first request is in: it is read before the key is checked, so that one that does not decode is answered as such.
  let tenantCall: ReturnType<Access['tenant']>;
  let live: ReturnType<Access['tenant']>['tenant'];
  let tenantId: string;
  let shard: ReturnType<typeof router.forTenant>;
  try {
    const first = await inbox.next(deps.idleMs);
    tenantCall = access.tenant(call.metadata);
    live = tenantCall.tenant;
    tenantId = live.record.tenantId;
    shard = router.forTenant(tenantId);
    rpc.routed(tenantId, shard.index);
    if (first.kind !== 'message' || first.message.kind !== 'begin') {
      if (first.kind === 'failed') throw first.error;
      throw invalidArgument('begin', 'the first request of a transaction is a begin', 'TRANSACTION_NOT_BEGUN');
    }
    const begin = first.message.begin!;
    const mode = MODES[begin.mode];
    if (mode === undefined) throw invalidArgument('begin.mode', `one of DEFERRED, IMMEDIATE, READ_ONLY, not ${begin.mode}`);
    if (tenantCall.readOnly && mode !== 'READ_ONLY') {
      throw new TenantdError(Status.PERMISSION_DENIED, 'READ_ONLY_KEY', 'this API key is READ_ONLY: it may open READ_ONLY transactions only', {
        fieldViolations: [{ field: 'begin.mode', description: 'a READ_ONLY key opens READ_ONLY transactions only' }],
      });
    }
    const requestId = checkRequestId(begin.request_id, 'begin.request_id');
    open.enter(live, inbox);
    try {
      await converse(deps, call, tenantCall, inbox, mode, requestId);
    } finally {
      open.leave(live, inbox);
    }
  } finally {
    inbox.close();
  }

  async function converse(
    deps: TransactionDeps,
    call: TransactionCall,
    tenantCall: ReturnType<Access['tenant']>,
    inbox: TransactionInbox,
    mode: TransactionMode,
    requestId: string | null,
  ): Promise<void> {
    const totalMs = live.quotas.transactionTimeoutMs < 0 ? Infinity : live.quotas.transactionTimeoutMs;
    const startedAt = Date.now();
    const txId = nextTxId++;
    /** A statement's limits: the tenant's, capped by what is left of the transaction's time. */
    const limits = () => {
      const base = callLimits(tenantCall, call);
      const left = startedAt + totalMs - Date.now();
      if (left <= 0) throw timeLimit();
      return { ...base, timeoutMs: Math.max(1, Math.min(base.timeoutMs, Math.floor(left))) };
    };
    const timeLimit = () =>
      new TenantdError(Status.ABORTED, 'TRANSACTION_TIMEOUT', `the transaction was open longer than transaction_timeout_ms (${totalMs} ms) and was rolled back`, {
        metadata: { transaction_timeout_ms: String(totalMs) },
      });

    const ensureCurrent = live.record.schemaVersion >= migrator.latest ? Promise.resolve() : migrator.ensureCurrent(live);
    const begun = await admit(tenantCall, 0, null, () =>
      ensureCurrent.then(() => shard.call({ op: 'txBegin', tenantId, limits: limits(), txId, mode, requestId })),
    );
    if (begun.replayed) {
      call.write({ committed: { replayed: true } });
      return;
    }
    let isOpen = true;
    const rollback = () => {
      if (!isOpen) return Promise.resolve();
      isOpen = false;
      return shard.call({ op: 'txRollback', tenantId, txId }).then(
        () => undefined,
        () => undefined, // The shard restarted or stopped: the transaction is gone with it.
      );
    };
    try {
      call.write({ begun: {} });
      for (;;) {
        const leftTotal = startedAt + totalMs - Date.now();
        const wait = Math.min(deps.idleMs, leftTotal, remainingMs(call));
        const next = await inbox.next(Math.max(0, wait));
        if (next.kind === 'failed') throw next.error;
        if (next.kind === 'ended') {
          // The client half-closed without commit: nothing is kept.
          await rollback();
          call.write({ rolled_back: {} });
          return;
        }
        if (next.kind === 'idle') {
          // The wait ended at the transaction's own limit (timers may wake a millisecond short of it).
          if (Date.now() - startedAt >= totalMs || leftTotal <= Math.min(deps.idleMs, remainingMs(call))) throw timeLimit();
          if (remainingMs(call) <= 0) throw new TenantdError(Status.DEADLINE_EXCEEDED, 'DEADLINE_EXCEEDED', 'the call reached its deadline; the transaction was rolled back');
          throw new TenantdError(
            Status.ABORTED,
            'TRANSACTION_IDLE_TIMEOUT',
            `no request came for ${deps.idleMs} ms (transaction_idle_ms); the transaction was rolled back`,
            { metadata: { transaction_idle_ms: String(deps.idleMs) } },
          );
        }
        const message = next.message;
        // Suspended or deleted since begin: the transaction ends (rolled back), as the tenant's next call would be refused.
        if (live.deleting || live.record.state !== 'ACTIVE') {
          throw new TenantdError(Status.FAILED_PRECONDITION, 'TENANT_SUSPENDED', `tenants/${tenantId} was suspended or deleted; the transaction was rolled back`, {
            metadata: { tenant: tenantId },
          });
        }
        switch (message.kind) {
          case 'statement':
          case 'batch': {
            const batch = message.kind === 'batch';
            try {
              const statements = statementsOf(message);
              rpc.statement(() => statements.map((s) => s.sql).join('; '));
              const bytes = statements.reduce((sum, s) => sum + writeBytesOf(s.sql, s.params, s.named), 0);
              const step = await admit(tenantCall, bytes, null, () => shard.call({ op: 'txStep', tenantId, limits: limits(), txId, statements, batch }));
              if (step.ok) {
                const results = Array.isArray(step.result) ? step.result : [step.result];
                call.write(batch ? { batch: { results: results.map(deps.toResponse) } } : { result: deps.toResponse(results[0]!) });
              } else {
                call.write({ error: { status: statusMessage(TenantdError.fromWire(step.error)), transaction_open: step.open } });
              }
            } catch (error) {
              // Refused before it ran (a bad statement, a quota): the transaction goes on.
              if (!(error instanceof TenantdError) || error.reason === 'TRANSACTION_TIMEOUT') throw error;
              if (error.code === Status.UNAVAILABLE) throw error;
              call.write({ error: { status: statusMessage(error), transaction_open: true } });
            }
            break;
          }
          case 'commit': {
            // A commit the shard refused ended the transaction there; the rollback that follows finds nothing.
            await admit(tenantCall, 0, null, () => shard.call({ op: 'txCommit', tenantId, limits: limits(), txId }));
            isOpen = false;
            call.write({ committed: { replayed: false } });
            return;
          }
          case 'rollback':
            await rollback();
            call.write({ rolled_back: {} });
            return;
          default:
            throw invalidArgument('kind', 'after begin: statement, batch, commit or rollback', 'TRANSACTION_ALREADY_BEGUN');
        }
      }
    } finally {
      // Every end but a commit that reached the shard: cancel, disconnect, limits, errors, shutdown.
      await rollback();
    }
  }
}
