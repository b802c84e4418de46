/** A failure already expressed as a status, thrown through the shard's handlers. */
import type { WireError } from '../src/errors.ts';

export class ShardError extends Error {
  constructor(readonly wire: WireError) {
    super(wire.message);
  }
}
