// The standby's durable store: the last committed epoch of one replicated process (every
// page, the EpochState, and the identity lineage/generation/epoch/committedAt), in a
// directory: segments of decoded pages (a checkpoint) plus a journal of the epochs since.
//
// On disk
// -------
//
//   DIR/                                     (created 0700)
//   ├── LOCK                  "PID STARTTIME\n" of the process that has the store open
//   ├── MANIFEST              the checkpoint: one JSON line + one line CRC-32 (hex)
//   │     {"format":2,"lineage":"…","generation":3,"epoch":912,"committedAt":1718…,
//   │      "pages":262144,"segments":["seg-000000000012.rrs","seg-000000000013.rrs"],
//   │      "state":"seg-000000000013.rrs","nextSeq":20,
//   │      "journal":"jrn-000000000014.rrj","journalFrom":0}
//   ├── seg-000000000012.rrs  live segments, oldest first; a later one overrides an earlier
//   ├── seg-000000000013.rrs  one (the checkpoint's state is in the last)
//   ├── jrn-000000000014.rrj  the epochs committed after `epoch`: its records from byte
//   │                         `journalFrom` on (0 as written here; format: store/journal.ts)
//   └── (MANIFEST.tmp, seg-*.rrs and jrn-*.rrj not in MANIFEST: leftovers of unfinished
//        batches, checkpoints or compactions, deleted when the store is opened)
//
//   A segment: a full batch, a checkpoint or a compaction, written front to back, fsync'd
//   before the manifest names it.
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
//            |   coverage: u64[] [start, end) page-number pairs: pages     |
//            |             outside are dropped before these go in          |
//            |   state: bin, the EpochState (msgpack; see format.ts)}      |
//            +------------------------------------------------------------+
//            | footer, 64 B: "RRSEGEND", u32 version, u32 crc32(meta),     |
//   EOF      |   f64 metaOffset, f64 metaLength, f64 dataSlots, …, crc32   |
//            +------------------------------------------------------------+
//
// A segment's page table holds its final version of each page: a later page with the same
// address in the same batch supersedes the earlier one (whose slot stays, dead).
//
// Why a journal
// -------------
// A delta batch arrives as encoded frames (XOR deltas, LZ4): about a tenth of the decoded
// pages' size under a real load. Writing decoded pages each epoch made the standby's disk
// take the target's dirty rate (80 MB/s under redis SET at 100 ms for 9 MB/s on the link),
// with a file create, two fsyncs and a rename per epoch. The journal appends the frames as
// they came and fdatasyncs once; the decoded pages stay in memory (store/page-arena.ts)
// until a checkpoint writes them once, however many epochs rewrote them meanwhile.
//
// Commit protocol (power-cut safe)
// --------------------------------
//   Delta batch: its pages go to memory as they arrive (decoded, for reads and as the next
//   deltas' bases) and its frames are kept; commit() appends one record (the frames and the
//   state) to the journal and fdatasyncs it: the commit point. A record that failed is cut
//   off again; one torn by a crash fails its checksum and is cut off at the next open.
//   Full batch: as a segment of its own:
//   1. pages are written to the new segment while they arrive (large sequential writes);
//   2. commit(): meta + footer appended, fsync(segment);
//   3. MANIFEST.tmp written, fsync, rename(MANIFEST.tmp, MANIFEST), fsync(DIR); the
//      manifest names a new, empty journal;
//   4. only then: commit() resolves; the segments and journal it replaced are deleted.
// A crash before the rename leaves the old MANIFEST, which names only complete, fsync'd
// segments; after it, the new one. Opening deletes every seg-*.rrs and jrn-*.rrj the
// MANIFEST does not name and MANIFEST.tmp, then replays the journal's whole records. An
// error (ENOSPC: DISK_FULL; any other: IO) before the commit point removes what the batch
// wrote and leaves the committed epoch as it was.
//
// Checkpoints
// -----------
// Once the journal's pages in memory pass `checkpointBytes` (default 64 MiB), or the journal
// has grown by `journalBytes` (256 MiB) since the last checkpoint, a checkpoint writes the
// committed epoch E's pages that the journal set (in memory, or zeroed) to one segment, and
// switches the manifest to the segments plus it, with E's identity and a new journal: a
// copy of the records committed after E (made durable before the manifest names it), so
// the old journal's space is freed. Commits go on while the segment is written; their
// pages stay in memory. Pages unmapped
// between two checkpoints are dropped by the segment's coverage (the intersection of the
// coverages of the epochs it spans), as a per-epoch segment would have.
//
// Reading
// -------
// At open, the live segments' page tables are replayed in order into one index from page
// number (a JS number, exact below 2^53) to a "global slot" (segment base + slot; segments
// are numbered consecutively), -1 for a zero page, or <= -2 for a page in memory; then the
// journal's records are decoded and applied (the page decoder is an option of open()).
// readPage() is an index lookup and a copy from memory or one pread of 4 KiB (synchronous:
// a page-cache hit costs ~2 µs, far less than a thread-pool round trip); during an open
// batch it looks at the batch's pages first. pages() and compaction read 8 MiB windows of
// the sorted index, coalescing consecutive slots (gaps of up to 8 dead slots included) into
// reads of up to 1 MiB, 8 in flight.
//
// Checksums cover the manifest, each segment's meta and footer, and each journal record,
// not a segment's page data: a page is only referenced once its segment was fsync'd whole,
// so a crash cannot tear one; media corruption of page data is left to the file system.
//
// Writing
// -------
// A full batch's addPages() copies into reused 8 MiB staging buffers (an input of 8 MiB or
// more is written in place: the call resolves once it is on its way to disk) and one pump
// writes them with writev() of up to 32 MiB; addPages() waits only while more than 64 MiB
// are unwritten.
//
// Unmapped pages
// --------------
// Pages outside the committed state's VMAs are dropped at commit: the batch's own pages
// outside them are not kept, and when the VMAs no longer cover what the previous state's
// did, the pages in the uncovered part are removed from the index. Replay does the same,
// with each segment's coverage, so that a page unmapped at epoch 5 and mapped again at 6
// without being written reads as zero, not as its content from before epoch 5.
//
// Compaction
// ----------
// A segment's weight is its data slots plus its zero entries; dead pages = total weight -
// live pages held in segments (superseded versions, pages superseded within a batch,
// dropped pages). After a commit, a compaction starts in the background (instead of a
// checkpoint) when there are more than 4 segments and more than `deadRatio` (default 3) dead
// pages per live one, or more than 64 segments. It writes one segment with every live page
// of the committed epoch E in address order (those in memory included: it is a checkpoint
// too) and a copy of the state, switches the manifest to it alone, and deletes the old ones:
// crash-safe as a commit is, and it never blocks a commit for longer than the manifest
// switch (a `full` batch committed meanwhile makes it give up) and the copy of the journal's
// tail. The rule keeps disk use
// below about (1 + deadRatio) times the live data (plus the segments since the last
// compaction) and bounds open time and the number of files; each compaction follows at
// least deadRatio times as many page writes as it copies, so it adds at most 1/deadRatio
// to the write volume. compact() and checkpoint() run one now; idle() waits for a
// background one; a failed background one (say, ENOSPC) changes nothing, is kept in
// lastCompactionError and is retried 16 commits later.
import { mkdir, open, readdir, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join, resolve as resolvePath } from 'node:path';
import { DeltaPageDecoder } from '../codec/delta-codec.js';
import { addrsToBuffer, bufferToAddrs, type DecodedPages, type EncodedPages, type PageDecoder } from '../codec/page-codec.js';
import type { EpochState } from '../protocol/messages.js';
import { StoreError, ioError } from './store/errors.js';
import {
  FOOTER_SIZE, FORMAT_VERSION, MANIFEST_NAME, MANIFEST_TMP, PAGE_SIZE, SEGMENT_HEADER_SIZE, SEGMENT_VERSION, ZERO,
  addressesOf, coverageContains, coverageOf, covers, intersectCoverage, journalName, parseJournalName, decodeManifest, decodeSegmentFooter, decodeSegmentMeta,
  decodeState, encodeManifest, encodeSegmentHeader, encodeSegmentTail, encodeState, pageNumberOf, pageNumbers,
  parseSegmentName, segmentName, slotOffset, type Manifest, type SegmentMeta,
} from './store/format.js';
import {
  JournalWriter, decodeBody, encodeRecord, lastRecord, scanJournal, type JournalChunk,
} from './store/journal.js';
import { DirLock } from './store/lock.js';
import { PageArena } from './store/page-arena.js';
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
  | 'journal:write' | 'journal:synced'
  | 'compact:write' | 'compact:synced' | 'compact:manifest-tmp' | 'compact:renamed' | 'compact:done'
  | 'checkpoint:write' | 'checkpoint:synced' | 'checkpoint:manifest-tmp' | 'checkpoint:renamed' | 'checkpoint:done'
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
  /**
   * A checkpoint writes the pages the journal committed since the last one to a segment
   * once they take more than this much memory (default 64 MiB)...
   */
  checkpointBytes?: number;
  /** ...or once the journal has grown by this much since (default 256 MiB). */
  journalBytes?: number;
  /** Decodes the frames of journal records at open (default: DeltaPageDecoder, which reads every codec). */
  decoder?: PageDecoder;
  /** Testing: called at each StoreFailpoint; it may throw (an injected I/O error) or kill the process. */
  failpoint?: (point: StoreFailpoint) => void;
}

