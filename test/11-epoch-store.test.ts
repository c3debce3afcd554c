// The standby's durable epoch store, on real files: contents, atomicity, crashes (a child
// process killed with SIGKILL at random moments and at every named step), disk full on a
// real tmpfs, locking, the journal and its checkpoints, compaction.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EpochStore, StoreError, readCommittedInfo, type StoreFailpoint } from '../src/standby/epoch-store.js';
import { PageIndex } from '../src/standby/store/page-index.js';
import { PageArena } from '../src/standby/store/page-arena.js';
import { RecentPages } from '../src/standby/store/recent-pages.js';
import { native } from '../src/native/binding.js';
import { DeltaPageDecoder, DeltaPageEncoder } from '../src/codec/delta-codec.js';
import {
  LINEAGE, PAGE, WORK_PAGES, addrOf, addrsOf, collect, commitWork, epochOfPage, expectedAt, lastReported, makeState,
  pageOf, pagesOf, spawnStoreChild, vma, workload,
} from './helpers/store.js';

const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let dirs: string[] = [];
let stores: EpochStore[] = [];
let mounts: string[] = [];

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'remus-store-test-'));
  dirs.push(d);
  return d;
}

async function openStore(dir: string, options?: Parameters<typeof EpochStore.open>[1]): Promise<EpochStore> {
  const s = await EpochStore.open(dir, options);
  stores.push(s);
  return s;
}

async function closeStore(s: EpochStore): Promise<void> {
  await s.close();
  stores = stores.filter((x) => x !== s);
}

afterEach(async () => {
  for (const s of stores) await s.close().catch(() => undefined);
  stores = [];
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  mounts = [];
  for (const d of dirs) await rm(d, { recursive: true, force: true });
  dirs = [];
});

async function rejection(p: Promise<unknown>): Promise<StoreError> {
  try {
    await p;
  } catch (e) {
    return e as StoreError;
  }
  throw new Error('expected a rejection');
}

function thrown(f: () => unknown): StoreError {
  try {
    f();
  } catch (e) {
    return e as StoreError;
  }
  throw new Error('expected an exception');
}

/** The files of a store directory besides LOCK, MANIFEST and the manifest's segments and journal. */
async function leftovers(dir: string): Promise<string[]> {
  const m = JSON.parse((await readFile(join(dir, 'MANIFEST'), 'utf8')).split('\n')[0]!) as { segments: string[]; journal?: string };
  return (await readdir(dir)).filter((n) => n !== 'LOCK' && n !== 'MANIFEST' && !m.segments.includes(n) && n !== m.journal);
}

/** Every delta commit checkpoints: one segment per epoch, the layout the compaction rule is about. */
const SEGMENT_PER_EPOCH = { checkpointBytes: 0 };

/** Checks a reopened store against the workload model, and that readPage agrees. */
/** pageRuns() (cached while only page contents change) against runs computed from the model. */
function expectRuns(store: EpochStore, model: Map<number, number>): void {
  const want: number[] = [];
  for (const pn of [...model.entries()].filter(([, e]) => e !== 0).map(([i]) => Number(addrOf(i) >> 12n)).sort((a, b) => a - b)) {
    const n = want.length;
    if (n && want[n - 2]! + want[n - 1]! === pn) want[n - 1]!++;
    else want.push(pn, 1);
  }
  expect([...store.pageRuns()]).toEqual(want);
}

async function expectModel(store: EpochStore, model: Map<number, number>): Promise<void> {
  expect(await collect(store)).toEqual(model);
  expectRuns(store, model);
  expect(store.committed!.pages).toBe(model.size);
  expect([...store.pageAddresses()]).toEqual([...model.keys()].map(addrOf));
  for (const idx of [0, 5, 77, 130, 150, 191]) {
    const p = await store.readPage(addrOf(idx));
    const want = model.get(idx);
    if (want === undefined || want === 0) expect(p).toBeNull();
    else expect(epochOfPage(p!, idx)).toBe(want);
  }
}

describe('epoch store: page index', () => {
  it('behaves as a Map over user-space page numbers, iterating in ascending order', () => {
    // Page numbers of a 47-bit address space, clustered as real mappings are, and scattered.
    const idx = new PageIndex();
    const ref = new Map<number, number>();
    let seed = 7;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
    const top = 2 ** 35;
    const bases = [top - 600, 0x7f1200000 + 3, 0x55550000, 1, 0];
    for (let i = 0; i < 40_000; i++) {
      const k = rnd(4) === 0 ? rnd(top) : bases[rnd(bases.length)]! + rnd(1500);
      const op = rnd(10);
      if (op < 6) { const v = rnd(3) === 0 ? -1 : rnd(1e6); idx.set(k, v); ref.set(k, v); }
      else if (op < 9) expect(idx.delete(k)).toBe(ref.delete(k));
      else expect(idx.get(k)).toBe(ref.get(k));
    }
    expect(idx.size).toBe(ref.size);
    const want = [...ref].sort((a, b) => a[0] - b[0]);
    const pairs: Array<[number, number]> = [];
    idx.forEach((v, k) => pairs.push([k, v]));
    expect(pairs).toEqual(want);
    const { keys, vals } = idx.sorted();
    expect(Array.from(keys)).toEqual(want.map((e) => e[0]));
    expect(Array.from(vals)).toEqual(want.map((e) => e[1]));
    // Deleting while iterating (as a commit drops unmapped pages) visits every entry once.
    let seen = 0;
    idx.forEach((_v, k) => { seen++; if (k % 2 === 0) idx.delete(k); });
    expect(seen).toBe(want.length);
    expect(Array.from(idx.sorted().keys)).toEqual(want.map((e) => e[0]).filter((k) => k % 2 !== 0));
    idx.forEach((_v, k) => idx.delete(k));
    expect(idx.size).toBe(0);
    expect(idx.sorted().keys.length).toBe(0);
  });
});

