// The store's journal: one record per committed delta batch, appended and fdatasync'd. A
// record holds what arrived on the wire (the encoded page frames, a few percent of the
// decoded pages' size) and the EpochState, so a commit writes about a tenth of what a
// segment of decoded pages would. Replaying a record needs the page decoder and the pages
// as of the record before it: the checkpoint's segments, then the records in order.
//
//   jrn-<seq>.rrj: records back to back; the manifest says from which offset they apply
//
//   0    +-----------------------------------------------------------+
//        | "RRJREC01"                                                |
//   8    | u32 crc32(header bytes 12..64)  u32 crc32(body)           |
//   16   | f64 bodyLength  f64 epoch  f64 base  f64 generation       |
//   48   | f64 committedAt  f64 pages (live pages after this epoch)  |
//   64   +-----------------------------------------------------------+
//        | body, msgpack: {lineage, state: bin (EpochState msgpack), |
//        |   chunks: [ {f: PagesMsg fields}  an encoded frame        |
//        |           | {p: u64 addrs, d: pages}  raw pages           |
//        |           | {z: u64 addrs} ]}         zero pages          |
//        +-----------------------------------------------------------+
//
// A record counts once it is whole: both checksums match and the next record chains on it
// (base = the epoch before). Replay stops at the first that is not, and the tail after it
// (a write torn by a crash, or one that failed and was not acknowledged) is cut off.
import { crc32 } from 'node:zlib';
import { constants } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { Packr } from 'msgpackr';
import type { EncodedPages } from '../../codec/page-codec.js';
import { StoreError, ioError } from './errors.js';
import { readExactly, writevAll } from './segment-writer.js';

export const JOURNAL_HEADER_SIZE = 64;
const MAGIC = Buffer.from('RRJREC01', 'latin1');

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

export type JournalChunk =
  | { f: EncodedPages }
  | { p: Buffer; d: Buffer }
  | { z: Buffer };

export interface JournalHead { epoch: number; base: number; generation: number; committedAt: number; pages: number; bodyLength: number; bodyCrc: number }

export interface JournalBody { lineage: string; state: Buffer; chunks: JournalChunk[] }

/** A record as the buffers to write (header, body). */
export function encodeRecord(head: Omit<JournalHead, 'bodyLength' | 'bodyCrc'>, body: JournalBody): Buffer[] {
  const b = packr.pack(body);
  const h = Buffer.alloc(JOURNAL_HEADER_SIZE);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(crc32(b), 12);
  h.writeDoubleLE(b.length, 16);
  h.writeDoubleLE(head.epoch, 24);
  h.writeDoubleLE(head.base, 32);
  h.writeDoubleLE(head.generation, 40);
  h.writeDoubleLE(head.committedAt, 48);
  h.writeDoubleLE(head.pages, 56);
  h.writeUInt32LE(crc32(h.subarray(12)), 8);
  return [h, b];
}

/** The header's fields, or null if it is not a whole, valid header. */
export function decodeHead(h: Buffer): JournalHead | null {
  if (h.length < JOURNAL_HEADER_SIZE || !h.subarray(0, 8).equals(MAGIC)) return null;
  if (h.readUInt32LE(8) !== crc32(h.subarray(12, JOURNAL_HEADER_SIZE))) return null;
  const head = {
    bodyLength: h.readDoubleLE(16), epoch: h.readDoubleLE(24), base: h.readDoubleLE(32),
    generation: h.readDoubleLE(40), committedAt: h.readDoubleLE(48), pages: h.readDoubleLE(56),
  };
  for (const v of Object.values(head)) if (!Number.isSafeInteger(v) || v < 0) return null;
  return { ...head, bodyCrc: h.readUInt32LE(12) };
}

export function decodeBody(b: Buffer, path: string): JournalBody {
  let body: JournalBody;
  try {
    body = packr.unpack(b) as JournalBody;
  } catch (e) {
    throw new StoreError('CORRUPT', `journal ${path} is corrupt: a record's body does not decode (${(e as Error).message})`, { path });
  }
  if (typeof body?.lineage !== 'string' || !Buffer.isBuffer(body.state) || !Array.isArray(body.chunks)) {
    throw new StoreError('CORRUPT', `journal ${path} is corrupt: a record's body lacks its fields`, { path });
  }
  return body;
}

export interface ScannedRecord { head: JournalHead; offset: number; end: number }

/**
 * The whole records from `from`, in order, each chaining on the one before (`after`: the
 * epoch the first must be based on). `withBody`: also reads and checks the body. Stops at
 * the first record that is not whole (see the header).
 */
