// The standby's durable store: the last committed epoch of one replicated process (every
// page, the EpochState, and the identity lineage/generation/epoch/committedAt), in a
// directory, log-structured.
//
// On disk
// -------
//
//   DIR/                                     (created 0700)
//   ├── LOCK                  "PID STARTTIME\n" of the process that has the store open
//   ├── MANIFEST              the commit point: one JSON line + one line CRC-32 (hex)
//   │     {"format":1,"lineage":"…","generation":3,"epoch":912,"committedAt":1718…,
//   │      "pages":262144,"segments":["seg-000000000012.rrs","seg-000000000013.rrs"],
//   │      "state":"seg-000000000013.rrs","nextSeq":20}
//   ├── seg-000000000012.rrs  live segments, oldest first; a later one overrides an earlier
//   ├── seg-000000000013.rrs  one (the state is always in the last)
//   └── (MANIFEST.tmp, seg-*.rrs not in MANIFEST: leftovers of unfinished batches or
//        compactions, deleted when the store is opened)
//
//   A segment: one batch (or one compaction), written front to back, fsync'd before the
//   manifest names it.
//
//   0        +------------------------------------------------------------+
//            | header, 4096 B: "RRSEG\0\0\x01", u32 version, u32 4096,     |
//            |   f64 seq, f64 epoch, zeros                                 |
//   4096     +------------------------------------------------------------+
//            | slot 0: a page, 4096 B raw                                  |
//            | slot 1                                                      |   pages in arrival
//            | ...                                                         |   order; zero pages
//            | slot dataSlots-1                                            |   take no slot
//   4096 +   +------------------------------------------------------------+
//   4096×n   | meta, msgpack: {v, seq, kind: full|delta|compact, lineage,  |
//            |   generation, epoch, committedAt, dataSlots,                |
//            |   pageNos: u64[], ascending page numbers (addr / 4096)      |
//            |   slots:   i32[], the slot of each, -1 = all-zero page      |
//            |   coverage: u64[] [start, end) page-number pairs of the     |
//            |             state's VMAs, merged                            |
//            |   state: bin, the EpochState (msgpack; see format.ts)}      |
//            +------------------------------------------------------------+
//            | footer, 64 B: "RRSEGEND", u32 version, u32 crc32(meta),     |
//   EOF      |   f64 metaOffset, f64 metaLength, f64 dataSlots, …, crc32   |
//            +------------------------------------------------------------+
//
// A batch's page table holds its final version of each page: a later page with the same
// address in the same batch supersedes the earlier one (whose slot stays, dead).
//
// Commit protocol (power-cut safe)
// --------------------------------
//   1. pages are written to the new segment while they arrive (large sequential writes);
//   2. commit(): meta + footer appended, fsync(segment);
//   3. MANIFEST.tmp written, fsync, rename(MANIFEST.tmp, MANIFEST), fsync(DIR);
//   4. only then: commit() resolves; segments the switch made obsolete (a `full` batch,
//      a compaction) are deleted.
// A crash before the rename leaves the old MANIFEST, which names only complete, fsync'd
// segments; after it, the new one. Opening deletes every seg-*.rrs the MANIFEST does not
// name and MANIFEST.tmp. An error (ENOSPC: DISK_FULL; any other: IO) before the rename
// removes the batch's file and leaves the committed epoch as it was.
//
// Reading
// -------
// At open, the live segments' page tables are replayed in order into one Map from page
// number (a JS number, exact below 2^53) to a "global slot" (segment base + slot; segments
// are numbered consecutively) or -1 for a zero page. readPage() is a Map lookup and one
// pread of 4 KiB (synchronous: a page-cache hit costs ~2 µs, far less than a thread-pool
// round trip); during an open batch it looks at the batch's pages first (from memory while
// they are not yet written). pages() and compaction read 8 MiB windows of the sorted index,
// coalescing consecutive slots (gaps of up to 8 dead slots included) into reads of up to
// 1 MiB, 8 in flight.
//
// Checksums cover the manifest and each segment's meta and footer, not the page data: a
// page is only referenced once its segment was fsync'd whole, so a crash cannot tear one;
// media corruption of page data is left to the file system.
//
// Writing
// -------
// addPages() copies into reused 8 MiB staging buffers (an input of 8 MiB or more is written
// in place: the call resolves once it is on its way to disk) and one pump writes them with
// writev() of up to 32 MiB; addPages() waits only while more than 64 MiB are unwritten.
//
// Unmapped pages
// --------------
// Pages outside the committed state's VMAs are dropped at commit: the batch's own pages
// outside them are not put in its page table, and when the VMAs no longer cover what the
// previous state's did, the pages in the uncovered part are removed from the index. Replay
// does the same, with each segment's coverage, so that a page unmapped at epoch 5 and mapped
// again at 6 without being written reads as zero, not as its content from before epoch 5.
//
// Compaction
// ----------
// A segment's weight is its data slots plus its zero entries; dead pages = total weight -
// live pages (superseded versions, pages superseded within a batch, dropped pages). After a
// commit, a compaction starts in the background when there are more than 4 segments and more
// than `deadRatio` (default 3) dead pages per live one, or more than 64 segments. It writes one segment with the live
// pages in address order (and a copy of the state), switches the manifest to it followed by
// any segment committed meanwhile (same identity), and deletes the old ones: crash-safe as
// a commit is, and it never blocks a commit for longer than the manifest switch (a `full`
// batch committed meanwhile makes it give up). The rule keeps disk use below about
// (1 + deadRatio) times the live data (plus the segments since the last compaction) and
// bounds open time and the number of files; each compaction follows at least deadRatio
// times as many page writes as it copies, so it adds at most 1/deadRatio to the write
// volume. compact() runs one now; idle() waits for a
// background one; a failed background compaction (say, ENOSPC) changes nothing, is kept in
// lastCompactionError and is retried 16 commits later.
import { mkdir, open, readdir, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join, resolve as resolvePath } from 'node:path';
import type { EpochState } from '../protocol/messages.js';
import { StoreError, ioError } from './store/errors.js';
import {
  FOOTER_SIZE, FORMAT_VERSION, MANIFEST_NAME, MANIFEST_TMP, PAGE_SIZE, SEGMENT_HEADER_SIZE, ZERO,
  addressesOf, coverageContains, coverageOf, covers, decodeManifest, decodeSegmentFooter, decodeSegmentMeta,
  decodeState, encodeManifest, encodeSegmentHeader, encodeSegmentTail, encodeState, pageNumberOf, pageNumbers,
  parseSegmentName, segmentName, slotOffset, type Manifest, type SegmentMeta,
} from './store/format.js';
import { DirLock } from './store/lock.js';
import { PageIndex } from './store/page-index.js';
import { RecentPages } from './store/recent-pages.js';
import { SegmentWriter, readExactly, readExactlySync, writevAll } from './store/segment-writer.js';

