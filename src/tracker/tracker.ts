import { nativeCall, ReplicateError } from '../errors.js';
import {
  native, type BackendName, type BackendRequest, type NativeEpoch, type NativeThreadState, type NativeTracker, type NativeVma,
} from '../native/binding.js';

export const PAGE_SIZE = 4096;

export interface TrackerOptions {
  /** Dirty-tracking backend; 'auto' picks the best the kernel offers. Default 'auto'. */
  backend?: BackendRequest;
  /** How long a freeze may wait for a thread to stop before giving up (it is released). Default 2000. */
  freezeTimeoutMs?: number;
}

export interface EpochOptions {
  /** Read the content of the reported pages. Default true. */
  pages?: boolean;
  /** Capture every thread's registers. Default true. */
  registers?: boolean;
  /** Report the memory layout (VMAs) and brk. Default true. */
  layout?: boolean;
  /** Report every page with content, not only the dirty ones (a full copy). Default false. */
  full?: boolean;
  /** Report open descriptors (position, flags, size) and child processes. Default true. */
  files?: boolean;
}

export type ThreadState = NativeThreadState;
export type Vma = NativeVma;

/** One epoch: what the target wrote since the previous one, captured while it was frozen. */
export interface Epoch extends NativeEpoch {
  /** Gives the page buffer back for reuse; `pages` is empty afterwards. Optional (GC does it too). */
  release(): void;
  /** Every reported page as [address, 4 KiB view into `pages`]. */
  entries(): IterableIterator<[bigint, Buffer]>;
  /** Addresses of every reported page. */
  addresses(): bigint[];
}

export interface AttachInfo { backend: BackendName; reason: string; armMs: number; threads: number }

function checkOptions(pid: number, o: TrackerOptions): Required<TrackerOptions> {
  if (!Number.isInteger(pid) || pid <= 0) throw new ReplicateError('INVALID_ARGUMENT', `pid must be a positive integer, got ${String(pid)}`);
  const backend = o.backend ?? 'auto';
  if (!['auto', 'uffd-wp', 'soft-dirty', 'hash'].includes(backend))
    throw new ReplicateError('INVALID_ARGUMENT', `backend must be one of auto, uffd-wp, soft-dirty, hash; got '${backend}'`);
  const freezeTimeoutMs = o.freezeTimeoutMs ?? 2000;
  if (!Number.isFinite(freezeTimeoutMs) || freezeTimeoutMs < 1 || freezeTimeoutMs > 600_000)
    throw new ReplicateError('INVALID_ARGUMENT', `freezeTimeoutMs must be between 1 and 600000, got ${freezeTimeoutMs}`);
  return { backend, freezeTimeoutMs };
}

/**
 * Tracks one process: each `epoch()` freezes every thread, finds the pages written since
 * the previous epoch, reads them with the registers and the layout, and lets it run.
 * The target is never left stopped, not even if this process is killed.
 */
export class Tracker {
  readonly pid: number;
  readonly backend: BackendName;
  readonly backendReason: string;
  #native: NativeTracker | undefined;
  /** The lists the native side last sent whole: an unchanged one comes back as *Same. */
  #vmas: NativeVma[] = [];
  #fds: Epoch['fds'] = [];

  private constructor(pid: number, handle: NativeTracker, info: AttachInfo) {
    this.pid = pid;
    this.#native = handle;
    this.backend = info.backend;
    this.backendReason = info.reason;
  }

  /** Attaches to `pid` and arms dirty tracking: writes from now on are reported. */
  static async attach(pid: number, options: TrackerOptions = {}): Promise<Tracker> {
    const opts = checkOptions(pid, options);
    const handle = new (native().NativeTracker)(pid, opts);
    try {
      const info = await nativeCall(() => handle.attach());
      return new Tracker(pid, handle, { backend: info.backend, reason: info.reason, armMs: info.armNs / 1e6, threads: info.threads });
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  get closed(): boolean { return this.#native === undefined; }

  async epoch(options: EpochOptions = {}): Promise<Epoch> {
    const handle = this.#native;
    if (!handle) throw new ReplicateError('INVALID_ARGUMENT', 'tracker is closed');
    const raw = await nativeCall(() => handle.epoch({
      pages: options.pages ?? true,
      registers: options.registers ?? true,
      layout: options.layout ?? true,
      full: options.full ?? false,
      files: options.files ?? true,
    }));
    // An unchanged list is the same array object as last time (consumers may compare by
    // identity), so every list is frozen: a consumer that sorted one in place would change
    // what later epochs report.
    if (raw.vmasSame) raw.vmas = this.#vmas;
    else if (raw.vmas.length) this.#vmas = raw.vmas = frozen(raw.vmas);
    if (raw.fdsSame) raw.fds = this.#fds;
    else if (raw.fds.length) this.#fds = raw.fds = frozen(raw.fds);
    return decorate(raw);
  }

  /**
   * Every page with content now, as [start, npages] pairs, without freezing: the list
   * an initial copy reads. Tracking is already armed, so what changes afterwards is in
   * the next epoch.
   */
  async present(): Promise<BigUint64Array> {
    const handle = this.#open();
    return nativeCall(() => handle.present());
  }

  /**
   * Reads pages from the running target, without freezing it: a copy that is torn
   * wherever the target writes meanwhile, which the next epoch repairs. Pages unmapped
   * meanwhile read as zeros (`unreadable` counts them).
   */
  async readLive(ranges: BigUint64Array): Promise<{ pages: Buffer; unreadable: number }> {
    const handle = this.#open();
    return nativeCall(() => handle.readLive(ranges));
  }

  #open(): NativeTracker {
    if (!this.#native) throw new ReplicateError('INVALID_ARGUMENT', 'tracker is closed');
    return this.#native;
  }

  /** Stops tracking and releases the userfaultfd and the tracer thread. Idempotent. */
  async close(): Promise<void> {
    const handle = this.#native;
    this.#native = undefined;
    if (handle) await handle.close();
  }
}

/** `list` and its elements made read-only (typed as before: the readonly-ness is at run time). */
function frozen<T extends object>(list: T[]): T[] {
  for (const x of list) Object.freeze(x);
  return Object.freeze(list) as T[];
}

function decorate(raw: NativeEpoch): Epoch {
  const e = raw as Epoch;
  e.release = () => native().releasePages(raw.pages);
  e.addresses = () => {
    const out: bigint[] = [];
    for (let i = 0; i < raw.ranges.length; i += 2)
      for (let p = 0n; p < raw.ranges[i + 1]!; p++) out.push(raw.ranges[i]! + p * BigInt(PAGE_SIZE));
    return out;
  };
  e.entries = function* () {
    let off = 0;
    for (let i = 0; i < raw.ranges.length; i += 2) {
      for (let p = 0n; p < raw.ranges[i + 1]!; p++) {
        yield [raw.ranges[i]! + p * BigInt(PAGE_SIZE), raw.pages.subarray(off, off + PAGE_SIZE)];
        off += PAGE_SIZE;
      }
    }
  };
  return e;
}

/** Which backend a request resolves to on this kernel, and why. */
export function chooseBackend(request: BackendRequest = 'auto'): { name: BackendName; reason: string; available: boolean } {
  return native().chooseBackend(request);
}