describe('epoch store: recent pages', () => {
  it('hold the newest content of at most `capacity` pages (CLOCK eviction); delete and clear forget', () => {
    const r = new RecentPages(4);
    const page = (n: number) => Buffer.alloc(4096, n);
    const pns = (...xs: number[]) => Float64Array.from(xs);
    r.put(pns(10, 11, 12, 13), Buffer.concat([page(1), page(2), page(3), page(4)]));
    const out = Buffer.alloc(8192);
    expect(r.get(11, out, 4096)).toBe(true);
    expect(out.subarray(4096)).toEqual(page(2));
    r.put(pns(11), page(9)); // a newer version replaces the held one
    expect(r.get(11, out, 0) && out.subarray(0, 4096).equals(page(9))).toBe(true);
    r.put(pns(20, 21), Buffer.concat([page(5), page(6)])); // two evictions
    expect(r.size).toBe(4);
    expect([10, 11, 12, 13, 20, 21].filter((n) => r.get(n, out, 0))).toHaveLength(4);
    r.delete(20);
    expect(r.get(20, out, 0)).toBe(false);
    r.clear();
    expect(r.size).toBe(0);
    expect(r.get(21, out, 0)).toBe(false);
  });

  it('getMany copies the held pages to the pages asked in one call and names the others; put keeps the later of a page given twice', () => {
    const r = new RecentPages(8);
    const page = (n: number) => Buffer.alloc(4096, n);
    r.put(Float64Array.from([1, 2, 3, 2]), Buffer.concat([page(1), page(2), page(3), page(22)]));
    const out = Buffer.alloc(5 * 4096, 0xee);
    const missed = r.getMany(Float64Array.from([3, 9, 2, 1, 7]), out, Int32Array.from([4, 0, 1, 2, 3]));
    expect(missed).toEqual([1, 4]); // pages 9 and 7
    expect(out.subarray(4 * 4096)).toEqual(page(3));
    expect(out.subarray(4096, 2 * 4096)).toEqual(page(22));
    expect(out.subarray(2 * 4096, 3 * 4096)).toEqual(page(1));
    expect(out.subarray(0, 4096)).toEqual(Buffer.alloc(4096, 0xee)); // a miss leaves its page alone
  });

  it('copyPages refuses an index out of range and copies nothing', () => {
    const src = Buffer.alloc(2 * 4096, 7);
    const dst = Buffer.alloc(2 * 4096, 0);
    expect(() => native().copyPages(src, Int32Array.from([0, 2]), dst, Int32Array.from([0, 1]))).toThrow(/copyPages: page index 1 out of range \(2 -> 1\)/);
    expect(() => native().copyPages(src, Int32Array.from([0]), dst, Int32Array.from([-1]))).toThrow(RangeError);
    expect(() => native().copyPages(src, Int32Array.from([0]), dst, Int32Array.from([0, 1]))).toThrow(/differ in length/);
    expect(() => native().copyPages(src, Uint32Array.from([0]) as unknown as Int32Array, dst, Int32Array.from([0]))).toThrow(TypeError);
    expect(dst.equals(Buffer.alloc(2 * 4096, 0))).toBe(true);
    native().copyPages(src, Int32Array.from([1]), dst, Int32Array.from([0]));
    expect(dst.subarray(0, 4096).equals(Buffer.alloc(4096, 7))).toBe(true);
  });

  it('readPagesInto gives what readPageInto gives, page by page: recent, evicted, in the open batch, zero, absent', async () => {
    const store = await openStore(await tempDir(), { fsync: false, recentPages: 4 });
    const b1 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
    await b1.addPages(addrsOf(range(0, 16)), pagesOf(1, range(0, 16))); // only 4 stay recent
    await b1.addZeroPages(addrsOf([16]));
    await b1.commit(makeState(1, [vma(0, 32)]), {});
    const b2 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    await b2.addPages(addrsOf([3, 20]), pagesOf(2, [3, 20]));
    await b2.addZeroPages(addrsOf([5]));
    const ask = [0, 3, 5, 15, 16, 20, 21, 9, 14];
    const many = Buffer.alloc(ask.length * 4096, 0xee);
    store.readPagesInto(addrsOf(ask), many, Int32Array.from(ask.map((_, i) => ask.length - 1 - i)));
    for (let i = 0; i < ask.length; i++) {
      const one = Buffer.alloc(4096, 0xee);
      store.readPageInto(addrOf(ask[i]!), one, 0);
      const at = (ask.length - 1 - i) * 4096;
      expect(many.subarray(at, at + 4096).equals(one)).toBe(true);
    }
    expect(epochOfPage(many.subarray((ask.length - 2) * 4096, (ask.length - 1) * 4096), 3)).toBe(2); // the open batch's version
    await b2.abort();
  });
});

describe('epoch store: page arena', () => {
  it('putMany and copyOut move pages in bulk across chunks; freed slots are reused only once unpinned', () => {
    const arena = new PageArena();
    const n = 1300; // three chunks of 512 pages
    const slots = Int32Array.from(arena.putMany(pagesOf(1, range(0, n)), n));
    expect(arena.used).toBe(n);
    expect(new Set(slots).size).toBe(n);
    const out = Buffer.alloc(n * PAGE);
    arena.copyOut(slots, n, out, Int32Array.from(range(0, n).map((i) => n - 1 - i))); // reversed
    for (let i = 0; i < n; i++) expect(epochOfPage(out.subarray((n - 1 - i) * PAGE, (n - i) * PAGE), i)).toBe(1);
    expect(epochOfPage(arena.view(slots[700]!), 700)).toBe(1);
    // Pinned (a checkpoint is reading): a freed slot is not handed out again...
    const unpin = arena.pin();
    arena.free(slots[5]!);
    const other = arena.putMany(pageOf(2, 5), 1)[0]!;
    expect(other).not.toBe(slots[5]);
    expect(epochOfPage(arena.view(slots[5]!), 5)).toBe(1);
    // ...until it is unpinned.
    unpin();
    expect(arena.putMany(pageOf(3, 5), 1)[0]).toBe(slots[5]);
    expect(arena.used).toBe(n + 1);
  });
});

