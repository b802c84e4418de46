import { startTestServer } from '../test/support/server.ts';
const t = await startTestServer({ shards: 1 });
const key = await t.createTenant('mem', { quotas: { shard_ms_per_second: '-1', query_timeout_ms: '1500' } });
const rss = () => Math.round(process.memoryUsage().rss / 1048576);
for (const [label, sql] of [
  ['32 x zeroblob(16e6)', `SELECT ${Array.from({ length: 32 }, () => 'zeroblob(16000000)').join(', ')}`],
  ['32 x zeroblob(10e6)', `SELECT ${Array.from({ length: 32 }, () => 'zeroblob(10000000)').join(', ')}`],
]) {
  global.gc?.();
  const before = rss();
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, rss())), 5);
  const started = Date.now();
  const f = await t.client.failure('SqlService', 'Execute', { sql }, { key }).catch((e) => ({ reason: String(e) }));
  clearInterval(timer);
  console.log(label, '->', (f as any).reason, `${Date.now() - started} ms`, `rss before ${before} MB, peak +${Math.max(peak, rss()) - before} MB`);
}
let w = 'WITH a0(x) AS NOT MATERIALIZED (SELECT 1)';
for (let i = 1; i <= 16; i++) w += `, a${i}(x) AS NOT MATERIALIZED (SELECT x FROM a${i - 1} UNION ALL SELECT x FROM a${i - 1})`;
const started = Date.now();
const f = await t.client.failure('SqlService', 'Execute', { sql: w + ' SELECT count(*) FROM a16' }, { key });
console.log('16-deep NOT MATERIALIZED CTE, query_timeout_ms 1500 ->', f.reason, `${Date.now() - started} ms`);
await t.stop();