export { StoreError, type StoreErrorCode } from './store/errors.js';

export interface StoreIdentity { lineage: string; generation: number; epoch: number; committedAt: number }

export interface CommittedEpoch extends StoreIdentity {
  /** The committed EpochState (treat as read-only). */
  state: EpochState;
  /** Live pages, zero pages included. */
  pages: number;
  bytesOnDisk: number;
}

/**
 * Named points of a commit, a compaction and setGeneration, in order. A test passes
 * `failpoint` to crash (or throw) at one of them.
 */
export type StoreFailpoint =
  | 'commit:write' | 'commit:synced' | 'commit:manifest-tmp' | 'commit:renamed' | 'commit:done'
  | 'compact:write' | 'compact:synced' | 'compact:manifest-tmp' | 'compact:renamed' | 'compact:done'
  | 'generation:manifest-tmp' | 'generation:renamed';

export interface EpochStoreOptions {
  /** fsync data, manifest and directory (default true). Off only for tests and benchmarks. */
  fsync?: boolean;
  /** Compact in the background after a commit when the rule says so (default true). */
  autoCompact?: boolean;
  /**
   * The rule: compact once dead pages exceed this many times the live ones (default 3).
   * A compaction copies every live page, so the copying per page written is 1/ratio of a
   * page, and the disk holds up to (1 + ratio) times the live data.
   */
  deadRatio?: number;
  /**
   * Pages whose newest content is kept in memory to serve reads (the decoder's delta
   * bases) without a pread each: see RecentPages. Default 8192 (32 MiB); 0: none.
   */
  recentPages?: number;
  /** Testing: called at each StoreFailpoint; it may throw (an injected I/O error) or kill the process. */
  failpoint?: (point: StoreFailpoint) => void;
}

const AUTO_COMPACT_MIN_SEGMENTS = 4;
/**
 * With 1 (compact when dead > live), a redis under SET load (40 % of its pages written
 * per 100 ms epoch) was compacted every third epoch, and compaction was 40 % of the
 * standby's CPU. 3 cuts that copying to a third; the disk then holds up to 4 times the
 * live data instead of 2.
 */
const DEFAULT_DEAD_RATIO = 3;
const AUTO_COMPACT_MAX_SEGMENTS = 64;
/** Pages read per window when iterating or compacting (8 MiB). */
const WINDOW_PAGES = 2048;
/** Largest single read of consecutive slots. */
const MAX_RUN_PAGES = 256;
/** Dead slots read (and thrown away) rather than splitting a read in two. */
const MAX_GAP_PAGES = 8;
const READ_PARALLELISM = 8;
/** Commits to wait after a failed background compaction before trying again. */
const COMPACT_RETRY_COMMITS = 16;

const EMPTY = Buffer.alloc(0);

/**
 * What the store in `dir` has committed, read from its manifest without taking the lock
 * (for `replicate status --dir`); null when nothing is committed (or no store is there).
 * The manifest is replaced atomically, so this never sees a half-written one.
 */
export async function readCommittedInfo(dir: string): Promise<(StoreIdentity & { pages: number }) | null> {
  const path = join(resolvePath(dir), MANIFEST_NAME);
  let raw: Buffer;
  try {
    raw = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw ioError(e, 'reading the manifest', path);
  }
  const m = decodeManifest(raw, path);
  return { lineage: m.lineage, generation: m.generation, epoch: m.epoch, committedAt: m.committedAt, pages: m.pages };
}

class Segment {
  /** First global slot (assigned when the index is built or the segment is added). */
  base = 0;
  refs = 0;
  retired = false;
  closed = false;
  readonly weight: number;

  constructor(
    readonly name: string,
    readonly path: string,
    readonly fh: FileHandle,
    readonly meta: SegmentMeta,
    readonly size: number,
  ) {
    let zeros = 0;
    for (let i = 0; i < meta.slots.length; i++) if (meta.slots[i] === ZERO) zeros++;
    this.weight = meta.dataSlots + zeros;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    void this.fh.close().catch(() => undefined);
  }
}

/** The committed index, sorted, with the segments it refers to (cached per index version). */
interface Snapshot {
  version: number;
  keys: Float64Array;
  vals: Float64Array;
  segs: Segment[];
  bases: number[];
}

/** The segment holding global slot `g`, by its base (live segments). */
function findSegment(segs: readonly Segment[], g: number): Segment {
  let lo = 0;
  let hi = segs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (segs[mid]!.base <= g) lo = mid;
    else hi = mid - 1;
  }
  return segs[lo]!;
}

/** Same, with the bases a snapshot recorded (compaction renumbers live segments). */
function segmentOf(segs: readonly Segment[], bases: readonly number[], g: number): number {
  let lo = 0;
  let hi = segs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (bases[mid]! <= g) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * Reads the data of entries [start, end) of a snapshot: one Buffer with their data pages
 * packed in entry order (zero entries take no room). Consecutive slots are read together.
 */
async function readEntries(snap: Snapshot, start: number, end: number, into?: Buffer, buffers?: ReadBuffers): Promise<Buffer> {
  const pos: number[] = [];
  for (let i = start; i < end; i++) if (snap.vals[i] !== ZERO) pos.push(i);
  const out = into && into.length >= pos.length * PAGE_SIZE ? into.subarray(0, pos.length * PAGE_SIZE) : Buffer.allocUnsafeSlow(pos.length * PAGE_SIZE);
  if (pos.length === 0) return out;
  // out index j holds entry pos[j]; visit in slot order to find runs.
  const order = pos.map((_, j) => j);
  let sorted = true;
  for (let j = 1; j < pos.length; j++) if (snap.vals[pos[j]!]! < snap.vals[pos[j - 1]!]!) { sorted = false; break; }
  if (!sorted) order.sort((a, b) => snap.vals[pos[a]!]! - snap.vals[pos[b]!]!);
  // A run: slots [slot, slot + span) of one segment, holding the pages outs[k] at rel[k].
  const runs: Array<{ seg: number; slot: number; span: number; outs: number[]; rel: number[] }> = [];
  for (const j of order) {
    const g = snap.vals[pos[j]!]!;
    const s = segmentOf(snap.segs, snap.bases, g);
    const slot = g - snap.bases[s]!;
    const r = runs[runs.length - 1];
    if (r && r.seg === s && slot >= r.slot + r.span && slot - (r.slot + r.span) <= MAX_GAP_PAGES && slot + 1 - r.slot <= MAX_RUN_PAGES) {
      r.outs.push(j);
      r.rel.push(slot - r.slot);
      r.span = slot + 1 - r.slot;
    } else {
      runs.push({ seg: s, slot, span: 1, outs: [j], rel: [0] });
    }
  }
  // Runs that are not one contiguous piece of `out` are read into one scratch buffer.
  const scratchAt: number[] = [];
  let scratchPages = 0;
  for (const r of runs) {
    let direct = r.outs.length === r.span;
    for (let k = 1; direct && k < r.outs.length; k++) if (r.outs[k] !== r.outs[0]! + k) direct = false;
    scratchAt.push(direct ? -1 : scratchPages);
    if (!direct) scratchPages += r.span;
  }
  const scratch = scratchPages === 0 ? EMPTY : buffers ? buffers.scratch(scratchPages * PAGE_SIZE) : Buffer.allocUnsafeSlow(scratchPages * PAGE_SIZE);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < runs.length) {
      const at = scratchAt[next]!;
      const r = runs[next++]!;
      const seg = snap.segs[r.seg]!;
      try {
        if (at < 0) {
          await readExactly(seg.fh, out, r.outs[0]! * PAGE_SIZE, r.span * PAGE_SIZE, slotOffset(r.slot));
        } else {
          await readExactly(seg.fh, scratch, at * PAGE_SIZE, r.span * PAGE_SIZE, slotOffset(r.slot));
          for (let k = 0; k < r.outs.length; k++) {
            const from = (at + r.rel[k]!) * PAGE_SIZE;
            scratch.copy(out, r.outs[k]! * PAGE_SIZE, from, from + PAGE_SIZE);
          }
        }
      } catch (e) {
        throw ioError(e, 'reading pages', seg.path);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(READ_PARALLELISM, runs.length) }, worker));
  return out;
}

