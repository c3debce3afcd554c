// Turns a CRIU image directory into one for lazy restore from our own page server:
// every page CRIU may restore lazily becomes a LAZY-only pagemap entry (no data in
// pages-N.img), every other page stays PRESENT with its data in a new, small pages-N.img.
// The old pages file is kept under another name; the returned runs say where each lazy page's
// data is in it, so that a page server can serve them (RunsPageSource + fileRun).
//
//   before:  pagemap  [head {pages_id 1}] [A: 3 pages, PRESENT]  [B: 2 pages, PRESENT|LAZY] ...
//            pages-1.img  A A A B B ...
//   after:   pagemap  [head {pages_id 1}] [A: 3 pages, PRESENT]  [B: 2 pages, LAZY] ...
//            pages-1.img  A A A                  pages-1.img.lazy-source  A A A B B ... (as before)
//
// "May restore lazily" is decided from the VMAs in mm-PID.img with CRIU's own rule (the rule
// the restorer uses to register a VMA with userfaultfd): MAP_ANONYMOUS and MAP_PRIVATE, not
// MAP_LOCKED, not MAP_HUGETLB, not [vdso]/[vvar]/[vsyscall]. Marking a page of any other VMA
// LAZY loses it: the restore skips it and no userfaultfd covers that VMA.
import { open, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { Magic, Message, readImage, writeImage, type ImageFile } from '../image/index.js';
import { varintField } from '../image/protobuf.js';
import { PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT } from './protocol.js';

const PAGE = BigInt(PAGE_SIZE);

const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const MAP_LOCKED = 0x2000;
const MAP_HUGETLB = 0x40000;
const VMA_AREA_VSYSCALL = 1 << 2;
const VMA_AREA_VDSO = 1 << 3;
const VMA_AREA_VVAR = 1 << 12;

/** CRIU's rule (criu/include/vma.h, vma_entry_can_be_lazy): may this VMA's pages come lazily? */
export function vmaCanBeLazy(flags: number, status: number): boolean {
  return (flags & MAP_ANONYMOUS) !== 0 && (flags & MAP_PRIVATE) !== 0 && (flags & MAP_LOCKED) === 0 &&
    (flags & MAP_HUGETLB) === 0 && (status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL)) === 0;
}

export interface ImageVma {
  start: bigint;
  end: bigint;
  flags: number;
  status: number;
}

