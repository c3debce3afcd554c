// The page-delta codec (issue 5) on synthetic pages: round trips for each kind of change,
// a property test on random page pairs, the shadow cache (bound, eviction, reset, retain,
// overlapping calls), the version check, hostile batches written by hand, and LZ4 interop
// with the `lz4` npm package's JavaScript block codec. Real processes: 30-codec-corpus;
// the ASan fuzzer: 30-codec-fuzz.
import { describe, expect, it } from 'vitest';
import { DeltaPageDecoder, DeltaPageEncoder, PageCodecError, vmaRanges } from '../src/codec/delta-codec.js';
import { Lz4PageDecoder, Lz4PageEncoder, bufferToAddrs } from '../src/codec/page-codec.js';
import { native } from '../src/native/binding.js';
import {
  P, StoreModel, type Entry, addrBuf, body, compareDecoded, crcOf, heapLikePage, lz4Block, lz4Decode, mulberry32, pack, randomPage, runs, varint,
} from './codec/helpers.js';

const BASE = 0x7f1200000000n;
const addrsOf = (n: number, base = BASE) => Array.from({ length: n }, (_, i) => base + BigInt(i) * 4096n);

/** Encodes `pages` at `addrs` and decodes them onto `store`; checks every page; returns the wire size. */
async function roundTrip(enc: DeltaPageEncoder, dec: DeltaPageDecoder, store: StoreModel, addrs: bigint[], pages: Buffer): Promise<number> {
  const msg = await enc.encode(BigUint64Array.from(addrs), pages);
  expect(msg.codec).toBe('delta');
  const d = await dec.decode(msg, store.readBase);
  expect(compareDecoded(addrs, pages, d)).toBeNull();
  store.apply(d);
  return msg.data.length;
}

function codec() {
  return { enc: new DeltaPageEncoder(), dec: new DeltaPageDecoder(), store: new StoreModel() };
}

/** A codec whose standby already holds `n` heap-like pages (from `seed`), sent once. */
async function seeded(n: number, seed: number) {
  const c = codec();
  const rnd = mulberry32(seed);
  const addrs = addrsOf(n);
  const pages = Buffer.concat(addrs.map(() => heapLikePage(rnd)));
  await roundTrip(c.enc, c.dec, c.store, addrs, pages);
  return { ...c, rnd, addrs, pages };
}