/** Buffers for readEntries that one user (compaction: one at a time) keeps between calls. */
class ReadBuffers {
  #windows: Buffer[] | null = null;
  #scratch: Buffer = EMPTY;
  windows(): Buffer[] {
    return (this.#windows ??= [Buffer.allocUnsafeSlow(WINDOW_PAGES * PAGE_SIZE), Buffer.allocUnsafeSlow(WINDOW_PAGES * PAGE_SIZE)]);
  }
  /** At least `bytes`; grown (never shrunk) when too small. */
  scratch(bytes: number): Buffer {
    if (this.#scratch.length < bytes) this.#scratch = Buffer.allocUnsafeSlow(Math.max(bytes, WINDOW_PAGES * PAGE_SIZE));
    return this.#scratch;
  }
}

export class EpochStore {
  readonly dir: string;
  private readonly fsync: boolean;
  private readonly autoCompact: boolean;
  private readonly deadRatio: number;
  /**
   * Compaction's read windows and scratch, kept from one compaction to the next: fresh
   * buffers of megabytes each time counted as external memory and brought full garbage
   * collections with them.
   */
  private readonly buffers = new ReadBuffers();
  private readonly failpoint: ((p: StoreFailpoint) => void) | undefined;
  private lock: DirLock | null;

  private manifest: Manifest | null = null;
  private manifestBytes = 0;
  private segments: Segment[] = [];
  private index = new PageIndex();
  private indexVersion = 0;
  /**
   * Moves only when the set of committed pages with content changes (a page added, dropped,
   * or turned zero / non-zero), not when pages are merely rewritten: the runs a lazy image
   * lists stay valid across steady epochs, so promotion need not sort the index.
   */
  private keysVersion = 0;
  private runsCache: { version: number; runs: Float64Array } | null = null;
  /**
   * Page numbers with content (not zero), ascending, kept up to date by each commit once
   * built (a merge of the few pages added or dropped: a millisecond where sorting the
   * whole index takes ~70 ms at 1 GiB); null until first needed, and after a full batch.
   */
  private contentKeys: Float64Array | null = null;
  private nextBase = 0;
  private totalWeight = 0;
  private state: EpochState | null = null;
  private stateBytes: Buffer = EMPTY;
  private coverage: Float64Array = new Float64Array(0);
  private snap: Snapshot | null = null;
  private nextSeq = 0;

  /** @internal the open batch. */
  batch: EpochBatch | null = null;
  private chain: Promise<void> = Promise.resolve();
  private compaction: Promise<void> | null = null;
  private compactCancel = false;
  private compactHolds = 0;
  /** @internal The newest content of recently written pages (see RecentPages). */
  readonly recent: RecentPages | null;
  private compactCooldown = 0;
  private closed = false;
  private closing = false;
  /** The last background compaction's error, if it failed (the store stays as it was). */
  lastCompactionError: StoreError | null = null;

  private constructor(dir: string, lock: DirLock, options: EpochStoreOptions) {
    this.dir = dir;
    this.lock = lock;
    this.fsync = options.fsync ?? true;
    this.autoCompact = options.autoCompact ?? true;
    this.deadRatio = options.deadRatio ?? DEFAULT_DEAD_RATIO;
    if (!(this.deadRatio > 0) || !Number.isFinite(this.deadRatio)) throw new RangeError(`deadRatio must be a positive number, got ${String(options.deadRatio)}`);
    const recent = options.recentPages ?? 8192;
    if (!Number.isSafeInteger(recent) || recent < 0) throw new RangeError(`recentPages must be a non-negative integer, got ${String(options.recentPages)}`);
    this.recent = recent > 0 ? new RecentPages(recent) : null;
    this.failpoint = options.failpoint;
  }

  /** Opens (creating it 0700 if needed) and locks `dir`, recovers the last committed epoch, deletes leftovers. */
  static async open(dir: string, options: EpochStoreOptions = {}): Promise<EpochStore> {
    const abs = resolvePath(dir);
    try {
      await mkdir(abs, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw ioError(e, 'creating the store directory', abs);
    }
    const lock = await DirLock.acquire(abs);
    const store = new EpochStore(abs, lock, options);
    try {
      await store.load();
    } catch (e) {
      for (const s of store.segments) s.close();
      await lock.release();
      throw e;
    }
    return store;
  }

  /** The committed EpochState alone (what `committed` has, without counting the disk use). */
  get committedState(): EpochState | null {
    return this.manifest ? this.state : null;
  }

  get committed(): CommittedEpoch | null {
    const m = this.manifest;
    if (!m || !this.state) return null;
    return {
      lineage: m.lineage, generation: m.generation, epoch: m.epoch, committedAt: m.committedAt,
      state: this.state, pages: this.index.size, bytesOnDisk: this.bytesOnDisk(),
    };
  }

  begin(b: { lineage: string; generation: number; epoch: number; base: number; full: boolean }): EpochBatch {
    this.assertOpen();
    if (this.batch) throw new StoreError('STATE', `a batch (epoch ${this.batch.epoch}) is already open: commit or abort it first`);
    if (typeof b.lineage !== 'string' || b.lineage === '') throw new RangeError('batch lineage must be a non-empty string');
    for (const k of ['generation', 'epoch', 'base'] as const) {
      if (!Number.isSafeInteger(b[k]) || b[k] < 0) throw new RangeError(`batch ${k} must be a non-negative integer, got ${String(b[k])}`);
    }
    const c = this.manifest;
    if (c && b.generation < c.generation) {
      throw new StoreError('MISMATCH', `batch generation ${b.generation} is older than committed generation ${c.generation} (a stale primary?)`);
    }
    if (!b.full) {
      if (!c) throw new StoreError('MISMATCH', `the store is empty: a delta batch (base ${b.base}) cannot apply; a full batch is needed`);
      if (b.lineage !== c.lineage) throw new StoreError('MISMATCH', `batch lineage '${b.lineage}' does not match committed lineage '${c.lineage}'`);
      if (b.base !== c.epoch) throw new StoreError('MISMATCH', `batch base ${b.base} does not match committed epoch ${c.epoch}`);
      if (b.epoch <= b.base) throw new StoreError('MISMATCH', `batch epoch ${b.epoch} is not after its base ${b.base}`);
    }
    // A full batch replaces everything: what is held may not survive it.
    if (b.full) this.recent?.clear();
    const seq = this.nextSeq++;
    const batch = new EpochBatch(this, { ...b }, seq, join(this.dir, segmentName(seq)));
    this.batch = batch;
    return batch;
  }

  async readPage(addr: bigint): Promise<Buffer | null> {
    return this.readPageSync(addr) ?? null;
  }


  /** Committed pages in ascending address order (only those inside the committed VMAs); zero pages as `null` data. */
  async *pages(): AsyncIterable<{ addr: bigint; data: Buffer | null }> {
    this.assertOpen();
    const snap = this.snapshot();
    for (const s of snap.segs) s.refs++;
    try {
      const n = snap.keys.length;
      for (let start = 0; start < n; start += WINDOW_PAGES) {
        const end = Math.min(n, start + WINDOW_PAGES);
        const data = await readEntries(snap, start, end);
        let d = 0;
        for (let i = start; i < end; i++) {
          const addr = BigInt(snap.keys[i]!) << 12n;
          if (snap.vals[i] === ZERO) yield { addr, data: null };
          else { yield { addr, data: data.subarray(d * PAGE_SIZE, (d + 1) * PAGE_SIZE) }; d++; }
        }
      }
    } finally {
      for (const s of snap.segs) this.unpin(s);
    }
  }

  /** Page addresses of the committed state, ascending. */
  pageAddresses(): BigUint64Array {
    this.assertOpen();
    return addressesOf(this.snapshot().keys);
  }

  /**
   * The committed pages with content (zero pages left out) as runs: [first page number,
   * count] pairs, ascending. For building a lazy image without touching page data.
   */
  pageRuns(): Float64Array {
    this.assertOpen();
    if (this.runsCache?.version === this.keysVersion) return this.runsCache.runs;
    const version = this.keysVersion;
    if (!this.contentKeys) {
      const { keys, vals } = this.snapshot();
      let n = 0;
      for (let i = 0; i < keys.length; i++) if (vals[i] !== ZERO) n++;
      const ck = new Float64Array(n);
      for (let i = 0, j = 0; i < keys.length; i++) if (vals[i] !== ZERO) ck[j++] = keys[i]!;
      this.contentKeys = ck;
    }
    const keys = this.contentKeys;
    const out: number[] = [];
    let start = -1;
    let n = 0;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i]!;
      if (n > 0 && k === start + n) { n++; continue; }
      if (n > 0) out.push(start, n);
      start = k; n = 1;
    }
    if (n > 0) out.push(start, n);
    const runs = Float64Array.from(out);
    this.runsCache = { version, runs };
    return runs;
  }

  /**
   * The committed page at `addr` (an open batch's first, as readPage), synchronously: for
   * a page server answering the kernel's page faults. null: zero page; undefined: no such page.
   */
  readPageSync(addr: bigint): Buffer | null | undefined {
    const out = Buffer.allocUnsafe(PAGE_SIZE);
    const r = this.readPageInto(addr, out, 0);
    return r === true ? out : r;
  }

  /**
   * The newest version of page `addr` written into `out` at byte `at`: true; a zero page
   * (null) or one the store does not have (undefined) leaves zeros there. No allocation: the
   * decoder reads each delta's base straight into its slot with this.
   */
  readPageInto(addr: bigint, out: Buffer, at: number): true | null | undefined {
    this.assertOpen();
    const pn = pageNumberOf(addr);
    if (this.recent?.get(pn, out, at)) return true;
    return this.readUncachedInto(pn, out, at);
  }

  /**
   * readPageInto for many pages at once: page addrs[i] into page outPages[i] of `out`
   * (4096-byte units). The recent pages are copied in one native call; the rest one by one.
   */
  readPagesInto(addrs: BigUint64Array, out: Buffer, outPages: Int32Array): void {
    this.assertOpen();
    const pns = pageNumbers(addrs);
    if (!this.recent) {
      for (let i = 0; i < pns.length; i++) this.readUncachedInto(pns[i]!, out, outPages[i]! * PAGE_SIZE);
      return;
    }
    for (const i of this.recent.getMany(pns, out, outPages)) this.readUncachedInto(pns[i]!, out, outPages[i]! * PAGE_SIZE);
  }

  private readUncachedInto(pn: number, out: Buffer, at: number): true | null | undefined {
    const b = this.batch;
    if (b) {
      const r = b.lookup(pn);
      if (r !== undefined) {
        if (r === ZERO) { out.fill(0, at, at + PAGE_SIZE); return null; }
        b.readSlotInto(r, out, at);
        return true;
      }
    }
    const g = this.index.get(pn);
    if (g === undefined || g === ZERO) {
      out.fill(0, at, at + PAGE_SIZE);
      return g === ZERO ? null : undefined;
    }
    const seg = findSegment(this.segments, g);
    try {
      readExactlySync(seg.fh.fd, out, at, PAGE_SIZE, slotOffset(g - seg.base));
    } catch (e) {
      throw ioError(e, `reading page 0x${(pn * PAGE_SIZE).toString(16)}`, seg.path);
    }
    return true;
  }

  /** Rewrites the live pages into one segment (see the header); resolves when done or when there was nothing to do. */
  compact(): Promise<void> {
    this.assertOpen();
    if (!this.compaction) {
      this.compaction = this.runCompaction().finally(() => { this.compaction = null; });
    }
    return this.compaction;
  }

  /**
   * Stops compacting until the returned function is called: a running compaction is
   * cancelled (the store stays as it was) and none starts. A promotion does this, so that
   * rewriting the whole store neither competes with the restore for the disk nor holds
   * the store while the generation is raised.
   */
  holdCompaction(): () => void {
    this.compactHolds++;
    this.compactCancel = true;
    let released = false;
    return () => { if (!released) { released = true; this.compactHolds--; } };
  }

  /** Resolves when no background compaction is running (its failure, if any, is in lastCompactionError). */
  async idle(): Promise<void> {
    while (this.compaction) await this.compaction.catch(() => undefined);
  }

  /** Raises the committed generation, durably (used at promotion). */
  async setGeneration(generation: number): Promise<void> {
    this.assertOpen();
    if (!Number.isSafeInteger(generation) || generation < 0) throw new RangeError(`generation must be a non-negative integer, got ${generation}`);
    await this.exclusive(async () => {
      const m = this.manifest;
      if (!m) throw new StoreError('STATE', `store ${this.dir} has no committed epoch: nothing to set the generation of`);
      if (generation < m.generation) throw new StoreError('MISMATCH', `generation ${generation} is older than committed generation ${m.generation}`);
      if (generation === m.generation) return;
      const next = { ...m, generation, nextSeq: this.nextSeq };
      await this.writeManifest(next, 'generation');
      this.manifest = next;
      this.hook('generation:renamed');
      await this.syncDir();
    });
  }

  stats(): { segments: number; livePages: number; deadPages: number; bytesOnDisk: number } {
    return { segments: this.segments.length, livePages: this.index.size, deadPages: this.deadPages(), bytesOnDisk: this.bytesOnDisk() };
  }

  /** Aborts an open batch (waits for one being committed), stops compaction, releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    const b = this.batch;
    if (b) await b.settleForClose();
    this.compactCancel = true;
    await this.idle();
    this.closed = true;
    await this.chain;
    for (const s of this.segments) s.close();
    this.segments = [];
    this.index = new PageIndex();
    this.snap = null;
    await this.lock?.release();
    this.lock = null;
  }

  // ------------------------------------------------------------------------------------
  // internals used by EpochBatch

  /** @internal */
  hook(point: StoreFailpoint): void {
    this.failpoint?.(point);
  }

  /** @internal */
  get useFsync(): boolean { return this.fsync; }

  /** @internal */
  get committedEpochNumber(): number | null { return this.manifest?.epoch ?? null; }

  /** @internal whether a segment is named by the current manifest. */
  isLive(name: string): boolean {
    return this.manifest?.segments.includes(name) ?? false;
  }

  /** @internal the batch is finished (committed, aborted or failed). */
  release(batch: EpochBatch): void {
    if (this.batch === batch) this.batch = null;
    // Its pages were held as the newest versions: not any more.
    if (!batch.isCommitted) this.recent?.clear();
  }

  /**
   * @internal Switches the manifest to a batch's finished segment and updates the index.
   * seg.meta holds the batch's final pages inside `cov`, ascending; `map` is its table
   * (already filtered to `cov`), which becomes the index of a full batch.
   */
  async switchToBatch(batch: EpochBatch, seg: Segment, map: PageIndex, state: EpochState, stateBytes: Buffer, cov: Float64Array): Promise<CommittedEpoch> {
    let old: Segment[] = [];
    try {
      await this.switchLocked(batch, seg, map, state, stateBytes, cov, (replaced) => { old = replaced; });
      this.hook('commit:done');
    } finally {
      // Whether or not the directory fsync worked, the segments a full batch replaced are out.
      for (const s of old) this.retire(s);
    }
    this.maybeCompact();
    return this.committed!;
  }

  private switchLocked(batch: EpochBatch, seg: Segment, map: PageIndex, state: EpochState, stateBytes: Buffer, cov: Float64Array,
    onReplaced: (old: Segment[]) => void): Promise<void> {
    return this.exclusive(async () => {
      if (this.closed) throw new StoreError('STATE', `store ${this.dir} is closed`);
      const cur = this.manifest;
      if (cur && batch.generation < cur.generation) {
        throw new StoreError('MISMATCH', `batch generation ${batch.generation} is older than committed generation ${cur.generation} (raised while the batch was open)`);
      }
      if (!batch.full && (!cur || cur.epoch !== batch.base || cur.lineage !== batch.lineage)) {
        throw new StoreError('MISMATCH', `batch base ${batch.base} does not match committed epoch ${cur?.epoch ?? 'none'}`);
      }
      const { pageNos, slots } = seg.meta;
      let pages: number;
      let shrink = false;
      if (batch.full) {
        pages = pageNos.length;
      } else {
        shrink = !coverageContains(cov, this.coverage);
        let removed = 0;
        if (shrink) this.index.forEach((_v, k) => { if (!covers(cov, k)) removed++; });
        let added = 0;
        for (let i = 0; i < pageNos.length; i++) if (!this.index.has(pageNos[i]!)) added++;
        pages = this.index.size - removed + added;
      }
      const segs = batch.full ? [seg] : [...this.segments, seg];
      const m: Manifest = {
        format: FORMAT_VERSION, lineage: batch.lineage, generation: batch.generation, epoch: batch.epoch,
        committedAt: seg.meta.committedAt, pages, segments: segs.map((s) => s.name), state: seg.name, nextSeq: this.nextSeq,
      };
      await this.writeManifest(m, 'commit');
      // Switched: from here on the new epoch is the committed one.
      if (batch.full) {
        onReplaced(this.segments);
        seg.base = 0;
        this.index = map; // already filtered to `cov`; local slots are global with base 0
        this.nextBase = seg.meta.dataSlots;
        this.totalWeight = seg.weight;
      } else {
        seg.base = this.nextBase;
        this.nextBase += seg.meta.dataSlots;
        this.totalWeight += seg.weight;
        const gained: number[] = []; // page numbers that now have content and had none
        const lost: number[] = []; // page numbers with content before, none now
        if (shrink) {
          const index = this.index;
          index.forEach((v, k) => {
            if (covers(cov, k)) return;
            if (v !== ZERO) lost.push(k);
            index.delete(k);
            this.recent?.delete(k);
          });
        }
        for (let i = 0; i < pageNos.length; i++) {
          const s = slots[i]!;
          const pn = pageNos[i]!;
          const prev = this.index.get(pn);
          const had = prev !== undefined && prev !== ZERO;
          if (had !== (s !== ZERO)) (had ? lost : gained).push(pn);
          this.index.set(pn, s === ZERO ? ZERO : seg.base + s);
        }
        if (gained.length || lost.length) {
          this.keysVersion++;
          if (this.contentKeys) {
            const index = this.index;
            this.contentKeys = mergeSorted(this.contentKeys, [...gained, ...lost], (k) => { const v = index.get(k); return v !== undefined && v !== ZERO; });
          }
        }
      }
      if (batch.full) { this.keysVersion++; this.contentKeys = null; }
      this.segments = segs;
      this.indexVersion++;
      this.manifest = m;
      this.state = state;
      this.stateBytes = stateBytes;
      this.coverage = cov;
      this.hook('commit:renamed');
      await this.syncDir();
    });
  }

  // ------------------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) throw new StoreError('STATE', `store ${this.dir} is closed`);
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.then(() => undefined, () => undefined);
    return run;
  }

