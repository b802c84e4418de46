/**
 * The catalog's side of migration passes, batched. A catalog commit holds
 * the main thread about 2 ms; one per tenant per pass is 200 s of stalls at
 * 100,000 tenants. Results wait here and are written a batch per
 * transaction, a batch per timer tick, so the calls served in between wait
 * for one short commit at most.
 *
 * Losing what waits here (a crash) loses nothing that matters: a tenant's
 * database keeps its own schema version (the shard skips the steps it
 * already has), so the next pass finds the tenant current and writes it
 * again; a lost failure is found again by a retry.
 */
import type { Catalog, MigrationFailureRecord } from '../catalog/catalog.ts';

/** Rows per transaction: about 2 ms of commit plus a few µs per row. */
const BATCH_ROWS = 500;
/** How long results gather before the first write. */
const FLUSH_DELAY_MS = 20;

export class MigrationWrites {
  /** Tenants whose version changed, with the version to write. */
  private readonly versions = new Map<string, number>();
  private failures: MigrationFailureRecord[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** Settles when nothing waits; null when nothing does. */
  private idle: { promise: Promise<void>; resolve: () => void } | null = null;

  constructor(
    private readonly catalog: Catalog,
    private readonly onError: (error: unknown) => void,
  ) {}

  version(tenantId: string, version: number): void {
    this.versions.set(tenantId, version);
    this.schedule();
  }

  failure(record: MigrationFailureRecord): void {
    // A tenant's version written after its failure clears failures up to it: keep the order.
    this.failures.push(record);
    this.schedule();
  }

  get waiting(): number {
    return this.versions.size + this.failures.length;
  }

  /** Writes everything that waits now (shutdown). */
  flushAll(): void {
    while (this.waiting > 0) this.writeBatch();
  }

  /** Settles once everything that waits now is written. */
  settled(): Promise<void> {
    if (this.waiting === 0) return Promise.resolve();
    if (!this.idle) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.idle = { promise, resolve };
    }
    return this.idle.promise;
  }

  private schedule(): void {
    if (this.timer === null) this.timer = setTimeout(this.tick, FLUSH_DELAY_MS);
  }

  private readonly tick = (): void => {
    this.timer = null;
    this.writeBatch();
    if (this.waiting > 0) this.timer = setTimeout(this.tick, 0);
  };

  private writeBatch(): void {
    const versions: { tenantId: string; version: number }[] = [];
    for (const [tenantId, version] of this.versions) {
      if (versions.length >= BATCH_ROWS) break;
      versions.push({ tenantId, version });
    }
    for (const { tenantId } of versions) this.versions.delete(tenantId);
    // Failures go after the versions (a version write clears the failures up
    // to it). One written after a repair is stale, and harmless: at start the
    // migrator keeps only failures at the tenant's next version.
    const room = BATCH_ROWS - versions.length;
    const failures = this.versions.size === 0 ? this.failures.splice(0, room) : [];
    try {
      this.catalog.writeMigrationResults(versions, failures);
    } catch (error) {
      this.onError(error);
    }
    if (this.waiting === 0 && this.idle) {
      const { resolve } = this.idle;
      this.idle = null;
      resolve();
    }
  }
}
