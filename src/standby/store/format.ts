// The epoch store's on-disk formats: segment files, the manifest, and the helpers that
// convert between page numbers, addresses and the VMA coverage. The overview (with the
// diagram) is in ../epoch-store.ts.
import { crc32 } from 'node:zlib';
import { Packr } from 'msgpackr';
import type { EpochState, VmaWire } from '../../protocol/messages.js';
import { StoreError } from './errors.js';

export const PAGE_SIZE = 4096;
/** Page data starts after a header of one page, so that every slot is page-aligned. */
export const SEGMENT_HEADER_SIZE = 4096;
export const FOOTER_SIZE = 64;
/** The manifest's format. 2: it names a journal (1: segments only; still read). */
export const FORMAT_VERSION = 2;
/** The segments' format (the same under manifests 1 and 2). */
export const SEGMENT_VERSION = 1;
export const MANIFEST_NAME = 'MANIFEST';
export const MANIFEST_TMP = 'MANIFEST.tmp';
/** Slot value meaning "this page is all zeros" (no data on disk). */
export const ZERO = -1;

const SEG_MAGIC = Buffer.from('RRSEG\0\0\x01', 'latin1');
const FOOTER_MAGIC = Buffer.from('RRSEGEND', 'latin1');
const TWO32 = 4294967296;
/** Page number -> (hi, lo) of its address: pageNo = hi * 2^20 + (lo >>> 12). */
const PAGES_PER_4G = 1048576;

// bigints (registers' sigmask, addresses, clocks) are always written as msgpack int64 and
// read back as bigint; numbers are never written as int64, so both round-trip exactly.
// Buffers round-trip as bin. Records (msgpackr's extension) are off: plain msgpack.
const packr = new Packr({ int64AsType: 'bigint', useRecords: false, mapsAsObjects: true, moreTypes: false });

export function encodeState(state: EpochState): Buffer {
  return packr.pack(state);
}

export function decodeState(buf: Buffer): EpochState {
  return packr.unpack(buf) as EpochState;
}

// ---------------------------------------------------------------------------------------
// Names

export function segmentName(seq: number): string {
  return `seg-${seq.toString(16).padStart(12, '0')}.rrs`;
}

export function parseSegmentName(name: string): number | null {
  const m = /^seg-([0-9a-f]{12})\.rrs$/.exec(name);
  return m ? parseInt(m[1]!, 16) : null;
}

/** The journal's file (store/journal.ts), numbered from the same sequence as segments. */
export function journalName(seq: number): string {
  return `jrn-${seq.toString(16).padStart(12, '0')}.rrj`;
}

export function parseJournalName(name: string): number | null {
  const m = /^jrn-([0-9a-f]{12})\.rrj$/.exec(name);
  return m ? parseInt(m[1]!, 16) : null;
}

// ---------------------------------------------------------------------------------------
// Addresses and page numbers

/**
 * Page numbers (address / 4096, exact as a JS number) of `addrs`. Throws RangeError on
 * an address that is not page-aligned. Reads the u64s as two u32 halves (no BigInt).
 */
export function pageNumbers(addrs: BigUint64Array): Float64Array {
  const n = addrs.length;
  const u32 = new Uint32Array(addrs.buffer, addrs.byteOffset, n * 2);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const lo = u32[2 * i]!;
    if ((lo & 0xfff) !== 0) throw new RangeError(`page address 0x${addrs[i]!.toString(16)} is not 4096-aligned`);
    out[i] = u32[2 * i + 1]! * PAGES_PER_4G + (lo >>> 12);
  }
  return out;
}

export function pageNumberOf(addr: bigint): number {
  if ((addr & 0xfffn) !== 0n || addr < 0n) throw new RangeError(`page address 0x${addr.toString(16)} is not 4096-aligned`);
  return Number(addr >> 12n);
}

