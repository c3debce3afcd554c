// The page-delta codec (issue 5): each page of a `pages` message travels as ZERO (a flag),
// DELTA (the zero-run-length encoding of what changed since the version last sent to the
// standby) or FULL, whichever is smallest, and the message's body is LZ4-compressed as one
// block when that pays. Format: docs/wire-format.md (native/codec/delta_batch.h owns it).
//
// Primary: DeltaPageEncoder owns a ShadowCache, the native, byte-bounded cache of the
// versions last sent (default 64 MiB, LRU eviction); a page it does not hold goes FULL.
// Encoding runs off the event loop and updates the cache, so the encoder assumes every
// message it produced reaches the standby: when the standby starts over (a new session, a
// full synchronisation) call reset(), and after each batch call retain() with the batch's
// VMAs (the standby drops pages outside them at commit).
//
// Standby: DeltaPageDecoder decodes in two native steps around the store: parse (checks
// the whole message: header, LZ4, checksum, every entry and run; lists the pages whose
// base it needs), then, with those bases read from the store into their slots of an output
// buffer (reused once the caller releases it), apply in place (off the event loop).
// Each DELTA carries the CRC-32C of the version it was made against: the version check.
// A base with another checksum refuses the message (which page, both checksums), and
// nothing is returned, so nothing reaches the store. Other codecs ('lz4', 'raw') are
// decoded as before, so one standby understands any primary.
import { native, type DeltaEncodeStats, type NativeShadowCache, type ParsedDeltaBatch, type ShadowCacheStats } from '../native/binding.js';
import {
  Lz4PageDecoder, PAGE_SIZE, addrsToBuffer, bufferToAddrs,
  type DecodedPages, type EncodedPages, type PageDecoder, type PageEncoder, type ReadBase, type ReadBasesInto,
} from './page-codec.js';

export type { DeltaEncodeStats, ShadowCacheStats } from '../native/binding.js';

export const DEFAULT_SHADOW_CACHE_BYTES = 64 * 1024 * 1024;

/** A delta batch that does not decode: damaged or hostile input, or a version mismatch. */
export class PageCodecError extends Error {
  /** 'version-mismatch': a DELTA's base is not the standby's page (the standby must resynchronise). */
  readonly kind: 'invalid' | 'version-mismatch';
  constructor(message: string, kind: 'invalid' | 'version-mismatch' = 'invalid', options?: ErrorOptions) {
    super(message, options);
    this.name = 'PageCodecError';
    this.kind = kind;
  }
}

export interface DeltaEncoderOptions {
  /** Bound of the shadow cache, bytes (pages and metadata). Default 64 MiB. */
  maxBytes?: number;
  /** Default 'lru' (see native/codec/shadow_cache.h for why). */
  eviction?: 'clock' | 'lru';
  /** Measurement only (bench/codec): variants of the encoding, all decodable. */
  tuning?: { xorRuns?: boolean; compress?: boolean; mergeGap?: number };
}

export interface DeltaEncoderTotals {
  batches: number; pages: number; zero: number; full: number; delta: number; unchanged: number;
  rawBytes: number; wireBytes: number;
}

export interface DeltaEncoderStats {
  cache: ShadowCacheStats;
  totals: DeltaEncoderTotals;
  /** rawBytes / wireBytes over every batch so far (0 before the first). */
  ratio: number;
  last: DeltaEncodeStats | null;
}

const EMPTY = Buffer.alloc(0);

/** Sorted, merged [start, end) byte ranges covering the VMAs, page-aligned outward. */
export function vmaRanges(vmas: ReadonlyArray<{ start: bigint; end: bigint }>): BigUint64Array {
  const r = vmas
    .map((v) => [v.start & ~0xfffn, (v.end + 0xfffn) & ~0xfffn] as [bigint, bigint])
    .filter(([s, e]) => e > s)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const out: bigint[] = [];
  for (const [s, e] of r) {
    const n = out.length;
    if (n > 0 && s <= out[n - 1]!) { if (e > out[n - 1]!) out[n - 1] = e; } else out.push(s, e);
  }
  return BigUint64Array.from(out);
}

export class DeltaPageEncoder implements PageEncoder {
  #cache: NativeShadowCache | undefined;
  #busy = false;
  #last: DeltaEncodeStats | null = null;
  readonly #totals: DeltaEncoderTotals = { batches: 0, pages: 0, zero: 0, full: 0, delta: 0, unchanged: 0, rawBytes: 0, wireBytes: 0 };

