// Where a lazy page server gets its pages: the standby's page store, or the pages of a CRIU
// image. Addresses are the image's (the process's addresses at dump / epoch time).
import { readSync } from 'node:fs';
import { PAGE_SIZE } from './protocol.js';

const PAGE = BigInt(PAGE_SIZE);

/**
 * The pages a lazy page server serves. `read` returns exactly nrPages * 4096 bytes: the pages
 * from `addr` on, zeros where it has nothing. `pid` is the process the daemon asks for (the
 * PID in the image: several processes restored together share one connection).
 * It may return a promise (a store on disk); requests are still answered in order.
 */
export interface LazyPageSource {
  read(addr: bigint, nrPages: number, pid: number): Buffer | Promise<Buffer>;
  /**
   * Optional: the same into `dst` (nrPages * 4096 bytes, at offset 0). When present the
   * server uses it with buffers it reuses, which spares the page faults of fresh memory.
   */
  readInto?(dst: Buffer, addr: bigint, nrPages: number, pid: number): void | Promise<void>;
}

/** A per-page lookup, as a page store offers it: the page's 4096 bytes, or null / undefined for zeros. */
export type PageLookupFn = (addr: bigint, pid: number) => Buffer | null | undefined;

/** A source over a per-page lookup (one call per page: fine for stores indexed by page). */
export function lookupPageSource(lookup: PageLookupFn): LazyPageSource {
  return {
    read(addr, nrPages, pid) {
      const out = Buffer.allocUnsafe(nrPages * PAGE_SIZE);
      for (let i = 0; i < nrPages; i++) {
        const p = lookup(addr + BigInt(i) * PAGE, pid);
        if (p) {
          if (p.length !== PAGE_SIZE) throw new RangeError(`page 0x${(addr + BigInt(i) * PAGE).toString(16)}: ${p.length} bytes, expected ${PAGE_SIZE}`);
          p.copy(out, i * PAGE_SIZE);
        } else {
          out.fill(0, i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
        }
      }
      return out;
    },
  };
}

/**
 * A run of consecutive pages and how to copy them out: `fill` writes `count` pages starting at
 * the run's page `first` into `dst` at `dstOffset`.
 */
export interface PageRun {
  vaddr: bigint;
  pages: number;
  fill(dst: Buffer, dstOffset: number, first: number, count: number): void;
}

/** A run held in memory: `data` is its pages, in order. */
export function bufferRun(vaddr: bigint, data: Buffer): PageRun {
  if (data.length % PAGE_SIZE !== 0) throw new RangeError(`run 0x${vaddr.toString(16)}: ${data.length} bytes is not whole pages`);
  return {
    vaddr,
    pages: data.length / PAGE_SIZE,
    fill(dst, dstOffset, first, count) {
      data.copy(dst, dstOffset, first * PAGE_SIZE, (first + count) * PAGE_SIZE);
    },
  };
}

/** A run read with pread from an open file (e.g. a CRIU pages-N.img) at byte `offset`. */
export function fileRun(fd: number, vaddr: bigint, pages: number, offset: number): PageRun {
  return {
    vaddr,
    pages,
    fill(dst, dstOffset, first, count) {
      let done = 0;
      const len = count * PAGE_SIZE;
      const at = offset + first * PAGE_SIZE;
      while (done < len) {
        const n = readSync(fd, dst, dstOffset + done, len - done, at + done);
        if (n === 0) throw new RangeError(`page file ends at ${at + done}, run 0x${vaddr.toString(16)} needs ${len} bytes from ${at}`);
        done += n;
      }
    },
  };
}

/**
 * A source over runs of pages, per process: binary search for the first run, then copies;
 * zeros between runs. Runs of one process must not overlap (they are sorted here). A request
 * for a PID it has no runs for throws (the connection drops, the daemon fails), unless it was
 * built from a plain array or with `anyPid` and one process.
 */
export class RunsPageSource implements LazyPageSource {
  readonly #byPid = new Map<number, PageRun[]>();
  /** Used for a pid that has no runs of its own (e.g. a single-process source). */
  readonly #fallback: PageRun[] | undefined;

  /** `runs` per PID; with `anyPid` the runs of a single process answer for any PID. */
  constructor(runs: Map<number, PageRun[]> | PageRun[], options: { anyPid?: boolean } = {}) {
    const sorted = (rs: PageRun[]): PageRun[] => {
      const s = [...rs].sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0));
      for (let i = 1; i < s.length; i++) {
        const prev = s[i - 1]!;
        if (prev.vaddr + BigInt(prev.pages) * PAGE > s[i]!.vaddr) throw new RangeError(`runs overlap at 0x${s[i]!.vaddr.toString(16)}`);
      }
      return s;
    };
    if (Array.isArray(runs)) {
      this.#fallback = sorted(runs);
    } else {
      for (const [pid, rs] of runs) this.#byPid.set(pid, sorted(rs));
      this.#fallback = options.anyPid && runs.size === 1 ? [...this.#byPid.values()][0] : undefined;
    }
  }

  read(addr: bigint, nrPages: number, pid: number): Buffer {
    const out = Buffer.allocUnsafe(nrPages * PAGE_SIZE);
    this.readInto(out, addr, nrPages, pid);
    return out;
  }

  readInto(out: Buffer, addr: bigint, nrPages: number, pid: number): void {
    if (out.length < nrPages * PAGE_SIZE) throw new RangeError(`buffer of ${out.length} bytes for ${nrPages} pages`);
    // A process we know nothing of is an error, not zeros: zeros would restore it silently wrong.
    const runs = this.#byPid.get(pid) ?? this.#fallback;
    if (!runs) throw new RangeError(`no pages for process ${pid}`);
    const end = addr + BigInt(nrPages) * PAGE;
    // First run that ends after addr.
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const r = runs[mid]!;
      if (r.vaddr + BigInt(r.pages) * PAGE <= addr) lo = mid + 1;
      else hi = mid;
    }
    let filled = 0; // bytes of `out` done
    for (let i = lo; i < runs.length && runs[i]!.vaddr < end; i++) {
      const r = runs[i]!;
      const from = r.vaddr > addr ? r.vaddr : addr;
      const rEnd = r.vaddr + BigInt(r.pages) * PAGE;
      const to = rEnd < end ? rEnd : end;
      const dstOff = Number(from - addr);
      if (dstOff > filled) out.fill(0, filled, dstOff);
      const count = Number((to - from) / PAGE);
      r.fill(out, dstOff, Number((from - r.vaddr) / PAGE), count);
      filled = dstOff + count * PAGE_SIZE;
    }
    if (filled < nrPages * PAGE_SIZE) out.fill(0, filled, nrPages * PAGE_SIZE);
  }
}