const DEFAULT_CHECKPOINT_BYTES = 64 << 20;
const DEFAULT_JOURNAL_BYTES = 256 << 20;

/**
 * Index values: >= 0 a global segment slot, ZERO (-1) an all-zero page, <= -2 a slot of
 * the page arena (memory): the journal's pages not yet checkpointed, and the open batch's.
 */
const memRef = (slot: number): number => -2 - slot;
const isMem = (v: number): boolean => v <= -2;
const memSlot = (v: number): number => -2 - v;

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
  const abs = resolvePath(dir);
  // A checkpoint may replace the journal between reading the manifest and opening it: then
  // the new manifest names the new one.
  for (let attempt = 0; ; attempt++) {
    const path = join(abs, MANIFEST_NAME);
    let raw: Buffer;
    try {
      raw = await readFile(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return null;
      throw ioError(e, 'reading the manifest', path);
    }
    const m = decodeManifest(raw, path);
    const info = { lineage: m.lineage, generation: m.generation, epoch: m.epoch, committedAt: m.committedAt, pages: m.pages };
    if (!m.journal) return info;
    // The records after the checkpoint (the standby may be appending one).
    const jpath = join(abs, m.journal);
    let fh: FileHandle;
    try {
      fh = await open(jpath, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, 'opening the journal', jpath);
      if (attempt > 0) return info; // named but not created yet (no epoch since): empty
      continue;
    }
    try {
      const last = await lastRecord(fh, jpath, m.journalFrom ?? 0, m.epoch);
      if (last) Object.assign(info, { epoch: last.epoch, committedAt: last.committedAt, pages: last.pages, generation: Math.max(m.generation, last.generation) });
    } finally {
      await fh.close().catch(() => undefined);
    }
    return info;
  }
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
    /** The coverage of the segment's state: every page it leaves in the index is inside it. */
    readonly stateCov: Float64Array,
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
  /** Holds the entries whose value is a memRef (pinned by whoever reads them in the background). */
  arena: PageArena;
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
  let n = 0;
  for (let i = start; i < end; i++) {
    const v = snap.vals[i]!;
    if (v === ZERO) continue;
    n++;
    if (!isMem(v)) pos.push(i);
  }
  const out = into && into.length >= n * PAGE_SIZE ? into.subarray(0, n * PAGE_SIZE) : Buffer.allocUnsafeSlow(n * PAGE_SIZE);
  // Pages in memory are copied now; the rest is read from segments below, into the
  // places they take among all the data pages (`at` of entry i).
  const at: number[] = [];
  for (let i = start, j = 0; i < end; i++) {
    const v = snap.vals[i]!;
    if (v === ZERO) continue;
    if (isMem(v)) snap.arena.readInto(memSlot(v), out, j * PAGE_SIZE);
    else at.push(j);
    j++;
  }
  if (pos.length === 0) return out;
  // pos[j] goes to place at[j] of `out`; visit in slot order to find runs.
  const order = pos.map((_, j) => j);
  let sorted = true;
  for (let j = 1; j < pos.length; j++) if (snap.vals[pos[j]!]! < snap.vals[pos[j - 1]!]!) { sorted = false; break; }
  if (!sorted) order.sort((a, b) => snap.vals[pos[a]!]! - snap.vals[pos[b]!]!);
  // A run: slots [slot, slot + span) of one segment, holding the pages outs[k] (places in
  // `out`) at rel[k].
  const runs: Array<{ seg: number; slot: number; span: number; outs: number[]; rel: number[] }> = [];
  for (const j of order) {
    const g = snap.vals[pos[j]!]!;
    const s = segmentOf(snap.segs, snap.bases, g);
    const slot = g - snap.bases[s]!;
    const r = runs[runs.length - 1];
    if (r && r.seg === s && slot >= r.slot + r.span && slot - (r.slot + r.span) <= MAX_GAP_PAGES && slot + 1 - r.slot <= MAX_RUN_PAGES) {
      r.outs.push(at[j]!);
      r.rel.push(slot - r.slot);
      r.span = slot + 1 - r.slot;
    } else {
      runs.push({ seg: s, slot, span: 1, outs: [at[j]!], rel: [0] });
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
  /** The committed epoch's identity: the manifest's, or the last journal record's after it. */
  private head: StoreIdentity | null = null;
  /** @internal Pages of the journal not yet checkpointed, and of the open batch. */
  readonly arena = new PageArena();
  /** Index entries that refer to the arena. */
  private memPages = 0;
  /**
   * The coverages of the epochs committed since the last segment, with their epochs
   * (repeats left out): a checkpoint at epoch E records the intersection of those up to E.
   */
  private coverages: Array<{ epoch: number; cov: Float64Array }> = [];
  /**
   * Pages the journal made zero since the last segment -> the epoch: a checkpoint writes
   * them (as zero entries) with the pages in memory, or their older content would return.
   */
  private zeroedSince = new PageIndex();
  private journal: JournalWriter | null = null;
  private readonly checkpointBytes: number;
  private readonly journalBytes: number;
  private decoder: PageDecoder | null;
  /** What opening the store replayed from the journal, and the torn tail it cut off. */
  recovered = { records: 0, tornBytes: 0 };

  /** @internal the open batch. */
  batch: EpochBatch | null = null;
  private chain: Promise<void> = Promise.resolve();
  private compaction: Promise<void> | null = null;
  private compactionKind: 'compact' | 'checkpoint' = 'compact';
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
    this.checkpointBytes = options.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES;
    this.journalBytes = options.journalBytes ?? DEFAULT_JOURNAL_BYTES;
    for (const [k, v] of [['checkpointBytes', this.checkpointBytes], ['journalBytes', this.journalBytes]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${k} must be a non-negative whole number of bytes, got ${String(v)}`);
    }
    this.decoder = options.decoder ?? null;
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
      await store.journal?.close();
      await lock.release();
      throw e;
    }
    return store;
  }

  /** The committed EpochState alone (what `committed` has, without counting the disk use). */
  get committedState(): EpochState | null {
    return this.head ? this.state : null;
  }

  get committed(): CommittedEpoch | null {
    const h = this.head;
    if (!h || !this.state) return null;
    return {
      lineage: h.lineage, generation: h.generation, epoch: h.epoch, committedAt: h.committedAt,
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
    const c = this.head;
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
    // A full batch is written as a segment (it replaces everything); a delta batch's pages
    // stay in memory and its record goes to the journal.
    const seq = b.full ? this.nextSeq++ : -1;
    const batch = new EpochBatch(this, { ...b }, seq, b.full ? join(this.dir, segmentName(seq)) : this.journalPath());
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
    const unpinArena = this.arena.pin();
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
      unpinArena();
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
   * (4096-byte units). The recent pages, then the pages in memory, are copied in bulk; the
   * rest (from segments, or zero) one by one.
   */
  readPagesInto(addrs: BigUint64Array, out: Buffer, outPages: Int32Array): void {
    this.assertOpen();
    const pns = pageNumbers(addrs);
    const rest = this.recent ? this.recent.getMany(pns, out, outPages) : null;
    const n = rest ? rest.length : pns.length;
    const fromArena = { slots: new Int32Array(n), to: new Int32Array(n), n: 0 };
    for (let j = 0; j < n; j++) {
      const i = rest ? rest[j]! : j;
      this.readUncachedInto(pns[i]!, out, outPages[i]! * PAGE_SIZE, fromArena);
    }
    this.arena.copyOut(fromArena.slots, fromArena.n, out, fromArena.to);
  }

  /** `defer`: a page in the arena is listed there (to be copied in bulk) instead of copied now. */
  private readUncachedInto(pn: number, out: Buffer, at: number, defer?: { slots: Int32Array; to: Int32Array; n: number }): true | null | undefined {
    const fromArena = (v: number): true => {
      if (!defer) this.arena.readInto(memSlot(v), out, at);
      else { defer.slots[defer.n] = memSlot(v); defer.to[defer.n++] = at / PAGE_SIZE; }
      return true;
    };
    const b = this.batch;
    if (b) {
      const r = b.lookup(pn);
      if (r !== undefined) {
        if (r === ZERO) { out.fill(0, at, at + PAGE_SIZE); return null; }
        if (isMem(r)) return fromArena(r);
        b.readSlotInto(r, out, at);
        return true;
      }
    }
    const g = this.index.get(pn);
    if (g === undefined || g === ZERO) {
      out.fill(0, at, at + PAGE_SIZE);
      return g === ZERO ? null : undefined;
    }
    if (isMem(g)) return fromArena(g);
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
    return this.background('compact');
  }

  /** Writes the journal's pages held in memory to a segment now (see the header). */
  checkpoint(): Promise<void> {
    return this.background('checkpoint');
  }

  /**
   * One background writer at a time: a compaction (every live page into one segment) or a
   * checkpoint (the pages in memory into one more segment). Asking for one while the other
   * runs waits for it and then runs.
   */
  private background(kind: 'compact' | 'checkpoint'): Promise<void> {
    this.assertOpen();
    if (this.compaction) {
      if (this.compactionKind === kind) return this.compaction;
      return this.compaction.catch(() => undefined).then(() => this.background(kind));
    }
    this.compactionKind = kind;
    this.compaction = this.runCompaction(kind).finally(() => { this.compaction = null; });
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
      const h = this.head;
      if (!m || !h) throw new StoreError('STATE', `store ${this.dir} has no committed epoch: nothing to set the generation of`);
      if (generation < h.generation) throw new StoreError('MISMATCH', `generation ${generation} is older than committed generation ${h.generation}`);
      if (generation === h.generation) return;
      const next = { ...m, generation, nextSeq: this.nextSeq };
      await this.writeManifest(next, 'generation');
      this.manifest = next;
      this.head = { ...h, generation };
      this.hook('generation:renamed');
      await this.syncDir();
    });
  }

  stats(): { segments: number; livePages: number; deadPages: number; bytesOnDisk: number; memoryPages: number; journalBytes: number } {
    return {
      segments: this.segments.length, livePages: this.index.size, deadPages: this.deadPages(), bytesOnDisk: this.bytesOnDisk(),
      memoryPages: this.memPages, journalBytes: this.journalSince(),
    };
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
    await this.journal?.close();
    this.journal = null;
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
  get committedEpochNumber(): number | null { return this.head?.epoch ?? null; }

  /** @internal whether a segment is named by the current manifest. */
  isLive(name: string): boolean {
    return this.manifest?.segments.includes(name) ?? false;
  }

  /** @internal the batch is finished (committed, aborted or failed). */
  release(batch: EpochBatch): void {
    if (this.batch === batch) this.batch = null;
    // A full batch's pages were held as the newest versions: not any more. (A delta
    // batch's pages are never there: it took them out.)
    if (!batch.isCommitted && batch.full) this.recent?.clear();
  }

  /**
   * @internal Switches the manifest to a full batch's finished segment (and a new journal)
   * and replaces the index. seg.meta holds the batch's final pages inside `cov`, ascending;
   * `map` is its table (already filtered to `cov`), which becomes the index.
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
      const cur = this.head;
      if (cur && batch.generation < cur.generation) {
        throw new StoreError('MISMATCH', `batch generation ${batch.generation} is older than committed generation ${cur.generation} (raised while the batch was open)`);
      }
      // A full batch starts a new journal (created on its first record).
      const journal = journalName(this.nextSeq++);
      const m: Manifest = {
        format: FORMAT_VERSION, lineage: batch.lineage, generation: batch.generation, epoch: batch.epoch,
        committedAt: seg.meta.committedAt, pages: seg.meta.pageNos.length, segments: [seg.name], state: seg.name, nextSeq: this.nextSeq,
        journal, journalFrom: 0,
      };
      await this.writeManifest(m, 'commit');
      // Switched: from here on the new epoch is the committed one.
      onReplaced(this.segments);
      this.index.forEach((v) => { if (isMem(v)) this.arena.free(memSlot(v)); });
      this.memPages = 0;
      const oldJournal = this.journal;
      this.journal = this.newJournal(join(this.dir, journal));
      seg.base = 0;
      this.index = map; // already filtered to `cov`; local slots are global with base 0
      this.nextBase = seg.meta.dataSlots;
      this.totalWeight = seg.weight;
      this.keysVersion++;
      this.contentKeys = null;
      this.segments = [seg];
      this.indexVersion++;
      this.manifest = m;
      this.head = { lineage: m.lineage, generation: m.generation, epoch: m.epoch, committedAt: m.committedAt };
      this.state = state;
      this.stateBytes = stateBytes;
      this.coverage = cov;
      this.coverages = [];
      this.zeroedSince = new PageIndex();
      await oldJournal?.close();
      this.hook('commit:renamed');
      await this.syncDir();
      // Only once the new manifest is durable: before, a power cut could bring the old one
      // back naming a journal that is gone. (If the sync failed, the next open deletes it.)
      if (oldJournal) void unlink(oldJournal.path).catch(() => undefined);
    });
  }

  /**
   * @internal Commits a delta batch: its record is appended to the journal and made
   * durable (the commit point), then its pages (in the arena) join the index. `map`: the
   * batch's final pages, already filtered to `cov`; `record` builds the record once the
   * live page count is known. With `replay`, the record is already in the journal.
   */
  commitDelta(batch: EpochBatch, map: PageIndex, state: EpochState, stateBytes: Buffer, cov: Float64Array, committedAt: number,
    record: ((pages: number) => Buffer[]) | null, consequence: () => string): Promise<CommittedEpoch> {
    return this.exclusive(async () => {
      if (this.closed) throw new StoreError('STATE', `store ${this.dir} is closed`);
      const cur = this.head;
      if (cur && batch.generation < cur.generation) {
        throw new StoreError('MISMATCH', `batch generation ${batch.generation} is older than committed generation ${cur.generation} (raised while the batch was open)`);
      }
      if (!cur || cur.epoch !== batch.base || cur.lineage !== batch.lineage) {
        throw new StoreError('MISMATCH', `batch base ${batch.base} does not match committed epoch ${cur?.epoch ?? 'none'}`);
      }
      const shrink = !coverageContains(cov, this.coverage);
      if (record) {
        let removed = 0;
        if (shrink) this.index.forEach((_v, k) => { if (!covers(cov, k)) removed++; });
        let added = 0;
        map.forEach((_v, k) => { if (!this.index.has(k)) added++; });
        const bufs = record(this.index.size - removed + added);
        if (!batch.beginSwitch()) throw new StoreError('STATE', `the commit of epoch ${batch.epoch} was cancelled`);
        if (!this.manifest!.journal) {
          // A store of format 1 (no journal): name one first.
          const m = { ...this.manifest!, format: FORMAT_VERSION, journal: journalName(this.nextSeq++), journalFrom: 0 };
          m.nextSeq = this.nextSeq;
          await this.writeManifest(m, 'commit');
          this.manifest = m;
          await this.syncDir();
        }
        this.hook('journal:write');
        this.journal ??= this.newJournal(this.journalPath());
        await this.journal.append(bufs, consequence());
      }
      // Committed: the pages join the index.
      const gained: number[] = []; // page numbers that now have content and had none
      const lost: number[] = []; // page numbers with content before, none now
      const index = this.index;
      if (shrink) {
        index.forEach((v, k) => {
          if (covers(cov, k)) return;
          if (v !== ZERO) lost.push(k);
          this.unref(v);
          index.delete(k);
          this.recent?.delete(k);
        });
      }
      map.forEach((v, pn) => {
        const prev = index.get(pn);
        const had = prev !== undefined && prev !== ZERO;
        if (had !== (v !== ZERO)) (had ? lost : gained).push(pn);
        if (prev !== undefined) this.unref(prev);
        if (isMem(v)) this.memPages++;
        else if (v === ZERO) this.zeroedSince.set(pn, batch.epoch);
        index.set(pn, v);
      });
      if (gained.length || lost.length) {
        this.keysVersion++;
        if (this.contentKeys) {
          this.contentKeys = mergeSorted(this.contentKeys, [...gained, ...lost], (k) => { const v = index.get(k); return v !== undefined && v !== ZERO; });
        }
      }
      this.indexVersion++;
      if (!sameCoverage(this.coverage, cov)) this.coverages.push({ epoch: batch.epoch, cov });
      this.head = { lineage: batch.lineage, generation: batch.generation, epoch: batch.epoch, committedAt };
      this.state = state;
      this.stateBytes = stateBytes;
      this.coverage = cov;
      if (!record) {
        this.recovered.records++;
        return this.committed!;
      }
      this.hook('journal:synced');
      this.maybeCompact();
      return this.committed!;
    });
  }

  /** An index value is going away: its arena slot (if any) is free. */
  private unref(v: number): void {
    if (isMem(v)) { this.arena.free(memSlot(v)); this.memPages--; }
  }

  /** A journal not created yet: its first append creates it. */
  private newJournal(path: string): JournalWriter {
    return new JournalWriter(path, 0, this.fsync, () => this.syncDir());
  }

  /** @internal where the journal is (or will be created). */
  journalPath(): string {
    return join(this.dir, this.manifest?.journal ?? journalName(this.nextSeq));
  }

  /** Journal bytes since the last checkpoint. */
  private journalSince(): number {
    return Math.max(0, (this.journal?.end ?? 0) - (this.manifest?.journalFrom ?? 0));
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

  /** Dead slots and zero entries in segments: their weight less the entries that still refer to them. */
  private deadPages(): number {
    return Math.max(0, this.totalWeight - (this.index.size - this.memPages));
  }

  private bytesOnDisk(): number {
    let n = this.manifestBytes + (this.journal?.end ?? 0);
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
    const live = new Set([...(m?.segments ?? []), ...(m?.journal ? [m.journal] : [])]);
    let maxSeq = -1;
    for (const name of names) {
      const seq = parseSegmentName(name) ?? parseJournalName(name);
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
    this.nextSeq = Math.max(m?.nextSeq ?? 0, maxSeq + 1, m?.journal ? parseJournalName(m.journal)! + 1 : 0);
    // A process that died before its directory sync: make what it left (and the deletions
    // above) durable before anything is appended to the files here.
    await this.syncDir();
    if (!m) return;
    if (m.state !== m.segments[m.segments.length - 1]) {
      throw new StoreError('CORRUPT', `manifest ${mpath} is corrupt: the state is not in the last segment`, { path: mpath });
    }
    for (const name of m.segments) this.segments.push(await this.loadSegment(name));
    const last = this.segments[this.segments.length - 1]!;
    this.stateBytes = last.meta.state;
    for (const seg of this.segments) seg.meta.state = EMPTY;
    this.state = decodeStateOrCorrupt(this.stateBytes, 'segment', last.path);
    // The state's own coverage: a checkpoint's segment records a narrower one (see SegmentMeta).
    this.coverage = coverageOf(this.state.vmas);
    this.manifest = m;
    this.rebuildIndex();
    if (this.index.size !== m.pages) {
      throw new StoreError('CORRUPT', `store ${this.dir} is corrupt: the manifest says ${m.pages} pages, the segments hold ${this.index.size}`, { path: mpath });
    }
    this.head = { lineage: m.lineage, generation: m.generation, epoch: m.epoch, committedAt: m.committedAt };
    if (m.journal) await this.replayJournal(m.journal, m.journalFrom ?? 0);
  }

  /**
   * Applies the journal's whole records after the checkpoint, in order, as commits; cuts off
   * a torn tail; leaves the journal open for appending after the last record.
   */
  private async replayJournal(name: string, from: number): Promise<void> {
    const path = join(this.dir, name);
    let fh: FileHandle;
    try {
      fh = await open(path, 'r+');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, 'opening the journal', path);
      if (from > 0) throw new StoreError('CORRUPT', `store ${this.dir} is corrupt: journal ${name} named by the manifest is missing`, { path });
      this.journal = this.newJournal(path);
      return;
    }
    let end = from;
    try {
      for await (const r of scanJournal(fh, path, from, this.head!.epoch, true)) {
        const body = decodeBody(r.body!, path);
        if (body.lineage !== this.head!.lineage) break;
        await this.replayRecord(r.head, body, path);
        end = r.end;
      }
      const size = (await fh.stat()).size;
      if (size > end) {
        this.recovered.tornBytes = size - end;
        await fh.truncate(end);
        if (this.fsync) await fh.datasync();
      }
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e instanceof StoreError ? e : ioError(e, 'replaying the journal', path);
    }
    this.journal = JournalWriter.adopt(path, fh, end, this.fsync, () => this.syncDir());
  }

  private async replayRecord(h: { epoch: number; base: number; generation: number; committedAt: number; pages: number }, body: ReturnType<typeof decodeBody>, path: string): Promise<void> {
    const batch = this.begin({ lineage: body.lineage, generation: Math.max(h.generation, this.head!.generation), epoch: h.epoch, base: h.base, full: false });
    try {
      for (const c of body.chunks) {
        if ('f' in c) {
          this.decoder ??= new DeltaPageDecoder();
          let d: DecodedPages;
          try {
            d = await this.decoder.decode(c.f, { into: (a, out, at) => { this.readPagesInto(a, out, at); } });
          } catch (e) {
            throw new StoreError('CORRUPT', `journal ${path} is corrupt: the pages of epoch ${h.epoch} do not decode (${(e as Error).message})`, { path, cause: e });
          }
          batch.putPages(d.addrs, d.pages);
          batch.putZeros(d.zeros);
          this.decoder.release?.(d);
        } else if ('p' in c) {
          batch.putPages(bufferToAddrs(c.p), c.d);
        } else {
          batch.putZeros(bufferToAddrs(c.z));
        }
      }
      await batch.replayCommit(decodeStateOrCorrupt(body.state, 'journal', path), body.state, h.committedAt);
    } catch (e) {
      if (this.batch === batch) await batch.abort().catch(() => undefined);
      throw e;
    }
    if (this.index.size !== h.pages) {
      throw new StoreError('CORRUPT', `journal ${path} is corrupt: epoch ${h.epoch} should hold ${h.pages} pages, replay gives ${this.index.size}`, { path });
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
      return new Segment(name, path, fh, meta, size, coverageOf(decodeStateOrCorrupt(meta.state, 'segment', path).vmas));
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
    let prev: Float64Array | null = null; // the coverage of the state of the segment before
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
      prev = seg.stateCov;
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
    this.snap = { version: this.indexVersion, keys, vals, segs, bases: segs.map((s) => s.base), arena: this.arena };
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

  private async writeManifest(m: Manifest, purpose: 'commit' | 'compact' | 'checkpoint' | 'generation'): Promise<void> {
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
      const committed = this.head ? `committed epoch ${this.head.epoch} is intact` : 'the store stays empty';
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

  /**
   * After a commit: a compaction when the segments call for one (see the header), else a
   * checkpoint when the journal's pages in memory or the journal itself have grown enough.
   */
  private maybeCompact(): void {
    if (!this.autoCompact || this.closing || this.compaction || this.compactHolds > 0) return;
    if (this.compactCooldown > 0) { this.compactCooldown--; return; }
    const n = this.segments.length;
    const compact = n > AUTO_COMPACT_MAX_SEGMENTS || (n > AUTO_COMPACT_MIN_SEGMENTS && this.deadPages() > this.deadRatio * this.index.size);
    const checkpoint = this.memPages * PAGE_SIZE > this.checkpointBytes || this.journalSince() > this.journalBytes;
    if (!compact && !checkpoint) return;
    this.background(compact ? 'compact' : 'checkpoint').catch((e: unknown) => {
      this.lastCompactionError = e instanceof StoreError ? e : ioError(e, compact ? 'compacting' : 'checkpointing', this.dir);
      this.compactCooldown = COMPACT_RETRY_COMMITS;
    });
  }

  /**
   * Writes one segment as of the committed epoch E when it starts: every live page
   * ('compact', which then replaces all segments) or the pages the journal set since the
   * last segment ('checkpoint', appended to them). The manifest then names E and a new
   * journal holding the records committed after E (commits go on meanwhile), and index
   * entries unchanged since E are pointed at the new segment.
   */
  private async runCompaction(kind: 'compact' | 'checkpoint'): Promise<void> {
    if (!this.manifest || !this.head) return;
    if (kind === 'compact' && this.segments.length <= 1 && this.deadPages() === 0 && this.memPages === 0) return;
    // Epochs without pages still add records (their state): a long enough journal is
    // checkpointed even so, for the new journal that comes with it.
    if (kind === 'checkpoint' && this.memPages === 0 && this.zeroedSince.size === 0 && this.journalSince() <= this.journalBytes) return;
    if (this.compactHolds > 0) return;
    this.compactCancel = false;
    // Taken between commits, so that the index, the state and the journal offset agree.
    // The arena is pinned and the segments referenced in the same step.
    const at = await this.exclusive(async () => {
      const full = this.snapshot();
      const sel = kind === 'compact' ? full : selectSince(full, this.zeroedSince);
      const segs = this.segments.slice();
      for (const s of segs) s.refs++;
      // A compaction's segment is the only one: nothing before it to drop pages from.
      let mask = this.coverage;
      if (kind === 'checkpoint') for (const c of this.coverages) mask = intersectCoverage(mask, c.cov);
      return {
        snap: sel, segs, unpin: this.arena.pin(), head: this.head!, stateBytes: this.stateBytes, cov: mask, stateCov: this.coverage,
        journalEnd: this.journal?.end ?? 0, pages: this.index.size,
      };
    });
    const { snap, head: id, stateBytes, cov, segs: snapSegs, unpin: unpinArena } = at;
    const seq = this.nextSeq++;
    const name = segmentName(seq);
    const path = join(this.dir, name);
    let fh: FileHandle | undefined;
    let switched = false;
    // The new journal, until the manifest names it (removed if the switch does not happen).
    const fresh: { journal: JournalWriter | null } = { journal: null };
    const cancelled = (): boolean => this.compactCancel || this.compactHolds > 0 || this.closing || (snapSegs.length > 0 && snapSegs[0]!.retired);
    try {
      try {
        fh = await open(path, 'wx+', 0o600);
        const n = snap.keys.length;
        const slots = new Int32Array(n);
        let dataSlots = 0;
        // Two window buffers: window k+1 is read while window k is written.
        const windows = this.buffers.windows();
        const out = fh;
        let writing: Promise<void> = writevAll(out, [encodeSegmentHeader(seq, id.epoch)], 0);
        try {
          for (let start = 0, w = 0; start < n; start += WINDOW_PAGES, w ^= 1) {
            if (cancelled()) return;
            const end = Math.min(n, start + WINDOW_PAGES);
            await writing;
            const data = await readEntries(snap, start, end, windows[w], this.buffers);
            for (let i = start; i < end; i++) slots[i] = snap.vals[i] === ZERO ? ZERO : dataSlots++;
            this.hook(`${kind}:write`);
            writing = writevAll(out, [data], slotOffset(dataSlots) - data.length);
          }
        } finally {
          await writing.catch(() => undefined);
        }
        await writing;
        const meta: SegmentMeta = {
          version: SEGMENT_VERSION, seq, kind: kind === 'compact' ? 'compact' : 'delta', lineage: id.lineage, generation: id.generation, epoch: id.epoch,
          committedAt: id.committedAt, dataSlots, pageNos: snap.keys, slots, coverage: cov, state: stateBytes,
        };
        const tail = encodeSegmentTail(meta);
        await writevAll(fh, [tail], slotOffset(dataSlots));
        if (this.fsync) await fh.sync();
        this.hook(`${kind}:synced`);
        meta.state = EMPTY;
        const seg = new Segment(name, path, fh, meta, slotOffset(dataSlots) + tail.length, at.stateCov);
        await this.exclusive(async () => {
          if (cancelled() || this.closed) return;
          const cur = this.manifest!;
          // A full batch committed meanwhile replaced the segments: this one is moot.
          if (this.segments.length !== snapSegs.length || snapSegs.some((s, i) => this.segments[i] !== s)) return;
          // A new journal, holding the records committed after E (those of the epochs that
          // went on while the segment was written): the old one's space is freed.
          const journal = journalName(this.nextSeq++);
          fresh.journal = await this.journal?.copyTail(join(this.dir, journal), at.journalEnd)
            ?? this.newJournal(join(this.dir, journal));
          const next: Manifest = {
            ...cur, format: FORMAT_VERSION, lineage: id.lineage, generation: Math.max(cur.generation, id.generation), epoch: id.epoch,
            committedAt: id.committedAt, pages: at.pages, segments: kind === 'compact' ? [name] : [...cur.segments, name], state: name,
            nextSeq: this.nextSeq, journal, journalFrom: 0,
          };
          await this.writeManifest(next, kind);
          switched = true;
          this.manifest = next;
          if (kind === 'compact') {
            seg.base = 0;
            this.nextBase = dataSlots;
            this.totalWeight = seg.weight;
            this.segments = [seg];
          } else {
            seg.base = this.nextBase;
            this.nextBase += dataSlots;
            this.totalWeight += seg.weight;
            this.segments = [...this.segments, seg];
          }
          // Entries unchanged since E now live in the new segment; later ones stay as they are.
          // Pages leaving memory go to RecentPages, the decoder's next bases.
          const index = this.index;
          const recent = this.recent;
          const one = new Float64Array(1);
          for (let i = 0; i < n; i++) {
            const k = snap.keys[i]!;
            const v = snap.vals[i]!;
            if (index.get(k) !== v) continue;
            const nv = slots[i] === ZERO ? ZERO : seg.base + slots[i]!;
            if (nv === v) continue;
            // Not when an open batch has a newer version of it (or a full batch is open).
            if (recent && isMem(v) && !(this.batch && (this.batch.full || this.batch.lookup(k) !== undefined))) {
              one[0] = k;
              recent.put(one, this.arena.view(memSlot(v)));
            }
            this.unref(v);
            index.set(k, nv);
          }
          this.indexVersion++;
          this.coverages = this.coverages.filter((c) => c.epoch > id.epoch);
          const zeroed = this.zeroedSince;
          zeroed.forEach((e, k) => { if (e <= id.epoch) zeroed.delete(k); });
          const old = this.journal;
          const journalNow = fresh.journal!;
          this.journal = journalNow;
          fresh.journal = null;
          await old?.close();
          this.hook(`${kind}:renamed`);
          // Until the directory is synced, the old manifest and journal may come back after a
          // power cut: the new journal's records would be lost with it. So its next append
          // syncs the directory first if this fails.
          try {
            await this.syncDir();
          } catch (e) {
            journalNow.needDirSync();
            throw e;
          }
          if (old) void unlink(old.path).catch(() => undefined); // see switchLocked
        });
      } catch (e) {
        throw ioError(e, kind === 'compact' ? 'compacting the store' : 'checkpointing the store', path,
          switched ? '' : `the store is unchanged (committed epoch ${this.head?.epoch})`);
      }
    } finally {
      for (const s of snapSegs) this.unpin(s);
      unpinArena();
      if (!switched) {
        await fh?.close().catch(() => undefined);
        await unlink(path).catch(() => undefined);
      }
      if (fresh.journal) {
        await fresh.journal.close();
        await unlink(fresh.journal.path).catch(() => undefined);
      }
    }
    if (switched) {
      this.hook(`${kind}:done`);
      if (kind === 'compact') for (const s of snapSegs) this.retire(s);
    }
  }
}

function sameCoverage(a: Float64Array, b: Float64Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The entries of a snapshot the journal set since the last segment: in memory, or zeroed. */
function selectSince(snap: Snapshot, zeroed: PageIndex): Snapshot {
  const pick = (i: number): boolean => {
    const v = snap.vals[i]!;
    return isMem(v) || (v === ZERO && zeroed.has(snap.keys[i]!));
  };
  let n = 0;
  for (let i = 0; i < snap.vals.length; i++) if (pick(i)) n++;
  const keys = new Float64Array(n);
  const vals = new Float64Array(n);
  for (let i = 0, j = 0; i < snap.vals.length; i++) {
    if (pick(i)) { keys[j] = snap.keys[i]!; vals[j++] = snap.vals[i]!; }
  }
  return { ...snap, keys, vals };
}

/** A stored EpochState, or CORRUPT naming the file it came from. */
function decodeStateOrCorrupt(bytes: Buffer, file: 'segment' | 'journal', path: string): EpochState {
  try {
    return decodeState(bytes);
  } catch (e) {
    throw new StoreError('CORRUPT', `${file} ${path} is corrupt: the state does not decode (${(e as Error).message})`, { path });
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
  /** Page number -> local slot of the segment (full), memRef (delta), or ZERO. */
  private readonly map = new PageIndex();
  /** A full batch's segment; null for a delta batch (its pages are in the store's arena). */
  private readonly writer: SegmentWriter | null;
  /** A delta batch's journal record: what it was given, in order. */
  private readonly chunks: JournalChunk[] = [];
  private cleanup: Promise<void> | null = null;
  private commitRun: Promise<unknown> | null = null;
  /** cancelCommit() was called in time: the commit point will not be passed. */
  private cancelRequested = false;
  /** The commit point was reached (manifest switch, journal append): too late to cancel. */
  private switching = false;

  /** @internal */
  constructor(private readonly store: EpochStore, b: { lineage: string; generation: number; epoch: number; base: number; full: boolean }, private readonly seq: number, readonly path: string) {
    this.lineage = b.lineage;
    this.generation = b.generation;
    this.epoch = b.epoch;
    this.base = b.base;
    this.full = b.full;
    this.writer = !b.full ? null : new SegmentWriter({
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
   * visible to store.readPage() at once. `data` is copied, except in a full batch when it
   * is 8 MiB or more: then it is written from where it is, and must not change until the
   * returned promise resolves. Await the promise: it is the backpressure (and reports a
   * failed write).
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
    if (!this.writer) {
      this.putNumbered(pns, data);
      this.chunks.push({ p: Buffer.from(addrsToBuffer(addrs)), d: Buffer.from(data) });
      return Promise.resolve();
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
    try {
      this.putZeros(addrs);
    } catch (e) {
      return Promise.reject(e);
    }
    if (!this.writer && addrs.length > 0) this.chunks.push({ z: Buffer.from(addrsToBuffer(addrs)) });
    return Promise.resolve();
  }

  /**
   * Adds the pages of one frame as it came off the wire (`frame`) and decoded (`pages`).
   * A delta batch journals the frame, not the decoded pages: a tenth of the bytes.
   */
  async addFrame(frame: EncodedPages, pages: DecodedPages): Promise<void> {
    if (this.writer) {
      if (pages.addrs.length) await this.addPages(pages.addrs, pages.pages);
      if (pages.zeros.length) await this.addZeroPages(pages.zeros);
      return;
    }
    const bad = this.check();
    if (bad) throw bad;
    if (pages.pages.length !== pages.addrs.length * PAGE_SIZE) throw new RangeError('addFrame: decoded pages and addresses differ in length');
    this.putPages(pages.addrs, pages.pages);
    this.putZeros(pages.zeros);
    // The frame's buffers are views of what the socket delivered, never reused: kept as they are.
    this.chunks.push({ f: { codec: frame.codec, addrs: frame.addrs, zeros: frame.zeros, rawBytes: frame.rawBytes, data: frame.data } });
  }

  /** @internal (replay) pages into the arena, without journaling them. */
  putPages(addrs: BigUint64Array, data: Buffer): void {
    if (addrs.length) this.putNumbered(pageNumbers(addrs), data);
  }

  private putNumbered(pns: Float64Array, data: Buffer): void {
    const arena = this.store.arena;
    const slots = arena.putMany(data, pns.length);
    for (let i = 0; i < pns.length; i++) this.setEntry(pns[i]!, memRef(slots[i]!));
    this.added += pns.length;
  }

  /**
   * The batch's newest version of page `pn` (a memRef or ZERO): a version it superseded
   * frees its slot, and RecentPages forgets the page (it holds pages that live in segments).
   */
  private setEntry(pn: number, v: number): void {
    const prev = this.map.get(pn);
    if (prev !== undefined && isMem(prev)) this.store.arena.free(memSlot(prev));
    this.map.set(pn, v);
    this.store.recent?.delete(pn);
  }

  /** @internal zero pages, without journaling them. */
  putZeros(addrs: BigUint64Array): void {
    if (addrs.length === 0) return;
    const pns = pageNumbers(addrs);
    for (let i = 0; i < pns.length; i++) this.setEntry(pns[i]!, ZERO);
    this.added += pns.length;
  }

  /**
   * Makes the batch the committed epoch: durable when this resolves. On failure the
   * previous committed epoch is intact and the batch's file (or journal record) is gone.
   */
  commit(state: EpochState, info: { committedAt?: number } = {}): Promise<CommittedEpoch> {
    const bad = this.check();
    if (bad) return this.cleanupThen(bad);
    this.status = 'committing';
    const run = this.writer ? this.doCommit(state, info.committedAt ?? Date.now()) : this.doCommitDelta(state, null, info.committedAt ?? Date.now(), false);
    this.commitRun = run;
    return run;
  }

  /** @internal (replay) commits a journal record's batch without writing it again. */
  replayCommit(state: EpochState, stateBytes: Buffer, committedAt: number): Promise<CommittedEpoch> {
    this.status = 'committing';
    return this.doCommitDelta(state, stateBytes, committedAt, true);
  }

  /**
   * Asks the batch never to commit (a promotion does not wait for the pages in hand, nor for
   * an fsync that may take a hundred milliseconds). True: the committed epoch stays the
   * previous one whatever happens next, the batch's pages are no longer visible, a later
   * commit() fails, and its file goes once it is aborted (open) or its fsync returns
   * (committing). False: too late (the commit point was reached: wait for the commit), or
   * the batch is over.
   */
  cancelCommit(): boolean {
    if ((this.status !== 'committing' && this.status !== 'open') || this.switching) return false;
    this.cancelRequested = true;
    if (this.full) this.store.recent?.clear(); // its pages are unseen from now on (see release)
    return true;
  }

  /** @internal the commit point is being passed: false if cancelled. */
  beginSwitch(): boolean {
    if (this.cancelRequested) return false;
    this.switching = true;
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
      this.cleanup = this.dispose();
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
    this.writer!.readSlotInto(slot, out, at);
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

  /** Frees what the batch holds: its segment file, or its pages in the arena. */
  private dispose(): Promise<void> {
    if (this.writer) return this.writer.destroy();
    const arena = this.store.arena;
    this.map.forEach((v) => { if (isMem(v)) arena.free(memSlot(v)); });
    this.chunks.length = 0;
    return Promise.resolve();
  }

  private fail(e: StoreError): void {
    if (this.status !== 'open' && this.status !== 'committing') return;
    this.error = e;
    this.status = 'failed';
    this.store.release(this);
    this.cleanup = this.dispose();
  }

  private async doCommitDelta(state: EpochState, given: Buffer | null, committedAt: number, replay: boolean): Promise<CommittedEpoch> {
    try {
      const cov = coverageOf(state.vmas);
      const stateBytes = given ?? encodeState(state);
      const map = this.map;
      const recent = this.store.recent;
      const arena = this.store.arena;
      map.forEach((v, k) => {
        if (covers(cov, k)) return;
        if (isMem(v)) arena.free(memSlot(v));
        map.delete(k);
        recent?.delete(k);
      });
      const record = replay ? null : (pages: number): Buffer[] => encodeRecord(
        { epoch: this.epoch, base: this.base, generation: this.generation, committedAt, pages },
        { lineage: this.lineage, state: stateBytes, chunks: this.chunks },
      );
      const result = await this.store.commitDelta(this, map, given ? state : decodeState(stateBytes), stateBytes, cov, committedAt, record, () => this.consequence());
      this.status = 'committed';
      this.chunks.length = 0;
      this.store.release(this);
      return result;
    } catch (e) {
      // Past the commit point (a failpoint threw after it), the epoch is committed.
      return this.failCommit(e, `committing the epoch ${this.epoch}`, this.store.committedEpochNumber === this.epoch && this.switching);
    }
  }

  /** A commit threw: the batch is committed anyway (`committed`) or failed and cleaned up. */
  private async failCommit(e: unknown, doing: string, committed: boolean): Promise<never> {
    const err = e instanceof StoreError ? e : ioError(e, doing, this.path, this.consequence());
    this.status = committed ? 'committed' : 'failed';
    this.store.release(this);
    if (!committed) {
      this.error = err;
      this.cleanup = this.dispose();
      await this.cleanup;
    }
    throw err;
  }

  private async doCommit(state: EpochState, committedAt: number): Promise<CommittedEpoch> {
    const writer = this.writer!;
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
        version: SEGMENT_VERSION, seq: this.seq, kind: 'full', lineage: this.lineage, generation: this.generation,
        epoch: this.epoch, committedAt, dataSlots: writer.slots, pageNos, slots, coverage: cov, state: stateBytes,
      };
      const { fh, size } = await writer.finish(encodeSegmentTail(meta));
      if (!this.beginSwitch()) throw new StoreError('STATE', `the commit of epoch ${this.epoch} was cancelled`);
      meta.state = EMPTY;
      seg = new Segment(segmentName(this.seq), this.path, fh, meta, size, cov);
      this.store.hook('commit:synced');
      const result = await this.store.switchToBatch(this, seg, this.map, decodeState(stateBytes), stateBytes, cov);
      this.status = 'committed';
      this.store.release(this);
      return result;
    } catch (e) {
      // The manifest was switched (only the directory fsync failed): the epoch is committed.
      return this.failCommit(e, `committing the segment of epoch ${this.epoch}`, seg !== null && this.store.isLive(seg.name));
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
