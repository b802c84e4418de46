/**
 * The front end's side of the shared quota state: slot allocation, pages, and
 * the accessors for what the front end writes. Slots are handed out when a
 * tenant is loaded or created and reused after it is deleted; they are not
 * persisted, because the counters they hold do not outlive the process.
 */
import type { QuotaValues } from '../config.ts';
import {
  allocatePage,
  kBigFields,
  kConcurrencyLimit,
  kErrorsTotal,
  kInFlight,
  kInt32Fields,
  kRequestsTotal,
  kRowsReadTotal,
  kRowsWrittenTotal,
  kRpsLimit,
  kShardFields,
  kSlotsPerPage,
  kStoragePageBytes,
  kStoragePages,
  kUint16Fields,
  kWriteBpsLimit,
  viewPage,
  type QuotaPage,
  type QuotaPageBuffers,
} from './layout.ts';

/** A limit as stored: int32, -1 unlimited. Limits past int32 are as good as unlimited here. */
function toInt32Limit(value: number): number {
  return value < 0 || value > 0x7fffffff ? -1 : value;
}

export interface SlotRef {
  page: QuotaPage;
  /** Index within the page. */
  index: number;
  /** Global slot number: page * kSlotsPerPage + index. */
  slot: number;
}

export class QuotaTable {
  private readonly pages: QuotaPage[] = [];
  private readonly buffers: QuotaPageBuffers[] = [];
  private readonly free: number[] = [];
  private next = 0;

  /** Called with each new page, before any slot in it is used. */
  constructor(private readonly onNewPage: (pageIndex: number, buffers: QuotaPageBuffers) => void) {}

  get pageCount(): number {
    return this.pages.length;
  }

  /** Every page so far, for a worker that (re)starts. */
  allBuffers(): QuotaPageBuffers[] {
    return [...this.buffers];
  }

  allocate(): SlotRef {
    const slot = this.free.pop() ?? this.next++;
    const pageIndex = Math.floor(slot / kSlotsPerPage);
    while (this.pages.length <= pageIndex) {
      const buffers = allocatePage();
      this.buffers.push(buffers);
      this.pages.push(viewPage(buffers));
      this.onNewPage(this.pages.length - 1, buffers);
    }
    return this.ref(slot);
  }

  ref(slot: number): SlotRef {
    return { page: this.pages[Math.floor(slot / kSlotsPerPage)]!, index: slot % kSlotsPerPage, slot };
  }

  /** Zeroes the slot and returns it to the free list. */
  release(ref: SlotRef): void {
    const { int32, shard, uint16, big } = ref.page;
    for (let i = 0; i < kInt32Fields; i++) Atomics.store(int32, ref.index * kInt32Fields + i, 0);
    for (let i = 0; i < kShardFields; i++) Atomics.store(shard, ref.index * kShardFields + i, 0);
    for (let i = 0; i < kUint16Fields; i++) Atomics.store(uint16, ref.index * kUint16Fields + i, 0);
    for (let i = 0; i < kBigFields; i++) Atomics.store(big, ref.index * kBigFields + i, 0n);
    this.free.push(ref.slot);
  }

  setLimits(ref: SlotRef, quotas: QuotaValues): void {
    const base = ref.index * kInt32Fields;
    Atomics.store(ref.page.int32, base + kRpsLimit, toInt32Limit(quotas.requestsPerSecond));
    Atomics.store(ref.page.int32, base + kWriteBpsLimit, toInt32Limit(quotas.writeBytesPerSecond));
    Atomics.store(ref.page.int32, base + kConcurrencyLimit, toInt32Limit(quotas.concurrentRequests));
  }

  inFlight(ref: SlotRef): number {
    return Atomics.load(ref.page.int32, ref.index * kInt32Fields + kInFlight);
  }

  /** Returns the count before the increment. */
  enter(ref: SlotRef): number {
    return Atomics.add(ref.page.int32, ref.index * kInt32Fields + kInFlight, 1);
  }

  /** Returns the count after the decrement. */
  leave(ref: SlotRef): number {
    return Atomics.sub(ref.page.int32, ref.index * kInt32Fields + kInFlight, 1) - 1;
  }

  countRequest(ref: SlotRef, failed: boolean): void {
    const base = ref.index * kBigFields;
    Atomics.add(ref.page.big, base + kRequestsTotal, 1n);
    if (failed) Atomics.add(ref.page.big, base + kErrorsTotal, 1n);
  }

  storageBytes(ref: SlotRef): number {
    return Atomics.load(ref.page.int32, ref.index * kInt32Fields + kStoragePages) * kStoragePageBytes;
  }

  /** Every tenant's storage together. Released slots are zeroed, so all slots handed out so far can be summed. */
  totalStorageBytes(): number {
    let pages = 0;
    for (let slot = 0; slot < this.next; slot++) {
      const page = this.pages[Math.floor(slot / kSlotsPerPage)]!;
      pages += Atomics.load(page.int32, (slot % kSlotsPerPage) * kInt32Fields + kStoragePages);
    }
    return pages * kStoragePageBytes;
  }

  totals(ref: SlotRef): { requests: bigint; errors: bigint; rowsRead: bigint; rowsWritten: bigint } {
    const base = ref.index * kBigFields;
    return {
      requests: Atomics.load(ref.page.big, base + kRequestsTotal),
      errors: Atomics.load(ref.page.big, base + kErrorsTotal),
      rowsRead: Atomics.load(ref.page.big, base + kRowsReadTotal),
      rowsWritten: Atomics.load(ref.page.big, base + kRowsWrittenTotal),
    };
  }
}
