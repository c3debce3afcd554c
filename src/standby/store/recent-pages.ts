// The newest content of the pages written lately, in memory.
//
// Why: most pages of an epoch are deltas against the version the previous epochs sent, and
// the decoder reads each base from the store: one pread per page, 26 000 a second under
// redis SET at 100 ms epochs, about a tenth of the standby's CPU. The pages a process
// writes are mostly the ones it wrote just before, so a few megabytes hold nearly every base.
//
// What it holds is exactly what the store would answer (the open batch's version, else the
// committed one): the store puts every page a batch adds, forgets pages that become zero or
// leave the layout, and drops everything when a batch does not commit (aborted, failed,
// cancelled) or a full batch begins. Eviction: CLOCK (second chance) over fixed slots.
//
//   slots   [page 0 | page 1 | ... | page capacity-1]   (4096 bytes each)
//   index   page number -> slot (PageIndex)
//   owner   slot -> page number (NaN: free)
import { PageIndex } from './page-index.js';

const PAGE = 4096;

export class RecentPages {
  readonly capacity: number;
  readonly #slots: Buffer;
  readonly #owner: Float64Array;
  readonly #ref: Uint8Array;
  #index = new PageIndex();
  #hand = 0;
  hits = 0;
  misses = 0;

  constructor(capacityPages: number) {
    this.capacity = capacityPages;
    this.#slots = Buffer.allocUnsafeSlow(capacityPages * PAGE);
    this.#owner = new Float64Array(capacityPages).fill(Number.NaN);
    this.#ref = new Uint8Array(capacityPages);
  }

  get size(): number { return this.#index.size; }

  /** Copies page `pn` into `out` at `at`: true; false if it is not held. */
  get(pn: number, out: Buffer, at: number): boolean {
    const s = this.#index.get(pn);
    if (s === undefined) { this.misses++; return false; }
    this.#ref[s] = 1;
    this.#slots.copy(out, at, s * PAGE, s * PAGE + PAGE);
    this.hits++;
    return true;
  }

  /** Holds `data` (count pages, 4096 bytes each) as the newest versions of pages `pns`. */
  put(pns: Float64Array, data: Buffer): void {
    for (let i = 0; i < pns.length; i++) {
      const pn = pns[i]!;
      let s = this.#index.get(pn);
      if (s === undefined) {
        s = this.#victim();
        const old = this.#owner[s]!;
        if (old === old) this.#index.delete(old);
        this.#owner[s] = pn;
        this.#index.set(pn, s);
      }
      this.#ref[s] = 1;
      data.copy(this.#slots, s * PAGE, i * PAGE, i * PAGE + PAGE);
    }
  }

  /** Forgets page `pn` (it became zero, or left the layout). */
  delete(pn: number): void {
    const s = this.#index.get(pn);
    if (s === undefined) return;
    this.#index.delete(pn);
    this.#owner[s] = Number.NaN;
    this.#ref[s] = 0;
  }

  clear(): void {
    if (this.#index.size === 0) return;
    this.#index = new PageIndex();
    this.#owner.fill(Number.NaN);
    this.#ref.fill(0);
  }

  #victim(): number {
    for (;;) {
      const s = this.#hand;
      this.#hand = (s + 1) % this.capacity;
      const o = this.#owner[s]!;
      if (o !== o) return s; // free
      if (this.#ref[s] === 0) return s;
      this.#ref[s] = 0;
    }
  }
}
