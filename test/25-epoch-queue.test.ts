// Coalescing in the primary's EpochQueue: several captured epochs become one batch where
// each page appears once, with its newest content, in ascending address order. (The page
// buffers here are made in the test; the end-to-end path is in 12-replication.)
import { describe, expect, it } from 'vitest';
import type { EpochState } from '../src/protocol/messages.js';
import { EpochQueue, PAGE_SIZE, type CapturedEpoch } from '../src/primary/epoch-queue.js';

/** An epoch holding `pageNos` (any order), each page filled with a word naming (epoch, page). */
function epoch(seq: number, pageNos: number[]): CapturedEpoch {
  const sorted = [...new Set(pageNos)].sort((a, b) => a - b);
  const ranges: bigint[] = [];
  for (const pn of sorted) {
    const n = ranges.length;
    if (n && Number(ranges[n - 2]!) / PAGE_SIZE + Number(ranges[n - 1]!) === pn) ranges[n - 1]!++;
    else ranges.push(BigInt(pn * PAGE_SIZE), 1n);
  }
  const pages = Buffer.alloc(sorted.length * PAGE_SIZE);
  sorted.forEach((pn, i) => pages.fill(`e${seq}p${pn};`, i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
  return { seq, capturedAt: seq, ranges: BigUint64Array.from(ranges), pages, state: {} as EpochState, release: () => undefined };
}

describe('epoch queue: coalescing', () => {
  it('random epochs: each page once, its newest version, ascending, across chunk boundaries', async () => {
    let seed = 11;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
    const epochs: CapturedEpoch[] = [];
    const newest = new Map<number, number>();
    for (let s = 1; s <= 9; s++) {
      const pns = Array.from({ length: 1 + rnd(300) }, () => 0x10000 + rnd(700));
      epochs.push(epoch(s, pns));
      for (const pn of pns) newest.set(pn, s);
    }
    const q = new EpochQueue({ highWaterBytes: 1 << 30 });
    const batch = await q.coalesce(epochs);
    expect(batch.pageCount).toBe(newest.size);
    expect(batch.epoch).toBe(9);
    const seen: number[] = [];
    for (const c of batch.chunks(37)) {
      for (let i = 0; i < c.addrs.length; i++) {
        const pn = Number(c.addrs[i]!) / PAGE_SIZE;
        seen.push(pn);
        const text = c.pages.subarray(i * PAGE_SIZE, i * PAGE_SIZE + 32).toString();
        expect(text.startsWith(`e${newest.get(pn)}p${pn};`), `page ${pn}: ${text}`).toBe(true);
      }
    }
    expect(seen).toEqual([...newest.keys()].sort((a, b) => a - b));
  });

  it('one epoch is sent as it was captured', async () => {
    const e = epoch(3, [5, 6, 7, 100]);
    const batch = await new EpochQueue({ highWaterBytes: 1 << 30 }).coalesce([e]);
    const chunks = [...batch.chunks(2)];
    expect(chunks.map((c) => [...c.addrs].map((a) => Number(a) / PAGE_SIZE))).toEqual([[5, 6], [7, 100]]);
  });
});