describe('page-delta codec: round trips', () => {
  it('zero pages travel as a flag: a few bytes each', async () => {
    const { enc, dec, store } = codec();
    const wire = await roundTrip(enc, dec, store, addrsOf(256), Buffer.alloc(256 * P));
    expect(enc.stats().last).toMatchObject({ zero: 256, full: 0, delta: 0 });
    expect(wire).toBeLessThan(16 + 256 * 2);
    enc.close();
  });

  it('one changed byte, at every offset of a page', async () => {
    const { enc, dec, store, addrs, pages: before } = await seeded(256, 1);
    for (let start = 0; start < P; start += 256) {
      const after = Buffer.from(before);
      for (let i = 0; i < 256; i++) after[i * P + start + i] ^= 0x5a; // page i: offset start + i
      const wire = await roundTrip(enc, dec, store, addrs, after);
      expect(enc.stats().last).toMatchObject({ delta: 256, full: 0 });
      expect(wire).toBeLessThan(256 * 16);
      after.copy(before);
    }
    enc.close();
  });

  it('one changed 8-byte word, at every offset of a page', async () => {
    const { enc, dec, store } = codec();
    const rnd = mulberry32(2);
    const addrs = addrsOf(256);
    const before = Buffer.concat(addrs.map(() => randomPage(rnd)));
    await roundTrip(enc, dec, store, addrs, before);
    for (let start = 0; start <= P - 8; start += 256) {
      const after = Buffer.from(before);
      for (let i = 0; i < 256 && start + i <= P - 8; i++) {
        const off = i * P + start + i;
        after.writeBigUInt64LE(after.readBigUInt64LE(off) ^ 0x0101010101010101n, off); // every byte of the word changes
      }
      await roundTrip(enc, dec, store, addrs, after);
      const last = enc.stats().last!;
      expect(last.full).toBe(0);
      expect(last.deltaBytes).toBeLessThanOrEqual(last.delta * 11); // skip varint (≤ 2) + length (1) + 8 bytes
      after.copy(before);
    }
    enc.close();
  });

  it('changes at both ends of a page, and an unchanged page', async () => {
    const { enc, dec, store, addrs, pages: before } = await seeded(4, 3);
    const after = Buffer.from(before);
    after[0] ^= 1; after[P - 1] ^= 1;                     // first and last byte
    after.writeBigUInt64LE(0xdeadbeefn, P); after.writeBigUInt64LE(0xfeedn, 2 * P - 8); // first and last word
    after[2 * P + 4095] ^= 0xff;                          // last byte only; page 3 unchanged
    await roundTrip(enc, dec, store, addrs, after);
    expect(enc.stats().last).toMatchObject({ delta: 4, full: 0, unchanged: 1 });
    enc.close();
  });

  it('random full pages: FULL, uncompressed, at most raw + 0.5 %', async () => {
    const { enc, dec, store } = codec();
    const rnd = mulberry32(4);
    const addrs = addrsOf(256);
    for (let round = 0; round < 3; round++) { // miss, then hits whose delta does not pay
      const pages = Buffer.concat(addrs.map(() => randomPage(rnd)));
      const wire = await roundTrip(enc, dec, store, addrs, pages);
      expect(enc.stats().last).toMatchObject({ full: 256, delta: 0, compressed: false });
      expect(wire).toBeLessThanOrEqual(pages.length * 1.005);
    }
    // Scattered addresses cost a few bytes more each, still far below the bound.
    const far = addrs.map((_, i) => BASE + BigInt(i) * 0x10000000n);
    const pages = Buffer.concat(far.map(() => randomPage(rnd)));
    expect(await roundTrip(enc, dec, store, far, pages)).toBeLessThanOrEqual(pages.length * 1.005);
    enc.close();
  });

  it('a page twice in one batch: the second goes FULL, both decode in order', async () => {
    const { enc, dec, store } = codec();
    const rnd = mulberry32(5);
    const a = [BASE, BASE + 4096n];
    await roundTrip(enc, dec, store, a, Buffer.concat([heapLikePage(rnd), heapLikePage(rnd)]));
    const p1 = heapLikePage(rnd); const p2 = Buffer.from(p1); p2[9] ^= 1;
    const msg = await enc.encode(BigUint64Array.from([BASE, BASE]), Buffer.concat([p1, p2]));
    expect(enc.stats().last).toMatchObject({ delta: 1, full: 1 });
    const d = await dec.decode(msg, store.readBase);
    expect([...d.addrs]).toEqual([BASE, BASE]);
    expect(d.pages.equals(Buffer.concat([p1, p2]))).toBe(true);
    enc.close();
  });

  it('property: decode(encode(old, new), old) == new for random pairs (fixed seed)', async () => {
    const rnd = mulberry32(20261123);
    for (const tuning of [{}, { xorRuns: true }, { compress: false }, { mergeGap: 0 }]) {
      const enc = new DeltaPageEncoder({ tuning });
      const dec = new DeltaPageDecoder();
      const store = new StoreModel();
      for (let iter = 0; iter < 40; iter++) {
        const n = 1 + Math.floor(rnd() * 64);
        const addrs = Array.from(new Set(Array.from({ length: n }, () => BASE + BigInt(Math.floor(rnd() * 512)) * 4096n)));
        const olds = Buffer.concat(addrs.map(() => (rnd() < 0.5 ? heapLikePage(rnd) : randomPage(rnd))));
        await roundTrip(enc, dec, store, addrs, olds);
        const news = Buffer.from(olds);
        for (let i = 0; i < addrs.length; i++) {
          const density = [0, 0.001, 0.01, 0.05, 0.3, 1][Math.floor(rnd() * 6)]!;
          for (let b = 0; b < P; b++) if (rnd() < density) news[i * P + b] = Math.floor(rnd() * 256);
          if (rnd() < 0.05) news.fill(0, i * P, (i + 1) * P);
        }
        await roundTrip(enc, dec, store, addrs, news);
      }
      enc.close();
    }
  });

  it('the lz4 codec keeps working, and DeltaPageDecoder decodes it too', async () => {
    const rnd = mulberry32(6);
    const addrs = addrsOf(8);
    const pages = Buffer.concat([...addrs.map(() => heapLikePage(rnd))]);
    pages.fill(0, 3 * P, 4 * P);
    const msg = await new Lz4PageEncoder().encode(BigUint64Array.from(addrs), pages);
    for (const dec of [new Lz4PageDecoder(), new DeltaPageDecoder()]) {
      const d = await dec.decode(msg);
      expect(compareDecoded(addrs, pages, d)).toBeNull();
    }
    await expect(new Lz4PageDecoder().decode({ ...msg, codec: 'delta' })).rejects.toThrow(/DeltaPageDecoder/);
  });
});

