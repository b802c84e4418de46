/**
 * A shard that dies right after a committed write, in the same message: the
 * write of `writer` (into its table `w`), a read of `reader`, then an
 * injected crash (fault injection on, as in every test server).
 */
import type { ShardHandle } from '../../src/routing/shardHandle.ts';
import { rowsOf, type TestServer } from './server.ts';
import { decodeExecuteResponse } from './wire.ts';

export interface CrashAfterWrite {
  /** The write's rows_affected as its answer said. */
  rowsAffected: string;
  /** `SELECT count(*) FROM w` of the writer once the restarted shard serves it; null if it never did. */
  rowsAfterRestart: unknown[][] | null;
}

export async function writeThenCrash(t: TestServer, shard: ShardHandle, writer: { id: string; key: string }, reader: string): Promise<CrashAfterWrite> {
  const exited = new Promise((r) => shard.thread.once('exit', r));
  const limitsOf = (tenantId: string) => ({ readOnly: false, timeoutMs: 5_000, storageLimitBytes: -1, slot: t.server.registry.get(tenantId)!.slot.slot });
  const statement = (sql: string) => ({ sql, params: [], named: null });
  const write = shard.call({ op: 'execute', tenantId: writer.id, limits: limitsOf(writer.id), statement: statement('INSERT INTO w VALUES (1)') });
  // The read's answer may be lost with the worker; reads are safe to retry.
  const read = shard.call({ op: 'execute', tenantId: reader, limits: limitsOf(reader), statement: statement('SELECT 1') }).catch((e: unknown) => e);
  const crash = shard.call({ op: 'crash', tenantId: '' }).catch(() => undefined);
  const rowsAffected = decodeExecuteResponse(await write).rows_affected;
  await Promise.all([read, crash]);
  await exited;
  let rows: unknown[][] | null = null;
  for (let attempt = 0; attempt < 50 && rows === null; attempt++) {
    try {
      rows = rowsOf(await t.sql(writer.key, 'SELECT count(*) FROM w'));
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { rowsAffected, rowsAfterRestart: rows };
}
