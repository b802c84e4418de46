/**
 * `tenantd backup <tenant> <file>`: streams the snapshot to disk, hashing as
 * it goes. Written beside the target and renamed at the end, so a failed
 * backup leaves no file to mistake for one.
 */
import { createHash } from 'node:crypto';
import { open, rename, rm, stat } from 'node:fs/promises';
import { expect } from './args.ts';
import type { CommandGroup } from './context.ts';
import { Progress } from './progress.ts';

/** A local failure with a short reason, printed as `ERROR <code>: message`. */
class LocalError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export const backup: CommandGroup = {
  '': {
    usage: 'backup <tenant> <file>',
    summary: "copies the tenant's database to <file> (never overwrites one), checked against the server's SHA-256",
    async run(context, positionals) {
      const [id, file] = expect(positionals, ['tenant', 'file']);
      const exists = await stat(file!).then(
        () => true,
        () => false,
      );
      if (exists) throw new LocalError('EEXIST', `${file} exists; a backup never overwrites a file`);
      const client = context.connect();
      const partial = `${file}.partial`;
      // Opened before the call: an unwritable path fails here, as one line, with nothing sent.
      const handle = await open(partial, 'wx').catch((error: NodeJS.ErrnoException) => {
        throw new LocalError(error.code ?? 'EIO', `cannot write ${partial}: ${error.message.replace(/^\w+: /, '').replace(/, open .*$/, '')}`);
      });
      let complete = false;
      const progress = new Progress(`backup ${id}`, 'bytes');
      try {
        const hash = createHash('sha256');
        let expected = '';
        let bytes = 0;
        for await (const chunk of client.admin.backup(id!, context.callOptions)) {
          hash.update(chunk.data);
          await handle.write(chunk.data);
          bytes += chunk.data.length;
          if (chunk.sha256) expected = chunk.sha256;
          progress.update(bytes, Number(chunk.total_size) || null);
        }
        progress.update(bytes, bytes, true);
        progress.done();
        await handle.sync();
        await handle.close();
        const actual = hash.digest('hex');
        if (expected !== actual) throw new LocalError('CHECKSUM_MISMATCH', `the backup's SHA-256 is ${actual}, the server said ${expected || 'nothing'}`);
        await rename(partial, file!);
        complete = true;
        context.printer.one({ type: null, value: { tenant: `tenants/${id}`, file, bytes, sha256: actual } });
      } finally {
        if (!complete) {
          progress.done();
          await handle.close().catch(() => undefined);
          await rm(partial, { force: true });
        }
      }
    },
  },
};
