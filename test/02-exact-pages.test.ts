// Each backend reports exactly the pages the target wrote: never a miss, and within
// the target's region never a page it did not write.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { chooseBackend, PAGE_SIZE, Tracker, type BackendName } from '../src/index.js';
import { native } from '../src/native/binding.js';
import { killAll, Target } from './helpers/target.js';
import { mulberry32, pageAt, randomSubset, regionPages } from './helpers/tracking.js';

const BACKENDS: BackendName[] = ['uffd-wp', 'soft-dirty', 'hash'];
let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'remus-exact-')); });
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => { await killAll(); });

for (const backend of BACKENDS) {
  const choice = chooseBackend(backend);
  // A backend the kernel lacks is skipped with the kernel's reason in the test name and
  // the skip note (for soft-dirty here: "soft-dirty not supported by this kernel ...").
  const title = choice.available ? `backend ${backend}` : `backend ${backend} (skipped: ${choice.reason})`;
  describe(title, () => {
    let t: Target;
    let tracker: Tracker;
    const withTarget = async () => {
      t = await Target.spawn({ pages: 256, file: join(dir, `${backend}.map`), filePages: 16 });
      tracker = await Tracker.attach(t.pid, { backend });
      expect(tracker.backend).toBe(backend);
      (await tracker.epoch()).release(); // start from a clean slate
    };
    afterEach(async () => { await tracker?.close(); });

    it('reports exactly the written pages of the main region, epoch after epoch', async (ctx) => {
      if (!choice.available) return ctx.skip(choice.reason);
      await withTarget();
      const rnd = mulberry32(0xC0FFEE);
      for (const count of [1, 2, 7, 50, 0, 256, 3]) {
        const set = randomSubset(256, count, rnd);
        if (set.length) await t.ok(`w ${set.join(' ')}`);
        const e = await tracker.epoch();
        expect(regionPages(e, t)).toEqual(set);
        // The content is the page as written: its counter moved.
        for (const i of set) expect(pageAt(e, t.pageAddr(i))!.equals(Buffer.alloc(PAGE_SIZE))).toBe(false);
        e.release();
      }
    });

    it('reports writes to a private file mapping and to pages zeroed by hand', async (ctx) => {
      if (!choice.available) return ctx.skip(choice.reason);
      await withTarget();
      await t.ok('fw 0 3 15');
      await t.ok('zero 9 10');
      const e = await tracker.epoch();
      expect(regionPages(e, t, t.info.file, t.info.filePages)).toEqual([0, 3, 15]);
      expect(regionPages(e, t)).toEqual([9, 10]);
      expect(pageAt(e, t.pageAddr(9))!.equals(Buffer.alloc(PAGE_SIZE))).toBe(true);
    });

    it('reports pages dropped with MADV_DONTNEED (they read as zeros) and nothing more', async (ctx) => {
      if (!choice.available) return ctx.skip(choice.reason);
      await withTarget();
      await t.ok(`madv ${t.pageAddr(20).toString(16)} 4`);
      const e = await tracker.epoch();
      expect(regionPages(e, t)).toEqual([20, 21, 22, 23]);
      for (let i = 20; i < 24; i++) expect(pageAt(e, t.pageAddr(i))!.equals(Buffer.alloc(PAGE_SIZE))).toBe(true);
      e.release();
      const quiet = await tracker.epoch();
      expect(regionPages(quiet, t)).toEqual([]);
    });

    it('reports file-mapping pages that revert to the file after MADV_DONTNEED', async (ctx) => {
      if (!choice.available) return ctx.skip(choice.reason);
      await withTarget();
      await t.ok('fw 1 2 5');
      (await tracker.epoch()).release();
      await t.ok(`madv ${(t.info.file + 4096n).toString(16)} 2`);
      const e = await tracker.epoch();
      expect(regionPages(e, t, t.info.file, t.info.filePages)).toEqual([1, 2]);
      // The file is all zeros (made by ftruncate): that is what the pages hold again.
      expect(pageAt(e, t.info.file + 4096n)!.equals(Buffer.alloc(PAGE_SIZE))).toBe(true);
    });

    it('follows mmap, munmap and mprotect: new mappings count as new, old ones stay tracked', async (ctx) => {
      if (!choice.available) return ctx.skip(choice.reason);
      await withTarget();
      const addr = BigInt(`0x${(await t.ok('mmap 32')).trim()}`);
      let e = await tracker.epoch();
      // Every page of the new mapping was touched: all are reported, as new.
      expect(regionPages(e, t, addr, 32)).toEqual(Array.from({ length: 32 }, (_, i) => i));
      expect(e.stats.pagesNew).toBeGreaterThanOrEqual(32);
      expect(e.vmas.some((v) => v.start <= addr && v.end >= addr + 32n * 4096n)).toBe(true);
      // Writes in the new mapping are tracked exactly from the next epoch on.
      await t.ok(`wa ${(addr + 5n * 4096n).toString(16)} 2`);
      e = await tracker.epoch();
      expect(regionPages(e, t, addr, 32)).toEqual([5, 6]);
      // Written, then made read-only within the same epoch: still reported.
      await t.ok('w 100 101');
      await t.ok(`mprotect ${t.pageAddr(96).toString(16)} 16 r`);
      e = await tracker.epoch();
      expect(regionPages(e, t)).toEqual([100, 101]);
      expect(e.vmas.find((v) => v.start === t.pageAddr(96))?.perms).toBe('r--p');
      await t.ok(`mprotect ${t.pageAddr(96).toString(16)} 16 rw`);
      await t.ok('w 97');
      e = await tracker.epoch();
      expect(regionPages(e, t)).toEqual([97]);
      // Unmapped memory is never reported.
      await t.ok(`munmap ${addr.toString(16)} 32`);
      e = await tracker.epoch();
      expect(regionPages(e, t, addr, 32)).toEqual([]);
      expect(e.vmas.some((v) => v.start < addr + 32n * 4096n && v.end > addr)).toBe(false);
      // A new mapping at the same address is armed afresh.
      const again = BigInt(`0x${(await t.ok('mmap 8')).trim()}`);
      (await tracker.epoch()).release();
      await t.ok(`wa ${again.toString(16)} 1`);
      e = await tracker.epoch();
      expect(regionPages(e, t, again, 8)).toEqual([0]);
    });
  });
}

