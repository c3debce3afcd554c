// Helpers for tracker tests: page-index sets from epochs.
import { PAGE_SIZE, type Epoch } from '../../src/index.js';
import type { Target } from './target.js';

/** Indices (within the target's main region) of every page an epoch reported. */
export function regionPages(e: Epoch, t: Target, region = t.info.region, pages = t.info.pages): number[] {
  const out: number[] = [];
  const end = region + BigInt(pages * PAGE_SIZE);
  for (let i = 0; i < e.ranges.length; i += 2) {
    const start = e.ranges[i]!;
    for (let p = 0n; p < e.ranges[i + 1]!; p++) {
      const a = start + p * BigInt(PAGE_SIZE);
      if (a >= region && a < end) out.push(Number((a - region) / BigInt(PAGE_SIZE)));
    }
  }
  return out.sort((a, b) => a - b);
}

/** Content of the page at `addr` in an epoch, or undefined if it was not reported. */
export function pageAt(e: Epoch, addr: bigint): Buffer | undefined {
  for (const [a, buf] of e.entries()) if (a === addr) return buf;
  return undefined;
}

export function randomSubset(n: number, count: number, rnd: () => number = Math.random): number[] {
  const all = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, count).sort((a, b) => a - b);
}

/** A small deterministic PRNG so that failures reproduce. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
