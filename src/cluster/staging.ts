/**
 * Copies that phase 1 of two-phase moves left on this node (the target),
 * checked and waiting for their phase 2. One per tenant; a copy whose phase 2
 * never comes (its source died, or gave up) is removed after a while. The
 * files live in `<data-dir>/tmp/`, which a restart empties.
 */
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';

/** How long a staged copy waits for its phase 2. */
const STAGE_TTL_MS = 10 * 60_000;

interface StagedCopy {
  tenantId: string;
  file: string;
  timer: NodeJS.Timeout;
}

export class StagedCopies {
  private readonly copies = new Map<string, StagedCopy>();

  constructor(private readonly ttlMs = STAGE_TTL_MS) {}

  /** Keeps `file` for `tenantId`'s phase 2; returns its id. An older copy of the tenant goes. */
  keep(tenantId: string, file: string): string {
    for (const [id, copy] of this.copies) if (copy.tenantId === tenantId) this.drop(id);
    const id = randomUUID();
    const timer = setTimeout(() => this.drop(id), this.ttlMs);
    timer.unref();
    this.copies.set(id, { tenantId, file, timer });
    return id;
  }

  /** The staged file, now the caller's; null when this node holds no copy `id` of `tenantId`. */
  take(id: string, tenantId: string): string | null {
    const copy = this.copies.get(id);
    if (copy?.tenantId !== tenantId) return null;
    clearTimeout(copy.timer);
    this.copies.delete(id);
    return copy.file;
  }

  get size(): number {
    return this.copies.size;
  }

  private drop(id: string): void {
    const copy = this.copies.get(id);
    if (!copy) return;
    clearTimeout(copy.timer);
    this.copies.delete(id);
    rm(copy.file, { force: true }).catch(() => undefined);
  }

  stop(): void {
    for (const id of [...this.copies.keys()]) this.drop(id);
  }
}