  private deadPages(): number {
    return Math.max(0, this.totalWeight - this.index.size);
  }

  private bytesOnDisk(): number {
    let n = this.manifestBytes;
    for (const s of this.segments) n += s.size;
    return n;
  }

  private async load(): Promise<void> {
    const mpath = join(this.dir, MANIFEST_NAME);
    let m: Manifest | null = null;
    let raw: Buffer | null = null;
    try {
      raw = await readFile(mpath);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, 'reading the manifest', mpath);
    }
    if (raw) {
      m = decodeManifest(raw, mpath);
      this.manifestBytes = raw.length;
    }
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      throw ioError(e, 'listing the store directory', this.dir);
    }
    const live = new Set(m?.segments ?? []);
    let maxSeq = -1;
    for (const name of names) {
      const seq = parseSegmentName(name);
      const leftover = seq !== null ? !live.has(name) : name === MANIFEST_TMP || DirLock.isDeadLeftover(name);
      if (seq !== null) maxSeq = Math.max(maxSeq, seq);
      if (leftover) {
        const p = join(this.dir, name);
        try {
          await unlink(p);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, 'deleting a leftover of an unfinished batch', p);
        }
      }
    }
    this.nextSeq = Math.max(m?.nextSeq ?? 0, maxSeq + 1);
    if (!m) return;
    if (m.state !== m.segments[m.segments.length - 1]) {
      throw new StoreError('CORRUPT', `manifest ${mpath} is corrupt: the state is not in the last segment`, { path: mpath });
    }
    for (const name of m.segments) this.segments.push(await this.loadSegment(name));
    const last = this.segments[this.segments.length - 1]!;
    this.stateBytes = last.meta.state;
    for (const seg of this.segments) seg.meta.state = EMPTY;
    try {
      this.state = decodeState(this.stateBytes);
    } catch (e) {
      throw new StoreError('CORRUPT', `segment ${last.path} is corrupt: the state does not decode (${(e as Error).message})`, { path: last.path });
    }
    this.coverage = last.meta.coverage;
    this.manifest = m;
    this.rebuildIndex();
    if (this.index.size !== m.pages) {
      throw new StoreError('CORRUPT', `store ${this.dir} is corrupt: the manifest says ${m.pages} pages, the segments hold ${this.index.size}`, { path: mpath });
    }
  }

  private async loadSegment(name: string): Promise<Segment> {
    const path = join(this.dir, name);
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new StoreError('CORRUPT', `store ${this.dir} is corrupt: segment ${name} named by the manifest is missing`, { path });
      }
      throw ioError(e, 'opening a segment', path);
    }
    try {
      const size = (await fh.stat()).size;
      if (size < SEGMENT_HEADER_SIZE + FOOTER_SIZE) throw new StoreError('CORRUPT', `segment ${path} is corrupt: only ${size} bytes`, { path });
      const fbuf = Buffer.alloc(FOOTER_SIZE);
      await readExactly(fh, fbuf, 0, FOOTER_SIZE, size - FOOTER_SIZE);
      const footer = decodeSegmentFooter(fbuf, size, path);
      const body = Buffer.alloc(footer.metaLength);
      await readExactly(fh, body, 0, footer.metaLength, footer.metaOffset);
      const meta = decodeSegmentMeta(body, footer, path);
      return new Segment(name, path, fh, meta, size);
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e instanceof StoreError ? e : ioError(e, 'reading a segment', path);
    }
  }

  /** Replays the live segments' page tables, in order, into a fresh index. */
  private rebuildIndex(): void {
    const index = new PageIndex();
    let base = 0;
    let weight = 0;
    let prev: Float64Array | null = null;
    for (const seg of this.segments) {
      seg.base = base;
      const { pageNos, slots, coverage } = seg.meta;
      if (prev && !coverageContains(coverage, prev)) {
        index.forEach((_v, k) => { if (!covers(coverage, k)) index.delete(k); });
      }
      for (let i = 0; i < pageNos.length; i++) {
        const s = slots[i]!;
        index.set(pageNos[i]!, s === ZERO ? ZERO : base + s);
      }
      base += seg.meta.dataSlots;
      weight += seg.weight;
      prev = coverage;
    }
    this.index = index;
    this.nextBase = base;
    this.totalWeight = weight;
    this.indexVersion++;
    this.keysVersion++;
    this.contentKeys = null;
  }

  private snapshot(): Snapshot {
    if (this.snap && this.snap.version === this.indexVersion) return this.snap;
    const { keys, vals } = this.index.sorted();
    const segs = this.segments.slice();
    this.snap = { version: this.indexVersion, keys, vals, segs, bases: segs.map((s) => s.base) };
    return this.snap;
  }

  private unpin(s: Segment): void {
    s.refs--;
    if (s.retired && s.refs === 0) s.close();
  }

  /** A segment no longer in the manifest: delete it, close it once nobody reads it. */
  private retire(s: Segment): void {
    s.retired = true;
    void unlink(s.path).catch(() => undefined);
    if (s.refs === 0) s.close();
  }

  private async writeManifest(m: Manifest, purpose: 'commit' | 'compact' | 'generation'): Promise<void> {
    const tmp = join(this.dir, MANIFEST_TMP);
    const buf = encodeManifest(m);
    let fh: FileHandle | undefined;
    try {
      fh = await open(tmp, 'w', 0o600);
      await writevAll(fh, [buf], 0);
      if (this.fsync) await fh.sync();
      await fh.close();
      fh = undefined;
      this.hook(`${purpose}:manifest-tmp`);
      await rename(tmp, join(this.dir, MANIFEST_NAME));
    } catch (e) {
      await fh?.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      const committed = this.manifest ? `committed epoch ${this.manifest.epoch} is intact` : 'the store stays empty';
      throw ioError(e, 'writing the manifest', tmp, committed);
    }
    this.manifestBytes = buf.length;
  }

  private async syncDir(): Promise<void> {
    if (!this.fsync) return;
    let fh: FileHandle | undefined;
    try {
      fh = await open(this.dir, 'r');
      await fh.sync();
    } catch (e) {
      throw ioError(e, 'syncing the store directory', this.dir, `the manifest was switched to epoch ${this.manifest?.epoch} but may not survive a power cut`);
    } finally {
      await fh?.close().catch(() => undefined);
    }
  }

  private maybeCompact(): void {
    if (!this.autoCompact || this.closing || this.compaction || this.compactHolds > 0) return;
    if (this.compactCooldown > 0) { this.compactCooldown--; return; }
    const n = this.segments.length;
    if (n > AUTO_COMPACT_MAX_SEGMENTS || (n > AUTO_COMPACT_MIN_SEGMENTS && this.deadPages() > this.deadRatio * this.index.size)) {
      this.compact().catch((e: unknown) => {
        this.lastCompactionError = e instanceof StoreError ? e : ioError(e, 'compacting', this.dir);
        this.compactCooldown = COMPACT_RETRY_COMMITS;
      });
    }
  }

  private async runCompaction(): Promise<void> {
    const m0 = this.manifest;
    if (!m0) return;
    if (this.segments.length <= 1 && this.deadPages() === 0) return;
    if (this.compactHolds > 0) return;
    this.compactCancel = false;
    const snap = this.snapshot();
    const snapSegs = snap.segs;
    const stateBytes = this.stateBytes;
    const cov = this.coverage;
    for (const s of snapSegs) s.refs++;
    const seq = this.nextSeq++;
    const name = segmentName(seq);
    const path = join(this.dir, name);
    let fh: FileHandle | undefined;
    let switched = false;
    const cancelled = (): boolean => this.compactCancel || this.compactHolds > 0 || this.closing || snapSegs[0]!.retired;
    try {
      try {
        fh = await open(path, 'wx+', 0o600);
        const n = snap.keys.length;
        const slots = new Int32Array(n);
        let dataSlots = 0;
        // Two window buffers: window k+1 is read while window k is written.
        const windows = this.buffers.windows();
        const out = fh;
        let writing: Promise<void> = writevAll(out, [encodeSegmentHeader(seq, m0.epoch)], 0);
        try {
          for (let start = 0, w = 0; start < n; start += WINDOW_PAGES, w ^= 1) {
            if (cancelled()) return;
            const end = Math.min(n, start + WINDOW_PAGES);
            const data = await readEntries(snap, start, end, windows[w], this.buffers);
            for (let i = start; i < end; i++) slots[i] = snap.vals[i] === ZERO ? ZERO : dataSlots++;
            await writing;
            this.hook('compact:write');
            writing = writevAll(out, [data], slotOffset(dataSlots) - data.length);
          }
        } finally {
          await writing.catch(() => undefined);
        }
        await writing;
        const meta: SegmentMeta = {
          version: FORMAT_VERSION, seq, kind: 'compact', lineage: m0.lineage, generation: m0.generation, epoch: m0.epoch,
          committedAt: m0.committedAt, dataSlots, pageNos: snap.keys, slots, coverage: cov, state: stateBytes,
        };
        const tail = encodeSegmentTail(meta);
        await writevAll(fh, [tail], slotOffset(dataSlots));
        if (this.fsync) await fh.sync();
        this.hook('compact:synced');
        meta.state = EMPTY;
        const seg = new Segment(name, path, fh, meta, slotOffset(dataSlots) + tail.length);
        await this.exclusive(async () => {
          if (cancelled() || this.closed) return;
          const cur = this.manifest!;
          if (this.segments.length < snapSegs.length || snapSegs.some((s, i) => this.segments[i] !== s)) return;
          const rest = this.segments.slice(snapSegs.length);
          const next: Manifest = { ...cur, segments: [name, ...rest.map((s) => s.name)], state: rest.length ? cur.state : name, nextSeq: this.nextSeq };
          await this.writeManifest(next, 'compact');
          switched = true;
          this.manifest = next;
          this.segments = [seg, ...rest];
          this.rebuildIndex();
          this.hook('compact:renamed');
          await this.syncDir();
        });
      } catch (e) {
        throw ioError(e, 'compacting the store', path, switched ? '' : `the store is unchanged (committed epoch ${this.manifest?.epoch})`);
      }
    } finally {
      for (const s of snapSegs) this.unpin(s);
      if (!switched) {
        await fh?.close().catch(() => undefined);
        await unlink(path).catch(() => undefined);
      }
    }
    if (switched) {
      this.hook('compact:done');
      for (const s of snapSegs) this.retire(s);
    }
  }
}

