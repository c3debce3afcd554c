// The soft-dirty backend's pure logic, on bytes: pagemap entries to page runs.
// (The backend itself is exercised by 02-exact-pages where the kernel supports it.)
import { expect, it } from 'vitest';
import { native } from '../src/native/binding.js';

const PRESENT = 1n << 63n;
const SWAPPED = 1n << 62n;
const FILE = 1n << 61n;
const SOFT_DIRTY = 1n << 55n;

function entries(values: bigint[]): Buffer {
  const b = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => b.writeBigUInt64LE(v, i * 8));
  return b;
}
const pairs = (a: BigUint64Array) => Array.from({ length: a.length / 2 }, (_, i) => [a[i * 2]!, a[i * 2 + 1]!]);

it('parses present, swapped, file and soft-dirty bits into merged runs', () => {
  const start = 0x7f0000000000n;
  const r = native().parsePagemap(entries([
    PRESENT | SOFT_DIRTY | 0x1234n, // 0: present, dirty
    PRESENT | SOFT_DIRTY,           // 1: present, dirty (merges with 0)
    PRESENT,                        // 2: present, clean
    0n,                             // 3: nothing
    SWAPPED | SOFT_DIRTY,           // 4: swapped, dirty: has content
    PRESENT | FILE | SOFT_DIRTY,    // 5: an unmodified file page: not content of ours
    PRESENT | SOFT_DIRTY,           // 6
  ]), start);
  expect(pairs(r.present)).toEqual([[start, 3n], [start + 4n * 4096n, 1n], [start + 6n * 4096n, 1n]]);
  expect(pairs(r.softDirty)).toEqual([[start, 2n], [start + 4n * 4096n, 1n], [start + 6n * 4096n, 1n]]);
});

it('an empty or all-absent table gives no runs', () => {
  expect(pairs(native().parsePagemap(Buffer.alloc(0), 0n).present)).toEqual([]);
  expect(pairs(native().parsePagemap(entries([0n, SOFT_DIRTY, FILE]), 4096n).softDirty)).toEqual([]);
});
