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
/** Epochs one batch can coalesce (a batch may add a few captured around a new base). */
const EPOCH_SLOTS = 4096;

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
  /**
   * For several epochs: the pages kept, ascending, each as pageNo * EPOCH_SLOTS + index of
   * the newest epoch that holds it. Typed arrays rather than a Map: at 1 GiB a Map of page
   * numbers made the garbage collector stop the agent (and its heartbeats) for 0.5 s.
   */
  readonly #selected: Float64Array | undefined;

  /**
   * Coalesces `epochs` (oldest first) without holding the event loop for long: composite
   * keys are filled in slices with a turn of the loop between them, then sorted natively.
   */
  static async build(epochs: CapturedEpoch[]): Promise<Batch> {
    if (epochs.length <= 1) return new Batch(epochs);
    if (epochs.length > EPOCH_SLOTS) throw new Error(`cannot coalesce ${epochs.length} epochs at once (at most ${EPOCH_SLOTS})`);
    const SLICE = 65_536; // pages between two turns of the event loop
    const turn = () => new Promise<void>((r) => setImmediate(r));
    const total = epochs.reduce((n, e) => n + e.pages.length / PAGE_SIZE, 0);
    const keys = new Float64Array(total);
    let k = 0;
    for (let ei = 0; ei < epochs.length; ei++) {
      const r = epochs[ei]!.ranges;
      for (let i = 0; i < r.length; i += 2) {
        const first = Number(r[i]!) / PAGE_SIZE;
        const n = Number(r[i + 1]!);
        for (let p = 0; p < n; p++) {
          keys[k++] = (first + p) * EPOCH_SLOTS + ei;
          if (k % SLICE === 0) await turn();
        }
      }
    }
    await turn();
    keys.sort(); // numeric and native; a page's versions end up together, the newest last
    await turn();
    // Keep the last key of each page (its newest epoch), compacting in place.
    let o = 0;
    for (let i = 0; i < keys.length; i++) {
      const pn = Math.floor(keys[i]! / EPOCH_SLOTS);
      if (i + 1 < keys.length && Math.floor(keys[i + 1]! / EPOCH_SLOTS) === pn) continue;
      keys[o++] = keys[i]!;
    }
    return new Batch(epochs, keys.subarray(0, o));
  }

  /** Use Batch.build for more than one epoch: coalescing here would block. */
  constructor(epochs: CapturedEpoch[], selected?: Float64Array) {
    if (epochs.length === 0) throw new Error('empty batch');
    this.#epochs = epochs;
    const newest = epochs[epochs.length - 1]!;
    this.epoch = newest.seq;
    this.firstEpoch = epochs[0]!.seq;
    this.capturedAt = newest.capturedAt;
    this.state = newest.state;
    this.capturedPages = epochs.reduce((n, e) => n + e.pages.length / PAGE_SIZE, 0);
    if (epochs.length === 1) {
      this.#selected = undefined;
      this.pageCount = this.capturedPages;
      return;
    }
    if (!selected) throw new Error('a batch of several epochs is made by Batch.build');
    this.#selected = selected;
    this.pageCount = selected.length;
  }

  /**
   * The batch's pages in chunks of at most `maxPages`, each as addresses and their
   * content copied into one contiguous buffer (ready to compress). Ascending addresses.
   * The buffer is reused for the next chunk: consume a chunk before asking for the next
   * (a fresh buffer per chunk costs a page fault per page, ~0.5 s per GiB).
   */
  *chunks(maxPages: number): Generator<{ addrs: BigUint64Array; pages: Buffer }> {
    if (!this.#selected) {
      const e = this.#epochs[0]!;
      yield* chunkRanges(e.ranges, e.pages, maxPages);
      return;
    }
    const sel = this.#selected;
    // Where a page lies in its epoch's buffer: pages come in ascending order, so one
    // cursor per epoch walks its ranges forward.
    const cursors = this.#epochs.map(() => ({ range: 0, before: 0 }));
    const offsetOf = (ei: number, pn: number): number => {
      const r = this.#epochs[ei]!.ranges;
      const c = cursors[ei]!;
      for (;;) {
        const first = Number(r[c.range]!) / PAGE_SIZE;
        const n = Number(r[c.range + 1]!);
        if (pn < first + n) return (c.before + pn - first) * PAGE_SIZE;
        c.before += n;
        c.range += 2;
      }
    };
    const reused = Buffer.allocUnsafe(Math.min(maxPages, sel.length) * PAGE_SIZE);
    for (let k = 0; k < sel.length; k += maxPages) {
      const n = Math.min(maxPages, sel.length - k);
      const w = new AddressWriter(n);
      const pages = reused.subarray(0, n * PAGE_SIZE);
      for (let i = 0; i < n; i++) {
        const key = sel[k + i]!;
        const pn = Math.floor(key / EPOCH_SLOTS);
        const ei = key - pn * EPOCH_SLOTS;
        const off = offsetOf(ei, pn);
        w.set(i, pn * PAGE_SIZE);
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