type BatchStatus = 'open' | 'committing' | 'committed' | 'aborted' | 'failed';

export class EpochBatch {
  readonly lineage: string;
  readonly generation: number;
  readonly epoch: number;
  readonly base: number;
  readonly full: boolean;
  private status: BatchStatus = 'open';
  private error: StoreError | null = null;
  private added = 0;
  /** Page number -> local slot, or ZERO. */
  private readonly map = new PageIndex();
  private readonly writer: SegmentWriter;
  private cleanup: Promise<void> | null = null;
  private commitRun: Promise<unknown> | null = null;
  /** cancelCommit() was called in time: the manifest switch will not happen. */
  private cancelRequested = false;
  /** The manifest switch began: too late to cancel. */
  private switching = false;

  /** @internal */
  constructor(private readonly store: EpochStore, b: { lineage: string; generation: number; epoch: number; base: number; full: boolean }, private readonly seq: number, readonly path: string) {
    this.lineage = b.lineage;
    this.generation = b.generation;
    this.epoch = b.epoch;
    this.base = b.base;
    this.full = b.full;
    this.writer = new SegmentWriter({
      path,
      header: encodeSegmentHeader(seq, b.epoch),
      fsync: store.useFsync,
      describe: `the segment of epoch ${b.epoch}`,
      consequence: () => this.consequence(),
      beforeWrite: () => store.hook('commit:write'),
      onError: (e) => this.fail(e),
    });
  }