export async function* scanJournal(fh: FileHandle, path: string, from: number, after: number, withBody: boolean):
  AsyncGenerator<ScannedRecord & { body?: Buffer }> {
  const size = (await fh.stat()).size;
  const hbuf = Buffer.alloc(JOURNAL_HEADER_SIZE);
  let pos = from;
  let prev = after;
  while (pos + JOURNAL_HEADER_SIZE <= size) {
    try {
      await readExactly(fh, hbuf, 0, JOURNAL_HEADER_SIZE, pos);
    } catch (e) {
      throw ioError(e, 'reading the journal', path);
    }
    const head = decodeHead(hbuf);
    if (!head || head.base !== prev || head.epoch <= head.base) return;
    const end = pos + JOURNAL_HEADER_SIZE + head.bodyLength;
    if (end > size) return;
    let body: Buffer | undefined;
    if (withBody) {
      body = Buffer.allocUnsafe(head.bodyLength);
      try {
        await readExactly(fh, body, 0, head.bodyLength, pos + JOURNAL_HEADER_SIZE);
      } catch (e) {
        throw ioError(e, 'reading the journal', path);
      }
      if (crc32(body) !== head.bodyCrc) return;
    }
    yield { head, offset: pos, end, ...(body ? { body } : {}) };
    prev = head.epoch;
    pos = end;
  }
}

/**
 * The last whole record from `from` (null: none), for a reader without the lock (`replicate
 * status --dir`): headers are walked, and the last one's body checked (the ones before it
 * were made durable before the next was written). A record whose fdatasync has not yet
 * returned may count already.
 */
export async function lastRecord(fh: FileHandle, path: string, from: number, after: number): Promise<JournalHead | null> {
  let last: ScannedRecord | null = null;
  let prev: ScannedRecord | null = null;
  for await (const r of scanJournal(fh, path, from, after, false)) { prev = last; last = r; }
  if (!last) return null;
  const body = Buffer.allocUnsafe(last.head.bodyLength);
  try {
    await readExactly(fh, body, 0, body.length, last.offset + JOURNAL_HEADER_SIZE);
  } catch (e) {
    throw ioError(e, 'reading the journal', path);
  }
  return crc32(body) === last.head.bodyCrc ? last.head : prev?.head ?? null;
}

/** The journal being appended to. Created on the first append (and its directory entry synced). */
export class JournalWriter {
  #fh: FileHandle | null = null;
  #end: number;
  /** The file's directory entry is durable (synced once, retried until it is). */
  #dirSynced = false;
  /** A failed append could not be cut back durably: no more appends (see append). */
  #broken: string | null = null;

  constructor(readonly path: string, end: number, private readonly fsync: boolean, private readonly syncDir: () => Promise<void>) {
    this.#end = end;
  }

  /** Offset after the last record written. */
  get end(): number { return this.#end; }

  /** The next append syncs the directory first (a sync of the switch that named this journal failed). */
  needDirSync(): void {
    this.#dirSynced = false;
  }

  /** An existing journal opened for appending at `end` (after replay). */
  static adopt(path: string, fh: FileHandle, end: number, fsync: boolean, syncDir: () => Promise<void>): JournalWriter {
    const w = new JournalWriter(path, end, fsync, syncDir);
    w.#fh = fh;
    w.#dirSynced = true;
    return w;
  }

  /**
   * A new journal at `path` holding this one's records from byte `from` on, durable (file
   * and directory entry) before a manifest names it: a checkpoint's fresh start.
   */
  async copyTail(path: string, from: number): Promise<JournalWriter> {
    const n = this.#end - from;
    let fh: FileHandle | undefined;
    try {
      fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
      if (n > 0) {
        const buf = Buffer.allocUnsafe(n);
        await readExactly(this.#fh!, buf, 0, n, from);
        await writevAll(fh, [buf], 0);
      }
      if (this.fsync) {
        await fh.datasync();
        await this.syncDir();
      }
    } catch (e) {
      await fh?.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
      throw ioError(e, 'starting a new journal', path);
    }
    return JournalWriter.adopt(path, fh, n, this.fsync, this.syncDir);
  }

  /**
   * Writes the record at the end and makes it durable. On failure the file is cut back to
   * where it was (a torn record would be ignored anyway) and the error names the journal.
   */
  async append(bufs: Buffer[], consequence: string): Promise<void> {
    if (this.#broken) throw new StoreError('IO', this.#broken, { path: this.path });
    const at = this.#end;
    try {
      this.#fh ??= await open(this.path, constants.O_RDWR | constants.O_CREAT, 0o600);
      if (this.fsync && !this.#dirSynced) {
        await this.syncDir();
        this.#dirSynced = true;
      }
      await writevAll(this.#fh, bufs, at);
      if (this.fsync) await this.#fh.datasync();
    } catch (e) {
      // The record may be on disk whole even so (a failed fdatasync): cut it off, durably,
      // or a restart would find committed an epoch this one reported as failed.
      try {
        await this.#fh?.truncate(at);
        if (this.fsync) await this.#fh?.datasync();
      } catch (e2) {
        this.#broken = `the journal ${this.path} could not be cut back after a failed write (${(e2 as Error).message}): `
          + 'this store takes no more epochs; restart the standby (it replays the journal and cuts off what is not whole)';
      }
      throw ioError(e, 'appending to the journal', this.path, consequence);
    }
    for (const b of bufs) this.#end += b.length;
  }

  async close(): Promise<void> {
    const fh = this.#fh;
    this.#fh = null;
    await fh?.close().catch(() => undefined);
  }
}
