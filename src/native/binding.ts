import { createRequire } from 'node:module';
import { join } from 'node:path';
import { ReplicateError } from '../errors.js';
import { packageRoot } from '../util/paths.js';

export interface Feature { ok: boolean; why: string }

export interface KernelCaps {
  release: string;
  userfaultfd: Feature;
  uffdWpAsync: Feature;
  pagemapScan: Feature;
  uffdWpFile: Feature;
  softDirty: Feature;
  pidfdGetfd: Feature;
  ptrace: Feature;
  xsaveSize: number;
}

export type BackendName = 'uffd-wp' | 'soft-dirty' | 'hash';
export type BackendRequest = BackendName | 'auto';

export interface BackendChoice { name: BackendName; reason: string; available: boolean }

export interface NativeAttachInfo { backend: BackendName; reason: string; armNs: number; threads: number }

export interface NativeThreadState {
  tid: number;
  /** struct user_regs_struct (27 × u64), adjusted for syscall restart. */
  gpregs: Buffer;
  /** NT_X86_XSTATE: the whole standard-format XSAVE area. */
  xsave: Buffer;
  sigmask: bigint;
  /** 'restart': stopped in a syscall, rewound to re-issue it; 'interrupted': will see EINTR. */
  restart: 'none' | 'restart' | 'interrupted';
  pendingSignal: number;
}

export interface NativeVma {
  start: bigint; end: bigint; perms: string; offset: bigint; dev: string; inode: number; path: string;
}

export interface NativeEpoch {
  seq: number;
  timings: { freezeNs: number; captureNs: number; scanNs: number; readNs: number; thawNs: number; pauseNs: number };
  clocks: { monotonicNs: bigint; boottimeNs: bigint; realtimeNs: bigint };
  threads: NativeThreadState[];
  vmas: NativeVma[];
  brk: bigint;
  /** Pairs: start address, number of pages. Sorted, merged. */
  ranges: BigUint64Array;
  /** The pages of `ranges`, in order, 4096 bytes each. */
  pages: Buffer;
  stats: { pages: number; pagesWritten: number; pagesNew: number; pagesZapped: number; pagesHashed: number };
}

export interface NativeEpochOptions { pages: boolean; registers: boolean; layout: boolean; full: boolean }

export interface NativeTracker {
  attach(): Promise<NativeAttachInfo>;
  epoch(options: NativeEpochOptions): Promise<NativeEpoch>;
  /** Ranges (start, npages pairs) of every page with content now, without freezing. */
  present(): Promise<BigUint64Array>;
  /** Reads `ranges` from the running target; pages gone meanwhile read as zeros. */
  readLive(ranges: BigUint64Array): Promise<{ pages: Buffer; unreadable: number }>;
  close(): Promise<void>;
}

export interface NativeAddon {
  NativeTracker: new (pid: number, options: { backend: BackendRequest; freezeTimeoutMs: number }) => NativeTracker;
  probe(): KernelCaps;
  chooseBackend(name: BackendRequest): BackendChoice;
  releasePages(buf: Buffer): void;
  /**
   * Splits out zero pages and LZ4-compresses the rest as one block (`compressed` false:
   * LZ4 did not pay and `data` is the pages as they are). `addrs` and the returned
   * `addrs`/`zeros` are u64 little-endian. Off the JS thread.
   */
  compressPages(pages: Buffer, addrs: Buffer): Promise<{ addrs: Buffer; zeros: Buffer; data: Buffer; compressed: boolean; rawBytes: number }>;
  /** Decodes one LZ4 block into exactly `rawBytes` bytes, or rejects. Off the JS thread. */
  decompressBlock(data: Buffer, rawBytes: number): Promise<Buffer>;
  parsePagemap(entries: Buffer, start: bigint): { present: BigUint64Array; softDirty: BigUint64Array };
  /**
   * Benchmark only (blocks the JS thread): the floor of an epoch. Without `ranges`: a
   * PAGEMAP_SCAN fast-path walk of a registered span (finds and re-protects written
   * pages) plus a single-threaded process_vm_readv of them; with `ranges`: the read only.
   */
  benchFloor(pid: number, spanStart: bigint, spanEnd: bigint, ranges?: BigUint64Array): { scanNs: number; readNs: number; pages: number };
}

let addon: NativeAddon | undefined;

/** Loads the addon once. Throws a ReplicateError that says how to build it. */
export function native(): NativeAddon {
  if (addon) return addon;
  const path = join(packageRoot, 'build', 'Release', 'remus_native.node');
  try {
    addon = createRequire(import.meta.url)(path) as NativeAddon;
  } catch (e) {
    throw new ReplicateError('SYSTEM_ERROR', `cannot load the native addon at ${path}: ${(e as Error).message}. ` +
      `Build it with 'npm install' (or 'npx node-gyp rebuild'); it needs Linux x86_64, make and a C++ compiler.`, { cause: e });
  }
  return addon;
}

export const keeperPath: string = join(packageRoot, 'build', 'Release', 'replicate-keeper');