  /** Pages added so far (zero pages and superseded ones included). */
  get pages(): number { return this.added; }

  /**
   * Adds pages (`data`: addrs.length × 4096 bytes, in the order of `addrs`). They are
   * visible to store.readPage() at once. `data` is copied, except when it is 8 MiB or
   * more: then it is written from where it is, and must not change until the returned
   * promise resolves. Await the promise: it is the backpressure (and reports a failed write).
   */
  addPages(addrs: BigUint64Array, data: Buffer): Promise<void> {
    const bad = this.check();
    if (bad) return Promise.reject(bad);
    if (data.length !== addrs.length * PAGE_SIZE) {
      return Promise.reject(new RangeError(`addPages: ${addrs.length} addresses need ${addrs.length * PAGE_SIZE} bytes of data, got ${data.length}`));
    }
    if (addrs.length === 0) return Promise.resolve();
    let pns: Float64Array;
    try {
      pns = pageNumbers(addrs);
    } catch (e) {
      return Promise.reject(e);
    }
    const { firstSlot, referenced } = this.writer.append(data, addrs.length);
    for (let i = 0; i < pns.length; i++) this.map.set(pns[i]!, firstSlot + i);
    this.store.recent?.put(pns, data);
    this.added += addrs.length;
    return this.writer.settle(referenced ? firstSlot + addrs.length : undefined);
  }

