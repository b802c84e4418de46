/**
 * The child span of a shard call, made on the main thread. A worker has no
 * tracer (no SDK, no exporter, nothing to flush when it dies): when the call
 * carries a trace context it reports when it ran (a ShardSpan message before
 * the answer) and this file turns that into a span under the caller's span.
 * A worker that reports nothing still gets a span, from post to answer.
 *
 * Telemetry never throws: every entry point here swallows its own failures.
 */
import { performance } from 'node:perf_hooks';
import { context, propagation, SpanKind, SpanStatusCode, trace, type Attributes, type Context } from '@opentelemetry/api';
import type { WireError } from '../errors.ts';
import type { ShardSpan } from '../protocol.ts';
import { ATTR_RPC_GRPC_STATUS_CODE, ATTR_SHARD, ATTR_SHARD_OP, ATTR_TENANT_ID, isServerFault } from '../telemetry/semconv.ts';

const tracer = trace.getTracer('tenantd');

/** Epoch ms with sub-ms precision, on the same scale as the workers' clock. */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

export interface TracedCall {
  parent: Context;
  op: string;
  tenantId: string;
  postedMs: number;
  /** The worker's report, when it sent one. */
  ran?: ShardSpan;
}

/**
 * When the active span is recording: the trace context for the request
 * (`carrier`) and what ending the child span needs. Otherwise undefined, at
 * the cost of one context lookup.
 */
export function traceShardCall(op: string, tenantId: string): { carrier: Record<string, string>; call: TracedCall } | undefined {
  try {
    const parent = context.active();
    if (trace.getSpan(parent)?.isRecording() !== true) return undefined;
    const carrier: Record<string, string> = {};
    propagation.inject(parent, carrier);
    return { carrier, call: { parent, op, tenantId, postedMs: epochMs() } };
  } catch {
    return undefined;
  }
}

/** Records the call's span, `shard.<op>`, once its final answer (or failure) is known. */
export function endShardSpan(call: TracedCall, shardIndex: number, error: WireError | null): void {
  try {
    const { ran } = call;
    const attributes: Attributes = {
      [ATTR_SHARD_OP]: call.op,
      [ATTR_TENANT_ID]: call.tenantId,
      [ATTR_SHARD]: shardIndex,
      'tenantd.shard.timing': ran ? 'worker' : 'dispatch',
    };
    if (ran) {
      // Time the call waited in the shard's queue behind other calls.
      attributes['tenantd.shard.queue_ms'] = Math.max(0, ran.startMs - call.postedMs);
      if (ran.groupSize !== undefined) attributes['tenantd.shard.group_size'] = ran.groupSize;
    }
    const span = tracer.startSpan(`shard.${call.op}`, { kind: SpanKind.INTERNAL, startTime: ran?.startMs ?? call.postedMs, attributes }, call.parent);
    if (error) {
      span.setAttribute(ATTR_RPC_GRPC_STATUS_CODE, error.code);
      span.setAttribute('tenantd.error.reason', error.reason);
      if (isServerFault(error.code)) span.setStatus({ code: SpanStatusCode.ERROR, message: error.reason });
    }
    span.end(ran?.endMs ?? epochMs());
  } catch {
    // Telemetry never throws.
  }
}
