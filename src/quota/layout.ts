/**
 * The shared-memory layout of per-tenant quota and usage state.
 *
 * Every tenant has a slot. Slots live in pages of kSlotsPerPage; a page is
 * four SharedArrayBuffers (one per element width, the shard-time record
 * apart) holding a fixed record per slot. Adding tenants adds pages, it never moves a slot, so no thread ever
 * has to stop or re-read a buffer it already holds: the front end posts each
 * new page to every worker before the first call that uses it.
 *
 * Who touches what (every access goes through Atomics, in the functions at
 * the bottom of this file and in quotaTable.ts/admission.ts):
 *
 *   field                 writer                      reader
 *   ---------------------------------------------------------------------
 *   limits (rps, wbps,    front end (create/update)   front end (admission)
 *     concurrency)
 *   window epoch, rate    front end (admission)       front end (admission, usage)
 *     buckets
 *   in flight             front end (admit/release)   front end (admission, usage,
 *                                                       suspend/delete waits)
 *   storage pages         owning shard (after writes) front end (usage, refusals)
 *   shard time pending    owning shard (adds each     front end (takes it with
 *                           call's µs)                  Atomics.exchange at admission)
 *   shard time debt,      front end (admission)       front end (admission, usage)
 *     refill tick
 *   rows read/written     owning shard                front end (usage)
 *   requests/errors       front end                   front end (usage)
 *
 * Rate counters have a single writer (the front end's thread), so Atomics
 * there buys visibility, not mutual exclusion; the worker-written fields are
 * plain Atomics.store/add with no read-modify-write race across threads.
 */

export const kSlotsPerPage = 4096;

// ---- Int32 record: limits, window state, in flight, storage ----
export const kRpsLimit = 0;
export const kWriteBpsLimit = 1;
export const kConcurrencyLimit = 2;
/** The 100 ms epoch (Date.now() / 100, truncated to int32) of the newest bucket. */
export const kWindowEpoch = 3;
export const kInFlight = 4;
/** Database size in pages of kStoragePageBytes (a tenant may reach 8 TiB). */
export const kStoragePages = 5;
/** Ten buckets of write bytes, indexed by epoch % kBuckets. */
export const kWriteBuckets = 6;
export const kBuckets = 10;
export const kBucketMs = 100;
/** 16 fields: 64 bytes, one cache line per tenant for everything admission reads. */
export const kInt32Fields = kWriteBuckets + kBuckets;

// ---- Int32 shard-time record (shard_ms_per_second), apart so the record above stays 64 bytes ----
/** Microseconds of shard time the tenant's calls took that admission has not charged yet. */
export const kShardPendingUs = 0;
/**
 * shard_ms_per_second as a bucket that refills at the limit and holds one
 * second's worth: how far it is drawn down, in µs (0 = full); and the tick
 * (kShardTickMs units since the Admitter's base) it was last refilled at.
 */
export const kShardDebtUs = 1;
export const kShardRefillTick = 2;
export const kShardFields = 3;
export const kShardTickMs = 10;

// ---- Uint16 record: request counts per 100 ms bucket (≤ 65,535 per bucket per tenant) ----
export const kRequestBuckets = 0;
export const kUint16Fields = kBuckets;
export const kMaxBucketCount = 0xffff;

// ---- BigInt64 record: totals since start ----
export const kRequestsTotal = 0;
export const kErrorsTotal = 1;
export const kRowsReadTotal = 2;
export const kRowsWrittenTotal = 3;
export const kBigFields = 4;

export const kStoragePageBytes = 4096;

/** Bytes of shared state per tenant: the figure the quotas issue budgets (≤ 128). */
export const kBytesPerSlot =
  kInt32Fields * Int32Array.BYTES_PER_ELEMENT +
  kShardFields * Int32Array.BYTES_PER_ELEMENT +
  kUint16Fields * Uint16Array.BYTES_PER_ELEMENT +
  kBigFields * BigInt64Array.BYTES_PER_ELEMENT;

/** Limits are int32 in shared memory; larger values mean "no practical limit". */
export const kUnlimited = -1;

export interface QuotaPageBuffers {
  int32: SharedArrayBuffer;
  shard: SharedArrayBuffer;
  uint16: SharedArrayBuffer;
  big: SharedArrayBuffer;
}

/** Views over one page; created once per page per thread. */
export interface QuotaPage {
  int32: Int32Array;
  shard: Int32Array;
  uint16: Uint16Array;
  big: BigInt64Array;
}

export function allocatePage(): QuotaPageBuffers {
  return {
    int32: new SharedArrayBuffer(kSlotsPerPage * kInt32Fields * Int32Array.BYTES_PER_ELEMENT),
    shard: new SharedArrayBuffer(kSlotsPerPage * kShardFields * Int32Array.BYTES_PER_ELEMENT),
    uint16: new SharedArrayBuffer(kSlotsPerPage * kUint16Fields * Uint16Array.BYTES_PER_ELEMENT),
    big: new SharedArrayBuffer(kSlotsPerPage * kBigFields * BigInt64Array.BYTES_PER_ELEMENT),
  };
}

export function viewPage(buffers: QuotaPageBuffers): QuotaPage {
  return {
    int32: new Int32Array(buffers.int32),
    shard: new Int32Array(buffers.shard),
    uint16: new Uint16Array(buffers.uint16),
    big: new BigInt64Array(buffers.big),
  };
}

// ---- accessors used by the shard workers ----

export function storeStoragePages(page: QuotaPage, index: number, pages: number): void {
  Atomics.store(page.int32, index * kInt32Fields + kStoragePages, pages);
}

/** Adds a call's time on the shard (µs; wraps past int32, which admission takes every call anyway). */
export function addShardTime(page: QuotaPage, index: number, micros: number): void {
  if (micros > 0) Atomics.add(page.shard, index * kShardFields + kShardPendingUs, Math.min(0x7fffffff, Math.round(micros)));
}

export function addRows(page: QuotaPage, index: number, read: number, written: number): void {
  const base = index * kBigFields;
  if (read > 0) Atomics.add(page.big, base + kRowsReadTotal, BigInt(read));
  if (written > 0) Atomics.add(page.big, base + kRowsWrittenTotal, BigInt(written));
}
