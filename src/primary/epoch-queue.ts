// The queue between capture and the network. Captured epochs wait here until the sender
// takes them; the sender always takes everything pending at once, coalesced into one
// batch: a page written in several pending epochs travels once, in its newest version,
// and the batch carries the newest epoch's registers and layout. So when the link is
// slower than the target writes, batches grow (the effective epoch lengthens) instead
// of the backlog; when it catches up, each batch is one epoch again.
//
// Memory stays bounded: the epoch loop asks `full` before each capture and skips the
// capture while the pending bytes are at or above the high-water mark. Skipping costs
// nothing: the kernel keeps accumulating the dirty set, and the next capture collects
// it, coalesced at the source. The bound is high-water mark + one capture + the batch
// being sent.
import type { EpochState } from '../protocol/messages.js';

export const PAGE_SIZE = 4096;
/** Pending epochs at most (a batch indexes its epochs in 12 bits; see Batch). */
export const MAX_PENDING_EPOCHS = 1024;

/** One epoch as the epoch loop captured it. */
export interface CapturedEpoch {
  /** The tracker's epoch number (consecutive, from 1). */
  seq: number;
  /** Wall-clock time of the capture (ms). */
  capturedAt: number;
  /** Pairs [start, npages], sorted and merged; `pages` holds their content in order. */
  ranges: BigUint64Array;
  pages: Buffer;
  state: EpochState;
  /** Returns `pages` to the native pool; called once the batch is encoded. */
  release(): void;
}

/** Pending epochs coalesced for one send. */
export class Batch {
  /** Newest epoch in the batch: what the standby has once it commits. */
  readonly epoch: number;
  /** Oldest epoch in the batch. */
  readonly firstEpoch: number;
  readonly capturedAt: number;
  readonly state: EpochState;
  /** Distinct pages, after coalescing. */
  readonly pageCount: number;
  /** Pages the epochs held before coalescing (pageCount <= this). */
  readonly capturedPages: number;
  readonly #epochs: CapturedEpoch[];
  /** Page number -> [epoch index, byte offset in its `pages`]; undefined for one epoch. */
  readonly #index: Map<number, number> | undefined;
  /** The index's page numbers, ascending. */
  readonly #keys: Float64Array | undefined;

  /**
   * Coalesces `epochs` (oldest first) without holding the event loop: at 1 GiB written
   * per epoch the index takes hundreds of milliseconds to build, and heartbeats sent late
   * make the standby's failure detector suspect a live primary. Work is cut into slices
   * with a turn of the event loop between them.
   */
  static async build(epochs: CapturedEpoch[]): Promise<Batch> {
    if (epochs.length <= 1) return new Batch(epochs);
    const SLICE = 32_768; // pages between two turns of the event loop (~5 ms)
    const turn = () => new Promise<void>((r) => setImmediate(r));
    const index = new Map<number, number>();
    let done = 0;
    for (let ei = 0; ei < epochs.length; ei++) {
      const e = epochs[ei]!;
      let off = 0;
      for (let i = 0; i < e.ranges.length; i += 2) {
        const first = Number(e.ranges[i]!) / PAGE_SIZE;
        const n = Number(e.ranges[i + 1]!);
        for (let p = 0; p < n; p++, off += PAGE_SIZE) {
          index.set(first + p, off + ei);
          if (++done % SLICE === 0) await turn();
        }
      }
    }
    const keys = new Float64Array(index.size);
    let k = 0;
    for (const pn of index.keys()) keys[k++] = pn;
    await turn();
    keys.sort(); // numeric, native: no comparator
    return new Batch(epochs, index, keys);
  }

  /** Use Batch.build for more than one epoch: building the index here would block. */
  constructor(epochs: CapturedEpoch[], index?: Map<number, number>, keys?: Float64Array) {
    if (epochs.length === 0) throw new Error('empty batch');
    this.#epochs = epochs;
    const newest = epochs[epochs.length - 1]!;
    this.epoch = newest.seq;
    this.firstEpoch = epochs[0]!.seq;
    this.capturedAt = newest.capturedAt;
    this.state = newest.state;
    this.capturedPages = epochs.reduce((n, e) => n + e.pages.length / PAGE_SIZE, 0);
    if (epochs.length === 1) {
      this.#index = undefined;
      this.pageCount = this.capturedPages;
      return;
    }
    // Later epochs overwrite earlier ones. Offsets are page-aligned, so the epoch index
    // fits in the low 12 bits of the value.
    if (!index || !keys) throw new Error('a batch of several epochs is made by Batch.build');
    this.#index = index;
    this.#keys = keys;
    this.pageCount = index.size;
  }

  /**
   * The batch's pages in chunks of at most `maxPages`, each as addresses and their
   * content copied into one contiguous buffer (ready to compress). Ascending addresses.
   * The buffer is reused for the next chunk: consume a chunk before asking for the next
   * (a fresh buffer per chunk costs a page fault per page, ~0.5 s per GiB).
   */
  *chunks(maxPages: number): Generator<{ addrs: BigUint64Array; pages: Buffer }> {
    if (!this.#index) {
      const e = this.#epochs[0]!;
      yield* chunkRanges(e.ranges, e.pages, maxPages);
      return;
    }
    const keys = this.#keys!;
    const reused = Buffer.allocUnsafe(Math.min(maxPages, keys.length) * PAGE_SIZE);
    for (let k = 0; k < keys.length; k += maxPages) {
      const n = Math.min(maxPages, keys.length - k);
      const w = new AddressWriter(n);
      const pages = reused.subarray(0, n * PAGE_SIZE);
      for (let i = 0; i < n; i++) {
        const pageNo = keys[k + i]!;
        const v = this.#index.get(pageNo)!;
        const ei = v % PAGE_SIZE;
        const off = v - ei;
        w.set(i, pageNo * PAGE_SIZE);
        this.#epochs[ei]!.pages.copy(pages, i * PAGE_SIZE, off, off + PAGE_SIZE);
      }
      yield { addrs: w.out, pages };
    }
  }