describe('page-delta codec: shadow cache', () => {
  it('stays within its byte bound under pressure, evicting (LRU and CLOCK)', async () => {
    for (const eviction of ['lru', 'clock'] as const) {
      const maxBytes = 256 * 1024;
      const c = new (native().ShadowCache)({ maxBytes, eviction });
      const cap = c.stats().capacity;
      expect(cap).toBeGreaterThan(40);
      expect(cap).toBeLessThan(64);
      const rnd = mulberry32(7);
      for (let b = 0; b < 40; b++) {
        const addrs = Array.from({ length: 32 }, () => BASE + BigInt(Math.floor(rnd() * 400)) * 4096n);
        const uniq = [...new Set(addrs)];
        const pages = Buffer.concat(uniq.map(() => heapLikePage(rnd)));
        c.encodeSync(addrBuf(uniq), pages);
        const s = c.stats();
        expect(s.bytes).toBeLessThanOrEqual(maxBytes);
        expect(s.entries).toBeLessThanOrEqual(cap);
        expect(c.checkInvariants()).toBe('');
      }
      const s = c.stats();
      expect(s.entries).toBe(cap);
      expect(s.evictions).toBeGreaterThan(100);
      expect(s.eviction).toBe(eviction);
      c.close();
    }
  });

  it('a page that was evicted goes FULL; one still cached goes DELTA', async () => {
    const enc = new DeltaPageEncoder({ maxBytes: 8 * (P + 64) });
    const cap = enc.stats().cache.capacity;
    const dec = new DeltaPageDecoder();
    const store = new StoreModel();
    const rnd = mulberry32(8);
    const first = addrsOf(1);
    const page = heapLikePage(rnd);
    await roundTrip(enc, dec, store, first, page);
    const others = addrsOf(cap, BASE + 0x100000n);
    await roundTrip(enc, dec, store, others, Buffer.concat(others.map(() => heapLikePage(rnd)))); // pushes `first` out
    const changed = Buffer.from(page); changed[100] ^= 1;
    await roundTrip(enc, dec, store, first, changed);
    expect(enc.stats().last).toMatchObject({ full: 1, delta: 0, misses: 1 });
    const again = Buffer.from(changed); again[200] ^= 1;
    await roundTrip(enc, dec, store, first, again);
    expect(enc.stats().last).toMatchObject({ full: 0, delta: 1, hits: 1 });
    enc.close();
  });

  it('reset() forgets everything; retain() forgets pages outside the VMAs; zero pages need no entry', async () => {
    const enc = new DeltaPageEncoder();
    const rnd = mulberry32(9);
    const addrs = addrsOf(16);
    const pages = Buffer.concat(addrs.map(() => heapLikePage(rnd)));
    await enc.encode(BigUint64Array.from(addrs), pages);
    expect(enc.stats().cache.entries).toBe(16);
    expect(enc.retain([{ start: BASE, end: BASE + 8n * 4096n }])).toBe(8);
    await enc.encode(BigUint64Array.from(addrs), pages);
    expect(enc.stats().last).toMatchObject({ delta: 8, full: 8 });
    await enc.encode(BigUint64Array.from(addrs.slice(0, 4)), Buffer.alloc(4 * P));
    expect(enc.stats().cache.entries).toBe(12);
    enc.reset();
    expect(enc.stats().cache.entries).toBe(0);
    await enc.encode(BigUint64Array.from(addrs), pages);
    expect(enc.stats().last).toMatchObject({ delta: 0, full: 16 });
    expect(vmaRanges([{ start: 0x3000n, end: 0x5000n }, { start: 0x1000n, end: 0x2000n }, { start: 0x2000n, end: 0x3800n }]))
      .toEqual(BigUint64Array.from([0x1000n, 0x5000n]));
    enc.close();
    await expect(enc.encode(BigUint64Array.from(addrs), pages)).rejects.toThrow(/closed/);
  });

  it('overlapping calls on one cache are an error, not a race', async () => {
    const c = new (native().ShadowCache)();
    const rnd = mulberry32(10);
    const addrs = addrBuf(addrsOf(256));
    const pages = Buffer.concat(Array.from({ length: 256 }, () => randomPage(rnd)));
    const first = c.encode(addrs, pages);
    expect(() => c.encode(addrs, pages)).toThrow(/still running.*must not overlap/);
    expect(() => c.reset()).toThrow(/still running/);
    expect(() => c.encodeSync(addrs, pages)).toThrow(/still running/);
    expect(c.stats().entries).toBe(0); // the snapshot of before the running encode
    await first;
    expect(c.stats().entries).toBe(256);
    c.encodeSync(addrs, pages); // fine once it is done
    const enc = new DeltaPageEncoder();
    const a = enc.encode(BigUint64Array.from(addrsOf(256)), pages);
    await expect(enc.encode(BigUint64Array.from(addrsOf(256)), pages)).rejects.toThrow(/await each call/);
    await a;
    enc.close();
    c.close();
    expect(() => c.encodeSync(addrs, pages)).toThrow(/closed/);
  });

  it('bad arguments are refused with a clear message', () => {
    const S = native().ShadowCache;
    expect(() => new S({ maxBytes: 100 })).toThrow(/cannot hold one page/);
    expect(() => new S({ eviction: 'fifo' as 'lru' })).toThrow(/'clock' or 'lru'/);
    const c = new S();
    expect(() => c.encodeSync(addrBuf([BASE]), Buffer.alloc(100))).toThrow(/multiple of 4096/);
    expect(() => c.encodeSync(addrBuf([BASE, BASE]), Buffer.alloc(P))).toThrow(/2 addresses for 1 pages/);
    expect(() => c.encodeSync(addrBuf([BASE + 1n]), Buffer.alloc(P, 1))).toThrow(/not 4096-aligned/);
    expect(() => c.retain(BigUint64Array.from([0x5000n, 0x6000n, 0x1000n, 0x2000n]))).toThrow(/sorted/);
    c.close();
  });
});

