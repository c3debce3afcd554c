// Helpers for the epoch-store tests, and (run as a script with `node --import tsx`) the
// child process that the crash tests kill:
//
//   store.ts commit-loop DIR            commits epochs forever, printing "C <epoch>" after each
//   store.ts compact-loop DIR           commits an epoch, then compacts, forever ("K <epoch>")
//   store.ts failpoint DIR POINT N WHAT kills itself with SIGKILL the Nth time POINT is reached
//                                       while doing WHAT: delta | full | compact | checkpoint | generation
//
// The loops checkpoint once 64 pages are held in memory (every two or three epochs), so that
// kills land in journal appends, checkpoints and compactions alike.
//
// Every page of the deterministic workload carries, in each u64 word, (epoch << 32 | page
// index): a page torn between two epochs or put at the wrong address is detected.
import { realpathSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { EpochState, VmaWire } from '../../src/protocol/messages.js';
import { EpochStore, type StoreFailpoint } from '../../src/standby/epoch-store.js';
import { mulberry32 } from './tracking.js';

export const PAGE = 4096;
export const BASE = 0x7f1200000000n;
export const LINEAGE = 'lineage-test-1';
const HELPER = fileURLToPath(import.meta.url);
const REPO = fileURLToPath(new URL('../..', import.meta.url));

export function addrOf(idx: number): bigint {
  return BASE + BigInt(idx) * 4096n;
}

export function addrsOf(idxs: readonly number[]): BigUint64Array {
  return BigUint64Array.from(idxs.map(addrOf));
}

/** A page of `epoch`: every u64 word is epoch << 32 | idx. */
export function pageOf(epoch: number, idx: number): Buffer {
  const b = Buffer.allocUnsafe(PAGE);
  const u32 = new Uint32Array(b.buffer, b.byteOffset, PAGE / 4);
  for (let i = 0; i < PAGE / 4; i += 2) { u32[i] = idx; u32[i + 1] = epoch; }
  return b;
}

export function pagesOf(epoch: number, idxs: readonly number[]): Buffer {
  return Buffer.concat(idxs.map((i) => pageOf(epoch, i)));
}

/** The epoch a page carries; throws when its words disagree (torn) or name another page. */
export function epochOfPage(data: Buffer, idx: number): number {
  const copy = Buffer.from(data);
  const u32 = new Uint32Array(copy.buffer, copy.byteOffset, PAGE / 4);
  const epoch = u32[1]!;
  for (let i = 0; i < PAGE / 4; i += 2) {
    if (u32[i] !== idx || u32[i + 1] !== epoch) {
      throw new Error(`page ${idx} is torn or misplaced: word ${i / 2} is (${u32[i + 1]}, ${u32[i]}), word 0 is (${epoch}, ${idx})`);
    }
  }
  return epoch;
}

export function vma(startIdx: number, endIdx: number, perms = 'rw-p'): VmaWire {
  return { start: addrOf(startIdx), end: addrOf(endIdx), perms, offset: 0n, dev: '00:00', inode: 0, path: '' };
}

export function makeState(epoch: number, vmas: VmaWire[]): EpochState {
  const gpregs = Buffer.alloc(27 * 8);
  gpregs.writeBigUInt64LE(0xdead0000n + BigInt(epoch), 16 * 8);
  const xsave = Buffer.alloc(1088, epoch & 0xff);
  return {
    pid: 4242,
    threads: [
      { tid: 4242, gpregs, xsave, sigmask: (1n << 63n) | BigInt(epoch), restart: 'none', rseq: { addr: 0x7f00_0000_1000n, size: 32 } },
      { tid: 4243, gpregs: Buffer.from(gpregs), xsave: Buffer.from(xsave), sigmask: 0n, restart: 'interrupted', rseq: { addr: 0x7f00_0000_1000n, size: 32 } },
    ],
    vmas,
    brk: 0x5555_5600_0000n + BigInt(epoch) * 4096n,
    clocks: { monotonicNs: BigInt(epoch) * 1_000_000_007n, boottimeNs: 2n ** 62n + BigInt(epoch), realtimeNs: 1_700_000_000_000_000_000n + BigInt(epoch) },
    fds: [{ fd: 3, target: '/tmp/file', pos: BigInt(epoch) * 10n, flags: 0o2, size: epoch * 10, kind: '' }],
    children: [],
    base: `b-${epoch}`,
  };
}

/** The store's committed pages as idx -> epoch (0: zero page); checks order and content. */
export async function collect(store: EpochStore): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  let prev = -1n;
  for await (const { addr, data } of store.pages()) {
    if (addr <= prev) throw new Error(`pages() not ascending: 0x${addr.toString(16)} after 0x${prev.toString(16)}`);
    prev = addr;
    const idx = Number((addr - BASE) / 4096n);
    out.set(idx, data === null ? 0 : epochOfPage(data, idx));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The deterministic workload of the crash tests

export const WORK_PAGES = 192;

function rng(seed: number): () => number {
  return mulberry32((seed * 2654435761) >>> 0);
}

export interface Work { full: boolean; data: number[]; zero: number[]; vmas: VmaWire[]; cover: (idx: number) => boolean }

/** Epoch 1 and every 11th are full; every 7th (+3) unmaps pages 128..159 (some written: dropped). */
export function workload(epoch: number): Work {
  const r = rng(epoch);
  const full = epoch === 1 || epoch % 11 === 0;
  const hole = epoch % 7 === 3;
  const data: number[] = [];
  const zero: number[] = [];
  for (let i = 0; i < WORK_PAGES; i++) {
    const x = r();
    if (x < 0.03) zero.push(i);
    else if (full || x < 0.28) data.push(i);
  }
  const vmas = hole ? [vma(0, 128), vma(160, WORK_PAGES)] : [vma(0, 128), vma(128, WORK_PAGES, 'r--p')];
  return { full, data, zero, vmas, cover: (i) => !hole || i < 128 || i >= 160 };
}

/** What the store must hold after epoch `e`: idx -> epoch (0: zero page). */
export function expectedAt(e: number): Map<number, number> {
  const model = new Map<number, number>();
  for (let k = 1; k <= e; k++) {
    const w = workload(k);
    if (w.full) model.clear();
    for (const i of w.data) model.set(i, k);
    for (const i of w.zero) model.set(i, 0);
    for (const i of [...model.keys()]) if (!w.cover(i)) model.delete(i);
  }
  return new Map([...model.entries()].sort((a, b) => a[0] - b[0]));
}

/** Commits epoch `e` of the workload (the data in two addPages calls, zeros between). */
export async function commitWork(store: EpochStore, e: number, generation = 1): Promise<void> {
  const w = workload(e);
  const batch = store.begin({ lineage: LINEAGE, generation, epoch: e, base: w.full ? 0 : store.committed!.epoch, full: w.full });
  const half = w.data.length >> 1;
  await batch.addPages(addrsOf(w.data.slice(0, half)), pagesOf(e, w.data.slice(0, half)));
  await batch.addZeroPages(addrsOf(w.zero));
  await batch.addPages(addrsOf(w.data.slice(half)), pagesOf(e, w.data.slice(half)));
  await batch.commit(makeState(e, w.vmas), { committedAt: 1_000_000 + e });
}

// ---------------------------------------------------------------------------------------
// The child process

export interface Child { proc: ChildProcess; lines: string[]; stderr: () => string; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>; ready: Promise<void> }

export function spawnStoreChild(args: string[]): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', HELPER, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let err = '';
  let buf = '';
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((res) => { onReady = res; });
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      lines.push(line);
      if (line === 'READY') onReady();
    }
  });
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    proc.on('exit', (code, signal) => { onReady(); res({ code, signal }); });
  });
  return { proc, lines, stderr: () => err, exited, ready };
}