/** The VMAs of an mm-PID.img (MmEntry field 14; VmaEntry start 1, end 2, flags 6, status 7), sorted. */
export async function readImageVmas(mmPath: string): Promise<ImageVma[]> {
  const img = await readImage(mmPath, Magic.MM);
  if (img.entries.length === 0) throw new Error(`${mmPath}: no MmEntry`);
  const mm = Message.parse(img.entries[0]!);
  const out: ImageVma[] = [];
  for (const f of mm.all(14)) {
    const v = Message.parse(f.value);
    out.push({
      start: v.requireUint(1, `${mmPath}: vma start`),
      end: v.requireUint(2, `${mmPath}: vma end`),
      flags: Number(v.requireUint(6, `${mmPath}: vma flags`)),
      status: Number(v.requireUint(7, `${mmPath}: vma status`)),
    });
  }
  return out.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

/** Pages of one process to be served lazily: at `vaddr`, `pages` pages, at byte `offset` of the source file. */
export interface LazyRun {
  vaddr: bigint;
  pages: number;
  offset: number;
}

export interface LazifiedProcess {
  pid: number;
  pagesId: number;
  /** The pages file as it was (every PRESENT page), renamed: the lazy pages' data is here. */
  sourcePages: string;
  /** The lazy pages, in address order, with their place in `sourcePages`. */
  runs: LazyRun[];
  lazyPages: number;
  /** Pages left PRESENT (restored eagerly by `criu restore`). */
  eagerPages: number;
  /** Pagemap entries written. */
  entries: number;
}

export interface LazifyOptions {
  /** Suffix for the kept pages file (default ".lazy-source": pages-1.img.lazy-source). */
  sourceSuffix?: string;
}

interface Piece {
  vaddr: bigint;
  pages: number;
  /** Offset of the data in the old pages file; -1 for an entry without data. */
  offset: number;
  flags: number;
}

/** Rewrites every pagemap-PID.img of `dir` (and its pages file) for lazy restore. */
export async function lazifyImage(dir: string, options: LazifyOptions = {}): Promise<LazifiedProcess[]> {
  const suffix = options.sourceSuffix ?? '.lazy-source';
  const names = (await readdir(dir)).filter((n) => /^pagemap-\d+\.img$/.test(n));
  const out: LazifiedProcess[] = [];
  for (const name of names) {
    const pid = Number(/^pagemap-(\d+)\.img$/.exec(name)![1]);
    out.push(await lazifyProcess(dir, pid, suffix));
  }
  return out.sort((a, b) => a.pid - b.pid);
}

async function lazifyProcess(dir: string, pid: number, suffix: string): Promise<LazifiedProcess> {
  const pmPath = join(dir, `pagemap-${pid}.img`);
  const pm = await readImage(pmPath, Magic.PAGEMAP);
  if (pm.entries.length === 0) throw new Error(`${pmPath}: no pagemap head`);
  const pagesId = Number(Message.parse(pm.entries[0]!).requireUint(1, `${pmPath}: head`));
  const vmas = await readImageVmas(join(dir, `mm-${pid}.img`));

  // Split the PRESENT entries at VMA bounds into lazy and eager pieces.
  const pieces: Piece[] = [];
  let offset = 0;
  let vi = 0;
  for (let i = 1; i < pm.entries.length; i++) {
    const m = Message.parse(pm.entries[i]!);
    const vaddr = m.requireUint(1, `${pmPath}: entry ${i}`);
    const nr = Number(m.getUint(5) ?? m.requireUint(2, `${pmPath}: entry ${i}`));
    const flagsField = m.getUint(4);
    if (m.getUint(3) === 1n || (flagsField !== undefined && (Number(flagsField) & PE_PARENT) !== 0))
      throw new Error(`${pmPath}: entry 0x${vaddr.toString(16)} is in a parent image; a full dump is needed`);
    const flags = flagsField === undefined ? PE_PRESENT : Number(flagsField);
    if ((flags & PE_PRESENT) === 0) {
      pieces.push({ vaddr, pages: nr, offset: -1, flags });
      continue;
    }
    let a = vaddr;
    const end = vaddr + BigInt(nr) * PAGE;
    while (a < end) {
      while (vi < vmas.length && vmas[vi]!.end <= a) vi++;
      const v = vmas[vi];
      let to: bigint;
      let lazy: boolean;
      if (!v || v.start > a) {
        // Not inside a VMA (should not happen in a CRIU image): keep it as it was.
        to = v && v.start < end ? v.start : end;
        lazy = false;
      } else {
        to = v.end < end ? v.end : end;
        lazy = vmaCanBeLazy(v.flags, v.status);
      }
      const n = Number((to - a) / PAGE);
      pieces.push({ vaddr: a, pages: n, offset: offset + Number((a - vaddr) / PAGE) * PAGE_SIZE, flags: lazy ? PE_LAZY : PE_PRESENT });
      a = to;
    }
    offset += nr * PAGE_SIZE;
  }

  // Merge neighbours of the same kind.
  const merged: Piece[] = [];
  for (const p of pieces) {
    const last = merged[merged.length - 1];
    if (last && last.flags === p.flags && last.offset >= 0 && p.offset >= 0 &&
        last.vaddr + BigInt(last.pages) * PAGE === p.vaddr && last.offset + last.pages * PAGE_SIZE === p.offset) {
      last.pages += p.pages;
    } else {
      merged.push({ ...p });
    }
  }

  // Keep the old pages file; write the eager pages into a new one.
  const pagesPath = join(dir, `pages-${pagesId}.img`);
  const sourcePages = `${pagesPath}${suffix}`;
  await rename(pagesPath, sourcePages);
  const src = await open(sourcePages, 'r');
  const dst = await open(pagesPath, 'wx');
  const runs: LazyRun[] = [];
  let lazyPages = 0;
  let eagerPages = 0;
  const entries: Buffer[] = [pm.entries[0]!];
  try {
    for (const p of merged) {
      entries.push(new Message([varintField(1, p.vaddr), varintField(2, 0), varintField(4, p.flags), varintField(5, p.pages)]).serialize());
      if (p.offset < 0) continue;
      if (p.flags === PE_LAZY) {
        runs.push({ vaddr: p.vaddr, pages: p.pages, offset: p.offset });
        lazyPages += p.pages;
        continue;
      }
      eagerPages += p.pages;
      const chunk = Buffer.allocUnsafe(Math.min(p.pages, 2048) * PAGE_SIZE);
      for (let done = 0; done < p.pages * PAGE_SIZE;) {
        const len = Math.min(chunk.length, p.pages * PAGE_SIZE - done);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await src.read(chunk, got, len - got, p.offset + done + got);
          if (bytesRead === 0) throw new Error(`${sourcePages} ends before its pagemap says (offset ${p.offset + done + got})`);
          got += bytesRead;
        }
        let put = 0;
        while (put < len) put += (await dst.write(chunk, put, len - put)).bytesWritten;
        done += len;
      }
    }
  } finally {
    await src.close();
    await dst.close();
  }
  const img: ImageFile = { magic: Magic.PAGEMAP, singleMagic: false, entries, trailer: Buffer.alloc(0) };
  await writeImage(pmPath, img);
  return { pid, pagesId, sourcePages, runs, lazyPages, eagerPages, entries: entries.length - 1 };
}