  /** Marks pages as all-zero (no data is stored for them). */
  addZeroPages(addrs: BigUint64Array): Promise<void> {
    const bad = this.check();
    if (bad) return Promise.reject(bad);
    let pns: Float64Array;
    try {
      pns = pageNumbers(addrs);
    } catch (e) {
      return Promise.reject(e);
    }
    for (let i = 0; i < pns.length; i++) this.map.set(pns[i]!, ZERO);
    const recent = this.store.recent;
    if (recent) for (let i = 0; i < pns.length; i++) recent.delete(pns[i]!);
    this.added += addrs.length;
    return Promise.resolve();
  }

  /**
   * Makes the batch the committed epoch: durable when this resolves. On failure the
   * previous committed epoch is intact and the batch's file is gone.
   */
  commit(state: EpochState, info: { committedAt?: number } = {}): Promise<CommittedEpoch> {
    const bad = this.check();
    if (bad) return this.cleanupThen(bad);
    this.status = 'committing';
    const run = this.doCommit(state, info.committedAt ?? Date.now());
    this.commitRun = run;
    return run;
  }

  /**
   * Asks the batch never to commit (a promotion does not wait for the pages in hand, nor for
   * an fsync that may take a hundred milliseconds). True: the committed epoch stays the
   * previous one whatever happens next, the batch's pages are no longer visible, a later
   * commit() fails, and its file goes once it is aborted (open) or its fsync returns
   * (committing). False: too late (the manifest switch began: wait for the commit), or the
   * batch is over.
   */
  cancelCommit(): boolean {
    if ((this.status !== 'committing' && this.status !== 'open') || this.switching) return false;
    this.cancelRequested = true;
    this.store.recent?.clear(); // its pages are unseen from now on
    return true;
  }

