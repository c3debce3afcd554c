// Concurrency: many writer threads, threads created while freezing, a target that
// exits mid-epoch. Checked against a shadow copy built only from reported pages: any
// missed write makes the shadow differ from the target's real memory.
import { afterEach, describe, expect, it } from 'vitest';
import { PAGE_SIZE, Tracker, type Epoch } from '../src/index.js';
import { killAll, Target } from './helpers/target.js';
import { mulberry32, randomSubset, regionPages } from './helpers/tracking.js';

afterEach(async () => { await killAll(); });

/** Page content by address, from a full epoch, then updated by dirty epochs. */
class Shadow {
  readonly pages = new Map<bigint, Buffer>();
  apply(e: Epoch): void {
    for (const [addr, buf] of e.entries()) this.pages.set(addr, Buffer.from(buf));
  }
  /** Addresses in [start, end) whose content differs from `full`. */
  diff(full: Epoch, start: bigint, end: bigint): bigint[] {
    const bad: bigint[] = [];
    for (const [addr, buf] of full.entries()) {
      if (addr < start || addr >= end) continue;
      const mine = this.pages.get(addr);
      if (!mine || !mine.equals(buf)) bad.push(addr);
    }
    return bad;
  }
}

describe('threads', () => {
  let tracker: Tracker | undefined;
  afterEach(async () => { await tracker?.close(); tracker = undefined; });

  it('8 threads writing concurrently: exactly their pages', async () => {
    const t = await Target.spawn({ pages: 1024 });
    tracker = await Tracker.attach(t.pid);
    (await tracker.epoch()).release();
    const rnd = mulberry32(8);
    for (let round = 0; round < 10; round++) {
      const set = randomSubset(1024, 200, rnd);
      await t.ok(`tw 8 ${set.join(' ')}`);
      const e = await tracker.epoch();
      expect(regionPages(e, t)).toEqual(set);
      e.release();
    }
  });

  it('random writers running during every freeze: no write is ever missed', async () => {
    const t = await Target.spawn({ pages: 4096, threads: 4 });
    tracker = await Tracker.attach(t.pid);
    const shadow = new Shadow();
    shadow.apply(await tracker.epoch({ full: true }));
    await t.ok('rand 30 2');
    let threadsSeen = 0;
    for (let i = 0; i < 40; i++) {
      await new Promise((r) => setTimeout(r, 5 + (i % 7)));
      const e = await tracker.epoch();
      threadsSeen = Math.max(threadsSeen, e.threads.length);
      shadow.apply(e);
      e.release();
    }
    const writes = Number((await t.ok('stop')).trim());
    expect(writes).toBeGreaterThan(1000);
    expect(threadsSeen).toBeGreaterThanOrEqual(5);
    shadow.apply(await tracker.epoch());
    const full = await tracker.epoch({ full: true });
    const region = t.info.region;
    expect(shadow.diff(full, region, region + BigInt(4096 * PAGE_SIZE))).toEqual([]);
  });

  it('threads created while freezing are stopped too, and their writes caught', async () => {
    const t = await Target.spawn({ pages: 256 });
    tracker = await Tracker.attach(t.pid);
    const shadow = new Shadow();
    shadow.apply(await tracker.epoch({ full: true }));
    await t.ok('spawn 400');
    let epochs = 0;
    let maxThreads = 0;
    for (let i = 0; i < 300; i++) {
      const e = await tracker.epoch();
      epochs++;
      maxThreads = Math.max(maxThreads, e.threads.length);
      // Every thread reported is a thread of the target, each once.
      expect(new Set(e.threads.map((th) => th.tid)).size).toBe(e.threads.length);
      shadow.apply(e);
      e.release();
      if (i > 20 && i % 10 === 0) {
        const r = await t.cmd('threads');
        if (r === 'ok 1') break;
      }
    }
    const created = Number((await t.ok('spawnwait')).trim());
    expect(created).toBe(400);
    expect(maxThreads).toBeGreaterThanOrEqual(2);
    expect(epochs).toBeGreaterThan(5);
    shadow.apply(await tracker.epoch());
    const full = await tracker.epoch({ full: true });
    expect(shadow.diff(full, t.info.region, t.info.region + 256n * 4096n)).toEqual([]);
  });
});

describe('a target that exits', () => {
  it('exits in the middle of epochs: TARGET_GONE, then the target is reaped', async () => {
    const t = await Target.spawn({ pages: 2048, threads: 2 });
    const tracker = await Tracker.attach(t.pid);
    try {
      await t.ok('rand 10 5');
      const loop = (async () => {
        for (;;) {
          const e = await tracker.epoch({ full: true });
          e.release();
        }
      })();
      await new Promise((r) => setTimeout(r, 100));
      void t.cmd('exit 7').catch(() => undefined);
      const err = await loop.then(() => undefined, (e: unknown) => e);
      expect(err).toMatchObject({ name: 'ReplicateError', code: 'TARGET_GONE', pid: t.pid });
      expect(await t.exited).toEqual({ code: 7, signal: null });
      await expect(tracker.epoch()).rejects.toMatchObject({ code: 'TARGET_GONE' });
    } finally {
      await tracker.close();
    }
  });

  it('crashes (SIGSEGV) between epochs: TARGET_GONE', async () => {
    const t = await Target.spawn();
    const tracker = await Tracker.attach(t.pid);
    try {
      (await tracker.epoch()).release();
      await t.cmd('crash').catch(() => undefined);
      expect((await t.exited).signal).toBe('SIGSEGV');
      await expect(tracker.epoch()).rejects.toMatchObject({ code: 'TARGET_GONE' });
    } finally {
      await tracker.close();
    }
  });
});