describe('epoch store: contents', () => {
  it('full batch then deltas: newest versions, zero pages, supersede within a batch, unmapped pages dropped', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false });
    expect(store.committed).toBeNull();
    expect(await readCommittedInfo(dir)).toBeNull();

    // Epoch 1 (full): data 0..63, zero 64..71; page 10 sent twice (the second wins);
    // page 200 lies outside the VMAs.
    const b1 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
    await b1.addPages(addrsOf([10]), pageOf(50, 10));
    await b1.addPages(addrsOf(range(0, 64)), pagesOf(1, range(0, 64)));
    await b1.addZeroPages(addrsOf(range(64, 72)));
    await b1.addPages(addrsOf([200]), pageOf(1, 200));
    expect(b1.pages).toBe(1 + 64 + 8 + 1);
    const c1 = await b1.commit(makeState(1, [vma(0, 128)]), { committedAt: 111 });
    expect(c1).toMatchObject({ lineage: LINEAGE, generation: 1, epoch: 1, committedAt: 111, pages: 72 });
    const m1 = new Map<number, number>([...range(0, 64).map((i) => [i, 1] as [number, number]), ...range(64, 72).map((i) => [i, 0] as [number, number])]);
    expect(await collect(store)).toEqual(m1);
    expectRuns(store, m1);
    expect(await store.readPage(addrOf(200))).toBeNull();

    // Epoch 2: rewrite 0..9; 20 becomes zero; 64 gets data; 30 data then zero, 65 zero then
    // data (in the same batch); the VMAs lose 48..63.
    const b2 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    await b2.addPages(addrsOf(range(0, 10)), pagesOf(2, range(0, 10)));
    await b2.addZeroPages(addrsOf([20, 65]));
    await b2.addPages(addrsOf([64, 30, 65, 50]), pagesOf(2, [64, 30, 65, 50]));
    await b2.addZeroPages(addrsOf([30]));
    await b2.commit(makeState(2, [vma(0, 48), vma(64, 128)]), {});
    const m2 = new Map(m1);
    for (const i of range(0, 10)) m2.set(i, 2);
    m2.set(20, 0).set(64, 2).set(30, 0).set(65, 2);
    for (const i of range(48, 64)) m2.delete(i);
    expect(await collect(store)).toEqual(m2);
    expectRuns(store, m2);
    expect(store.committed!.pages).toBe(m2.size);
    expect(await store.readPage(addrOf(50))).toBeNull();
    expect(epochOfPage((await store.readPage(addrOf(3)))!, 3)).toBe(2);
    expect(epochOfPage((await store.readPage(addrOf(11)))!, 11)).toBe(1);
    expect(await store.readPage(addrOf(30))).toBeNull();

    // Epoch 3: 48..63 are mapped again but not written: they read as zero (absent), not
    // as their epoch-1 content; also after a reopen (which replays the segments).
    const b3 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 3, base: 2, full: false });
    await b3.addPages(addrsOf([100, 1]), pagesOf(3, [100, 1]));
    await b3.commit(makeState(3, [vma(0, 128)]), {});
    const m3 = new Map(m2).set(100, 3).set(1, 3);
    const sorted3 = new Map([...m3.entries()].sort((a, b) => a[0] - b[0]));
    expect(await collect(store)).toEqual(sorted3);
    expectRuns(store, sorted3);
    expect([...store.pageAddresses()]).toEqual([...sorted3.keys()].map(addrOf));
    // Epoch 4 rewrites pages that have content already: the same runs (from the cache).
    const runs3 = store.pageRuns();
    const b4 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 4, base: 3, full: false });
    await b4.addPages(addrsOf([1, 2, 100]), pagesOf(4, [1, 2, 100]));
    await b4.commit(makeState(4, [vma(0, 128)]), {});
    expect(store.pageRuns()).toBe(runs3);
    for (const i of [1, 2, 100]) sorted3.set(i, 4);
    expectRuns(store, sorted3);
    await closeStore(store);
    const again = await openStore(dir, { fsync: false });
    expect(await collect(again)).toEqual(sorted3);
    expectRuns(again, sorted3);
    expect(again.committed).toMatchObject({ epoch: 4, pages: sorted3.size });
  });

  it('page runs stay exact over random epochs: pages gained, rewritten, zeroed, unmapped and mapped again', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false });
    let seed = 7;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
    const b0 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
    await b0.addPages(addrsOf(range(0, 40)), pagesOf(1, range(0, 40)));
    await b0.commit(makeState(1, [vma(0, 128)]), {});
    expectRuns(store, await collect(store));
    for (let e = 2; e <= 40; e++) {
      const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: e, base: e - 1, full: false });
      const data = [...new Set(Array.from({ length: 1 + rnd(12) }, () => rnd(128)))];
      const zeros = [...new Set(Array.from({ length: rnd(4) }, () => rnd(128)))].filter((x) => !data.includes(x));
      await b.addPages(addrsOf(data), pagesOf(e, data));
      if (zeros.length) await b.addZeroPages(addrsOf(zeros));
      const hole = rnd(3) === 0 ? rnd(100) : -1; // sometimes a range is unmapped
      await b.commit(makeState(e, hole < 0 ? [vma(0, 128)] : [vma(0, hole), vma(hole + 20, 128)]), {});
      expectRuns(store, await collect(store));
    }
  });

  it('reopen after close: identical identity, state (Buffers, bigints), pages', async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    for (let e = 1; e <= 6; e++) await commitWork(store, e);
    await store.idle();
    const before = store.committed!;
    const pages = await collect(store);
    expect(pages).toEqual(expectedAt(6));
    const addrs = store.pageAddresses();
    const stats = store.stats();
    expect(await readCommittedInfo(dir)).toEqual({ lineage: LINEAGE, generation: 1, epoch: 6, committedAt: 1_000_006, pages: pages.size });
    await closeStore(store);
    expect(existsSync(join(dir, 'LOCK'))).toBe(false);

    const again = await openStore(dir);
    const after = again.committed!;
    expect(after.state).toEqual(makeState(6, workload(6).vmas));
    expect(after.state.threads[0]!.sigmask).toBe((1n << 63n) | 6n);
    expect(Buffer.isBuffer(after.state.threads[0]!.gpregs)).toBe(true);
    expect(typeof after.state.clocks.boottimeNs).toBe('bigint');
    expect({ ...after, bytesOnDisk: 0 }).toEqual({ ...before, bytesOnDisk: 0 });
    expect(after.bytesOnDisk).toBe(before.bytesOnDisk);
    expect(await collect(again)).toEqual(pages);
    expect(again.pageAddresses()).toEqual(addrs);
    expect(again.stats()).toEqual(stats);
  });

  it('readPage sees the open batch first; abort leaves the previous epoch and no file', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false });
    await commitWork(store, 1);
    const before = await collect(store);
    const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    // Not awaited on purpose: the pages must be visible at once.
    const p1 = b.addPages(addrsOf([3, 4]), pagesOf(2, [3, 4]));
    const p2 = b.addZeroPages(addrsOf([5]));
    expect(epochOfPage((await store.readPage(addrOf(3)))!, 3)).toBe(2);
    expect(await store.readPage(addrOf(5))).toBeNull();
    expect(epochOfPage((await store.readPage(addrOf(6)))!, 6)).toBe(before.get(6));
    // readPageInto: the same versions, written at an offset of a caller's buffer (what the
    // delta decoder uses); a zero or unknown page leaves zeros over whatever was there.
    const out = Buffer.alloc(3 * 4096, 0xee);
    expect(store.readPageInto(addrOf(3), out, 4096)).toBe(true);
    expect(epochOfPage(out.subarray(4096, 8192), 3)).toBe(2);
    expect(out[0]).toBe(0xee);
    expect(out[8192]).toBe(0xee);
    expect(store.readPageInto(addrOf(6), out, 0)).toBe(true);
    expect(epochOfPage(out.subarray(0, 4096), 6)).toBe(before.get(6));
    expect(store.readPageInto(addrOf(5), out, 8192)).toBeNull();
    expect(store.readPageInto(addrOf(100_000), out, 4096)).toBeUndefined();
    expect(out.subarray(4096).every((x) => x === 0)).toBe(true);
    await Promise.all([p1, p2]);
    await b.abort();
    expect(epochOfPage((await store.readPage(addrOf(3)))!, 3)).toBe(before.get(3));
    expect(await collect(store)).toEqual(before);
    expect(await leftovers(dir)).toEqual([]);
    expect((await rejection(b.addPages(addrsOf([1]), pageOf(2, 1)))).code).toBe('STATE');
    expect((await rejection(b.commit(makeState(2, [vma(0, 192)]), {}))).code).toBe('STATE');
    // The same epoch can be sent again.
    await commitWork(store, 2);
    expect(await collect(store)).toEqual(expectedAt(2));
  });

  it('a batch cancelled while open or before its manifest switch leaves the previous epoch, its pages unseen and no file', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: true });
    await commitWork(store, 1);
    const before = await collect(store);
    // Cancelled while still open (a promotion while pages arrive): unseen at once, no more
    // pages taken, no commit, and no file once aborted.
    const open = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    await open.addPages(addrsOf([3, 4]), pagesOf(2, [3, 4]));
    expect(epochOfPage((await store.readPage(addrOf(3)))!, 3)).toBe(2); // an open batch is read first
    expect(open.cancelCommit()).toBe(true);
    expect(epochOfPage((await store.readPage(addrOf(3)))!, 3)).toBe(before.get(3));
    expect((await rejection(open.addPages(addrsOf([5]), pageOf(2, 5)))).message).toMatch(/cancelled/);
    expect((await rejection(open.commit(makeState(2, [vma(0, 192)]), {}))).message).toMatch(/cancelled/);
    await open.abort();
    expect(store.committed!.epoch).toBe(1);
    expect(await leftovers(dir)).toEqual([]);
    // Cancelled while committing.
    const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    await b.addPages(addrsOf([3, 4]), pagesOf(2, [3, 4]));
    const committing = b.commit(makeState(2, [vma(0, 192)]), {});
    expect(b.cancelCommit()).toBe(true);
    // At once, while the fsync may still run: the batch's pages are not visible any more.
    expect(epochOfPage((await store.readPage(addrOf(3)))!, 3)).toBe(before.get(3));
    expect((await rejection(committing)).message).toMatch(/cancelled/);
    expect(store.committed!.epoch).toBe(1);
    expect(await collect(store)).toEqual(before);
    expect(await leftovers(dir)).toEqual([]);
    // A commit that went through cannot be cancelled.
    const b2 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    await b2.addPages(addrsOf([3]), pageOf(2, 3));
    await b2.commit(makeState(2, [vma(0, 192)]), {});
    expect(b2.cancelCommit()).toBe(false);
    expect(store.committed!.epoch).toBe(2);
    await closeStore(store);
    const again = await openStore(dir);
    expect(again.committed!.epoch).toBe(2);
    expect(epochOfPage((await again.readPage(addrOf(3)))!, 3)).toBe(2);
  });

  it('large batches: multi-chunk staging, 8 MiB+ inputs written in place, reads during the batch', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false });
    const n = 5000; // 19.5 MiB
    const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
    const big = pagesOf(1, range(0, 2500));
    const pBig = b.addPages(addrsOf(range(0, 2500)), big);
    const small: Promise<void>[] = [];
    for (let i = 2500; i < n; i += 50) small.push(b.addPages(addrsOf(range(i, i + 50)), pagesOf(1, range(i, i + 50))));
    for (const i of [0, 2499, 2500, 3333, 4999]) expect(epochOfPage((await store.readPage(addrOf(i)))!, i)).toBe(1);
    await Promise.all([pBig, ...small]);
    for (const i of [0, 1234, 2600, 4999]) expect(epochOfPage((await store.readPage(addrOf(i)))!, i)).toBe(1);
    await b.commit(makeState(1, [vma(0, n)]), {});
    const got = await collect(store);
    expect(got.size).toBe(n);
    expect([...got.values()].every((e) => e === 1)).toBe(true);
    expect(store.stats()).toMatchObject({ segments: 1, livePages: n, deadPages: 0 });
  });
});

