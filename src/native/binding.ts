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
  /** The thread's rseq area (0n if none): the kernel rewrites its cpu id fields when the thread resumes elsewhere. */
  rseqAddr: bigint;
  rseqSize: number;
}

export interface NativeVma {
  start: bigint; end: bigint; perms: string; offset: bigint; dev: string; inode: number; path: string;
}

/** An open descriptor, read while the target was frozen. */
export interface NativeOpenFd {
  fd: number;
  /** readlink of /proc/PID/fd/N: a path, 'socket:[123]', 'pipe:[456]', 'anon_inode:[eventpoll]'... */
  target: string;
  /** Position and open flags (O_ACCMODE, O_APPEND, O_NONBLOCK...); 0 for a TCP connection (not read: not needed). */
  pos: bigint;
  flags: number;
  /** st_size for regular files, -1 otherwise. */
  size: number;
  inode: number;
  /** For sockets: 'tcp-listen', 'tcp' (a connection), 'udp', 'unix', 'raw', 'netlink', 'socket'; '' otherwise. */
  kind: string;
}

export interface NativeEpoch {
  seq: number;
  timings: { freezeNs: number; captureNs: number; scanNs: number; readNs: number; thawNs: number; pauseNs: number };
  clocks: { monotonicNs: bigint; boottimeNs: bigint; realtimeNs: bigint };
  threads: NativeThreadState[];
  vmas: NativeVma[];
  /**
   * The mappings equal those of the last epoch that captured them (native/js/convert.h,
   * LayoutMemo): the native side then sends `vmas` empty, and Tracker.epoch() puts back the
   * array it handed out then, the same object.
   */
  vmasSame: boolean;
  brk: bigint;
  /** Open descriptors and child PIDs (empty with `files: false`). */
  fds: NativeOpenFd[];
  /** Likewise for `fds` (epochs with `files: false` do not count). */
  fdsSame: boolean;
  children: number[];
  /** Pairs: start address, number of pages. Sorted, merged. */
  ranges: BigUint64Array;
  /** The pages of `ranges`, in order, 4096 bytes each. */
  pages: Buffer;
  stats: { pages: number; pagesWritten: number; pagesNew: number; pagesZapped: number; pagesHashed: number };
}

export interface NativeEpochOptions { pages: boolean; registers: boolean; layout: boolean; full: boolean; files: boolean }

export interface NativeTracker {
  attach(): Promise<NativeAttachInfo>;
  epoch(options: NativeEpochOptions): Promise<NativeEpoch>;
  /** Ranges (start, npages pairs) of every page with content now, without freezing. */
  present(): Promise<BigUint64Array>;
  /** Reads `ranges` from the running target; pages gone meanwhile read as zeros. */
  readLive(ranges: BigUint64Array): Promise<{ pages: Buffer; unreadable: number }>;
  close(): Promise<void>;
}

/** One `ShadowCache.encode` (src/codec/delta-codec.ts; format in docs/wire-format.md). */
export interface DeltaEncodeStats {
  pages: number; zero: number; full: number; delta: number;
  /** DELTA entries of length 0: written, but the same content. */
  unchanged: number;
  hits: number; misses: number; evictions: number;
  /** 4096 × pages. */
  rawBytes: number;
  /** The body before LZ4; the runs of the DELTA entries; the whole batch as sent. */
  bodyBytes: number; deltaBytes: number; wireBytes: number;
  compressed: boolean;
}

export interface ShadowCacheStats {
  entries: number; capacity: number;
  /** Cached pages plus fixed metadata; never above maxBytes. */
  bytes: number; maxBytes: number;
  eviction: 'clock' | 'lru';
  hits: number; misses: number; evictions: number; inserts: number; erased: number;
  closed: boolean;
}

export interface ShadowCacheOptions {
  /** Default 64 MiB. */
  maxBytes?: number;
  /** Default 'lru'. */
  eviction?: 'clock' | 'lru';
  /** Measurement only: carry old^new in delta runs (format flag bit 1). */
  xorRuns?: boolean;
  /** Try LZ4 on the batch (default true). */
  compress?: boolean;
  /** Measurement only: equal gaps of at most this many bytes stay inside a run (default 2). */
  mergeGap?: number;
}

/** The primary's cache of last-sent page versions and the batch encoder. Calls must not overlap. */
export interface NativeShadowCache {
  /** `addrs`: u64 LE, one per page. Off the JS thread. */
  encode(addrs: Buffer, pages: Buffer): Promise<{ data: Buffer; stats: DeltaEncodeStats }>;
  /** The same on the calling thread (benchmarks, tests). */
  encodeSync(addrs: Buffer, pages: Buffer): { data: Buffer; stats: DeltaEncodeStats };
  reset(): void;
  /** Forgets pages outside the [start, end) byte ranges (pairs, sorted); returns how many. */
  retain(ranges: BigUint64Array | Buffer): number;
  stats(): ShadowCacheStats;
  /** Tests: "" or what is inconsistent. */
  checkInvariants(): string;
  close(): void;
}

declare const parsedBatchBrand: unique symbol;
/** Opaque: a validated batch held in native memory. */
export interface ParsedBatchHandle { readonly [parsedBatchBrand]: true }