  /** Gives every epoch's page buffer back. Call once the chunks are encoded. */
  release(): void {
    for (const e of this.#epochs) e.release();
  }
}

/**
 * Writes page addresses into a BigUint64Array through its 32-bit halves: addresses are
 * below 2^47, exact as doubles, and this avoids a BigInt per page on the hot path.
 */
class AddressWriter {
  readonly out: BigUint64Array;
  readonly #words: Uint32Array;
  constructor(n: number) {
    this.out = new BigUint64Array(n);
    this.#words = new Uint32Array(this.out.buffer);
  }
  set(i: number, addr: number): void {
    this.#words[2 * i] = addr % 0x1_0000_0000;
    this.#words[2 * i + 1] = Math.floor(addr / 0x1_0000_0000);
  }
}

/** Splits pages laid out by ranges into chunks of at most `maxPages`. */
export function* chunkRanges(ranges: BigUint64Array, pages: Buffer, maxPages: number): Generator<{ addrs: BigUint64Array; pages: Buffer }> {
  let w = new AddressWriter(maxPages);
  let n = 0;
  let start = 0;
  for (let i = 0; i < ranges.length; i += 2) {
    const base = Number(ranges[i]!);
    const count = Number(ranges[i + 1]!);
    for (let p = 0; p < count; p++) {
      w.set(n++, base + p * PAGE_SIZE);
      if (n === maxPages) {
        yield { addrs: w.out, pages: pages.subarray(start * PAGE_SIZE, (start + n) * PAGE_SIZE) };
        start += n;
        n = 0;
        w = new AddressWriter(maxPages);
      }
    }
  }
  if (n > 0) yield { addrs: w.out.subarray(0, n), pages: pages.subarray(start * PAGE_SIZE, (start + n) * PAGE_SIZE) };
}

export interface QueueStats {
  pendingEpochs: number;
  pendingBytes: number;
  highWaterBytes: number;
  /** Captures skipped because the queue was at its high-water mark. */
  skippedCaptures: number;
  /** Epochs merged into a later one (sent as part of a larger batch). */
  coalescedEpochs: number;
  /** Page copies saved by coalescing. */
  coalescedPages: number;
}

export class EpochQueue {
  readonly highWaterBytes: number;
  #pending: CapturedEpoch[] = [];
  #pendingBytes = 0;
  #skipped = 0;
  #coalescedEpochs = 0;
  #coalescedPages = 0;
  #waiters: Array<() => void> = [];

  constructor(options: { highWaterBytes: number }) {
    this.highWaterBytes = options.highWaterBytes;
  }

  /** True while a capture should be skipped (pending bytes at or over the mark). */
  get full(): boolean { return this.#pendingBytes >= this.highWaterBytes || this.#pending.length >= MAX_PENDING_EPOCHS; }
  get pendingBytes(): number { return this.#pendingBytes; }
  get pendingEpochs(): number { return this.#pending.length; }
  /** Seq of the newest pending epoch, or 0. */
  get newestSeq(): number { return this.#pending.at(-1)?.seq ?? 0; }

  noteSkipped(): void { this.#skipped++; }

  push(e: CapturedEpoch): void {
    this.#pending.push(e);
    this.#pendingBytes += e.pages.length;
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Everything pending, coalesced; null when nothing is pending. */
  async take(): Promise<Batch | null> {
    const epochs = this.takeEpochs();
    return epochs.length ? this.coalesce(epochs) : null;
  }

  /** Everything pending, as it is (the caller may add epochs before coalescing). */
  takeEpochs(): CapturedEpoch[] {
    const out = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    return out;
  }

  /** One batch of `epochs` (oldest first), counted in the coalescing statistics. */
  async coalesce(epochs: CapturedEpoch[]): Promise<Batch> {
    const batch = await Batch.build(epochs);
    this.#coalescedEpochs += epochs.length - 1;
    this.#coalescedPages += batch.capturedPages - batch.pageCount;
    return batch;
  }

  /** Resolves when an epoch is pending (at once if one is), or when `signal` aborts. */
  async wait(signal?: AbortSignal): Promise<void> {
    if (this.#pending.length > 0 || signal?.aborted) return;
    await new Promise<void>((resolve) => {
      const done = () => { signal?.removeEventListener('abort', done); resolve(); };
      this.#waiters.push(done);
      signal?.addEventListener('abort', done, { once: true });
    });
  }

  /** Drops everything pending (a full resynchronisation makes it useless). */
  clear(): void {
    for (const e of this.#pending) e.release();
    this.#pending = [];
    this.#pendingBytes = 0;
  }

  stats(): QueueStats {
    return {
      pendingEpochs: this.#pending.length, pendingBytes: this.#pendingBytes, highWaterBytes: this.highWaterBytes,
      skippedCaptures: this.#skipped, coalescedEpochs: this.#coalescedEpochs, coalescedPages: this.#coalescedPages,
    };
  }
}
