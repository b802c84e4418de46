/**
 * The main thread's cost per data call, without gRPC, on tenantd's real
 * pieces: the server is started in this process with startServer (so its
 * registry, ShardRouter and ShardHandle workers are exactly what serve
 * calls) over the data directory the tenantd child left behind, and an
 * Authenticator + Access are built over the same catalog the way
 * src/server.ts builds them.
 *
 *   admit    access.tenant(metadata) + toStatement + router.forTenant: a tight loop
 *   dispatch router.forTenant(id).call({op: 'execute'}) with 64 in flight:
 *            postMessage, structured clone both ways, the promise; main-thread CPU per call
 *   clone    postMessage + receiveMessageOnPort of the real execute request and
 *            response on a same-thread MessageChannel, against a 4-field message:
 *            the structured-clone share of dispatch, without thread wake-ups
 */
import { join } from 'node:path';
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import * as grpc from '@grpc/grpc-js';
import { Catalog } from '../../src/catalog/catalog.ts';
import { Authenticator } from '../../src/auth/authenticator.ts';
import { Access } from '../../src/grpc/access.ts';
import { createLogger } from '../../src/log.ts';
import { startServer } from '../../src/server.ts';
import { toStatement, type ProtoStatement } from '../../src/grpc/values.ts';
import { packExecute, packResult, type CallLimits } from '../../src/protocol.ts';
import { benchConfig, type BenchServerArgs } from './benchConfig.ts';
import { closedLoop, type LoopResult } from './closedLoop.ts';
import { POINT_READ, type BenchTenant } from './tenants.ts';

export interface FrontEndCost {
  admitUsPerCall: number;
  dispatch: LoopResult;
  /** µs per postMessage + receive on one thread. */
  clone: { requestUs: number; responseUs: number; objectRequestUs: number; objectResponseUs: number; minimalUs: number };
}

function request(rows: number, i: number): ProtoStatement {
  const id = String(1 + (i % rows));
  return { sql: POINT_READ, params: [{ kind: 'integer_value', integer_value: id }], named_params: {} };
}

function cloneUs(message: unknown, n = 100_000): number {
  const { port1, port2 } = new MessageChannel();
  for (let i = 0; i < 10_000; i++) {
    port1.postMessage(message);
    receiveMessageOnPort(port2);
  }
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    port1.postMessage(message);
    receiveMessageOnPort(port2);
  }
  const us = Number(process.hrtime.bigint() - t0) / n / 1000;
  port1.close();
  return us;
}

export async function measureFrontEnd(
  args: BenchServerArgs,
  tenants: BenchTenant[],
  rows: number,
  seconds: number,
  inFlight = 64,
): Promise<FrontEndCost> {
  const config = benchConfig(args);
  const server = await startServer(config, createLogger('warn'));
  const { router, registry } = server;
  const catalog = new Catalog(join(args.dataDir, 'catalog.db'));
  const access = new Access(new Authenticator(catalog), registry);
  const metadata = tenants.map((t) => {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${t.key}`);
    return md;
  });
  // CallLimits as SqlService builds them for these unlimited tenants.
  const limitsOf = (tenantId: string): CallLimits => ({
    readOnly: false,
    timeoutMs: 3_600_000,
    storageLimitBytes: -1,
    slot: registry.get(tenantId)!.slot.slot,
  });
  const limits = new Map(tenants.map((t) => [t.tenantId, limitsOf(t.tenantId)]));
  const requests = Array.from({ length: 1024 }, (_, i) => request(rows, i * 7919));

  try {
    // admit: auth (cached key -> principal), tenant lookup, statement check, shard pick.
    let sink = 0;
    const admit = (n: number) => {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) {
        const call = access.tenant(metadata[i % metadata.length]!);
        const statement = toStatement(requests[i & 1023]!, '');
        sink += router.forTenant(call.tenant.record.tenantId).index + statement.params.length;
      }
      return Number(process.hrtime.bigint() - t0) / n / 1000;
    };
    admit(200_000); // warm the key cache and the JIT
    const admitUsPerCall = admit(1_000_000);
    if (sink < 0) throw new Error('unreachable');

    // Open every tenant's database once so the loops below measure steady state.
    const results = await Promise.all(
      tenants.map((t, i) =>
        router.forTenant(t.tenantId).call({ op: 'execute', tenantId: t.tenantId, limits: limits.get(t.tenantId)!, statement: toStatement(requests[i & 1023]!, '') }),
      ),
    );

    const dispatch = await closedLoop(inFlight, seconds * 1000, (i, done) => {
      const tenant = tenants[i % tenants.length]!;
      const statement = toStatement(requests[i & 1023]!, '');
      router.forTenant(tenant.tenantId).call({ op: 'execute', tenantId: tenant.tenantId, limits: limits.get(tenant.tenantId)!, statement }).then(done, (e) => {
        throw e;
      });
    });

    const t0 = tenants[0]!;
    const execute = { op: 'execute' as const, id: 1, tenantId: t0.tenantId, limits: limits.get(t0.tenantId)!, statement: toStatement(requests[0]!, '') };
    // What crosses the port: the packed forms (protocol.ts), and for comparison the objects they replace.
    const clone = {
      requestUs: cloneUs(packExecute(1, execute)),
      responseUs: cloneUs(packResult(1, results[0]!)),
      objectRequestUs: cloneUs(execute),
      objectResponseUs: cloneUs({ id: 1, kind: 'ok', result: results[0] }),
      minimalUs: cloneUs({ id: 1, ok: true, slot: 17, rows: 1 }),
    };
    return { admitUsPerCall, dispatch, clone };
  } finally {
    catalog.close();
    await server.shutdown();
  }
}
