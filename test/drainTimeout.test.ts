/** The drain timeout: a shutdown does not wait for a call in flight past --drain-timeout-ms. */
import { describe, expect, it } from 'vitest';
import { performance } from 'node:perf_hooks';
import { status } from '@grpc/grpc-js';
import { startTestServer } from './support/server.ts';

/** Runs until its statement's timeout. */
const ENDLESS = 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c';

describe('drain timeout', () => {
  it('ends a call still running at the drain timeout, long before its statement would end', async () => {
    const t = await startTestServer({ shards: 1, drainTimeoutMs: 500 });
    try {
      const key = await t.createTenant('draining', { quotas: { query_timeout_ms: '6000', shard_ms_per_second: '-1' } });
      const call = t.client.failure('SqlService', 'Execute', { sql: ENDLESS }, { key, deadlineMs: 20_000 });
      // The server has the call (its statement runs, or is about to).
      await t.untilCallsInFlight(1);
      await new Promise((r) => setTimeout(r, 100));
      const started = performance.now();
      const stopping = t.server.shutdown();
      const failure = await call;
      const endedAfter = performance.now() - started;
      // Cut at the drain timeout: not answered by the statement's own 6 s timeout.
      expect([status.UNAVAILABLE, status.CANCELLED]).toContain(failure.code);
      expect(endedAfter).toBeGreaterThanOrEqual(400);
      expect(endedAfter).toBeLessThan(3_000);
      await stopping;
    } finally {
      await t.stop();
    }
  }, 30_000);
});