  /** @internal */
  get isCommitted(): boolean { return this.status === 'committed'; }

  /** Drops the batch; the committed epoch is untouched. */
  async abort(): Promise<void> {
    if (this.status === 'committing') throw new StoreError('STATE', `the batch of epoch ${this.epoch} is being committed: it cannot be aborted`);
    if (this.status === 'committed') throw new StoreError('STATE', `the batch of epoch ${this.epoch} is committed`);
    if (this.status === 'open') {
      this.status = 'aborted';
      this.store.release(this);
      this.cleanup = this.writer.destroy();
    }
    await this.cleanup;
  }

  // ------------------------------------------------------------------------------------

  /** @internal */
  lookup(pageNo: number): number | undefined {
    if ((this.status !== 'open' && this.status !== 'committing') || this.cancelRequested) return undefined;
    return this.map.get(pageNo);
  }

  /** @internal */
  readSlotInto(slot: number, out: Buffer, at: number): void {
    this.writer.readSlotInto(slot, out, at);
  }

  /** @internal for store.close(): aborts an open batch, waits for a commit in progress. */
  async settleForClose(): Promise<void> {
    if (this.status === 'committing') await this.commitRun?.catch(() => undefined);
    else if (this.status === 'open') await this.abort();
    else await this.cleanup;
  }

  private check(): Error | null {
    if (this.status === 'failed') return this.error;
    if (this.status !== 'open') return new StoreError('STATE', `the batch of epoch ${this.epoch} is ${this.status}`);
    if (this.cancelRequested) return new StoreError('STATE', `the batch of epoch ${this.epoch} was cancelled`);
    return null;
  }

  private async cleanupThen(e: Error): Promise<never> {
    await this.cleanup;
    throw e;
  }

  private consequence(): string {
    const c = this.store.committedEpochNumber;
    return `the batch of epoch ${this.epoch} is dropped; ${c === null ? 'the store stays empty' : `committed epoch ${c} is intact`}`;
  }

  private fail(e: StoreError): void {
    if (this.status !== 'open' && this.status !== 'committing') return;
    this.error = e;
    this.status = 'failed';
    this.store.release(this);
    this.cleanup = this.writer.destroy();
  }

  private async doCommit(state: EpochState, committedAt: number): Promise<CommittedEpoch> {
    let seg: Segment | null = null;
    try {
      const cov = coverageOf(state.vmas);
      const stateBytes = encodeState(state);
      // The batch's final page table, inside the state's VMAs, ascending.
      const map = this.map;
      const recent = this.store.recent;
      map.forEach((_v, k) => { if (!covers(cov, k)) { map.delete(k); recent?.delete(k); } });
      const { keys: pageNos, vals } = map.sorted();
      const slots = Int32Array.from(vals);
      const meta: SegmentMeta = {
        version: FORMAT_VERSION, seq: this.seq, kind: this.full ? 'full' : 'delta', lineage: this.lineage, generation: this.generation,
        epoch: this.epoch, committedAt, dataSlots: this.writer.slots, pageNos, slots, coverage: cov, state: stateBytes,
      };
      const { fh, size } = await this.writer.finish(encodeSegmentTail(meta));
      if (this.cancelRequested) throw new StoreError('STATE', `the commit of epoch ${this.epoch} was cancelled`);
      this.switching = true;
      meta.state = EMPTY;
      seg = new Segment(segmentName(this.seq), this.path, fh, meta, size);
      this.store.hook('commit:synced');
      const result = await this.store.switchToBatch(this, seg, this.map, decodeState(stateBytes), stateBytes, cov);
      this.status = 'committed';
      this.store.release(this);
      return result;
    } catch (e) {
      const err = e instanceof StoreError ? e : ioError(e, `committing ${`the segment of epoch ${this.epoch}`}`, this.path, this.consequence());
      if (seg && this.store.isLive(seg.name)) {
        // The manifest was switched (only the directory fsync failed): the epoch is committed.
        this.status = 'committed';
        this.store.release(this);
        throw err;
      }
      this.error = err;
      this.status = 'failed';
      this.store.release(this);
      this.cleanup = this.writer.destroy();
      await this.cleanup;
      throw err;
    }
  }
}

/**
 * `sorted` (ascending, distinct) updated for the `touched` keys (any order, repeats
 * allowed): each is in the result exactly when `has(key)`; the others stay as they are.
 */
function mergeSorted(sorted: Float64Array, touched: number[], has: (key: number) => boolean): Float64Array {
  const t = Float64Array.from(new Set(touched)).sort();
  const out = new Float64Array(sorted.length + t.length);
  let i = 0; let j = 0; let o = 0;
  while (i < sorted.length || j < t.length) {
    if (j >= t.length || (i < sorted.length && sorted[i]! < t[j]!)) { out[o++] = sorted[i++]!; continue; }
    const k = t[j++]!;
    if (i < sorted.length && sorted[i] === k) i++;
    if (has(k)) out[o++] = k;
  }
  return out.subarray(0, o);
}