describe('page-delta codec: output buffers', () => {
  it('a released output is decoded into again; one not released is not; a refused message gives its buffer back', async () => {
    const s = await seeded(8, 14);
    const { enc, dec, store, rnd, addrs } = s;
    let cur = s.pages;
    const next = () => { cur = Buffer.from(cur); for (let i = 0; i < 8; i++) cur[i * P + Math.floor(rnd() * P)] ^= 0x11; return cur; };
    const decodeNext = async () => {
      const v = next();
      const d = await dec.decode(await enc.encode(BigUint64Array.from(addrs), v), store.readBase);
      expect(compareDecoded(addrs, v, d)).toBeNull();
      store.apply(d);
      return d;
    };
    const d1 = await decodeNext();
    const held = await decodeNext(); // not released: the next output must be another buffer
    expect(held.pages.buffer).not.toBe(d1.pages.buffer);
    dec.release(d1);
    const d2 = await decodeNext();
    expect(d2.pages.buffer).toBe(d1.pages.buffer); // decoded into the released memory, correctly (checked above)
    expect(held.pages.buffer).not.toBe(d2.pages.buffer);
    dec.release(d2);
    // A message refused by the version check hands its output back at once.
    const v = next();
    const msg = await enc.encode(BigUint64Array.from(addrs), v);
    await expect(dec.decode(msg, async () => null)).rejects.toThrow(/version check failed/);
    const d3 = await dec.decode(msg, store.readBase);
    expect(d3.pages.buffer).toBe(d1.pages.buffer);
    expect(compareDecoded(addrs, v, d3)).toBeNull();
    enc.close();
  });
});