describe('epoch store: validation and locking', () => {
  it('refuses a wrong base, lineage, stale generation, delta on empty store, second batch', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false });
    let e = thrown(() => store.begin({ lineage: LINEAGE, generation: 1, epoch: 3, base: 2, full: false }));
    expect(e).toBeInstanceOf(StoreError);
    expect(e.code).toBe('MISMATCH');
    expect(e.message).toMatch(/empty.*full batch/);

    const b9 = store.begin({ lineage: LINEAGE, generation: 2, epoch: 9, base: 0, full: true });
    await b9.addPages(addrsOf([0]), pageOf(9, 0));
    expect(thrown(() => store.begin({ lineage: LINEAGE, generation: 2, epoch: 10, base: 9, full: false })).code).toBe('STATE');
    await b9.commit(makeState(9, [vma(0, 16)]), {});
    expect((await rejection(b9.commit(makeState(9, [vma(0, 16)]), {}))).code).toBe('STATE');

    e = thrown(() => store.begin({ lineage: LINEAGE, generation: 2, epoch: 8, base: 7, full: false }));
    expect(e.code).toBe('MISMATCH');
    expect(e.message).toBe('batch base 7 does not match committed epoch 9');
    e = thrown(() => store.begin({ lineage: 'other', generation: 2, epoch: 10, base: 9, full: false }));
    expect(e.code).toBe('MISMATCH');
    expect(e.message).toBe(`batch lineage 'other' does not match committed lineage '${LINEAGE}'`);
    e = thrown(() => store.begin({ lineage: LINEAGE, generation: 1, epoch: 10, base: 9, full: false }));
    expect(e.code).toBe('MISMATCH');
    expect(e.message).toMatch(/batch generation 1 is older than committed generation 2/);
    e = thrown(() => store.begin({ lineage: LINEAGE, generation: 1, epoch: 10, base: 0, full: true }));
    expect(e.code).toBe('MISMATCH');
    await store.begin({ lineage: LINEAGE, generation: 2, epoch: 10, base: 9, full: false }).abort();

    // setGeneration is durable, and a batch begun before it cannot commit.
    const open = store.begin({ lineage: LINEAGE, generation: 2, epoch: 10, base: 9, full: false });
    await open.addPages(addrsOf([1]), pageOf(10, 1));
    await store.setGeneration(3);
    e = await rejection(open.commit(makeState(10, [vma(0, 16)]), {}));
    expect(e.code).toBe('MISMATCH');
    expect(e.message).toMatch(/generation 2 is older than committed generation 3/);
    expect(await leftovers(dir)).toEqual([]);
    expect((await rejection(store.setGeneration(2))).code).toBe('MISMATCH');
    await closeStore(store);
    expect(await readCommittedInfo(dir)).toMatchObject({ generation: 3, epoch: 9, pages: 1 });
    const again = await openStore(dir, { fsync: false });
    expect(again.committed).toMatchObject({ generation: 3, epoch: 9 });
    expect(await collect(again)).toEqual(new Map([[0, 9]]));
    // A full batch may come from a new lineage (of the current generation or later).
    const nb = again.begin({ lineage: 'new-lineage', generation: 3, epoch: 1, base: 0, full: true });
    await nb.addPages(addrsOf([2]), pageOf(1, 2));
    await nb.commit(makeState(1, [vma(0, 16)]), {});
    expect(again.committed).toMatchObject({ lineage: 'new-lineage', epoch: 1, generation: 3 });
    expect(await collect(again)).toEqual(new Map([[2, 1]]));
  });

  it('a second open is refused with LOCKED naming the pid; stale locks are taken over', async () => {
    const dir = await tempDir();
    const a = await openStore(dir, { fsync: false });
    await commitWork(a, 1);
    let e = await rejection(EpochStore.open(dir));
    expect(e.code).toBe('LOCKED');
    expect(e.message).toContain(`pid ${process.pid}`);
    await closeStore(a);

    // Held by another live process.
    const child = spawnStoreChild(['commit-loop', dir]);
    try {
      await child.ready;
      expect(child.lines).toContain('READY');
      e = await rejection(EpochStore.open(dir));
      expect(e.code).toBe('LOCKED');
      expect(e.message).toContain(`process ${child.proc.pid}`);
    } finally {
      child.proc.kill('SIGKILL');
      await child.exited;
    }
    // Its lock is stale now.
    const b = await openStore(dir, { fsync: false });
    expect(b.committed!.epoch).toBeGreaterThanOrEqual(1);
    await closeStore(b);

    // A dead pid; our own pid with another start time (pid reuse); garbage.
    const dead = spawnSync('true').pid!;
    for (const content of [`${dead} 12345\n`, `${dead}\n`, `${process.pid} 1\n`, 'garbage']) {
      await writeFile(join(dir, 'LOCK'), content);
      const s = await openStore(dir, { fsync: false });
      expect((await readFile(join(dir, 'LOCK'), 'utf8')).startsWith(`${process.pid} `)).toBe(true);
      await closeStore(s);
    }
  });
});

