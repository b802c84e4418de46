/**
 * A Query whose client reads nothing and that fails partway through its
 * result must end that one call, never the process. Each case pauses the
 * client's stream (grpc-js then stops reading, and HTTP/2 flow control stops
 * the server's writes), lets the failure happen while chunks wait, then
 * checks that nothing was left unhandled and the server still answers.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { decodeStatus, rowsOf, startTestServer, type TestServer } from './support/server.ts';

let t: TestServer;
let key: string;
let slowKey: string;
const slipped: unknown[] = [];
const onSlip = (error: unknown) => slipped.push(error);

beforeAll(async () => {
  process.on('unhandledRejection', onSlip);
  // Room for a whole 256 MiB result to wait, so RESULT_TOO_LARGE comes before CLIENT_TOO_SLOW.
  t = await startTestServer({ shards: 1, queryUnreadLimits: { perTenant: 512 * 1024 * 1024, total: 1024 * 1024 * 1024 } });
  const open = { requests_per_second: '-1', shard_ms_per_second: '-1', write_bytes_per_second: '-1' };
  // A minute per statement: on a loaded host 256 MiB of result can take longer than the default 5 s.
  key = await t.createTenant('reader', { quotas: { ...open, query_timeout_ms: '60000' } });
  slowKey = await t.createTenant('timeout', { quotas: { ...open, query_timeout_ms: '400' } });
});
afterAll(async () => {
  await t.stop();
  process.off('unhandledRejection', onSlip);
});
afterEach(async () => {
  // A rejection left floating surfaces a turn or two after the call ended.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const seen = slipped.splice(0).map((error) => (error instanceof Error ? error.message : JSON.stringify(error)));
  expect(seen).toEqual([]);
  expect(rowsOf(await t.sql(key, 'SELECT 41 + 1'))).toEqual([[42n]]);
});

/** Opens a Query, pauses it before anything is read, waits `pauseMs`, then reads to the end; resolves with its status. */
function pausedQuery(apiKey: string, request: unknown, pauseMs: number): Promise<{ code: grpc.status; reason: string; messages: number }> {
  const call = t.client.openStream('SqlService', 'Query', request, { key: apiKey });
  call.pause();
  let messages = 0;
  return new Promise((resolve) => {
    call.on('data', () => messages++);
    call.on('error', (error: grpc.ServiceError) => {
      const decoded = decodeStatus(error);
      resolve({ code: decoded.code, reason: decoded.reason, messages });
    });
    call.on('end', () => resolve({ code: status.OK, reason: '', messages }));
    setTimeout(() => call.resume(), pauseMs);
  });
}

const WIDE_ROWS = (failAt: number) =>
  `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 100000)
   SELECT x, CASE WHEN x = ${failAt} THEN abs(-9223372036854775807 - 1) ELSE x END, printf('%0200d', x) FROM c`;

describe('a Query whose client does not read', () => {
  it('survives an error at row 60,000', async () => {
    const result = await pausedQuery(key, { sql: WIDE_ROWS(60_000), rows_per_chunk: 1000 }, 3_000);
    expect(result.code).toBe(status.INVALID_ARGUMENT);
  });

  it('survives the query timeout', async () => {
    const sql = `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c)
                 SELECT x, printf('%0200d', x), (SELECT count(*) FROM (WITH RECURSIVE d(y) AS (SELECT 1 UNION ALL SELECT y+1 FROM d LIMIT 200) SELECT y FROM d)) FROM c`;
    const result = await pausedQuery(slowKey, { sql, rows_per_chunk: 100 }, 2_000);
    expect(result.code).toBe(status.DEADLINE_EXCEEDED);
  });

  it('survives RESULT_TOO_LARGE', async () => {
    const sql = `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 400) SELECT x, zeroblob(1000000) FROM c`;
    const result = await pausedQuery(key, { sql, rows_per_chunk: 1 }, 2_000);
    expect(result.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(result.reason).toBe('RESULT_TOO_LARGE');
  });

  it('survives a client that reads two messages and cancels', async () => {
    for (let round = 0; round < 5; round++) {
      const call = t.client.openStream('SqlService', 'Query', { sql: WIDE_ROWS(0), rows_per_chunk: 500 }, { key });
      await new Promise<void>((resolve) => {
        let seen = 0;
        call.on('data', () => {
          if (++seen === 2) {
            call.pause();
            setTimeout(() => {
              call.cancel();
              resolve();
            }, 300);
          }
        });
        call.on('error', () => resolve());
      });
    }
  });

  it('survives a client that never reads and goes away', async () => {
    const call = t.client.openStream('SqlService', 'Query', { sql: WIDE_ROWS(90_000), rows_per_chunk: 1000 }, { key });
    call.pause();
    call.on('error', () => {});
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    call.cancel();
  });
});
