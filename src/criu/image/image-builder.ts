// Builds the CRIU image of a later epoch from a base dump and the epoch's state and pages.
//
//   baseDir (criu dump --leave-running,       state (EpochState)     pages (PageSource)
//            taken when protection began)          |                       |
//        |                                         |                       |
//        v                                         v                       v
//   copy/link everything  -- core-TID.img  <- registers, XSAVE, blocked signals, per thread
//   that does not change  -- mm-PID.img    <- VMAs from the epoch's maps, brk
//        |                -- pagemap-PID.img + pages-<id>.img <- source pages, else base pages
//        |                -- timens-0.img  <- CLOCK_MONOTONIC / CLOCK_BOOTTIME of the epoch
//        |                -- files.img, fdinfo-N.img <- file offsets and sizes, descriptors
//        |                                  opened/closed since the base, newly mapped files
//        v
//   outDir: `criu restore -D outDir` brings the process back in the epoch's state.
//
// What stays the base's: everything else (sockets and other non-file descriptors, signal
// handlers, rlimits, credentials, namespaces, shared memory content). The process must have
// the same threads (by TID) as in the base, and no new shared memory (REBASE_NEEDED).
// Put outDir on a tmpfs (/dev/shm): restore reads it fastest there.
import { constants as fsc } from 'node:fs';
import { closeSync, mkdirSync, openSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { copyFile, link, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { EpochState } from '../../protocol/messages.js';
import { patchCoreEntry } from './core.js';
import { ImageBuildError } from './errors.js';
import { applyFileStates, FileTable, reconcileFds, type FileState, type FilesResult } from './files.js';
import { ImageFormatError, Magic, newImage, parseImage, readImage, serializeImage, type ImageFile } from './image-file.js';
import { parseBaseVmas, patchMmEntry, planVmas } from './mm.js';
import { parseBasePagemap, writeLazyPagesSync, writePages, type LazyPagesInput, type PageSource, type PageStats } from './pages.js';
import { Message, ProtobufError } from './protobuf.js';
import { resolveXsaveLayout, type XsaveLayout } from './xsave.js';

export interface BuildEpochImageOptions {
  /** A CRIU image directory of the process (`criu dump --leave-running`), the base. */
  baseDir: string;
  /** Where the image goes; created, and must be empty if it exists. A tmpfs is best. */
  outDir: string;
  /** The epoch's registers, layout, brk and clocks. */
  state: EpochState;
  /** The latest content of the private pages the replication has (see PageSource). */
  pages?: PageSource;
  /**
   * Positions and sizes of files (see FileState), applied after the epoch's own descriptor
   * table (state.fds), when it has one, has been reconciled with the base's (see files.ts).
   * Without either, the descriptors are the base's.
   */
  files?: readonly FileState[];
  /**
   * Remove the recorded size of every regular file, so that CRIU does not refuse a file
   * that changed size after the epoch (the primary went on writing before it died).
   * Default false: sizes are the epoch's, and CRIU checks them.
   */
  dropFileSizes?: boolean;
  /** XSAVE layout of the CPU the epoch was captured on; default: this CPU's (CPUID 0xD). */
  xsaveLayout?: XsaveLayout;
  /** Unchanged files: hard links where possible ('auto', default), copies, or links only. */
  copyMode?: 'auto' | 'copy' | 'link';
  /** Refuse source pages outside every VMA, instead of ignoring and counting them. */
  strictPages?: boolean;
  /** Leave all-zero source pages of anonymous mappings out of the image. Default true. */
  omitZeroPages?: boolean;
  /**
   * Build for a lazy restore (`criu restore --lazy-pages` with a page server): pages of
   * anonymous private memory are listed LAZY without data (`pages` is not used then).
   */
  lazy?: LazyPagesInput;
  /**
   * outDir was prepared by the caller (a warm lazy restore: the base's inventory.img and
   * pstree.img linked in, a `criu lazy-pages` daemon already listening there): files that
   * exist are kept as they are instead of refusing a non-empty directory.
   */
  prepared?: boolean;
  /**
   * The base's small files, read ahead (BaseImageFiles.read of baseDir): the build then
   * reads nothing from disk but the base's pages, if any.
   */
  baseFiles?: BaseImageFiles;
}

/**
 * Every file of a base image but its pages, in memory. A promotion that has them does not
 * queue behind the store's disk I/O to read the base (a warm lazy restore reads them when
 * the base arrives, long before any failure).
 */
export class BaseImageFiles {
  private constructor(readonly dir: string, readonly names: readonly string[], readonly files: ReadonlyMap<string, Buffer>) {}

  static async read(dir: string): Promise<BaseImageFiles> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (e) {
      throw new ImageBuildError('BASE_MISSING', `cannot read the base image directory ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const files = new Map<string, Buffer>();
    for (const n of names) if (n.endsWith('.img') && !/^pages-\d+\.img$/.test(n)) files.set(n, await readFile(join(dir, n)));
    return new BaseImageFiles(dir, names, files);
  }

  /** The parsed image `name` (a fresh parse: callers may patch what they get). */
  image(name: string, magic: number): ImageFile {
    const buf = this.files.get(name);
    const path = join(this.dir, name);
    if (!buf) throw new ImageBuildError('BASE_MISSING', `the base image has no ${name} (${path})`);
    try {
      const img = parseImage(buf, path);
      if (img.magic !== magic) throw new ImageFormatError(`${path}: magic 0x${img.magic.toString(16)}, expected 0x${magic.toString(16)}`);
      return img;
    } catch (e) {
      if (e instanceof ImageFormatError || e instanceof ProtobufError) throw new ImageBuildError('BASE_INVALID', `${path}: ${e.message}`, { cause: e });
      throw e;
    }
  }
}

export interface BuildTimings {
  /** Listing, checking and linking/copying the files that do not change. */
  copyMs: number;
  coresMs: number;
  mmMs: number;
  pagesMs: number;
  filesMs: number;
  timensMs: number;
  totalMs: number;
}

export interface BuildEpochImageResult {
  outDir: string;
  pid: number;
  threads: number[];
  vmas: number;
  pages: PageStats;
  /**
   * Descriptors and files: entries patched, entries added to files.img (new mappings and
   * descriptors), descriptors added / dropped / impossible to carry, `files` items skipped,
   * sizes dropped (dropFileSizes).
   */
  files: Omit<FilesResult, 'fdinfo'> & { added: number; sizesDropped: number };
  /** Files linked or copied unchanged, and how. */
  copied: { files: number; linked: number; bytes: number };
  xsaveLayout: XsaveLayout['source'];
  /** Things worth a log line (an XSAVE layout from a table, a base without timens ...). */
  notes: string[];
  timings: BuildTimings;
}

const NS = 1_000_000_000n;

function ms(t0: number): number {
  return Math.round((performance.now() - t0) * 1000) / 1000;
}

function isNoEnt(e: unknown): boolean {
  return (e as NodeJS.ErrnoException)?.code === 'ENOENT';
}

/** Reads the images of a base: from memory (BaseImageFiles) or from its directory. */
type BaseReader = (name: string, magic: number) => Promise<ImageFile>;

/** Small output files, written synchronously: on a tmpfs that costs microseconds, and
 * nothing waits in libuv's thread pool behind the store's disk I/O during a promotion. */
function writeOut(outDir: string, name: string, data: Buffer): void {
  try {
    writeFileSync(join(outDir, name), data);
  } catch (e) {
    throw new ImageBuildError('OUTPUT', `cannot write ${join(outDir, name)}: ${(e as Error).message}`, { cause: e });
  }
}

async function readBaseImage(baseDir: string, name: string, magic: number): Promise<ImageFile> {
  const path = join(baseDir, name);
  try {
    return await readImage(path, magic);
  } catch (e) {
    if (isNoEnt(e)) throw new ImageBuildError('BASE_MISSING', `the base image has no ${name} (${path})`, { cause: e });
    if (e instanceof ImageFormatError || e instanceof ProtobufError) throw new ImageBuildError('BASE_INVALID', `${path}: ${e.message}`, { cause: e });
    throw e;
  }
}

function one(img: ImageFile, name: string): Buffer {
  if (img.entries.length !== 1) throw new ImageBuildError('BASE_INVALID', `${name}: expected one entry, found ${img.entries.length}`);
  return img.entries[0]!;
}

function checkState(state: EpochState): void {
  if (!state || typeof state !== 'object') throw new ImageBuildError('INVALID_STATE', 'state is missing');
  if (!Number.isInteger(state.pid) || state.pid <= 0) throw new ImageBuildError('INVALID_STATE', `state.pid must be a positive integer, got ${String(state.pid)}`);
  if (!Array.isArray(state.threads) || state.threads.length === 0) throw new ImageBuildError('INVALID_STATE', 'state.threads is empty (capture registers)');
  if (!Array.isArray(state.vmas) || state.vmas.length === 0) throw new ImageBuildError('INVALID_STATE', 'state.vmas is empty (capture the layout)');
  if (typeof state.brk !== 'bigint') throw new ImageBuildError('INVALID_STATE', 'state.brk must be a bigint (0n: keep the base\'s)');
  const c = state.clocks;
  if (!c || typeof c.monotonicNs !== 'bigint' || typeof c.boottimeNs !== 'bigint') throw new ImageBuildError('INVALID_STATE', 'state.clocks must hold bigint monotonicNs and boottimeNs');
  const tids = new Set<number>();
  for (const t of state.threads) {
    if (tids.has(t.tid)) throw new ImageBuildError('INVALID_STATE', `thread ${t.tid} appears twice in state.threads`);
    tids.add(t.tid);
  }
}

/** Hard link when allowed and possible, else a copy (reflinked where the filesystem can). */
async function place(src: string, dst: string, mode: 'auto' | 'copy' | 'link'): Promise<boolean> {
  if (mode !== 'copy') {
    try {
      await link(src, dst);
      return true;
    } catch (e) {
      if (mode === 'link') throw new ImageBuildError('OUTPUT', `cannot hard-link ${src} to ${dst}: ${(e as Error).message}`, { cause: e });
    }
  }
  await copyFile(src, dst, fsc.COPYFILE_FICLONE);
  return false;
}

function timespec(ns: bigint): Message {
  return Message.parse(Buffer.alloc(0)).setUint(1, ns / NS).setUint(2, ns % NS);
}

/**
 * Builds in `outDir` the CRIU image of the process at `state`'s epoch. Throws an
 * ImageBuildError (see its codes); on failure, what it wrote in outDir is removed (outDir
 * itself stays, it may be the caller's mount point).
 */
export async function buildEpochImage(o: BuildEpochImageOptions): Promise<BuildEpochImageResult> {
  const started = { out: false };
  try {
    return await build(o, started);
  } catch (e) {
    if (started.out) {
      const left = await readdir(o.outDir).catch(() => [] as string[]);
      await Promise.all(left.map((n) => rm(join(o.outDir, n), { recursive: true, force: true }).catch(() => undefined)));
    }
    if (e instanceof ProtobufError || e instanceof ImageFormatError)
      throw new ImageBuildError('BASE_INVALID', `the base image ${o.baseDir} is corrupt: ${e.message}`, { cause: e });
    throw e;
  }
}

async function build(o: BuildEpochImageOptions, started: { out: boolean }): Promise<BuildEpochImageResult> {
  const t0 = performance.now();
  const { baseDir, outDir, state } = o;
  checkState(state);
  const notes: string[] = [];
  const pid = state.pid;

  // --- the base: what it holds, and that it fits the epoch --------------------------------
  const tCopy = performance.now();
  const cached = o.baseFiles && o.baseFiles.dir === baseDir ? o.baseFiles : undefined;
  const rd: BaseReader = cached ? async (name, magic) => cached.image(name, magic) : (name, magic) => readBaseImage(baseDir, name, magic);
  let names: readonly string[];
  try {
    if (cached) names = cached.names;
    else {
      if (!(await stat(baseDir)).isDirectory()) throw new ImageBuildError('BASE_MISSING', `the base ${baseDir} is not a directory`);
      names = await readdir(baseDir);
    }
  } catch (e) {
    if (e instanceof ImageBuildError) throw e;
    throw new ImageBuildError('BASE_MISSING', `cannot read the base image directory ${baseDir}: ${(e as Error).message}`, { cause: e });
  }
  const pstree = await rd('pstree.img', Magic.PSTREE);
  if (pstree.entries.length !== 1)
    throw new ImageBuildError('BASE_INVALID', `the base holds ${pstree.entries.length} processes; only a single process (no children) is supported`);
  const tree = Message.parse(pstree.entries[0]!);
  const basePid = Number(tree.requireUint(1, 'pstree.img'));
  if (basePid !== pid) throw new ImageBuildError('INVALID_STATE', `the epoch is of PID ${pid} but the base image is of PID ${basePid}`);
  const baseTids = tree.getRepeatedVarint(5).map(Number).sort((a, b) => a - b);
  const epochTids = state.threads.map((t) => t.tid).sort((a, b) => a - b);
  if (baseTids.length !== epochTids.length || baseTids.some((t, i) => t !== epochTids[i])) {
    const gone = baseTids.filter((t) => !epochTids.includes(t));
    const added = epochTids.filter((t) => !baseTids.includes(t));
    throw new ImageBuildError('REBASE_NEEDED',
      `the thread set changed since the base image (re-base needed): base threads [${baseTids.join(', ')}], ` +
      `epoch threads [${epochTids.join(', ')}]${gone.length ? `; gone: ${gone.join(', ')}` : ''}${added.length ? `; new: ${added.join(', ')}` : ''}`);
  }
  for (const t of baseTids) if (!names.includes(`core-${t}.img`)) throw new ImageBuildError('BASE_MISSING', `the base image has no core-${t}.img`);
  for (const n of ['inventory.img', `mm-${pid}.img`, `pagemap-${pid}.img`, 'files.img'])
    if (!names.includes(n)) throw new ImageBuildError('BASE_MISSING', `the base image has no ${n} (${join(baseDir, n)})`);

  const pagemapImg = await rd(`pagemap-${pid}.img`, Magic.PAGEMAP);
  const basePagemap = parseBasePagemap(pagemapImg.entries, `pagemap-${pid}.img`);
  const pagesName = `pages-${basePagemap.pagesId}.img`;
  if (!names.includes(pagesName)) throw new ImageBuildError('BASE_MISSING', `the base image has no ${pagesName} (named by pagemap-${pid}.img)`);

  // Which files are rewritten; everything else is linked or copied.
  const rewritten = new Set<string>([...baseTids.map((t) => `core-${t}.img`), `mm-${pid}.img`, `pagemap-${pid}.img`, pagesName]);
  if (names.includes('timens-0.img')) rewritten.add('timens-0.img');
  else notes.push('the base has no timens-0.img: the restored process sees the host clocks (no time namespace)');
  // files.img: positions and sizes, and entries for files mapped or opened since the base;
  // fdinfo: when the epoch's descriptor table is reconciled with the base's.
  rewritten.add('files.img');
  const filesId = await filesIdOf(rd, pid, names);
  const fdinfoName = `fdinfo-${filesId}.img`;
  const reconcile = Array.isArray(state.fds) && state.fds.length > 0;
  if (reconcile) rewritten.add(fdinfoName);

  const present = new Set<string>();
  try {
    // Synchronous: a directory on tmpfs, while the thread pool may be busy with the store's I/O.
    mkdirSync(outDir, { recursive: true });
    const existing = readdirSync(outDir);
    if (existing.length > 0 && !o.prepared) throw new ImageBuildError('OUTPUT', `the output directory ${outDir} is not empty (${existing.length} entries)`);
    for (const n of existing) present.add(n);
    started.out = !o.prepared;
  } catch (e) {
    if (e instanceof ImageBuildError) throw e;
    throw new ImageBuildError('OUTPUT', `cannot use ${outDir} as the output directory: ${(e as Error).message}`, { cause: e });
  }
  const copied = { files: 0, linked: 0, bytes: 0 };
  const mode = o.copyMode ?? 'auto';
  const toCopy: string[] = [];
  for (const n of names) {
    // Restore reads image files only (*.img); the dump's stats and our own metadata stay out.
    if (rewritten.has(n) || present.has(n) || !n.endsWith('.img')) continue;
    // Synchronous: a metadata lookup, while the thread pool may be busy with the store's I/O.
    const st = statSync(join(baseDir, n));
    if (!st.isFile()) continue; // CRIU image directories are flat
    toCopy.push(n);
    copied.bytes += st.size;
  }
  await Promise.all(toCopy.map(async (n) => {
    if (await place(join(baseDir, n), join(outDir, n), mode)) copied.linked++;
    copied.files++;
  }));
  const copyMs = ms(tCopy);

  // --- threads ------------------------------------------------------------------------------
  const tCores = performance.now();
  const resolved = resolveXsaveLayout(o.xsaveLayout, state.threads[0]!.xsave);
  const layout = resolved.layout;
  if (resolved.note) notes.push(resolved.note);
  if (layout.size !== undefined && layout.source === 'cpuid') {
    const bad = state.threads.find((t) => t.xsave.length !== layout.size);
    if (bad)
      throw new ImageBuildError('INVALID_STATE',
        `thread ${bad.tid}: the XSAVE area is ${bad.xsave.length} bytes but this CPU's is ${layout.size}: the epoch comes from ` +
        `a different kind of CPU; pass its layout as xsaveLayout`);
  }
  await Promise.all(state.threads.map(async (t) => {
    const name = `core-${t.tid}.img`;
    const img = await rd(name, Magic.CORE);
    const entry = patchCoreEntry(one(img, name), t, { leader: t.tid === pid, layout, file: name });
    writeOut(outDir, name, serializeImage({ ...img, entries: [entry] }));
  }));
  const coresMs = ms(tCores);

  // --- layout -------------------------------------------------------------------------------
  const tMm = performance.now();
  const filesImg = await rd('files.img', Magic.FILES);
  const mmName = `mm-${pid}.img`;
  const mmImg = await rd(mmName, Magic.MM);
  const mmEntry = one(mmImg, mmName);
  const fileTable = new FileTable(filesImg.entries);
  let planned;
  try {
    planned = planVmas(parseBaseVmas(Message.parse(mmEntry)), fileTable, state.vmas);
  } catch (e) {
    if (e instanceof ProtobufError) throw new ImageBuildError('BASE_INVALID', `${mmName}: ${e.message}`, { cause: e });
    throw e;
  }
  writeOut(outDir, mmName, serializeImage({ ...mmImg, entries: [patchMmEntry(mmEntry, planned, state.brk)] }));
  const mmMs = ms(tMm);

  // --- pages --------------------------------------------------------------------------------
  const tPages = performance.now();
  let pageStats: PageStats;
  if (o.lazy) {
    // Synchronous (see writeLazyPagesSync): a dozen pages on tmpfs.
    const baseFd = openSync(join(baseDir, pagesName), 'r');
    try {
      const outFd = openSync(join(outDir, pagesName), 'wx');
      try {
        const r = writeLazyPagesSync({ vmas: planned, base: basePagemap, baseFd, outFd, lazy: o.lazy });
        pageStats = r.stats;
        writeOut(outDir, `pagemap-${pid}.img`, serializeImage(newImage(Magic.PAGEMAP, [basePagemap.head, ...r.entries])));
      } finally {
        closeSync(outFd);
      }
    } finally {
      closeSync(baseFd);
    }
  } else {
    const basePages = await open(join(baseDir, pagesName), 'r');
    try {
      const out = await open(join(outDir, pagesName), 'wx');
      try {
        const r = await writePages({
          vmas: planned, base: basePagemap, basePages, source: o.pages, out,
          strict: o.strictPages ?? false, omitZeroPages: o.omitZeroPages ?? true,
        });
        pageStats = r.stats;
        writeOut(outDir, `pagemap-${pid}.img`, serializeImage(newImage(Magic.PAGEMAP, [basePagemap.head, ...r.entries])));
      } finally {
        await out.close();
      }
    } finally {
      await basePages.close();
    }
  }
  const pagesMs = ms(tPages);

  // --- files --------------------------------------------------------------------------------
  const tFiles = performance.now();
  const fdinfo = await rd(fdinfoName, Magic.FDINFO);
  let fr: FilesResult = { fdinfo: undefined, patched: 0, addedFds: [], closedFds: [], removedSockets: 0, epollTargetsRemoved: 0, missing: [], skipped: [] };
  if (reconcile) fr = reconcileFds(fileTable, fdinfo.entries, state.fds);
  if (o.files?.length) {
    const x = applyFileStates(fileTable, fr.fdinfo ?? fdinfo.entries, o.files);
    fr = { ...fr, skipped: x.skipped };
    if (x.skipped.length) notes.push(`files: ${x.skipped.join(', ')}`);
  }
  fr.patched = fileTable.changedCount;
  const sizesDropped = o.dropFileSizes ? fileTable.dropSizes() : 0;
  writeOut(outDir, 'files.img', serializeImage({ ...filesImg, entries: fileTable.entries() }));
  if (fr.fdinfo) writeOut(outDir, fdinfoName, serializeImage({ ...fdinfo, entries: fr.fdinfo }));
  if (fr.missing.length) notes.push(`descriptors opened since the base that an image cannot carry (the restored process will not have them): ${fr.missing.join(', ')}`);
  if (fr.closedFds.length) notes.push(`descriptors closed since the base, left out: ${fr.closedFds.join(', ')}`);
  const { fdinfo: _unused, ...filesSummary } = fr;
  const filesResult = { ...filesSummary, added: fileTable.added, sizesDropped };
  const filesMs = ms(tFiles);

  // --- clocks -------------------------------------------------------------------------------
  const tTimens = performance.now();
  if (rewritten.has('timens-0.img')) {
    const img = await rd('timens-0.img', Magic.TIMENS);
    const tn = Message.parse(one(img, 'timens-0.img'));
    tn.setMessage(1, timespec(state.clocks.monotonicNs)).setMessage(2, timespec(state.clocks.boottimeNs));
    writeOut(outDir, 'timens-0.img', serializeImage({ ...img, entries: [tn.serialize()] }));
  }
  const timensMs = ms(tTimens);

  return {
    outDir, pid, threads: epochTids, vmas: planned.length, pages: pageStats, files: filesResult, copied,
    xsaveLayout: layout.source, notes,
    timings: { copyMs, coresMs, mmMs, pagesMs, filesMs, timensMs, totalMs: ms(t0) },
  };
}

/** The files_id of the process (ids-PID.img, or the core's ids), i.e. which fdinfo image. */
async function filesIdOf(rd: BaseReader, pid: number, names: readonly string[]): Promise<bigint> {
  if (names.includes(`ids-${pid}.img`)) {
    const ids = Message.parse(one(await rd(`ids-${pid}.img`, Magic.IDS), `ids-${pid}.img`));
    const id = ids.getUint(2);
    if (id !== undefined) return id;
  }
  const core = Message.parse(one(await rd(`core-${pid}.img`, Magic.CORE), `core-${pid}.img`));
  const id = core.getMessage(4)?.getUint(2);
  if (id !== undefined) return id;
  const fdinfos = names.filter((n) => /^fdinfo-\d+\.img$/.test(n));
  if (fdinfos.length === 1) return BigInt(/\d+/.exec(fdinfos[0]!)![0]);
  throw new ImageBuildError('BASE_INVALID', 'cannot tell which fdinfo-N.img holds the process\'s descriptors');
}