describe('page-delta codec: the version check', () => {
  it('a delta against another version of the base is refused, naming the page; nothing is returned', async () => {
    const { enc, dec, store, addrs, pages: v1 } = await seeded(3, 11);
    const v2 = Buffer.from(v1);
    for (let i = 0; i < 3; i++) v2[i * P + 50] ^= 7;
    const msg = await enc.encode(BigUint64Array.from(addrs), v2);
    expect(enc.stats().last?.delta).toBe(3);
    // The standby's copy of page 1 differs from what the primary sent (say, a lost batch).
    const wrong = Buffer.from(store.pages.get(addrs[1]!)!); wrong[4000] ^= 1;
    const readBase = async (a: bigint) => (a === addrs[1] ? wrong : store.readBase(a));
    const err = await dec.decode(msg, readBase).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(PageCodecError);
    expect((err as PageCodecError).kind).toBe('version-mismatch');
    expect((err as Error).message).toContain(`page 0x${addrs[1]!.toString(16)}: version check failed`);
    // A page the standby does not have (base = zeros) is refused the same way.
    await expect(dec.decode(msg, async () => null)).rejects.toThrow(/version check failed/);
    // With the right bases it decodes.
    const d = await dec.decode(msg, store.readBase);
    expect(compareDecoded(addrs, v2, d)).toBeNull();
    enc.close();
  });

  it('applyBatch refuses bases of the wrong size', async () => {
    const { enc, dec, store } = codec();
    const rnd = mulberry32(12);
    const v1 = heapLikePage(rnd);
    await roundTrip(enc, dec, store, [BASE], v1);
    const v2 = Buffer.from(v1); v2[1] ^= 1;
    const msg = await enc.encode(BigUint64Array.from([BASE]), v2);
    const p = native().parseBatchSync(msg.data);
    expect(() => native().applyBatchSync(p.batch, Buffer.alloc(100))).toThrow(/bases: 100 bytes for 1 delta pages/);
    await expect(native().applyBatch(p.batch, Buffer.alloc(2 * P))).rejects.toThrow(/bases/);
    expect(native().applyBatchSync(msg.data, v1).pages.equals(v2)).toBe(true); // the bytes work as well as the handle
    expect(() => native().applyBatchSync({} as never, v1)).toThrow(/handle parseBatch returned/);
    enc.close();
  });

  it('applyBatch decodes into a caller\'s buffer when given one, and refuses one too small', async () => {
    const { enc, store, addrs, pages: v1 } = await seeded(4, 13);
    const v2 = Buffer.from(v1);
    for (let i = 0; i < 3; i++) v2[i * P + 99 * i] ^= 0x40; // three deltas; page 3 unchanged
    v2.fill(0, 3 * P); v2[3 * P + 5] = 9; // (now a delta or FULL)
    const msg = await enc.encode(BigUint64Array.from(addrs), v2);
    const p = native().parseBatchSync(msg.data);
    const bases = Buffer.concat(Array.from({ length: p.delta }, (_, j) => store.pages.get(p.needBase.readBigUInt64LE(j * 8))!));
    const out = Buffer.alloc(8 * P, 0xee);
    const sync = native().applyBatchSync(msg.data, bases, out);
    expect(sync.pages.length).toBe(4 * P);
    expect(sync.pages.buffer).toBe(out.buffer); // a view of the caller's buffer, not a copy
    const asDecoded = (r: { addrs: Buffer; zeros: Buffer; pages: Buffer }) => ({ addrs: bufferToAddrs(r.addrs), zeros: bufferToAddrs(r.zeros), pages: r.pages });
    expect(compareDecoded(addrs, v2, asDecoded(sync))).toBeNull();
    expect(out.subarray(4 * P).every((b) => b === 0xee)).toBe(true); // nothing written past the pages
    out.fill(0);
    const viaAsync = await native().applyBatch(p.batch, bases, out);
    expect(viaAsync.pages.buffer).toBe(out.buffer);
    expect(compareDecoded(addrs, v2, asDecoded(viaAsync))).toBeNull();
    expect(() => native().applyBatchSync(msg.data, bases, Buffer.alloc(3 * P))).toThrow(/out: 12288 bytes for 4 pages with data/);
    await expect(native().applyBatch(p.batch, bases, Buffer.alloc(P))).rejects.toThrow(/out: 4096 bytes/);
    expect(() => native().applyBatchSync(msg.data, bases, 'x' as never)).toThrow(/out, when given, must be a Buffer/);
    enc.close();
  });
});

