/**
 * echo: the baseline. A bare grpc-js server (bench/lib/echoServer.ts) serving
 * tenantd.v1.SqlService/Execute with tenantd's own ExecuteRequest/Response
 * and answering at once with a point read's response: what gRPC alone costs
 * on this box, with the same client and the same request stream as point-read.
 */
import { startChild } from '../lib/child.ts';
import { runOne } from './clients.ts';
import { clientNote, cpuNote, EXECUTE, pointReadData, rowOf, type Context, type Scenario } from './common.ts';

export const CONCURRENCY = 64;

export const echo: Scenario = {
  name: 'echo',
  description: 'bare grpc-js server, same ExecuteRequest/Response, -c 64',
  async run(ctx: Context) {
    const server = await startChild(new URL('../lib/echoServer.ts', import.meta.url), {});
    try {
      let before = await server.sample();
      const { report, clientCpuMs } = await runOne(
        {
          call: EXECUTE,
          host: `127.0.0.1:${server.ready.port}`,
          concurrency: CONCURRENCY,
          duration: ctx.durationMs,
          warmup: `${ctx.warmupMs}ms`,
          data: pointReadData(100),
          metadata: { authorization: 'Bearer none' },
          name: 'echo',
        },
        async () => (before = await server.sample()),
      );
      const cpu = `${cpuNote(before, await server.sample(), report.count)}, ${clientNote(clientCpuMs, report.count)}`;
      const file = ctx.saveReport('echo', report);
      ctx.addRow(rowOf('echo', report, `-c ${CONCURRENCY}, 1 connection; ${cpu}; ${file}`));
    } finally {
      await server.stop();
    }
  },
};