/** Addresses of page numbers, as a BigUint64Array (written through u32 halves). */
export function addressesOf(pageNos: Float64Array): BigUint64Array {
  const out = new BigUint64Array(pageNos.length);
  const u32 = new Uint32Array(out.buffer);
  for (let i = 0; i < pageNos.length; i++) {
    const p = pageNos[i]!;
    u32[2 * i] = (p % PAGES_PER_4G) * PAGE_SIZE;
    u32[2 * i + 1] = Math.floor(p / PAGES_PER_4G);
  }
  return out;
}

/** u64 little-endian array of exact integers (< 2^53) from doubles, and back. */
export function u64Encode(values: Float64Array): Buffer {
  const buf = Buffer.allocUnsafe(values.length * 8);
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    u32[2 * i] = v % TWO32;
    u32[2 * i + 1] = Math.floor(v / TWO32);
  }
  return buf;
}

export function u64Decode(buf: Buffer): Float64Array {
  const n = buf.length / 8;
  const aligned = alignedCopy(buf, 4);
  const u32 = new Uint32Array(aligned.buffer, aligned.byteOffset, n * 2);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = u32[2 * i + 1]! * TWO32 + u32[2 * i]!;
  return out;
}

function alignedCopy(buf: Buffer, align: number): Buffer {
  if (buf.byteOffset % align === 0) return buf;
  const c = Buffer.allocUnsafeSlow(buf.length);
  buf.copy(c);
  return c;
}

export function i32Encode(values: Int32Array): Buffer {
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
}

export function i32Decode(buf: Buffer): Int32Array {
  const a = alignedCopy(buf, 4);
  return new Int32Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.length));
}

// ---------------------------------------------------------------------------------------
// Coverage: the VMAs of a state as sorted, merged [startPage, endPage) pairs

export function coverageOf(vmas: readonly VmaWire[]): Float64Array {
  const ranges: Array<[number, number]> = [];
  for (const v of vmas) {
    const s = Number(v.start >> 12n);
    const e = Number((v.end + 0xfffn) >> 12n);
    if (e > s) ranges.push([s, e]);
  }
  ranges.sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [s, e] of ranges) {
    const n = out.length;
    if (n > 0 && s <= out[n - 1]!) out[n - 1] = Math.max(out[n - 1]!, e);
    else out.push(s, e);
  }
  return Float64Array.from(out);
}

export function covers(cov: Float64Array, pageNo: number): boolean {
  let lo = 0;
  let hi = cov.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (pageNo < cov[2 * mid]!) hi = mid - 1;
    else if (pageNo >= cov[2 * mid + 1]!) lo = mid + 1;
    else return true;
  }
  return false;
}

/** Whether every range of `inner` lies inside `outer`. */
export function coverageContains(outer: Float64Array, inner: Float64Array): boolean {
  let j = 0;
  for (let i = 0; i < inner.length; i += 2) {
    const s = inner[i]!;
    const e = inner[i + 1]!;
    while (j < outer.length && outer[j + 1]! <= s) j += 2;
    if (j >= outer.length || outer[j]! > s || outer[j + 1]! < e) return false;
  }
  return true;
}

/** The page numbers in both coverages, as a coverage. */
export function intersectCoverage(a: Float64Array, b: Float64Array): Float64Array {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const s = Math.max(a[i]!, b[j]!);
    const e = Math.min(a[i + 1]!, b[j + 1]!);
    if (s < e) out.push(s, e);
    if (a[i + 1]! < b[j + 1]!) i += 2;
    else j += 2;
  }
  return Float64Array.from(out);
}

// ---------------------------------------------------------------------------------------
// Segment files

export type SegmentKind = 'full' | 'delta' | 'compact';