/** The highest epoch the child reported committed ("C e" / "K e"), 0 if none. */
export function lastReported(lines: readonly string[]): number {
  let e = 0;
  for (const l of lines) {
    const m = /^[CK] (\d+)$/.exec(l);
    if (m) e = Math.max(e, Number(m[1]));
  }
  return e;
}

async function childMain(argv: string[]): Promise<void> {
  const [mode, dir, point, nth, what] = argv;
  const say = (s: string): void => { process.stdout.write(`${s}\n`); };
  if (mode === 'commit-loop') {
    const store = await EpochStore.open(dir!, { checkpointBytes: 64 * PAGE });
    if (!store.committed) await commitWork(store, 1);
    say('READY');
    for (;;) {
      const e = store.committed!.epoch + 1;
      await commitWork(store, e);
      say(`C ${e}`);
    }
  }
  if (mode === 'compact-loop') {
    const store = await EpochStore.open(dir!, { autoCompact: false, checkpointBytes: 64 * PAGE });
    if (!store.committed) await commitWork(store, 1);
    say('READY');
    for (;;) {
      const e = store.committed!.epoch + 1;
      await commitWork(store, e);
      say(`C ${e}`);
      await store.compact();
      say(`K ${store.committed!.epoch}`);
    }
  }
  if (mode === 'failpoint') {
    let hits = 0;
    const store = await EpochStore.open(dir!, {
      autoCompact: false,
      failpoint: (p: StoreFailpoint) => {
        if (p === point && ++hits === Number(nth)) process.kill(process.pid, 'SIGKILL');
      },
    });
    say('READY');
    const e = store.committed!.epoch + 1;
    if (what === 'delta' || what === 'full') {
      const w = workload(e);
      const batch = store.begin({ lineage: LINEAGE, generation: 1, epoch: e, base: what === 'full' ? 0 : e - 1, full: what === 'full' });
      const idxs = what === 'full' ? Array.from({ length: WORK_PAGES }, (_, i) => i) : w.data;
      await batch.addPages(addrsOf(idxs), pagesOf(e, idxs));
      await batch.commit(makeState(e, [vma(0, WORK_PAGES)]), { committedAt: 1_000_000 + e });
    } else if (what === 'compact') {
      await store.compact();
    } else if (what === 'checkpoint') {
      await store.checkpoint();
    } else if (what === 'generation') {
      await store.setGeneration(7);
    }
    say('NOT HIT');
    await store.close();
    return;
  }
  throw new Error(`unknown mode ${mode}`);
}

const entry = process.argv[1];
if (entry && pathToFileURL(realpathSync(entry)).href === pathToFileURL(realpathSync(HELPER)).href) {
  childMain(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
}
