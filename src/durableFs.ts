/**
 * Renames and unlinks that survive a power loss. rename() is atomic, but
 * only the directory's own fsync makes it durable: without one, the kernel
 * may write a later step of a multi-rename swap (a restore) before an
 * earlier one, and a crash then leaves neither the old state nor the new.
 * Shared by the front end and the shard workers.
 */
import { closeSync, fsyncSync, openSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';

/** Makes the entries of `dir` (names added, renamed or removed) durable. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** rename(), durable in both directories before it returns. */
export function renameDurably(from: string, to: string): void {
  renameSync(from, to);
  fsyncDir(dirname(to));
  if (dirname(from) !== dirname(to)) fsyncDir(dirname(from));
}