describe('page buffers and the garbage collector', () => {
  // V8 counts every new ArrayBuffer's bytes as external memory and schedules full
  // collections on that count; epoch buffers come from a pool and their count is cancelled
  // when they are made. V8 subtracts them again when one is released (detached), and takes
  // any dip in its count as the new low since the last full collection: counted back later
  // (in the finalizer), the bytes looked like a new allocation, and under load the agent ran
  // about 3 full collections a second. Handing out and releasing must leave the count as it was.
  it('an epoch of 8 MiB, held and then released, leaves V8\'s external memory count where it was', async (ctx) => {
    const choice = chooseBackend('uffd-wp');
    if (!choice.available) return ctx.skip(choice.reason);
    const t = await Target.spawn({ pages: 2048 });
    const tracker = await Tracker.attach(t.pid, { backend: 'uffd-wp' });
    try {
      (await tracker.epoch()).release();
      for (let i = 0; i < 5; i++) {
        await t.ok('wr 0 2048');
        const before = native().externalMemory();
        const e = await tracker.epoch();
        expect(e.pages.length).toBeGreaterThanOrEqual(2048 * PAGE_SIZE);
        const held = native().externalMemory();
        e.release();
        const after = native().externalMemory();
        // The 8 MiB must not count, nor be subtracted on release. The count is the whole
        // process's: the epoch's small buffers (ranges, registers) add to it, and a collection
        // in between may free unrelated buffers of earlier tests (1.3 MiB once, in a full
        // run). Half the page buffer tells the two apart.
        expect(Math.abs(held - before)).toBeLessThan(4 << 20);
        expect(Math.abs(after - before)).toBeLessThan(4 << 20);
      }
    } finally {
      await tracker.close();
    }
  });
});