describe('epoch store: errors', () => {
  it('disk full (a 2 MiB tmpfs): DISK_FULL, previous epoch intact, a later batch commits', async () => {
    const dir = await tempDir();
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', dir], { encoding: 'utf8' });
    if (r.status !== 0) {
      throw new Error(`this test needs to mount a tmpfs (root with mount permission): mount -t tmpfs -o size=2m tmpfs ${dir} failed: ${r.stderr || r.error?.message}`);
    }
    mounts.push(dir);
    const sdir = join(dir, 'store');
    const store = await openStore(sdir);
    // Epoch 1: 64 pages (256 KiB).
    const b1 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
    await b1.addPages(addrsOf(range(0, 64)), pagesOf(1, range(0, 64)));
    await b1.commit(makeState(1, [vma(0, 1024)]), {});

    // Epoch 2: 1024 pages (4 MiB) do not fit.
    const b2 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    const adds: Promise<void>[] = [];
    for (let i = 0; i < 1024; i += 64) adds.push(b2.addPages(addrsOf(range(i, i + 64)), pagesOf(2, range(i, i + 64))).catch(() => undefined));
    await Promise.all(adds);
    let e = await rejection(b2.commit(makeState(2, [vma(0, 1024)]), {}));
    expect(e).toBeInstanceOf(StoreError);
    expect(e.code).toBe('DISK_FULL');
    expect(e.message).toMatch(/disk full \(no space left on device\) while appending to the journal: .*jrn-[0-9a-f]+\.rrj.*committed epoch 1 is intact/);
    expect(e.message).toContain(sdir);
    expect(await leftovers(sdir)).toEqual([]);
    expect(store.committed!.epoch).toBe(1);
    const m1 = new Map(range(0, 64).map((i) => [i, 1] as [number, number]));
    expect(await collect(store)).toEqual(m1);

    // Fill the disk, then a small batch fails too (wherever the space runs out).
    const filler = Buffer.alloc(64 << 10);
    let n = 0;
    try {
      for (;;) { await writeFile(join(dir, `filler-${n}`), filler); n++; }
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    const b3 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    await b3.addPages(addrsOf(range(0, 16)), pagesOf(2, range(0, 16))).catch(() => undefined);
    e = await rejection(b3.commit(makeState(2, [vma(0, 1024)]), {}));
    expect(e.code).toBe('DISK_FULL');
    expect(await leftovers(sdir)).toEqual([]);
    expect(await collect(store)).toEqual(m1);

    // Free space: the next batch commits, also across a reopen.
    for (let i = 0; i < n; i++) await rm(join(dir, `filler-${i}`));
    const b4 = store.begin({ lineage: LINEAGE, generation: 1, epoch: 2, base: 1, full: false });
    await b4.addPages(addrsOf(range(0, 16)), pagesOf(2, range(0, 16)));
    await b4.commit(makeState(2, [vma(0, 1024)]), {});
    await closeStore(store);
    const again = await openStore(sdir);
    const m2 = new Map(m1);
    for (const i of range(0, 16)) m2.set(i, 2);
    expect(again.committed!.epoch).toBe(2);
    expect(await collect(again)).toEqual(m2);
  });

  it('an I/O error injected at each step before the commit point leaves the previous epoch and no files', async () => {
    // Epoch 2 is a delta (journal), epoch 11 a full batch (segment and manifest switch).
    for (const [point, epoch] of [['journal:write', 2], ['commit:write', 11], ['commit:synced', 11], ['commit:manifest-tmp', 11]] as const) {
      const dir = await tempDir();
      let armed = false;
      const store = await openStore(dir, {
        failpoint: (p) => {
          if (armed && p === point) throw Object.assign(new Error('injected EIO'), { code: 'EIO' });
        },
      });
      for (let e = 1; e < epoch; e++) await commitWork(store, e);
      const journal = store.stats().journalBytes;
      armed = true;
      const e = await rejection(commitWork(store, epoch));
      expect(e.code, point).toBe('IO');
      expect(e.message).toMatch(/injected EIO/);
      expect(e.message).toMatch(new RegExp(`committed epoch ${epoch - 1} is intact`));
      expect(store.committed!.epoch).toBe(epoch - 1);
      expect(store.stats().journalBytes).toBe(journal);
      expect(await leftovers(dir)).toEqual([]);
      expect(await collect(store)).toEqual(expectedAt(epoch - 1));
      armed = false;
      await commitWork(store, epoch);
      expect(await collect(store)).toEqual(expectedAt(epoch));
      await closeStore(store);
      const again = await openStore(dir);
      await expectModel(again, expectedAt(epoch));
      await closeStore(again);
    }
  });
});

/**
 * Reopens `dir` after a crash and checks it against the workload model (epoch from the
 * store); `torn`: the journal ended in a record cut short, which opening cut off.
 */
async function checkAfterCrash(dir: string, model: (epoch: number) => Map<number, number>): Promise<{ epoch: number; torn: boolean }> {
  const store = await openStore(dir, { autoCompact: false });
  const c = store.committed!;
  expect(c).not.toBeNull();
  expect(await leftovers(dir)).toEqual([]);
  await expectModel(store, model(c.epoch));
  expect(c.state.clocks.monotonicNs).toBe(BigInt(c.epoch) * 1_000_000_007n);
  const torn = store.recovered.tornBytes > 0;
  await closeStore(store);
  return { epoch: c.epoch, torn };
}

describe('epoch store: crashes', () => {
  it('SIGKILL at every step of a commit, a compaction and setGeneration', { timeout: 180_000 }, async () => {
    type Case = { point: StoreFailpoint; what: 'delta' | 'full' | 'compact' | 'checkpoint' | 'generation'; nth?: number; switched: boolean };
    const cases: Case[] = [
      { point: 'journal:write', what: 'delta', switched: false },
      { point: 'journal:synced', what: 'delta', switched: true },
      { point: 'commit:write', what: 'full', nth: 1, switched: false },
      { point: 'commit:synced', what: 'full', switched: false },
      { point: 'commit:manifest-tmp', what: 'full', switched: false },
      { point: 'commit:renamed', what: 'full', switched: true },
      { point: 'commit:done', what: 'full', switched: true },
      { point: 'checkpoint:write', what: 'checkpoint', switched: false },
      { point: 'checkpoint:synced', what: 'checkpoint', switched: false },
      { point: 'checkpoint:manifest-tmp', what: 'checkpoint', switched: false },
      { point: 'checkpoint:renamed', what: 'checkpoint', switched: true },
      { point: 'checkpoint:done', what: 'checkpoint', switched: true },
      { point: 'compact:write', what: 'compact', switched: false },
      { point: 'compact:synced', what: 'compact', switched: false },
      { point: 'compact:manifest-tmp', what: 'compact', switched: false },
      { point: 'compact:renamed', what: 'compact', switched: true },
      { point: 'compact:done', what: 'compact', switched: true },
      { point: 'generation:manifest-tmp', what: 'generation', switched: false },
      { point: 'generation:renamed', what: 'generation', switched: true },
    ];
    for (const c of cases) {
      const dir = await tempDir();
      const s = await openStore(dir, { autoCompact: false, fsync: false });
      for (let e = 1; e <= 5; e++) await commitWork(s, e);
      const segsBefore = s.stats().segments;
      await closeStore(s);
      const child = spawnStoreChild(['failpoint', dir, c.point, String(c.nth ?? 1), c.what]);
      const { signal } = await child.exited;
      expect(signal, `${c.point}/${c.what}: ${child.stderr()} ${child.lines.join(' ')}`).toBe('SIGKILL');

      const model = (epoch: number): Map<number, number> => {
        if (epoch === 5) return expectedAt(5);
        const w = workload(6);
        const m = c.what === 'full' ? new Map<number, number>() : expectedAt(5);
        for (const i of c.what === 'full' ? range(0, WORK_PAGES) : w.data) m.set(i, 6);
        return new Map([...m.entries()].sort((a, b) => a[0] - b[0]));
      };
      const store = await openStore(dir, { autoCompact: false });
      const committed = store.committed!;
      expect(await leftovers(dir), c.point).toEqual([]);
      const wantEpoch = (c.what === 'delta' || c.what === 'full') && c.switched ? 6 : 5;
      expect(committed.epoch, `${c.point}/${c.what}`).toBe(wantEpoch);
      await expectModel(store, model(committed.epoch));
      if (c.what === 'compact') expect(store.stats().segments, c.point).toBe(c.switched ? 1 : segsBefore);
      if (c.what === 'checkpoint') expect(store.stats().segments, c.point).toBe(c.switched ? segsBefore + 1 : segsBefore);
      // A checkpoint or compaction that switched leaves no page of the journal in memory.
      if (c.what === 'compact' || c.what === 'checkpoint') expect(store.stats().memoryPages > 0, c.point).toBe(!c.switched);
      if (c.what === 'generation') expect(committed.generation, c.point).toBe(c.switched ? 7 : 1);
      await closeStore(store);
    }
  });

  it('SIGKILL at random moments of a commit loop: always a consistent, durable committed epoch', { timeout: 180_000 }, async () => {
    const dir = await tempDir();
    let reported = 0;
    let last = 0;
    let interrupted = 0; // kills that left a file behind (a full batch, a checkpoint, a compaction) or a torn record
    for (let i = 0; i < 12; i++) {
      const child = spawnStoreChild(['commit-loop', dir]);
      await child.ready;
      expect(child.lines[0], child.stderr()).toBe('READY');
      await sleep(20 + Math.random() * 400);
      child.proc.kill('SIGKILL');
      await child.exited;
      reported = Math.max(reported, lastReported(child.lines));
      const left = (await leftovers(dir)).length > 0;
      const { epoch, torn } = await checkAfterCrash(dir, expectedAt);
      if (left || torn) interrupted++;
      // Every commit the child saw resolve survived; at most one more was switched.
      expect(epoch).toBeGreaterThanOrEqual(reported);
      expect(epoch).toBeLessThanOrEqual(Math.max(reported, last) + 1);
      last = epoch;
    }
    expect(last).toBeGreaterThan(12);
    expect(interrupted).toBeGreaterThan(0);
  });

  it('SIGKILL at random moments of compactions: the store stays usable', { timeout: 180_000 }, async () => {
    const dir = await tempDir();
    let compactions = 0;
    for (let i = 0; i < 8; i++) {
      const child = spawnStoreChild(['compact-loop', dir]);
      await child.ready;
      await sleep(30 + Math.random() * 300);
      child.proc.kill('SIGKILL');
      await child.exited;
      compactions += child.lines.filter((l) => l.startsWith('K ')).length;
      await checkAfterCrash(dir, expectedAt);
    }
    expect(compactions).toBeGreaterThan(0);
  });
});

describe('epoch store: journal', () => {
  /** The journal the manifest names, and where its records start. */
  async function journalOf(dir: string): Promise<{ path: string; from: number }> {
    const m = JSON.parse((await readFile(join(dir, 'MANIFEST'), 'utf8')).split('\n')[0]!) as { journal: string; journalFrom: number };
    return { path: join(dir, m.journal), from: m.journalFrom };
  }

  it('deltas go to the journal as the frames that came off the wire; reopening decodes them; status reads the last record', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { autoCompact: false });
    const encoder = new DeltaPageEncoder();
    const decoder = new DeltaPageDecoder();
    const idxs = range(0, 256);
    // Pages that change a little each epoch: the deltas are small, as under a real load.
    const pageAt = (e: number, i: number): Buffer => { const p = pageOf(1, i); p.writeUInt32LE(e, (i * 8) % 4096); return p; };
    const send = async (e: number, full: boolean, which: number[]): Promise<void> => {
      const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: e, base: full ? 0 : e - 1, full });
      const frame = await encoder.encode(addrsOf(which), Buffer.concat(which.map((i) => pageAt(e, i))));
      const d = await decoder.decode(frame, { into: (a, out, at) => { store.readPagesInto(a, out, at); } });
      await b.addFrame(frame, d);
      decoder.release(d);
      await b.commit(makeState(e, [vma(0, 256)]), { committedAt: 5000 + e });
    };
    await send(1, true, idxs);
    const segBytes = (await stat(join(dir, (await readdir(dir)).find((n) => n.startsWith('seg-'))!))).size;
    for (let e = 2; e <= 20; e++) await send(e, false, idxs.filter((i) => i % 2 === e % 2));
    const want = new Map(idxs.map((i) => [i, i % 2 === 0 ? 20 : 19] as [number, number]));
    const check = async (s: EpochStore): Promise<void> => {
      for (const i of [0, 1, 2, 3, 254, 255]) expect(await s.readPage(addrOf(i))).toEqual(pageAt(want.get(i)!, i));
      expect(s.committed!.epoch).toBe(20);
    };
    await check(store);
    // 19 epochs of 128 pages each (9.5 MiB decoded) took a fraction of the full batch's segment.
    const journal = store.stats().journalBytes;
    expect(journal).toBeGreaterThan(0);
    expect(journal).toBeLessThan(segBytes / 4);
    expect(store.stats()).toMatchObject({ segments: 1, memoryPages: 256 });
    expect(await readCommittedInfo(dir)).toEqual({ lineage: LINEAGE, generation: 1, epoch: 20, committedAt: 5020, pages: 256 });
    await closeStore(store);
    const again = await openStore(dir);
    expect(again.recovered).toEqual({ records: 19, tornBytes: 0 });
    await check(again);
    expect((await again.readPage(addrOf(7)))!.equals(pageAt(19, 7))).toBe(true);
    encoder.close();
  });

  it('a torn or damaged tail is cut off at open: the epoch before it is committed, and later commits chain on it', async () => {
    const dir = await tempDir();
    const s1 = await openStore(dir, { autoCompact: false });
    for (let e = 1; e <= 6; e++) await commitWork(s1, e);
    await closeStore(s1);
    const { path } = await journalOf(dir);
    const size = (await stat(path)).size;

    // Half a record of garbage after the last one: a write a crash interrupted.
    await appendFile(path, Buffer.alloc(300, 0xab));
    const s2 = await openStore(dir, { autoCompact: false });
    expect(s2.recovered).toEqual({ records: 5, tornBytes: 300 });
    await expectModel(s2, expectedAt(6));
    expect((await stat(path)).size).toBe(size);
    await commitWork(s2, 7);
    await closeStore(s2);

    // The last record cut short: epoch 6 is what stays.
    const s3 = await openStore(dir, { autoCompact: false });
    await expectModel(s3, expectedAt(7));
    const full = (await stat(path)).size;
    await closeStore(s3);
    await truncate(path, full - 10);
    const s4 = await openStore(dir, { autoCompact: false });
    expect(s4.committed!.epoch).toBe(6);
    expect(s4.recovered.tornBytes).toBeGreaterThan(0);
    await expectModel(s4, expectedAt(6));
    await commitWork(s4, 7);
    await closeStore(s4);

    // A flipped byte in the body of the last record: its checksum fails, epoch 6 stays.
    const buf = await readFile(path);
    buf[buf.length - 5]! ^= 0xff;
    await writeFile(path, buf);
    expect(await readCommittedInfo(dir)).toMatchObject({ epoch: 6 }); // status checks the last body too
    const s5 = await openStore(dir, { autoCompact: false });
    expect(s5.committed!.epoch).toBe(6);
    await expectModel(s5, expectedAt(6));
    expect(await readCommittedInfo(dir)).toMatchObject({ epoch: 6 });
    await closeStore(s5);
  });

  it('checkpoints write the pages held in memory (and those zeroed or unmapped meanwhile) to a segment; commits go on during one', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { autoCompact: false });
    for (let e = 1; e <= 9; e++) await commitWork(store, e);
    expect(store.stats().memoryPages).toBeGreaterThan(0);
    const segments = store.stats().segments;
    const before = await journalOf(dir);
    const running = store.checkpoint();
    await commitWork(store, 10); // a hole (every 7th + 3) after the checkpoint's epoch
    await running;
    expect(store.stats().segments).toBe(segments + 1);
    await expectModel(store, expectedAt(10));
    // Epoch 10's pages stay in memory; its record moved to a new journal, the old one is gone.
    expect(store.stats().memoryPages).toBeGreaterThan(0);
    const after = await journalOf(dir);
    expect(after.path).not.toBe(before.path);
    expect(after.from).toBe(0);
    expect(existsSync(before.path)).toBe(false);
    expect(await readCommittedInfo(dir)).toMatchObject({ epoch: 10 });
    await closeStore(store);
    const again = await openStore(dir, { autoCompact: false });
    expect(again.recovered.records).toBe(1);
    await expectModel(again, expectedAt(10));
    // A checkpoint with nothing after it starts a new journal and leaves nothing in memory.
    await again.checkpoint();
    expect(again.stats()).toMatchObject({ memoryPages: 0, journalBytes: 0 });
    expect((await journalOf(dir)).from).toBe(0);
    expect(await leftovers(dir)).toEqual([]);
    await closeStore(again);
    const third = await openStore(dir, { autoCompact: false });
    expect(third.recovered.records).toBe(0);
    await expectModel(third, expectedAt(10));
  });

  it('a checkpoint does not hand RecentPages a page that an open batch has rewritten meanwhile', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { autoCompact: false });
    for (let e = 1; e <= 3; e++) await commitWork(store, e);
    const p = workload(3).data[0]!; // in memory since epoch 3
    const running = store.checkpoint();
    const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: 4, base: 3, full: false });
    await b.addPages(addrsOf([p]), pagesOf(4, [p]));
    await running; // its switch saw page p of epoch 3 unchanged in the index
    await b.commit(makeState(4, workload(4).vmas), {});
    expect(epochOfPage((await store.readPage(addrOf(p)))!, p)).toBe(4);
    const out = Buffer.alloc(4096);
    store.readPagesInto(addrsOf([p]), out, Int32Array.of(0));
    expect(epochOfPage(out, p)).toBe(4);
  });

  it('checkpoints by themselves once the pages in memory pass checkpointBytes; checks its options', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { checkpointBytes: 100 * 4096, fsync: false });
    let most = 0;
    for (let e = 1; e <= 30; e++) {
      await commitWork(store, e);
      most = Math.max(most, store.stats().memoryPages);
      await store.idle();
    }
    expect(store.lastCompactionError).toBeNull();
    expect(most).toBeLessThan(100 + WORK_PAGES);
    expect(store.stats().memoryPages).toBeLessThanOrEqual(100 + WORK_PAGES);
    await expectModel(store, expectedAt(30));
    await expect(EpochStore.open(await tempDir(), { checkpointBytes: -1 })).rejects.toThrow(/checkpointBytes must be a non-negative whole number/);

    // Epochs without pages (a target asleep) still add records: past journalBytes, a
    // checkpoint with no page starts a new journal all the same.
    const quiet = await openStore(await tempDir(), { journalBytes: 16_384, fsync: false });
    await commitWork(quiet, 1);
    for (let e = 2; e <= 40; e++) {
      await quiet.begin({ lineage: LINEAGE, generation: 1, epoch: e, base: e - 1, full: false }).commit(makeState(e, workload(1).vmas), {});
      await quiet.idle();
      expect(quiet.stats().journalBytes).toBeLessThan(2 * 16_384);
    }
    expect(quiet.stats().segments).toBeGreaterThan(1);
    expect(quiet.committed!.epoch).toBe(40);
    await expectModel(quiet, expectedAt(1));
  });
});

