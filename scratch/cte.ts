import { startTestServer } from '../test/support/server.ts';
const t = await startTestServer({ shards: 1 });
const key = await t.createTenant('cte', { quotas: { shard_ms_per_second: '-1', query_timeout_ms: '1500' } });
for (const depth of [18]) {
  let w = 'WITH a0(x) AS NOT MATERIALIZED (SELECT 1)';
  for (let i = 1; i <= depth; i++) w += `, a${i}(x) AS NOT MATERIALIZED (SELECT x FROM a${i - 1} UNION ALL SELECT x FROM a${i - 1})`;
  const rss0 = process.memoryUsage().rss;
  const started = Date.now();
  const f = await t.client.failure('SqlService', 'Execute', { sql: `${w} SELECT count(*) FROM a${depth}` }, { key });
  console.log(`${depth}-deep NOT MATERIALIZED CTE, query_timeout_ms 1500 -> ${f.reason} in ${Date.now() - started} ms, rss +${Math.round((process.memoryUsage().rss - rss0) / 1048576)} MB`);
}
await t.stop();
