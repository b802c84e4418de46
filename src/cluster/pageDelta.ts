/**
 * The pages where one snapshot of a database differs from an earlier one:
 * what phase 2 of a two-phase move sends. SQLite's online backup copies a
 * database page by page to the same page numbers, so two snapshots of one
 * tenant differ exactly in the pages written between them (and page 1's
 * change counter).
 */
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';

/** Whole pages, contiguous, that `next` has and `base` has not. */
export interface PageRun {
  offset: number;
  length: number;
}

export interface PageDelta {
  /** `next`'s size: the target cuts or grows its copy to it. */
  size: number;
  runs: PageRun[];
  /** The runs' bytes together. */
  bytes: number;
  /** Hex SHA-256 of the runs as sent: each run's offset as 8 bytes big-endian, then its bytes. */
  sha256: string;
}

/** Read and compared a MiB at a time: a multiple of every SQLite page size. */
const READ_BYTES = 1024 * 1024;
/** The most bytes one patch message carries. */
const MAX_RUN_BYTES = 1024 * 1024;

/** SQLite's page size, from the database header (bytes 16-17, where 1 means 65536). */
function pageSizeOf(header: Buffer): number {
  const value = header.readUInt16BE(16);
  return value === 1 ? 65_536 : value;
}

/** A patch's offset as it is hashed. */
export function offsetBytes(offset: number): Buffer {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(BigInt(offset));
  return bytes;
}

/** Reads up to `length` bytes at `position`, as many as the file has there. */
async function readAt(handle: FileHandle, buffer: Buffer, length: number, position: number): Promise<number> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/**
 * Where `next` differs from `base`, two snapshots of one database, in runs of
 * whole pages. Null when the two cannot be compared page by page (another page
 * size, not a database) or when the delta would pass `limitBytes`: then the
 * whole file is the cheaper thing to send.
 */
export async function pageDelta(base: string, next: string, limitBytes: number): Promise<PageDelta | null> {
  const [a, b] = await Promise.all([open(base, 'r'), open(next, 'r')]);
  try {
    const size = (await b.stat()).size;
    const bufferA = Buffer.alloc(READ_BYTES);
    const bufferB = Buffer.alloc(READ_BYTES);
    const hash = createHash('sha256');
    const runs: PageRun[] = [];
    let bytes = 0;
    let pageSize = 0;
    let run: PageRun | null = null;
    for (let position = 0; position < size; position += READ_BYTES) {
      const [readA, readB] = await Promise.all([readAt(a, bufferA, READ_BYTES, position), readAt(b, bufferB, READ_BYTES, position)]);
      if (position === 0) {
        if (readA < 100 || readB < 100) return null;
        pageSize = pageSizeOf(bufferB);
        if (pageSizeOf(bufferA) !== pageSize || size % pageSize !== 0) return null;
      }
      for (let start = 0; start < readB; start += pageSize) {
        const end = start + pageSize;
        if (end <= readA && bufferA.compare(bufferB, start, end, start, end) === 0) {
          run = null;
          continue;
        }
        bytes += pageSize;
        if (bytes > limitBytes) return null;
        if (run === null || run.length >= MAX_RUN_BYTES) {
          run = { offset: position + start, length: 0 };
          runs.push(run);
          hash.update(offsetBytes(run.offset));
        }
        run.length += pageSize;
        hash.update(bufferB.subarray(start, end));
      }
    }
    return { size, runs, bytes, sha256: hash.digest('hex') };
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

/** The runs' bytes, read from `file`, one run at a time. */
export async function* readRuns(file: string, runs: readonly PageRun[]): AsyncGenerator<{ offset: number; data: Buffer }> {
  const handle = await open(file, 'r');
  try {
    for (const run of runs) {
      const data = Buffer.alloc(run.length);
      if ((await readAt(handle, data, run.length, run.offset)) !== run.length) throw new Error(`${file} ended before ${run.offset + run.length}`);
      yield { offset: run.offset, data };
    }
  } finally {
    await handle.close();
  }
}
