// The encode stage: turns a chunk of pages into a `pages` message body, and back on the
// standby. Two backends: whole pages (zero pages split out, the rest LZ4-compressed in
// native code off the event loop), here, and the page-delta codec (src/codec/delta-codec.ts:
// each page as a delta against the version last sent), which needs the standby's current
// pages to decode (`readBase`) and the primary to say when the standby starts over
// (`reset`) and which memory still exists (`retain`).
import { native } from '../native/binding.js';
import type { PagesMsg } from '../protocol/messages.js';

export const PAGE_SIZE = 4096;

export type EncodedPages = Omit<PagesMsg, 't' | 'epoch'>;

export interface PageEncoder {
  /** `pages` holds addrs.length pages of 4 KiB, in the order of `addrs`. */
  encode(addrs: BigUint64Array, pages: Buffer): Promise<EncodedPages>;
  /**
   * The standby starts over (a full synchronisation, a new session): forget what was sent
   * before. An encoder that keeps state must be told, or its deltas are refused.
   */
  reset?(): void;
  /**
   * The state of the batch just encoded has these VMAs; the standby drops pages outside
   * them at commit, so a stateful encoder forgets them too. Call after the batch's pages.
   */
  retain?(vmas: ReadonlyArray<{ start: bigint; end: bigint }>): void;
  /** Frees what the encoder holds (native memory). */
  close?(): void;
}

export interface DecodedPages {
  /** Pages with data, and their content (addrs.length × 4 KiB). */
  addrs: BigUint64Array;
  pages: Buffer;
  /** Pages that are all zeros. */
  zeros: BigUint64Array;
}

/** The standby's current version of a page (null: it has none, or it is zero). */
export type ReadBase = (addr: bigint) => Promise<Buffer | null>;

/**
 * The same for all the bases of a message, synchronously: page addrs[i] written straight
 * into page outPages[i] of `out` (4096-byte units; zeros where it has none). The decoder's
 * fast path: one call per message and no buffer of its own.
 */
export type ReadBasesInto = (addrs: BigUint64Array, out: Buffer, outPages: Int32Array) => void;

export interface PageDecoder {
  /** `readBase` is needed for codec 'delta' (the pages the deltas apply to). */
  decode(msg: EncodedPages, readBase?: ReadBase | { into: ReadBasesInto }): Promise<DecodedPages>;
  /** Optional: the decoded pages' memory may be reused (the caller has stored them). */
  release?(d: DecodedPages): void;
}

/** u64 little-endian addresses as a Buffer (a view, no copy). */
export function addrsToBuffer(addrs: BigUint64Array): Buffer {
  return Buffer.from(addrs.buffer, addrs.byteOffset, addrs.byteLength);
}

/** The reverse; copies when the Buffer is not 8-byte aligned (msgpack does not align). */
export function bufferToAddrs(buf: Buffer): BigUint64Array {
  if (buf.byteOffset % 8 === 0) return new BigUint64Array(buf.buffer, buf.byteOffset, buf.length / 8);
  const copy = new Uint8Array(buf.length);
  copy.set(buf);
  return new BigUint64Array(copy.buffer);
}

export class Lz4PageEncoder implements PageEncoder {
  async encode(addrs: BigUint64Array, pages: Buffer): Promise<EncodedPages> {
    const out = await native().compressPages(pages, addrsToBuffer(addrs));
    return { codec: out.compressed ? 'lz4' : 'raw', addrs: out.addrs, zeros: out.zeros, rawBytes: out.rawBytes, data: out.data };
  }
}

export class Lz4PageDecoder implements PageDecoder {
  async decode(msg: EncodedPages): Promise<DecodedPages> {
    const addrs = bufferToAddrs(msg.addrs);
    const zeros = bufferToAddrs(msg.zeros);
    if (msg.rawBytes !== addrs.length * PAGE_SIZE) throw new Error(`pages: rawBytes ${msg.rawBytes} does not match ${addrs.length} pages`);
    let pages: Buffer;
    if (msg.codec === 'raw') {
      if (msg.data.length !== msg.rawBytes) throw new Error(`pages: ${msg.data.length} raw bytes, expected ${msg.rawBytes}`);
      pages = msg.data;
    } else if (msg.codec === 'lz4') {
      pages = msg.rawBytes === 0 ? Buffer.alloc(0) : await native().decompressBlock(msg.data, msg.rawBytes);
    } else if (msg.codec === 'delta') {
      throw new Error("pages: codec 'delta' needs the page-delta decoder (DeltaPageDecoder)");
    } else {
      throw new Error(`pages: unknown codec '${String(msg.codec)}'`);
    }
    return { addrs, pages, zeros };
  }
}
