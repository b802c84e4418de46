/**
 * `tenantd restore <tenant> <file>`: streams the file to the server in 256 KiB
 * chunks, hashing as it goes, and sends the SHA-256 last, which the server
 * checks before it uses a byte. The file is never held in memory whole.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { open } from 'node:fs/promises';
import { expect } from './args.ts';
import type { CommandGroup } from './context.ts';
import { Progress } from './progress.ts';

// Small enough that what grpc-js buffers (16 messages before back-pressure) stays a few MiB.
const CHUNK = 256 * 1024;

export const restore: CommandGroup = {
  '': {
    usage: 'restore <tenant> <file> [--plan P]',
    summary: 'a backup file to a new tenant, or over a SUSPENDED one (--plan: for a new tenant)',
    options: { plan: { type: 'string' } },
    async run(context, positionals) {
      const [id, file] = expect(positionals, ['tenant', 'file']);
      const handle = await open(file!, 'r');
      try {
        const size = (await handle.stat()).size;
        const client = context.connect();
        const plan = context.values.plan as string | undefined;
        const { call, response } = client.admin.restore(id!, plan ? { plan } : null, context.callOptions);
        // Awaited below; a refusal mid-upload must not count as unhandled meanwhile.
        response.catch(() => undefined);
        const hash = createHash('sha256');
        const progress = new Progress(`restore ${id}`, 'bytes');
        let sent = 0;
        for await (const data of handle.createReadStream({ highWaterMark: CHUNK, autoClose: false }) as AsyncIterable<Buffer>) {
          hash.update(data);
          sent += data.length;
          progress.update(sent, size);
          // Back-pressure from the server; a refusal (quota, auth) ends the wait too.
          if (!call.write({ chunk: data })) await Promise.race([once(call, 'drain'), response]);
        }
        call.write({ header: { tenant_id: '', tenant: null, sha256: hash.digest('hex') } });
        call.end();
        const restored = await response;
        progress.update(sent, size, true);
        progress.done();
        context.printer.one({ type: 'tenantd.v1.Tenant', value: restored });
      } finally {
        await handle.close();
      }
    },
  },
};
