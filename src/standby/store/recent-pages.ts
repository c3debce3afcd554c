// The newest content of the pages written lately, in memory.
//
// Why: most pages of an epoch are deltas against the version the previous epochs sent, and
// the decoder reads each base from the store: one pread per page, 26 000 a second under
// redis SET at 100 ms epochs, about a tenth of the standby's CPU. The pages a process
// writes are mostly the ones it wrote just before, so a few megabytes hold nearly every base.
//
// What it holds is exactly what the store would answer (the open batch's version, else the
// committed one): the store puts every page a full batch adds and every page a checkpoint
// moves from memory to a segment, forgets pages that a delta batch writes (those are read
// from the store's memory until a checkpoint), become zero or leave the layout, and drops
// everything when a batch does not commit (aborted, failed, cancelled) or a full batch
// begins. Eviction: CLOCK (second chance) over fixed slots.
//
//   slots   [page 0 | page 1 | ... | page capacity-1]   (4096 bytes each)
//   index   page number -> slot (PageIndex)
//   owner   slot -> page number (NaN: free)
import { native } from '../../native/binding.js';
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

  /**
   * Copies the pages of `pns` it holds into `out`, page pns[i] to page outPages[i] of `out`
   * (4096-byte units), in one native call; returns the indexes i it does not hold.
   */
  getMany(pns: Float64Array, out: Buffer, outPages: Int32Array): number[] {
    const from = this.#scratch(pns.length, 0);
    const to = this.#scratch(pns.length, 1);
    const missed: number[] = [];
    let n = 0;
    for (let i = 0; i < pns.length; i++) {
      const s = this.#index.get(pns[i]!);
      if (s === undefined) { missed.push(i); continue; }
      this.#ref[s] = 1;
      from[n] = s;
      to[n++] = outPages[i]!;
    }
    if (n > 0) native().copyPages(this.#slots, from.subarray(0, n), out, to.subarray(0, n));
    this.hits += n;
    this.misses += missed.length;
    return missed;
  }

  /** Holds `data` (count pages, 4096 bytes each) as the newest versions of pages `pns`. */
  put(pns: Float64Array, data: Buffer): void {
    const from = this.#scratch(pns.length, 0);
    const to = this.#scratch(pns.length, 1);
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
      from[i] = i;
      to[i] = s;
    }
    // A page twice in `pns` goes to one slot, written in order: the later version stays.
    if (pns.length > 0) native().copyPages(data, from.subarray(0, pns.length), this.#slots, to.subarray(0, pns.length));
  }

  /** Index arrays for copyPages, reused (grown, never shrunk). */
  #scratch(n: number, which: 0 | 1): Int32Array {
    if (this.#idx[which].length < n) this.#idx[which] = new Int32Array(Math.max(n, 1024));
    return this.#idx[which];
  }
  #idx: [Int32Array, Int32Array] = [new Int32Array(0), new Int32Array(0)];

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