describe('page-delta codec: hostile and damaged batches', () => {
  const page = Buffer.alloc(P, 0x41);
  const good = () => body([{ kind: 'full', addr: BASE, page }, { kind: 'zero', addr: BASE + 4096n }]);
  const dec = new DeltaPageDecoder();
  const msg = (data: Buffer, rawBytes = P) => ({ codec: 'delta' as const, addrs: Buffer.alloc(0), zeros: Buffer.alloc(0), rawBytes, data });
  const expectRefused = async (data: Buffer, re: RegExp, rawBytes = P) => {
    const e = await dec.decode(msg(data, rawBytes), async () => null).then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(PageCodecError);
    expect((e as Error).message).toMatch(re);
  };

  it('a well-formed batch written by hand decodes (both payload forms)', async () => {
    for (const lz4 of [false, true]) {
      const d = await dec.decode(msg(pack(good(), 2, { lz4 })), async () => null);
      expect([...d.addrs]).toEqual([BASE]);
      expect([...d.zeros]).toEqual([BASE + 4096n]);
      expect(d.pages.equals(page)).toBe(true);
    }
  });

  it('header damage', async () => {
    const b = good();
    await expectRefused(pack(b, 2).subarray(0, 10), /shorter than its 16-byte header/);
    await expectRefused(pack(b, 2, { magic: 'XX' }), /bad magic/);
    await expectRefused(pack(b, 2, { version: 2 }), /version 2 is not supported/);
    await expectRefused(pack(b, 2, { flags: 0x80 }), /unknown flags/);
    await expectRefused(pack(b, 2, { count: 70000 }), /more than the limit/);
    await expectRefused(pack(b, 2, { bodyLen: 0x7fffffff }), /more than 2 pages can take/);
    await expectRefused(pack(b, 2, { count: 3 }), /entry 2: truncated/);
    await expectRefused(pack(b, 2, { count: 1 }), /bytes after the last entry/);
    await expectRefused(pack(b, 2, { crc: 1234 }), /checksum mismatch/);
    const flipped = pack(b, 2); flipped[100] ^= 1;
    await expectRefused(flipped, /checksum mismatch/);
    await expectRefused(Buffer.concat([pack(b, 2), Buffer.from([0])]), new RegExp(`payload of ${b.length + 1} bytes, the header says ${b.length}`));
    await expectRefused(pack(b, 2), /rawBytes 0 does not match/, 0);
  });

  it('LZ4 damage', async () => {
    const z = pack(good(), 2, { lz4: true });
    await expectRefused(z.subarray(0, z.length - 3), /malformed LZ4|decodes to/);
    const bad = Buffer.from(z); bad.writeUInt32LE(1 << 22, 8); // body_len far beyond what the block holds
    await expectRefused(bad, /more than 2 pages can take|cannot decode to|LZ4/);
    const garbage = Buffer.concat([z.subarray(0, 16), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00, 0x01])]);
    await expectRefused(garbage, /LZ4/);
  });

  it('entry and run damage (with a correct checksum)', async () => {
    const crc = 0x12345678;
    // (A zero entry after the delta leaves room in the body bound for the too-long delta.)
    const d = (r: Buffer) => pack(body([{ kind: 'delta', addr: BASE, baseCrc: crc, runs: r }, { kind: 'zero', addr: BASE + 4096n }]), 2);
    await expectRefused(d(runs([4095, [1, 2]])), /run ends past the page end/);
    await expectRefused(d(runs([4097, [1]])), /run starts past the page end/);
    await expectRefused(d(Buffer.concat([varint(0), varint(0)])), /empty run/);
    await expectRefused(d(Buffer.concat([varint(0), varint(5), Buffer.from([1, 2])])), /run data truncated/);
    await expectRefused(d(Buffer.from([0x80])), /truncated run/);
    await expectRefused(d(Buffer.alloc(4093, 1)), /not smaller than the page/);
    await expectRefused(pack(Buffer.concat([varint(3), Buffer.alloc(10)]), 1), /invalid kind 3/);
    await expectRefused(pack(Buffer.concat([varint(1), Buffer.alloc(10)]), 1), /truncated page/);
    await expectRefused(pack(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), 1), /bad head|truncated/);
    await expectRefused(pack(Buffer.concat([varint((1n << 53n) << 2n)]), 1), /page number out of range/);
    // Well-formed runs against a base the standby does not have: the version check.
    await expectRefused(d(runs([10, [1, 2, 3]])), /version check failed/);
  });

  it('a well-formed delta written by hand applies', async () => {
    const base = heapLikePage(mulberry32(13));
    const r = runs([0, [9]], [4093, [7, 8]]);
    const expected = Buffer.from(base); expected[0] = 9; expected[4094] = 7; expected[4095] = 8;
    const entries: Entry[] = [{ kind: 'delta', addr: BASE, baseCrc: native().crc32c(base), runs: r }, { kind: 'full', addr: BASE + 4096n, page }];
    for (const lz4 of [false, true]) {
      const d = await dec.decode(msg(pack(body(entries), 2, { lz4 }), 2 * P), async (a) => (a === BASE ? base : null));
      expect(d.pages.equals(Buffer.concat([expected, page]))).toBe(true);
    }
  });
});