describe('epoch store: compaction', () => {
  it('many small epochs rewriting the same pages trigger it; contents identical before and after', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false, deadRatio: 1, ...SEGMENT_PER_EPOCH });
    const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
    await b.addPages(addrsOf(range(0, 64)), pagesOf(1, range(0, 64)));
    await b.addZeroPages(addrsOf(range(64, 80)));
    await b.commit(makeState(1, [vma(0, 128)]), {});
    const model = new Map<number, number>([...range(0, 64).map((i) => [i, 1] as [number, number]), ...range(64, 80).map((i) => [i, 0] as [number, number])]);
    let maxSegments = 0;
    let minAfter = Infinity;
    for (let e = 2; e <= 60; e++) {
      const idx = range(0, 16).map((k) => (k * 4 + e) % 64);
      const d = store.begin({ lineage: LINEAGE, generation: 1, epoch: e, base: e - 1, full: false });
      await d.addPages(addrsOf(idx), pagesOf(e, idx));
      await d.commit(makeState(e, [vma(0, 128)]), {});
      for (const i of idx) model.set(i, e);
      maxSegments = Math.max(maxSegments, store.stats().segments);
      await store.idle();
      minAfter = Math.min(minAfter, store.stats().segments);
      expect(await store.readPage(addrOf(idx[0]!))).toEqual(pageOf(e, idx[0]!));
    }
    expect(store.lastCompactionError).toBeNull();
    // 80 live pages, 16 dead per delta: dead > live after the 6th delta, whose pages are
    // still in memory (6 segments): the compaction takes them in.
    expect(maxSegments).toBe(6);
    expect(minAfter).toBe(1);
    const st = store.stats();
    expect(st.deadPages).toBeLessThanOrEqual(st.livePages + 16);
    const sorted = new Map([...model.entries()].sort((a, b2) => a[0] - b2[0]));
    expect(await collect(store)).toEqual(sorted);

    // Explicit compaction: identical identity, state and pages; one segment, no dead pages.
    const before = store.committed!;
    await store.compact();
    expect(store.stats()).toMatchObject({ segments: 1, deadPages: 0, livePages: 80 });
    expect({ ...store.committed!, bytesOnDisk: 0 }).toEqual({ ...before, bytesOnDisk: 0 });
    expect(await collect(store)).toEqual(sorted);
    expect((await readdir(dir)).filter((n) => n.startsWith('seg-'))).toHaveLength(1);
    await closeStore(store);
    const again = await openStore(dir);
    expect(await collect(again)).toEqual(sorted);
    expect(again.committed!.state).toEqual(before.state);
  });

  it('the default rule waits for 3 dead pages per live one; deadRatio changes it and is checked', async () => {
    const segmentsBeforeCompaction = async (options: { deadRatio?: number }): Promise<number> => {
      const store = await openStore(await tempDir(), { fsync: false, ...SEGMENT_PER_EPOCH, ...options });
      const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
      await b.addPages(addrsOf(range(0, 64)), pagesOf(1, range(0, 64)));
      await b.commit(makeState(1, [vma(0, 64)]), {});
      let most = 0;
      for (let e = 2; e <= 40; e++) {
        const idx = range(0, 16).map((k) => (k * 4 + e) % 64);
        const d = store.begin({ lineage: LINEAGE, generation: 1, epoch: e, base: e - 1, full: false });
        await d.addPages(addrsOf(idx), pagesOf(e, idx));
        await d.commit(makeState(e, [vma(0, 64)]), {});
        most = Math.max(most, store.stats().segments);
        await store.idle();
      }
      expect(store.lastCompactionError).toBeNull();
      await closeStore(store);
      return most;
    };
    // 64 live pages, 16 dead per delta: dead > 3 x 64 after the 13th delta (13 segments,
    // its pages still in memory); dead > 2 x 64 after the 9th.
    expect(await segmentsBeforeCompaction({})).toBe(13);
    expect(await segmentsBeforeCompaction({ deadRatio: 2 })).toBe(9);
    await expect(EpochStore.open(await tempDir(), { deadRatio: 0 })).rejects.toThrow(/deadRatio must be a positive number, got 0/);
  });

  it('held (as a promotion holds it): a running compaction is cancelled, none starts; released, it runs again', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false, deadRatio: 1, ...SEGMENT_PER_EPOCH });
    const b = store.begin({ lineage: LINEAGE, generation: 1, epoch: 1, base: 0, full: true });
    await b.addPages(addrsOf(range(0, 64)), pagesOf(1, range(0, 64)));
    await b.commit(makeState(1, [vma(0, 128)]), {});
    const model = new Map<number, number>(range(0, 64).map((i) => [i, 1] as [number, number]));
    const commitEpoch = async (e: number) => {
      const idx = range(0, 16).map((k) => (k * 4 + e) % 64);
      const d = store.begin({ lineage: LINEAGE, generation: 1, epoch: e, base: e - 1, full: false });
      await d.addPages(addrsOf(idx), pagesOf(e, idx));
      await d.commit(makeState(e, [vma(0, 128)]), {});
      for (const i of idx) model.set(i, e);
      await store.idle();
    };
    for (let e = 2; e <= 4; e++) await commitEpoch(e);
    const segments = store.stats().segments;
    expect(segments).toBe(4);
    const running = store.compact();
    const release = store.holdCompaction();
    await running;
    expect(store.stats().segments).toBe(segments); // cancelled before its switch
    for (let e = 5; e <= 12; e++) { await commitEpoch(e); await store.idle(); }
    await store.compact();
    await store.checkpoint();
    // None ran, not even on request: no checkpoint either (the journal's pages stay in memory).
    expect(store.stats().segments).toBe(4);
    expect(store.stats().memoryPages).toBeGreaterThan(0);
    expect(await collect(store)).toEqual(new Map([...model.entries()].sort((x, y) => x[0] - y[0])));
    expect((await readdir(dir)).filter((n) => n.startsWith('seg-'))).toHaveLength(4);
    release();
    await commitEpoch(13); // 4 segments: the rule wants more than 4, so a checkpoint
    expect(store.stats().segments).toBe(5);
    await commitEpoch(14); // and now a compaction
    expect(store.stats().segments).toBe(1);
    expect(store.stats().memoryPages).toBe(0);
    expect(await collect(store)).toEqual(new Map([...model.entries()].sort((x, y) => x[0] - y[0])));
    await closeStore(store);
  });

  it('a compaction running while batches commit (delta and full) gives the right result', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: true, autoCompact: false });
    for (let e = 1; e <= 10; e++) await commitWork(store, e);
    const compacting = store.compact();
    await commitWork(store, 11); // full (workload: every 11th)
    await commitWork(store, 12);
    await compacting;
    await store.idle();
    expect(await collect(store)).toEqual(expectedAt(12));
    const c2 = store.compact();
    await commitWork(store, 13);
    await commitWork(store, 14);
    await c2;
    expect(await collect(store)).toEqual(expectedAt(14));
    expect(store.stats().segments).toBeLessThanOrEqual(3);
    await closeStore(store);
    const again = await openStore(dir);
    expect(again.committed!.epoch).toBe(14);
    await expectModel(again, expectedAt(14));
    expect(await leftovers(dir)).toEqual([]);
  });

  it('status can read the manifest while the store is open (no lock)', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { fsync: false });
    await commitWork(store, 1);
    const info = await readCommittedInfo(dir);
    expect(info).toEqual({ lineage: LINEAGE, generation: 1, epoch: 1, committedAt: 1_000_001, pages: store.committed!.pages });
    expect(await EpochStore.open(dir).catch((e: StoreError) => e.code)).toBe('LOCKED');
  });
});
