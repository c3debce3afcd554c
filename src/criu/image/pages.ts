// pagemap-PID.img + pages-<id>.img, rewritten in address order from the page source and the
// base's pages.
//
//   pagemap-PID.img  [hdr][PagemapHead {1 pages_id}][PagemapEntry {1 vaddr, 2 compat_nr_pages = 0,
//                    4 flags, 5 nr_pages}] ...   flags: PARENT 1, LAZY 2, PRESENT 4
//   pages-<id>.img   the data of the PRESENT entries, in order, 4096 bytes a page
//
// For every page of every planned VMA, in address order, the content is:
//   1. the page source's, when it has the page and the VMA takes it (private, not special):
//      a Buffer is written out; null (a zero page) is left out of an anonymous mapping (CRIU
//      maps fresh zeroed memory there) but written as zeros in a file-backed one (a hole
//      would read the file). With omitZeroPages, a Buffer of zeros is treated like null
//      (one memcmp per page; zero pages are common: stacks and heaps freshly touched);
//   2. else the base's, when the base has the page and it still belongs to this VMA
//      (PlannedVma.baseRanges);
//   3. else nothing: zero for anonymous memory, the file's content for a file mapping.
// Entries get PRESENT, plus LAZY where CRIU itself would set it (so `--lazy-pages` works).
// Pages of the source outside every VMA are counted and ignored (or refused, `strict`); so
// are pages inside shared or special mappings (their content is the file's or CRIU's).
import { readSync, writevSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { ImageBuildError } from './errors.js';
import { Message, varintField } from './protobuf.js';
import type { PlannedVma } from './mm.js';

export const PAGE_SIZE = 4096;
const PAGE = 4096n;
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

/** One page of the source: `data` is its 4096 bytes, or null for a page of zeros. */
export interface PageEntry { addr: bigint; data: Buffer | null }

/** A page's content by address: a Buffer, null (zeros), or undefined (not in the source). */
export type PageLookup = (addr: bigint) => Buffer | null | undefined;

/**
 * The replicated pages: either a lookup by address (asked about every page of every private
 * VMA: simple, but it costs a call per page of the layout, PROT_NONE reservations included),
 * or the pages themselves in strictly ascending address order (sync or async iterable).
 */
export type PageSource = PageLookup | Iterable<PageEntry> | AsyncIterable<PageEntry>;

export interface BaseRun {
  vaddr: bigint;
  pages: number;
  /** Byte offset of its data in the base's pages file (PRESENT runs only). */
  offset: number;
}

export interface BasePagemap {
  pagesId: bigint;
  /** The head entry as it is. */
  head: Buffer;
  /** PRESENT runs, in address order. */
  runs: BaseRun[];
}

export function parseBasePagemap(entries: readonly Buffer[], file: string): BasePagemap {
  if (entries.length === 0) throw new ImageBuildError('BASE_INVALID', `${file}: no pagemap head`);
  const head = Message.parse(entries[0]!);
  const pagesId = head.requireUint(1, `${file}: head`);
  const runs: BaseRun[] = [];
  let offset = 0;
  let prevEnd = 0n;
  for (let i = 1; i < entries.length; i++) {
    const m = Message.parse(entries[i]!);
    const vaddr = m.requireUint(1, `${file}: entry ${i}`);
    const nr = m.getUint(5) ?? m.requireUint(2, `${file}: entry ${i}`);
    const flags = m.getUint(4);
    const inParent = m.getUint(3) === 1n;
    if (inParent || (flags !== undefined && (Number(flags) & PE_PARENT) !== 0))
      throw new ImageBuildError('BASE_INVALID', `${file}: pages in a parent image (incremental dump); the base must be a full dump`);
    // Old images have no flags: every entry is present.
    const present = flags === undefined || (Number(flags) & PE_PRESENT) !== 0;
    if (!present) continue;
    if (vaddr < prevEnd) throw new ImageBuildError('BASE_INVALID', `${file}: entries are not in address order at 0x${vaddr.toString(16)}`);
    runs.push({ vaddr, pages: Number(nr), offset });
    offset += Number(nr) * PAGE_SIZE;
    prevEnd = vaddr + nr * PAGE;
  }
  return { pagesId, head: entries[0]!, runs };
}

export interface PageStats {
  /** Pages written from the page source. */
  fromSource: number;
  /** Pages copied from the base's pages file. */
  fromBase: number;
  /** Pages listed LAZY (no data written: a page server serves them). */
  lazy: number;
  /** Zero pages written out (the source's null pages in file-backed mappings). */
  zeroWritten: number;
  /** Zero pages of anonymous mappings left out (null, or all zeros with omitZeroPages). */
  zeroOmitted: number;
  /** Source pages outside every VMA (ignored). */
  outside: number;
  /** Source pages inside shared or special mappings (ignored: not private memory). */
  ignored: number;
  /** Pagemap entries written. */
  entries: number;
  /** Bytes of the new pages file. */
  bytes: number;
}

/**
 * Buffers written with writev in large batches. Consecutive views of one buffer (the pages of
 * an epoch, in order) are merged into one iovec. push() returns a promise only when it
 * flushes, so that the per-page path has no await.
 */
class PagesWriter {
  readonly #fh: FileHandle;
  #queue: Buffer[] = [];
  #queued = 0;
  /** The run being merged: a view of #runOf from #runStart, #runLen bytes. */
  #runOf: Buffer | undefined;
  #runStart = 0;
  #runLen = 0;
  bytes = 0;
  static readonly FLUSH_BYTES = 8 << 20;
  static readonly MAX_IOV = 1024;

  constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  push(b: Buffer): Promise<void> | undefined {
    if (this.#runOf !== undefined && b.buffer === this.#runOf.buffer && this.#runStart + this.#runLen === b.byteOffset) {
      this.#runLen += b.length;
    } else {
      this.#endRun();
      this.#runOf = b;
      this.#runStart = b.byteOffset;
      this.#runLen = b.length;
    }
    this.#queued += b.length;
    this.bytes += b.length;
    if (this.#queued >= PagesWriter.FLUSH_BYTES || this.#queue.length >= PagesWriter.MAX_IOV - 1) return this.flush();
    return undefined;
  }

  #endRun(): void {
    const b = this.#runOf;
    if (b === undefined) return;
    this.#queue.push(this.#runStart === b.byteOffset && this.#runLen === b.length ? b : Buffer.from(b.buffer, this.#runStart, this.#runLen));
    this.#runOf = undefined;
  }

  async flush(): Promise<void> {
    this.#endRun();
    let q = this.#queue;
    this.#queue = [];
    this.#queued = 0;
    while (q.length > 0) q = unwritten(q, (await this.#fh.writev(q)).bytesWritten);
  }
}

/** What is left of `q` after a (possibly short) write of `written` bytes. */
function unwritten(q: Buffer[], written: number): Buffer[] {
  let i = 0;
  while (i < q.length && written >= q[i]!.length) written -= q[i++]!.length;
  const rest = q.slice(i);
  if (written > 0) rest[0] = rest[0]!.subarray(written);
  return rest;
}

/** PagesWriter's synchronous twin for the few pages of a lazy image. */
class SyncPagesWriter {
  readonly #fd: number;
  #queue: Buffer[] = [];
  bytes = 0;

  constructor(fd: number) { this.#fd = fd; }

  push(b: Buffer): void {
    this.#queue.push(b);
    this.bytes += b.length;
    if (this.#queue.length >= PagesWriter.MAX_IOV) this.flush();
  }

  flush(): void {
    let q = this.#queue;
    this.#queue = [];
    while (q.length > 0) q = unwritten(q, writevSync(this.#fd, q));
  }
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/** A pull iterator over the source, checking order and size; synchronous for sync sources. */
class SourceCursor {
  readonly #sync: Iterator<PageEntry> | undefined;
  readonly #async: AsyncIterator<PageEntry> | undefined;
  #next: PageEntry | undefined;
  #done = false;
  #last = -1n;

  constructor(src: Iterable<PageEntry> | AsyncIterable<PageEntry>) {
    if (Symbol.asyncIterator in src) this.#async = (src as AsyncIterable<PageEntry>)[Symbol.asyncIterator]();
    else this.#sync = (src as Iterable<PageEntry>)[Symbol.iterator]();
  }

  /** The next page, without taking it: a value for a sync source, a promise for an async one. */
  peek(): PageEntry | undefined | Promise<PageEntry | undefined> {
    if (this.#next !== undefined || this.#done) return this.#next;
    if (this.#sync) return this.#accept(this.#sync.next());
    return this.#async!.next().then((r) => this.#accept(r));
  }

  #accept(r: IteratorResult<PageEntry>): PageEntry | undefined {
    if (r.done) {
      this.#done = true;
      return undefined;
    }
    const e = r.value;
    if (typeof e?.addr !== 'bigint' || (e.addr & (PAGE - 1n)) !== 0n || e.addr < 0n)
      throw new ImageBuildError('INVALID_PAGES', `page source: bad address ${String(e?.addr)} (a page-aligned bigint is needed)`);
    if (e.addr <= this.#last)
      throw new ImageBuildError('INVALID_PAGES',
        `page source: addresses must be strictly ascending, got 0x${e.addr.toString(16)} after 0x${this.#last.toString(16)}`);
    if (e.data !== null && (!Buffer.isBuffer(e.data) || e.data.length !== PAGE_SIZE))
      throw new ImageBuildError('INVALID_PAGES', `page source: page 0x${e.addr.toString(16)} has ${Buffer.isBuffer(e.data) ? e.data.length : typeof e.data} bytes, expected ${PAGE_SIZE} or null`);
    this.#last = e.addr;
    this.#next = e;
    return e;
  }

  take(): void {
    this.#next = undefined;
  }

  async close(): Promise<void> {
    if (this.#sync) this.#sync.return?.();
    else await this.#async!.return?.();
  }
}

/** Turns a lookup into an ordered source over the pages of the VMAs that take source pages. */
function* probe(lookup: PageLookup, vmas: readonly PlannedVma[]): Generator<PageEntry> {
  for (const v of vmas) {
    if (!v.takesSource) continue;
    for (let a = v.start; a < v.end; a += PAGE) {
      const data = lookup(a);
      if (data !== undefined) yield { addr: a, data };
    }
  }
}

export interface WritePagesOptions {
  vmas: readonly PlannedVma[];
  base: BasePagemap;
  /** The base's pages file, open for reading. */
  basePages: FileHandle;
  source: PageSource | undefined;
  /** Where the new pages go (an empty file, open for writing). */
  out: FileHandle;
  /** Refuse source pages outside every VMA instead of ignoring them. */
  strict: boolean;
  /** Leave all-zero source pages of anonymous mappings out (they restore as zeros anyway). */
  omitZeroPages: boolean;
}

/**
 * What a lazy image needs from the replicated pages: `runs`, the pages with content as
 * [first page number, count] pairs in ascending order (listed LAZY in lazy VMAs, without
 * reading them), and `lookup`, a page's content by address for the few VMAs that cannot be
 * lazy (undefined: not replicated; null: zeros).
 */
export interface LazyPagesInput {
  runs: Float64Array;
  lookup: (addr: bigint) => Buffer | null | undefined;
}

export interface LazyPagesSyncOptions {
  vmas: readonly PlannedVma[];
  base: BasePagemap;
  /** The base's pages file and the new one (empty, open for writing), as descriptors. */
  baseFd: number;
  outFd: number;
  lazy: LazyPagesInput;
}

/** Writes the new pages file of an eager image (lazy: writeLazyPagesSync); returns the pagemap entries (after the head) and counts. */
export async function writePages(o: WritePagesOptions): Promise<{ entries: Buffer[]; stats: PageStats }> {
  const stats: PageStats = { fromSource: 0, fromBase: 0, lazy: 0, zeroWritten: 0, zeroOmitted: 0, outside: 0, ignored: 0, entries: 0, bytes: 0 };
  const writer = new PagesWriter(o.out);
  const entries: Buffer[] = [];
  let runStart = 0n;
  let runPages = 0;
  let runFlags = 0;
  const endRun = (): void => {
    if (runPages === 0) return;
    entries.push(new Message([varintField(1, runStart), varintField(2, 0), varintField(4, runFlags), varintField(5, runPages)]).serialize());
    runPages = 0;
  };
  const addPages = (addr: bigint, n: number, flags: number): void => {
    if (runPages > 0 && flags === runFlags && runStart + BigInt(runPages) * PAGE === addr) {
      runPages += n;
      return;
    }
    endRun();
    runStart = addr;
    runPages = n;
    runFlags = flags;
  };

  const src = o.source === undefined ? undefined
    : typeof o.source === 'function' ? new SourceCursor(probe(o.source, o.vmas))
      : new SourceCursor(o.source);
  const runs = o.base.runs;
  let ri = 0; // first base run that may still matter

  // Copies base pages [from, to) (all inside run `r`).
  const copyBase = async (r: BaseRun, from: bigint, to: bigint): Promise<void> => {
    const n = Number((to - from) / PAGE);
    const off = r.offset + Number((from - r.vaddr) / PAGE) * PAGE_SIZE;
    const chunkPages = 2048; // 8 MiB reads
    for (let done = 0; done < n; done += chunkPages) {
      const k = Math.min(chunkPages, n - done);
      const buf = Buffer.allocUnsafe(k * PAGE_SIZE);
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await o.basePages.read(buf, got, buf.length - got, off + done * PAGE_SIZE + got);
        if (bytesRead === 0) throw new ImageBuildError('BASE_INVALID', `the base's pages file ends before the pagemap says (offset ${off + done * PAGE_SIZE + got})`);
        got += bytesRead;
      }
      const w = writer.push(buf);
      if (w) await w;
    }
    stats.fromBase += n;
  };

  try {
    for (let vi = 0; vi < o.vmas.length; vi++) {
      const v = o.vmas[vi]!;
      // Source pages below this VMA fall between mappings.
      while (src) {
        let e = src.peek();
        if (e instanceof Promise) e = await e;
        if (!e || e.addr >= v.start) break;
        if (o.strict) throw new ImageBuildError('INVALID_PAGES', `page source: page 0x${e.addr.toString(16)} is outside every VMA of the epoch`);
        stats.outside++;
        src.take();
      }
      const flags = PE_PRESENT | (v.lazy ? PE_LAZY : 0);
      // The base pages this VMA may use: base runs clipped to baseRanges, in order.
      const baseSegs: Array<{ run: BaseRun; from: bigint; to: bigint }> = [];
      while (ri < runs.length && runs[ri]!.vaddr + BigInt(runs[ri]!.pages) * PAGE <= v.start) ri++;
      for (let j = ri; j < runs.length && runs[j]!.vaddr < v.end; j++) {
        const r = runs[j]!;
        const rEnd = r.vaddr + BigInt(r.pages) * PAGE;
        for (const [lo, hi] of v.baseRanges) {
          const from = r.vaddr > lo ? r.vaddr : lo;
          const to = rEnd < hi ? rEnd : hi;
          if (from < to) baseSegs.push({ run: r, from, to });
        }
      }
      baseSegs.sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : 0));

      let si = 0;
      let cursor = v.start; // everything below is done
      for (;;) {
        let e = src && v.takesSource ? src.peek() : undefined;
        if (e instanceof Promise) e = await e;
        const sAddr = e && e.addr < v.end ? e.addr : v.end;
        // Base pages before the next source page.
        while (si < baseSegs.length && baseSegs[si]!.from < sAddr) {
          const seg = baseSegs[si]!;
          const from = seg.from > cursor ? seg.from : cursor;
          const to = seg.to < sAddr ? seg.to : sAddr;
          if (from < to) {
            addPages(from, Number((to - from) / PAGE), flags);
            await copyBase(seg.run, from, to);
            cursor = to;
          }
          if (seg.to <= sAddr) si++;
          else break;
        }
        if (sAddr >= v.end) break;
        // The source page at sAddr wins over the base's.
        const data = e!.data;
        if (data && !(o.omitZeroPages && !v.fileBacked && data.equals(ZERO_PAGE))) {
          addPages(sAddr, 1, flags);
          const w = writer.push(data);
          if (w) await w;
          stats.fromSource++;
        } else if (v.fileBacked) {
          addPages(sAddr, 1, flags);
          const w = writer.push(ZERO_PAGE);
          if (w) await w;
          stats.zeroWritten++;
        } else {
          stats.zeroOmitted++;
        }
        cursor = sAddr + PAGE;
        src!.take();
      }
      // Source pages in a VMA that does not take them.
      if (src && !v.takesSource) {
        for (;;) {
          let e2 = src.peek();
          if (e2 instanceof Promise) e2 = await e2;
          if (!e2 || e2.addr >= v.end) break;
          stats.ignored++;
          src.take();
        }
      }
    }
    // Whatever is left lies above the last VMA.
    while (src) {
      let e = src.peek();
      if (e instanceof Promise) e = await e;
      if (!e) break;
      if (o.strict) throw new ImageBuildError('INVALID_PAGES', `page source: page 0x${e.addr.toString(16)} is outside every VMA of the epoch`);
      stats.outside++;
      src.take();
    }
    endRun();
    await writer.flush();
  } finally {
    await src?.close();
  }
  stats.entries = entries.length;
  stats.bytes = writer.bytes;
  return { entries, stats };
}

/** A page source over [start, npages] ranges and their pages in order (a Tracker epoch, a CapturedEpoch). */
export function* pagesFromRanges(ranges: BigUint64Array, pages: Buffer): Generator<PageEntry> {
  let off = 0;
  for (let i = 0; i + 1 < ranges.length; i += 2) {
    const start = ranges[i]!;
    const n = Number(ranges[i + 1]!);
    for (let p = 0; p < n; p++) {
      yield { addr: start + BigInt(p) * PAGE, data: pages.subarray(off, off + PAGE_SIZE) };
      off += PAGE_SIZE;
    }
  }
  if (off !== pages.length) throw new ImageBuildError('INVALID_PAGES', `ranges describe ${off} bytes of pages but the buffer has ${pages.length}`);
}


/**
 * The pagemap and pages file of a lazy image, from page runs: lazy VMAs get LAZY entries
 * for the replicated runs and the base's runs (no data: the page server has them), in time
 * proportional to the runs, not the pages; other private VMAs are written as usual.
 * Synchronous: a promotion builds it while the standby's event loop and thread pool are
 * busy (the session it abandoned, the store), and each asynchronous step resumed behind
 * that work (20-30 ms for a dozen pages at 1 GiB). The pages written are the few of VMAs
 * that cannot be lazy, on tmpfs.
 */
export function writeLazyPagesSync(o: LazyPagesSyncOptions): { entries: Buffer[]; stats: PageStats } {
  const { runs, lookup } = o.lazy;
  const stats: PageStats = { fromSource: 0, fromBase: 0, lazy: 0, zeroWritten: 0, zeroOmitted: 0, outside: 0, ignored: 0, entries: 0, bytes: 0 };
  const writer = new SyncPagesWriter(o.outFd);
  const entries: Buffer[] = [];
  const PG = 4096;
  let runStart = -1; // page numbers (exact as doubles below 2^53)
  let runPages = 0;
  let runFlags = 0;
  const endRun = (): void => {
    if (runPages === 0) return;
    entries.push(new Message([varintField(1, BigInt(runStart) * PAGE), varintField(2, 0), varintField(4, runFlags), varintField(5, runPages)]).serialize());
    runPages = 0;
  };
  const add = (first: number, n: number, flags: number): void => {
    if (n <= 0) return;
    if (runPages > 0 && flags === runFlags && runStart + runPages === first) { runPages += n; return; }
    endRun();
    runStart = first; runPages = n; runFlags = flags;
  };
  const baseRuns = o.base.runs.map((r) => ({ first: Number(r.vaddr / PAGE), n: r.pages, offset: r.offset, run: r })).sort((x, y) => x.first - y.first);
  /** Index of the first base run ending after page `pn` (runs do not overlap). */
  const firstRunAfter = (pn: number): number => {
    let lo = 0;
    let hi = baseRuns.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (baseRuns[mid]!.first + baseRuns[mid]!.n <= pn) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  const readBase = (first: number, n: number): Buffer | null => {
    const b = baseRuns[firstRunAfter(first)];
    if (!b || first < b.first || first + n > b.first + b.n) return null;
    const buf = Buffer.allocUnsafe(n * PG);
    const at = b.offset + (first - b.first) * PG;
    for (let got = 0; got < buf.length;) {
      const k = readSync(o.baseFd, buf, got, buf.length - got, at + got);
      if (k === 0) throw new ImageBuildError('BASE_INVALID', `the base's pages file ends before the pagemap says (offset ${at + got})`);
      got += k;
    }
    return buf;
  };
  let ri = 0; // first replicated run that may matter
  const runCount = runs.length / 2;
  for (const v of o.vmas) {
    if (!v.takesSource && v.baseRanges.length === 0) continue;
    const vFirst = Number(v.start / PAGE);
    const vEnd = Number(v.end / PAGE);
    while (ri < runCount && runs[2 * ri]! + runs[2 * ri + 1]! <= vFirst) ri++;
    // Pieces inside this VMA: replicated runs (when the VMA takes them) and base ranges.
    const pieces: Array<[number, number, 'store' | 'base']> = [];
    if (v.takesSource) {
      for (let j = ri; j < runCount && runs[2 * j]! < vEnd; j++) {
        const a = Math.max(runs[2 * j]!, vFirst);
        const b = Math.min(runs[2 * j]! + runs[2 * j + 1]!, vEnd);
        if (a < b) pieces.push([a, b, 'store']);
      }
    }
    for (const [lo, hi] of v.baseRanges) {
      // Only the base runs that overlap [lo, hi): found by binary search (a 1 GiB base has
      // over a thousand runs; scanning them all for every range took ~10 ms at promotion).
      const from = Math.max(Number(lo / PAGE), vFirst);
      const to = Math.min(Number(hi / PAGE), vEnd);
      for (let k = firstRunAfter(from); k < baseRuns.length && baseRuns[k]!.first < to; k++) {
        const br = baseRuns[k]!;
        const a = Math.max(br.first, from);
        const b = Math.min(br.first + br.n, to);
        if (a < b) pieces.push([a, b, 'base']);
      }
    }
    pieces.sort((x, y) => x[0] - y[0]);
    if (v.lazy) {
      // Union of the pieces, LAZY.
      let cs = -1; let ce = -1;
      for (const [a, b] of pieces) {
        if (a <= ce) { ce = Math.max(ce, b); continue; }
        if (ce > cs) { add(cs, ce - cs, PE_LAZY); stats.lazy += ce - cs; }
        cs = a; ce = b;
      }
      if (ce > cs) { add(cs, ce - cs, PE_LAZY); stats.lazy += ce - cs; }
      continue;
    }
    // Not lazy: page by page over the pieces, the replicated content winning over the base.
    const flags = PE_PRESENT;
    let done = vFirst;
    for (const [a0, b] of pieces) {
      for (let pn = Math.max(a0, done); pn < b; pn++) {
        const addr = BigInt(pn) * PAGE;
        const data = v.takesSource ? lookup(addr) : undefined;
        if (data === undefined) {
          const base = readBase(pn, 1);
          if (!base) continue;
          add(pn, 1, flags);
          writer.push(base);
          stats.fromBase++;
        } else if (data === null) {
          if (v.fileBacked) { add(pn, 1, flags); writer.push(ZERO_PAGE); stats.zeroWritten++; } else stats.zeroOmitted++;
        } else {
          add(pn, 1, flags);
          writer.push(data);
          stats.fromSource++;
        }
      }
      done = Math.max(done, b);
    }
  }
  endRun();
  writer.flush();
  stats.entries = entries.length;
  stats.bytes = writer.bytes;
  return { entries, stats };
}