describe('page-delta codec: LZ4 interop with the lz4 npm package', () => {
  it('blocks made by the addon decode with the lz4 package', async () => {
    const rnd = mulberry32(14);
    const enc = new DeltaPageEncoder();
    const addrs = addrsOf(64);
    const pages = Buffer.concat(addrs.map(() => heapLikePage(rnd)));
    const msg = await enc.encode(BigUint64Array.from(addrs), pages);
    expect(msg.data[3]! & 1).toBe(1); // LZ4
    const bodyLen = msg.data.readUInt32LE(8);
    const b = lz4Decode(msg.data.subarray(16), bodyLen);
    expect(crcOf(msg.data.subarray(0, 12), b)).toBe(msg.data.readUInt32LE(12)); // the body the addon compressed
    const z = await new Lz4PageEncoder().encode(BigUint64Array.from(addrs), pages); // the whole-page codec's block
    expect(lz4Decode(z.data, z.rawBytes).equals(pages)).toBe(true);
    enc.close();
  });

  it('blocks made by the lz4 package decode in the addon', async () => {
    const rnd = mulberry32(15);
    const pages = Buffer.concat(Array.from({ length: 16 }, () => heapLikePage(rnd)));
    const block = lz4Block(pages);
    expect((await native().decompressBlock(block, pages.length)).equals(pages)).toBe(true);
    const entries = Array.from({ length: 16 }, (_, i) => ({ kind: 'full' as const, addr: BASE + BigInt(i) * 4096n, page: pages.subarray(i * P, (i + 1) * P) }));
    const data = pack(body(entries), 16, { lz4: true });
    const d = await new DeltaPageDecoder().decode({ codec: 'delta', addrs: Buffer.alloc(0), zeros: Buffer.alloc(0), rawBytes: pages.length, data });
    expect(d.pages.equals(pages)).toBe(true);
  });
});

describe('CRC-32C', () => {
  it('hardware and portable agree, and match the check value', () => {
    expect(native().crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    const rnd = mulberry32(16);
    for (const n of [0, 1, 7, 8, 255, 256, 767, 768, 4095, 4096, 4097, 24575, 24576, 70001]) {
      const b = Buffer.from(Array.from({ length: n + 3 }, () => Math.floor(rnd() * 256))).subarray(3);
      expect(native().crc32c(b)).toBe(native().crc32c(b, true));
    }
    expect(['vpclmulqdq+sse4.2', 'sse4.2', 'portable']).toContain(native().codecInfo().crc32c);
  });

  it('every page path (hybrid, crc32 lanes, fused copy, portable) gives the same checksum', () => {
    const n = native();
    const rnd = mulberry32(17);
    const pages = [Buffer.alloc(P), Buffer.alloc(P, 0xff), heapLikePage(rnd)];
    for (let i = 0; i < 200; i++) pages.push(randomPage(rnd));
    // One bit at a time at the places where the paths split the page (fold part, lanes, joins).
    for (const bit of [0, 7, 8 * 2175 + 7, 8 * 2176, 8 * 2816, 8 * 3456, 8 * 4095 + 7]) {
      const b = Buffer.alloc(P);
      b[bit >> 3] = 1 << (bit & 7);
      pages.push(b);
    }
    for (const page of pages) {
      const want = n.crc32c(page, 'portable');
      expect(n.crc32c(page)).toBe(want);
      expect(n.crc32c(page, 'sse4.2')).toBe(want);
      expect(n.crc32c(page, 'copy')).toBe(want);
    }
    expect(() => n.crc32c(Buffer.alloc(100), 'copy')).toThrow(/exactly one page/);
  });
});