/** What a segment says about itself: everything but the page data. */
export interface SegmentMeta {
  version: number;
  seq: number;
  kind: SegmentKind;
  lineage: string;
  generation: number;
  epoch: number;
  committedAt: number;
  /** Data slots written (including ones superseded within the batch). */
  dataSlots: number;
  /** The batch's final page table, ascending page numbers, slot or ZERO. */
  pageNos: Float64Array;
  slots: Int32Array;
  /**
   * Pages outside it are dropped when the index is rebuilt, before this segment's pages
   * are put in: the VMA coverage of the state it was committed with, or for a checkpoint,
   * the intersection of the coverages of every epoch it spans (a page unmapped in any of
   * them and not written since is gone).
   */
  coverage: Float64Array;
  /** The EpochState, msgpack (see encodeState). */
  state: Buffer;
}

export function encodeSegmentHeader(seq: number, epoch: number): Buffer {
  const h = Buffer.alloc(SEGMENT_HEADER_SIZE);
  SEG_MAGIC.copy(h, 0);
  h.writeUInt32LE(SEGMENT_VERSION, 8);
  h.writeUInt32LE(SEGMENT_HEADER_SIZE, 12);
  h.writeDoubleLE(seq, 16);
  h.writeDoubleLE(epoch, 24);
  return h;
}

export function slotOffset(slot: number): number {
  return SEGMENT_HEADER_SIZE + slot * PAGE_SIZE;
}

/** The meta block followed by the footer; written at slotOffset(meta.dataSlots). */
export function encodeSegmentTail(meta: SegmentMeta): Buffer {
  const body = packr.pack({
    v: meta.version, seq: meta.seq, kind: meta.kind, lineage: meta.lineage, generation: meta.generation,
    epoch: meta.epoch, committedAt: meta.committedAt, dataSlots: meta.dataSlots,
    pageNos: u64Encode(meta.pageNos), slots: i32Encode(meta.slots), coverage: u64Encode(meta.coverage), state: meta.state,
  });
  const metaOffset = slotOffset(meta.dataSlots);
  const footer = Buffer.alloc(FOOTER_SIZE);
  FOOTER_MAGIC.copy(footer, 0);
  footer.writeUInt32LE(SEGMENT_VERSION, 8);
  footer.writeUInt32LE(crc32(body), 12);
  footer.writeDoubleLE(metaOffset, 16);
  footer.writeDoubleLE(body.length, 24);
  footer.writeDoubleLE(meta.dataSlots, 32);
  footer.writeUInt32LE(crc32(footer.subarray(0, 60)), 60);
  return Buffer.concat([body, footer]);
}

export interface SegmentFooter { metaOffset: number; metaLength: number; metaCrc: number; dataSlots: number }

export function decodeSegmentFooter(footer: Buffer, fileSize: number, path: string): SegmentFooter {
  const bad = (why: string): StoreError => new StoreError('CORRUPT', `segment ${path} is corrupt: ${why}`, { path });
  if (footer.length !== FOOTER_SIZE || !footer.subarray(0, 8).equals(FOOTER_MAGIC)) throw bad('no footer (an unfinished batch?)');
  if (crc32(footer.subarray(0, 60)) !== footer.readUInt32LE(60)) throw bad('footer checksum mismatch');
  const version = footer.readUInt32LE(8);
  if (version !== SEGMENT_VERSION) throw bad(`format version ${version}, this build reads ${SEGMENT_VERSION}`);
  const f = {
    metaCrc: footer.readUInt32LE(12),
    metaOffset: footer.readDoubleLE(16),
    metaLength: footer.readDoubleLE(24),
    dataSlots: footer.readDoubleLE(32),
  };
  if (f.metaOffset !== slotOffset(f.dataSlots) || f.metaOffset + f.metaLength + FOOTER_SIZE !== fileSize) {
    throw bad(`sizes do not add up (file ${fileSize} bytes, ${f.dataSlots} slots, meta ${f.metaLength} bytes)`);
  }
  return f;
}

