// Page contents held in memory: the pages the journal has committed since the last
// checkpoint (and the open batch's), until a checkpoint writes them to a segment.
//
//   chunk 0: [slot 0 | slot 1 | ... | slot 511]     2 MiB each, allocated as needed
//   chunk 1: [slot 512 | ...]
//   free:    slots to reuse (a stack)
//
// A slot is freed when its page is superseded, dropped, or written out by a checkpoint.
// While something reads slots in the background (a checkpoint or compaction writing them,
// pages() iterating), the arena is pinned: freed slots wait in `pending` and are reused
// only once nothing pins it, so a reader never sees a slot change under it.
//
// Pages go in and out in bulk (putMany, copyOut): one native copy per chunk touched. At
// 25 ms epochs, copying them one Buffer.copy() at a time was a third of the standby's CPU.
import { native } from '../../native/binding.js';

const PAGE = 4096;
const CHUNK_PAGES = 512;

export class PageArena {
  readonly #chunks: Buffer[] = [];
  #free: number[] = [];
  #pending: number[] = [];
  #pins = 0;
  #used = 0;

  /** Slots in use (pages held), pending ones included. */
  get used(): number { return this.#used; }

  /**
   * Slots holding copies of the `count` pages of `data` (4096 bytes each, in order), in
   * `slots` (reused, grown when too small).
   */
  putMany(data: Buffer, count: number): Int32Array {
    const slots = this.#grow(0, count);
    for (let i = 0; i < count; i++) {
      let slot = this.#free.pop();
      if (slot === undefined) {
        slot = this.#chunks.length * CHUNK_PAGES;
        this.#chunks.push(Buffer.allocUnsafeSlow(CHUNK_PAGES * PAGE));
        for (let s = slot + CHUNK_PAGES - 1; s > slot; s--) this.#free.push(s);
      }
      slots[i] = slot;
    }
    this.#used += count;
    this.#copy(slots, count, data, null, true);
    return slots;
  }

  /** Copies the pages in slots[i] to page outPages[i] of `out` (4096-byte units), i < count. */
  copyOut(slots: Int32Array, count: number, out: Buffer, outPages: Int32Array): void {
    this.#copy(slots, count, out, outPages, false);
  }

  /** One copyPages per chunk: `other` page i (or outPages[i]) to or from slots[i]. */
  #copy(slots: Int32Array, count: number, other: Buffer, outPages: Int32Array | null, into: boolean): void {
    if (count === 0) return;
    const nChunks = this.#chunks.length;
    const starts = new Int32Array(nChunks + 1);
    for (let i = 0; i < count; i++) starts[((slots[i]! / CHUNK_PAGES) | 0) + 1]!++;
    for (let c = 0; c < nChunks; c++) starts[c + 1]! += starts[c]!;
    const inChunk = this.#grow(1, count);
    const otherPage = this.#grow(2, count);
    const fill = starts.slice(0, nChunks);
    for (let i = 0; i < count; i++) {
      const slot = slots[i]!;
      const c = (slot / CHUNK_PAGES) | 0;
      const k = fill[c]!++;
      inChunk[k] = slot % CHUNK_PAGES;
      otherPage[k] = outPages ? outPages[i]! : i;
    }
    const n = native();
    for (let c = 0; c < nChunks; c++) {
      const a = starts[c]!;
      const b = starts[c + 1]!;
      if (a === b) continue;
      if (into) n.copyPages(other, otherPage.subarray(a, b), this.#chunks[c]!, inChunk.subarray(a, b));
      else n.copyPages(this.#chunks[c]!, inChunk.subarray(a, b), other, otherPage.subarray(a, b));
    }
  }

  readonly #scratch: Int32Array[] = [new Int32Array(0), new Int32Array(0), new Int32Array(0)];
  #grow(which: number, n: number): Int32Array {
    if (this.#scratch[which]!.length < n) this.#scratch[which] = new Int32Array(Math.max(n, 1024));
    return this.#scratch[which]!;
  }

  /** The page in `slot` (a view: valid until the slot is freed and reused). */
  view(slot: number): Buffer {
    const c = this.#chunks[(slot / CHUNK_PAGES) | 0]!;
    const off = (slot % CHUNK_PAGES) * PAGE;
    return c.subarray(off, off + PAGE);
  }

  readInto(slot: number, out: Buffer, at: number): void {
    const c = this.#chunks[(slot / CHUNK_PAGES) | 0]!;
    const off = (slot % CHUNK_PAGES) * PAGE;
    c.copy(out, at, off, off + PAGE);
  }

  free(slot: number): void {
    this.#used--;
    (this.#pins > 0 ? this.#pending : this.#free).push(slot);
  }

  /** Keeps freed slots from being reused until the returned function is called. */
  pin(): () => void {
    this.#pins++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.#pins === 0 && this.#pending.length > 0) {
        for (const s of this.#pending) this.#free.push(s);
        this.#pending = [];
      }
    };
  }
}
