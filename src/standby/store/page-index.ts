// The store's page table: page number -> slot reference (or ZERO), for up to millions of
// pages.
//
// Not a Map keyed by page number: the page numbers of user addresses are above 2^31, so V8
// keeps them as heap numbers and hashes them. 262144 lookups took 110-150 ms here, and
// listing a 1 GiB store's pages in order (for a compaction or a promotion) blocked the
// standby's event loop for 150-200 ms, which delayed its failure detector by as much.
//
// Instead, two levels, like the MMU's: a Map from block number (a small integer, hashed
// cheaply) to a block of 512 entries (2 MiB of address space), NaN where there is no page.
//
//   page number k  ──►  block  floor(k / 512)  ──►  Float64Array(512)[k % 512]
//
// Iteration is in ascending page order (the blocks' numbers sorted first).
const BLOCK = 512;

interface Block { v: Float64Array; n: number }

export class PageIndex {
  #blocks = new Map<number, Block>();
  #size = 0;

  get size(): number { return this.#size; }

  get(k: number): number | undefined {
    const b = this.#blocks.get(Math.floor(k / BLOCK));
    if (!b) return undefined;
    const v = b.v[k % BLOCK]!;
    return v !== v ? undefined : v;
  }

  has(k: number): boolean { return this.get(k) !== undefined; }

  /** `v` is a slot reference or ZERO (never NaN). */
  set(k: number, v: number): this {
    const bn = Math.floor(k / BLOCK);
    let b = this.#blocks.get(bn);
    if (!b) {
      b = { v: new Float64Array(BLOCK).fill(Number.NaN), n: 0 };
      this.#blocks.set(bn, b);
    }
    const i = k % BLOCK;
    const old = b.v[i]!;
    if (old !== old) { b.n++; this.#size++; }
    b.v[i] = v;
    return this;
  }

  delete(k: number): boolean {
    const bn = Math.floor(k / BLOCK);
    const b = this.#blocks.get(bn);
    if (!b) return false;
    const i = k % BLOCK;
    const old = b.v[i]!;
    if (old !== old) return false;
    b.v[i] = Number.NaN;
    this.#size--;
    if (--b.n === 0) this.#blocks.delete(bn);
    return true;
  }

  #sortedBlocks(): number[] {
    return [...this.#blocks.keys()].sort((a, b) => a - b);
  }

  /** Calls `f` for every entry in ascending page order; `f` may delete the entry it is given. */
  forEach(f: (v: number, k: number) => void): void {
    for (const bn of this.#sortedBlocks()) {
      const b = this.#blocks.get(bn);
      if (!b) continue;
      const a = b.v;
      for (let i = 0; i < BLOCK; i++) {
        const v = a[i]!;
        if (v === v) f(v, bn * BLOCK + i);
      }
    }
  }

  /** Every page number and its value, ascending, as two arrays (one pass, no hashing per page). */
  sorted(): { keys: Float64Array; vals: Float64Array } {
    const keys = new Float64Array(this.#size);
    const vals = new Float64Array(this.#size);
    let j = 0;
    for (const bn of this.#sortedBlocks()) {
      const a = this.#blocks.get(bn)!.v;
      const first = bn * BLOCK;
      for (let i = 0; i < BLOCK; i++) {
        const v = a[i]!;
        if (v === v) { keys[j] = first + i; vals[j++] = v; }
      }
    }
    return { keys, vals };
  }
}