export function decodeSegmentMeta(body: Buffer, footer: SegmentFooter, path: string): SegmentMeta {
  const bad = (why: string): StoreError => new StoreError('CORRUPT', `segment ${path} is corrupt: ${why}`, { path });
  if (crc32(body) !== footer.metaCrc) throw bad('index checksum mismatch');
  let m: Record<string, unknown>;
  try {
    m = packr.unpack(body) as Record<string, unknown>;
  } catch (e) {
    throw bad(`index does not decode (${(e as Error).message})`);
  }
  const pageNos = u64Decode(m['pageNos'] as Buffer);
  const slots = i32Decode(m['slots'] as Buffer);
  if (pageNos.length !== slots.length) throw bad('index arrays differ in length');
  const dataSlots = m['dataSlots'] as number;
  for (let i = 0; i < slots.length; i++) {
    const s = slots[i]!;
    if (s !== ZERO && (s < 0 || s >= dataSlots)) throw bad(`slot ${s} out of range`);
    if (i > 0 && pageNos[i]! <= pageNos[i - 1]!) throw bad('index not sorted');
  }
  return {
    version: m['v'] as number,
    seq: m['seq'] as number,
    kind: m['kind'] as SegmentKind,
    lineage: m['lineage'] as string,
    generation: m['generation'] as number,
    epoch: m['epoch'] as number,
    committedAt: m['committedAt'] as number,
    dataSlots,
    pageNos,
    slots,
    coverage: u64Decode(m['coverage'] as Buffer),
    state: Buffer.from(m['state'] as Buffer),
  };
}

// ---------------------------------------------------------------------------------------
// Manifest: one line of JSON, then one line with its CRC-32 in hex.

export interface Manifest {
  format: number;
  lineage: string;
  generation: number;
  epoch: number;
  committedAt: number;
  /** Live pages (zero pages included). */
  pages: number;
  /** Live segments, oldest first: later ones override earlier ones. */
  segments: string[];
  /** The segment whose meta holds the committed EpochState. */
  state: string;
  /** The next segment sequence number to use. */
  nextSeq: number;
  /**
   * Format 2: the journal whose records from byte `journalFrom` on apply after `epoch`
   * (the file may not exist yet: then it is empty). Absent in format 1.
   */
  journal?: string;
  journalFrom?: number;
}

export function encodeManifest(m: Manifest): Buffer {
  const body = JSON.stringify(m);
  return Buffer.from(`${body}\n${crc32(body).toString(16).padStart(8, '0')}\n`);
}

export function decodeManifest(buf: Buffer, path: string): Manifest {
  const bad = (why: string): StoreError => new StoreError('CORRUPT', `manifest ${path} is corrupt: ${why}`, { path });
  const text = buf.toString('utf8');
  const nl = text.indexOf('\n');
  if (nl < 0) throw bad('truncated');
  const body = text.slice(0, nl);
  const crc = text.slice(nl + 1).trim();
  if (crc !== crc32(body).toString(16).padStart(8, '0')) throw bad('checksum mismatch');
  let m: Manifest;
  try {
    m = JSON.parse(body) as Manifest;
  } catch (e) {
    throw bad(`not JSON (${(e as Error).message})`);
  }
  if (m.format !== FORMAT_VERSION && m.format !== 1) throw bad(`format version ${String(m.format)}, this build reads 1 and ${FORMAT_VERSION}`);
  if (m.journal !== undefined && (typeof m.journal !== 'string' || parseJournalName(m.journal) === null
    || !Number.isSafeInteger(m.journalFrom) || m.journalFrom! < 0)) {
    throw bad('journal fields inconsistent');
  }
  const ints = [m.generation, m.epoch, m.committedAt, m.pages, m.nextSeq];
  if (typeof m.lineage !== 'string' || ints.some((v) => !Number.isSafeInteger(v) || v < 0)
    || !Array.isArray(m.segments) || m.segments.length === 0 || new Set(m.segments).size !== m.segments.length
    || typeof m.state !== 'string' || !m.segments.includes(m.state) || m.segments.some((s) => parseSegmentName(s) === null)) {
    throw bad('fields missing or inconsistent');
  }
  return m;
}
