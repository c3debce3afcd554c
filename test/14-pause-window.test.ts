// The pause figures `replicate status` and the commit lines report: percentiles over the
// last N epochs, sorted once per epoch however often they are read.
import { expect, it } from 'vitest';
import { percentile, Percentiles } from '../src/util/stats.js';

it('percentiles over a sliding window: nearest rank, only the last N values, fresh after every add', () => {
  const w = new Percentiles(4);
  expect([w.p(50), w.max(), w.count]).toEqual([0, 0, 0]);
  for (const v of [5, 1, 9]) w.add(v);
  expect([w.p(50), w.p(99), w.max(), w.count]).toEqual([5, 9, 9, 3]);
  w.add(3);
  expect([w.p(0), w.p(50), w.p(100)]).toEqual([1, 3, 9]);
  // 5 falls out of the window (1 9 3 20); a figure read before the add must not be served after it.
  w.add(20);
  expect([w.p(0), w.p(50), w.max(), w.count]).toEqual([1, 3, 20, 4]);
  w.add(0.5); // 1 falls out: 9 3 20 0.5
  expect([w.p(0), w.p(50), w.p(75), w.max()]).toEqual([0.5, 3, 9, 20]);
  // Numeric order (not the string order a plain Array sort would use), as percentile() has it.
  const many = Array.from({ length: 1000 }, (_, i) => (i * 7919) % 1000 / 10);
  const big = new Percentiles(1024);
  for (const v of many) big.add(v);
  for (const p of [1, 50, 99, 100]) expect(big.p(p)).toBe(percentile(many, p));
});