  constructor(options: DeltaEncoderOptions = {}) {
    const maxBytes = options.maxBytes ?? DEFAULT_SHADOW_CACHE_BYTES;
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) throw new RangeError(`maxBytes must be a positive whole number of bytes, got ${String(options.maxBytes)}`);
    if (options.eviction !== undefined && options.eviction !== 'clock' && options.eviction !== 'lru')
      throw new RangeError(`eviction must be 'clock' or 'lru', got '${String(options.eviction)}'`);
    this.#cache = new (native().ShadowCache)({ ...options.tuning, maxBytes, eviction: options.eviction ?? 'lru' });
  }

  async encode(addrs: BigUint64Array, pages: Buffer): Promise<EncodedPages> {
    const cache = this.#open('encode');
    if (this.#busy) throw new Error('DeltaPageEncoder.encode: the previous encode() has not finished; await each call');
    this.#busy = true;
    let out: { data: Buffer; stats: DeltaEncodeStats };
    try {
      out = await cache.encode(addrsToBuffer(addrs), pages);
    } finally {
      this.#busy = false;
    }
    const s = out.stats;
    const t = this.#totals;
    t.batches++; t.pages += s.pages; t.zero += s.zero; t.full += s.full; t.delta += s.delta; t.unchanged += s.unchanged;
    t.rawBytes += s.rawBytes; t.wireBytes += s.wireBytes;
    this.#last = s;
    return { codec: 'delta', addrs: EMPTY, zeros: EMPTY, rawBytes: (s.full + s.delta) * PAGE_SIZE, data: out.data };
  }

  /** Forgets every page sent: call when the standby starts over (full synchronisation). */
  reset(): void {
    this.#open('reset').reset();
  }

  /** Forgets pages outside the VMAs (what the standby drops at commit); returns how many. */
  retain(vmas: ReadonlyArray<{ start: bigint; end: bigint }>): number {
    return this.#open('retain').retain(vmaRanges(vmas));
  }

  /** Pages and bytes encoded so far (a copy; no walk of the cache, unlike stats()). */
  get totals(): DeltaEncoderTotals {
    return { ...this.#totals };
  }

  stats(): DeltaEncoderStats {
    const cache = this.#cache?.stats() ?? {
      entries: 0, capacity: 0, bytes: 0, maxBytes: 0, eviction: 'clock', hits: 0, misses: 0, evictions: 0, inserts: 0, erased: 0, closed: true,
    } satisfies ShadowCacheStats;
    return { cache, totals: { ...this.#totals }, ratio: this.#totals.wireBytes ? this.#totals.rawBytes / this.#totals.wireBytes : 0, last: this.#last };
  }

  /** Frees the cache (an encode in flight finishes first). Idempotent. */
  close(): void {
    this.#cache?.close();
    this.#cache = undefined;
  }

  #open(op: string): NativeShadowCache {
    if (!this.#cache) throw new Error(`DeltaPageEncoder.${op}: the encoder is closed`);
    return this.#cache;
  }
}

export class DeltaPageDecoder implements PageDecoder {
  readonly #fallback = new Lz4PageDecoder();
  /**
   * Output buffers given back by release(), for the next messages: V8 starts a full GC every
   * ~64 MiB of new buffers, external ones included, so a new buffer per message kept it
   * collecting every few milliseconds (FACTS.md). At most SPARE_BUFFERS are kept.
   */
  readonly #spare: Buffer[] = [];
  /** Each output handed out (a view) and the buffer it is a view of. */
  readonly #lent = new WeakMap<Buffer, Buffer>();
  static readonly SPARE_BUFFERS = 4;
  /** Outputs are allocated for at least this many pages (a frame of the primary's encoder). */
  static readonly MIN_OUTPUT_PAGES = 256;

  #take(bytes: number): Buffer {
    if (bytes === 0) return Buffer.alloc(0);
    const i = this.#spare.findIndex((b) => b.length >= bytes);
    const buf = i >= 0 ? this.#spare.splice(i, 1)[0]! : Buffer.allocUnsafeSlow(Math.max(bytes, DeltaPageDecoder.MIN_OUTPUT_PAGES * PAGE_SIZE));
    const view = buf.subarray(0, bytes);
    this.#lent.set(view, buf);
    return view;
  }

  #giveBack(view: Buffer): boolean {
    const buf = this.#lent.get(view);
    if (!buf) return false;
    this.#lent.delete(view);
    if (this.#spare.length < DeltaPageDecoder.SPARE_BUFFERS) this.#spare.push(buf);
    return true;
  }

  /**
   * Decodes one `pages` message. For codec 'delta', `readBase` gives the standby's current
   * version of a page (inside an open batch: the batch's own version first), null when it
   * has none (then the base is a zero page); `{ into }` reads it straight into its slot
   * instead (no buffer and no await per page: what the standby uses). Rejects with a
   * PageCodecError and returns nothing when any part of the message is wrong.
   */
  async decode(msg: EncodedPages, readBase?: ReadBase | { into: ReadBasesInto }): Promise<DecodedPages> {
    if (msg.codec !== 'delta') return this.#fallback.decode(msg);
    if (msg.addrs.length || msg.zeros.length)
      throw new PageCodecError("pages: codec 'delta' carries its addresses inside data; addrs and zeros must be empty");
    const n = native();
    let parsed;
    try {
      parsed = await n.parseBatch(msg.data);
    } catch (e) {
      throw new PageCodecError(`pages: ${(e as Error).message}`, 'invalid', { cause: e });
    }
    if (msg.rawBytes !== (parsed.full + parsed.delta) * PAGE_SIZE)
      throw new PageCodecError(`pages: rawBytes ${msg.rawBytes} does not match the ${parsed.full + parsed.delta} pages with data in the batch`);
    // Each base goes straight into its slot of the output (a reused buffer); the native step
    // checks and patches it there.
    const pages = this.#take((parsed.full + parsed.delta) * PAGE_SIZE);
    try {
      return await this.#applyInPlace(parsed, pages, readBase);
    } catch (e) {
      this.#giveBack(pages);
      throw e;
    }
  }

  async #applyInPlace(parsed: ParsedDeltaBatch, pages: Buffer, readBase?: ReadBase | { into: ReadBasesInto }): Promise<DecodedPages> {
    const n = native();
    if (parsed.delta) {
      if (!readBase) throw new PageCodecError(`pages: the batch has ${parsed.delta} delta pages but no readBase was given`);
      const need = bufferToAddrs(parsed.needBase);
      const slots = parsed.needSlot;
      if (typeof readBase !== 'function') {
        readBase.into(need, pages, int32View(slots));
      } else for (let i = 0; i < need.length; i++) {
        const at = slots.readUInt32LE(i * 4) * PAGE_SIZE;
        const b = await readBase(need[i]!);
        if (b === null) {
          pages.fill(0, at, at + PAGE_SIZE);
        } else {
          if (b.length !== PAGE_SIZE) throw new PageCodecError(`pages: readBase(0x${need[i]!.toString(16)}) returned ${b.length} bytes, not a page`);
          b.copy(pages, at);
        }
      }
    }
    let out;
    try {
      out = await n.applyBatchInPlace(parsed.batch, pages);
    } catch (e) {
      const m = (e as Error).message;
      throw new PageCodecError(`pages: ${m}`, m.includes('version check failed') ? 'version-mismatch' : 'invalid', { cause: e });
    }
    return { addrs: bufferToAddrs(out.addrs), pages, zeros: bufferToAddrs(out.zeros) };
  }

  /**
   * Optional: hands the decoded pages' memory back for reuse as soon as the caller has
   * copied them (the store's addPages has resolved). `d.pages` must not be used afterwards:
   * the next message is decoded into it (pages of other codecs are emptied instead).
   * Without it each message gets a new buffer, collected by the garbage collector.
   */
  release(d: DecodedPages): void {
    if (!this.#giveBack(d.pages)) native().releaseDecoded(d.pages);
  }
}

/** The u32 little-endian slots as an Int32Array (a view when aligned; slots are < 2^31). */
function int32View(b: Buffer): Int32Array {
  if (b.byteOffset % 4 === 0) return new Int32Array(b.buffer, b.byteOffset, b.length / 4);
  const c = new Int32Array(b.length / 4);
  new Uint8Array(c.buffer).set(b);
  return c;
}
