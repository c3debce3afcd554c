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

  /** Bytes of page memory allocated (chunks are kept once allocated). */
  get bytes(): number { return this.#chunks.length * CHUNK_PAGES * PAGE; }

  /** A slot holding a copy of `src[at, at + 4096)`. */
  put(src: Buffer, at: number): number {
    let slot = this.#free.pop();
    if (slot === undefined) {
      slot = this.#chunks.length * CHUNK_PAGES;
      this.#chunks.push(Buffer.allocUnsafeSlow(CHUNK_PAGES * PAGE));
      for (let s = slot + CHUNK_PAGES - 1; s > slot; s--) this.#free.push(s);
    }
    const c = this.#chunks[(slot / CHUNK_PAGES) | 0]!;
    src.copy(c, (slot % CHUNK_PAGES) * PAGE, at, at + PAGE);
    this.#used++;
    return slot;
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
