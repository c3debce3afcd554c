// Helpers of the codec tests and benchmark: page generators, a store model of the standby,
// a writer of delta batches from explicit entries (for hostile inputs and the LZ4 interop
// test), and a replay of captured epochs through the encoder and decoder.
import lz4js from 'lz4/lib/binding.js';
import { DeltaPageDecoder, DeltaPageEncoder } from '../../src/codec/delta-codec.js';
import { PAGE_SIZE, bufferToAddrs } from '../../src/codec/page-codec.js';
import { native } from '../../src/native/binding.js';

export { mulberry32 } from '../helpers/tracking.js';

export const P = PAGE_SIZE;

export function addrBuf(addrs: readonly bigint[]): Buffer {
  const b = Buffer.alloc(addrs.length * 8);
  addrs.forEach((a, i) => b.writeBigUInt64LE(a, i * 8));
  return b;
}

export function randomPage(rnd: () => number): Buffer {
  const b = Buffer.allocUnsafe(P);
  for (let i = 0; i < P; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  return b;
}

/** A page that looks like heap data: small integers, pointers, short strings, zeros. */
export function heapLikePage(rnd: () => number): Buffer {
  const b = Buffer.alloc(P);
  for (let i = 0; i < P; i += 8) {
    const r = rnd();
    if (r < 0.35) continue;
    if (r < 0.6) b.writeBigUInt64LE(0x7f3a00000000n + BigInt(Math.floor(rnd() * 2 ** 24)) * 16n, i);
    else if (r < 0.8) b.writeUInt32LE(Math.floor(rnd() * 1000), i);
    else b.write(`k${Math.floor(rnd() * 1e6)}`.padEnd(8, '\0').slice(0, 8), i, 'latin1');
  }
  return b;
}

/** The standby's pages, as a store: absent means zero. */
export class StoreModel {
  readonly pages = new Map<bigint, Buffer>();
  readBase = async (addr: bigint): Promise<Buffer | null> => this.pages.get(addr) ?? null;
  apply(d: { addrs: BigUint64Array; pages: Buffer; zeros: BigUint64Array }): void {
    d.addrs.forEach((a, i) => this.pages.set(a, Buffer.from(d.pages.subarray(i * P, (i + 1) * P))));
    for (const z of d.zeros) this.pages.delete(z);
  }
  retain(vmas: ReadonlyArray<{ start: bigint; end: bigint }>): void {
    for (const a of this.pages.keys()) if (!vmas.some((v) => a >= (v.start & ~0xfffn) && a < v.end)) this.pages.delete(a);
  }
}

/** Checks decoded pages against the input, in order; returns a description of the first difference. */
export function compareDecoded(addrs: readonly bigint[], pages: Buffer, d: { addrs: BigUint64Array; pages: Buffer; zeros: BigUint64Array }): string | null {
  let di = 0; let zi = 0;
  for (let i = 0; i < addrs.length; i++) {
    const page = pages.subarray(i * P, (i + 1) * P);
    if (page.every((x) => x === 0)) {
      if (d.zeros[zi++] !== addrs[i]) return `page ${i} (0x${addrs[i]!.toString(16)}): expected in zeros`;
    } else {
      if (d.addrs[di] !== addrs[i]) return `page ${i} (0x${addrs[i]!.toString(16)}): decoded address 0x${d.addrs[di]?.toString(16)}`;
      if (!d.pages.subarray(di * P, (di + 1) * P).equals(page)) return `page ${i} (0x${addrs[i]!.toString(16)}): content differs`;
      di++;
    }
  }
  if (di !== d.addrs.length || zi !== d.zeros.length) return `extra pages decoded (${d.addrs.length} + ${d.zeros.length})`;
  return null;
}

// --- writing batches by hand ---------------------------------------------------------------

export type Entry =
  | { kind: 'zero'; addr: bigint }
  | { kind: 'full'; addr: bigint; page: Buffer }
  | { kind: 'delta'; addr: bigint; baseCrc: number; runs: Buffer }
  | { kind: 'raw'; bytes: Buffer };

export function varint(v: bigint | number): Buffer {
  let x = BigInt(v);
  const out: number[] = [];
  while (x >= 0x80n) { out.push(Number(x & 0x7fn) | 0x80); x >>= 7n; }
  out.push(Number(x));
  return Buffer.from(out);
}

/** Runs from [skip, bytes] pairs. */
export function runs(...rs: Array<[number, Buffer | number[]]>): Buffer {
  return Buffer.concat(rs.flatMap(([skip, bytes]) => [varint(skip), varint(bytes.length), Buffer.from(bytes)]));
}

export function body(entries: readonly Entry[]): Buffer {
  const parts: Buffer[] = [];
  let prev = 0n;
  for (const e of entries) {
    if (e.kind === 'raw') { parts.push(e.bytes); continue; }
    const pn = e.addr >> 12n;
    const d = pn - prev;
    prev = pn;
    const zz = d >= 0n ? d << 1n : ((-d) << 1n) - 1n;
    const kind = e.kind === 'zero' ? 0n : e.kind === 'full' ? 1n : 2n;
    parts.push(varint((zz << 2n) | kind));
    if (e.kind === 'full') parts.push(e.page);
    if (e.kind === 'delta') {
      const c = Buffer.alloc(4); c.writeUInt32LE(e.baseCrc >>> 0);
      parts.push(c, varint(e.runs.length), e.runs);
    }
  }
  return Buffer.concat(parts);
}

export interface PackOptions {
  count?: number; lz4?: boolean; flags?: number; version?: number; magic?: string; bodyLen?: number;
  /** Replace the checksum (default: the right one). */
  crc?: number;
}

/** A delta batch: header, then the body as it is or as one LZ4 block made by the `lz4` npm package. */
export function pack(b: Buffer, count: number, o: PackOptions = {}): Buffer {
  const h = Buffer.alloc(16);
  h.write(o.magic ?? 'RD', 0, 'latin1');
  h[2] = o.version ?? 1;
  h[3] = (o.flags ?? 0) | (o.lz4 ? 1 : 0);
  h.writeUInt32LE(o.count ?? count, 4);
  h.writeUInt32LE(o.bodyLen ?? b.length, 8);
  const crc = o.crc ?? crcOf(h.subarray(0, 12), b);
  h.writeUInt32LE(crc >>> 0, 12);
  return Buffer.concat([h, o.lz4 ? lz4Block(b) : b]);
}

export function crcOf(...parts: Buffer[]): number {
  return native().crc32c(Buffer.concat(parts));
}

/** One LZ4 block made by the `lz4` npm package's JavaScript encoder. */
export function lz4Block(src: Buffer): Buffer {
  const dst = Buffer.alloc(lz4js.compressBound(src.length));
  const n = lz4js.compress(src, dst);
  if (!(n > 0)) throw new Error(`lz4 (npm) did not compress ${src.length} bytes`);
  return dst.subarray(0, n);
}

/** Decodes one LZ4 block with the `lz4` npm package's JavaScript decoder. */
export function lz4Decode(block: Buffer, rawBytes: number): Buffer {
  const out = Buffer.alloc(rawBytes);
  const n = lz4js.uncompress(block, out);
  if (n !== rawBytes) throw new Error(`lz4 (npm) decoded ${n} bytes, expected ${rawBytes}`);
  return out;
}

// --- replaying captured epochs --------------------------------------------------------------

export interface CorpusEpoch {
  addrs: BigUint64Array;
  pages: Buffer;
  vmas: Array<{ start: bigint; end: bigint }>;
}

export interface Corpus {
  name: string;
  /** epochs[0]: every page with content (the full copy); then the dirty pages of each epoch. */
  epochs: CorpusEpoch[];
}

export interface ReplayResult {
  /** Over epochs 1..n (the full copy excluded). */
  rawBytes: number; wireBytes: number; pages: number; zero: number; full: number; delta: number;
  firstMismatch: string | null;
}

/** Sends every epoch through a DeltaPageEncoder and a DeltaPageDecoder onto a store model, checking each page. */
export async function replay(corpus: Corpus, framePages = 256, encoder = new DeltaPageEncoder()): Promise<ReplayResult> {
  const dec = new DeltaPageDecoder();
  const store = new StoreModel();
  const r: ReplayResult = { rawBytes: 0, wireBytes: 0, pages: 0, zero: 0, full: 0, delta: 0, firstMismatch: null };
  try {
    for (let k = 0; k < corpus.epochs.length; k++) {
      const e = corpus.epochs[k]!;
      for (let off = 0; off < e.addrs.length; off += framePages) {
        const addrs = e.addrs.subarray(off, off + framePages);
        const pages = e.pages.subarray(off * P, (off + addrs.length) * P);
        const msg = await encoder.encode(addrs, pages);
        const last = encoder.stats().last!;
        const d = await dec.decode(msg, store.readBase);
        const diff = compareDecoded([...addrs], pages, d);
        if (diff && !r.firstMismatch) r.firstMismatch = `${corpus.name} epoch ${k}: ${diff}`;
        store.apply(d);
        if (k > 0) {
          r.rawBytes += pages.length; r.wireBytes += msg.data.length; r.pages += addrs.length;
          r.zero += last.zero; r.full += last.full; r.delta += last.delta;
        }
      }
      encoder.retain(e.vmas);
      store.retain(e.vmas);
    }
  } finally {
    encoder.close();
  }
  return r;
}

export { bufferToAddrs };
