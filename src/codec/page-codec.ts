// The encode stage: turns a chunk of pages into a `pages` message body, and back on the
// standby. This is an interface with one backend today (whole pages, zero pages split
// out, the rest LZ4-compressed in native code off the event loop); the page-delta codec
// plugs in here.
import { native } from '../native/binding.js';
import type { PagesMsg } from '../protocol/messages.js';

export const PAGE_SIZE = 4096;

export type EncodedPages = Omit<PagesMsg, 't' | 'epoch'>;

export interface PageEncoder {
  /** `pages` holds addrs.length pages of 4 KiB, in the order of `addrs`. */
  encode(addrs: BigUint64Array, pages: Buffer): Promise<EncodedPages>;
}

export interface DecodedPages {
  /** Pages with data, and their content (addrs.length × 4 KiB). */
  addrs: BigUint64Array;
  pages: Buffer;
  /** Pages that are all zeros. */
  zeros: BigUint64Array;
}

export interface PageDecoder {
  decode(msg: EncodedPages): Promise<DecodedPages>;
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
    } else {
      throw new Error(`pages: unknown codec '${String(msg.codec)}'`);
    }
    return { addrs, pages, zeros };
  }
}