export interface ParsedDeltaBatch {
  /** u64 LE: pages with data (FULL, DELTA), pages that are zero, and the DELTA pages whose base is needed, in order. */
  addrs: Buffer; zeros: Buffer; needBase: Buffer;
  /** u32 LE, one per needBase: the page's slot in `pages` (its index in `addrs`). */
  needSlot: Buffer;
  count: number; full: number; delta: number; zero: number;
  batch: ParsedBatchHandle;
  /** With { pages: true }: output for applyBatchInPlace, (full + delta) pages, uninitialized; put each base at its slot. */
  pages?: Buffer;
}

export interface AppliedDeltaBatch { addrs: Buffer; zeros: Buffer; pages: Buffer }

/** Benchmark only, on the calling thread. */
export interface NativeCodecBench {
  xbzrleEncode(olds: Buffer, news: Buffer, known: Uint8Array): { encoded: Buffer; lengths: Int32Array; wireBytes: number };
  xbzrleDecode(encoded: Buffer, lengths: Int32Array, olds: Buffer, news: Buffer, out?: Buffer): Buffer;
  lz4Compress(src: Buffer): Buffer;
  lz4Decompress(src: Buffer, rawBytes: number, out?: Buffer): Buffer;
  /** CPU time of the calling thread, ns. */
  threadCpuNs(): number;
}

export interface NativeAddon {
  NativeTracker: new (pid: number, options: { backend: BackendRequest; freezeTimeoutMs: number }) => NativeTracker;
  probe(): KernelCaps;
  chooseBackend(name: BackendRequest): BackendChoice;
  releasePages(buf: Buffer): void;
  /** V8's external memory count, which schedules full collections (for tests of the accounting). */
  externalMemory(): number;
  /** Copies page srcPages[i] of `src` to page dstPages[i] of `dst` (4096-byte units), for every i. Throws RangeError, copying nothing, on an index out of range. */
  copyPages(src: Buffer, srcPages: Int32Array, dst: Buffer, dstPages: Int32Array): void;
  /**
   * Splits out zero pages and LZ4-compresses the rest as one block (`compressed` false:
   * LZ4 did not pay and `data` is the pages as they are). `addrs` and the returned
   * `addrs`/`zeros` are u64 little-endian. Off the JS thread.
   */
  compressPages(pages: Buffer, addrs: Buffer): Promise<{ addrs: Buffer; zeros: Buffer; data: Buffer; compressed: boolean; rawBytes: number }>;
  /** Decodes one LZ4 block into exactly `rawBytes` bytes, or rejects. Off the JS thread. */
  decompressBlock(data: Buffer, rawBytes: number): Promise<Buffer>;
  ShadowCache: new (options?: ShadowCacheOptions) => NativeShadowCache;
  /** Checks a delta batch whole (header, LZ4, CRC, every entry); off the JS thread. */
  parseBatch(data: Buffer, options?: { pages?: boolean }): Promise<ParsedDeltaBatch>;
  parseBatchSync(data: Buffer, options?: { pages?: boolean }): ParsedDeltaBatch;
  /**
   * `bases`: the standby's version of each needBase page (zeros where none), in order; each is
   * copied into its slot and checked in one pass. Off the JS thread. `out`: decode into this
   * Buffer (at least (full + delta) pages; `pages` is then a view of it, and nothing may use
   * it until the promise settles) instead of a pooled one: no new buffer per batch.
   */
  applyBatch(batch: ParsedBatchHandle | Buffer, bases: Buffer, out?: Buffer): Promise<AppliedDeltaBatch>;
  applyBatchSync(batch: ParsedBatchHandle | Buffer, bases: Buffer, out?: Buffer): AppliedDeltaBatch;
  /** `pages` holds each needBase page at its needSlot; checked and patched in place, FULL pages copied in. Off the JS thread. */
  applyBatchInPlace(batch: ParsedBatchHandle, pages: Buffer): Promise<AppliedDeltaBatch>;
  applyBatchInPlaceSync(batch: ParsedBatchHandle, pages: Buffer): AppliedDeltaBatch;
  /** Gives decoded `pages` back for reuse now (the Buffer is emptied); anything else: no-op. */
  releaseDecoded(pages: Buffer): void;
  /** CRC-32C; `path` picks an implementation for tests ('sse4.2' and 'copy' take one page). */
  crc32c(data: Buffer, path?: true | 'portable' | 'sse4.2' | 'copy'): number;
  /** crc32c: the implementation of the page path (the version check). */
  codecInfo(): { crc32c: 'vpclmulqdq+sse4.2' | 'sse4.2' | 'portable'; diff: 'avx2' | 'sse2'; formatVersion: number; maxBatchPages: number };
  codecBench: NativeCodecBench;
  /** prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants (restored processes) become our children. */
  setChildSubreaper(): void;
  /** Reaps `pid` if it exited (never blocks): null while it runs. */
  reapChild(pid: number): { code: number; signal: number; notChild: boolean } | null;
  /**
   * Runs a program to its end with posix_spawn (no copy of this process's page tables, which
   * fork() pays in proportion to our memory) and waits off the event loop. stdin is
   * /dev/null; stdout and stderr go to the files named (default /dev/null). SIGKILL after
   * timeoutMs (default 60 s).
   */
  runProgram(path: string, args: string[], options?: { stdoutFile?: string; stderrFile?: string; timeoutMs?: number }): Promise<{ code: number; signal: number; timedOut: boolean; ms: number }>;
  /** In a stopped process: an unconnected TCP socket at each of `fds` (see native/process/placeholders.h). */
  placeholderSockets(pid: number, fds: number[]): Promise<number>;
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
