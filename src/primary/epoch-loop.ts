// The epoch loop: every epoch, freeze the target, capture what it wrote, its registers
// and its layout, let it run, and queue the capture. Only the capture is inside the
// pause; encoding and sending happen after the target runs again (in the sender).
import { EventEmitter } from 'node:events';
import type { EpochState, FdWire } from '../protocol/messages.js';
import type { Epoch, Tracker } from '../tracker/tracker.js';
import type { CapturedEpoch, EpochQueue } from './epoch-queue.js';

export interface CaptureInfo {
  seq: number;
  pages: number;
  pauseMs: number;
  capturedAt: number;
}

// The Tracker hands out the same (frozen) array while the mappings or descriptors stay the
// same, and the state delta finds an unchanged list by identity. Mappings go on the wire as
// the Tracker has them (the same fields); descriptors lose their inode, once per list.
const fdWires = new WeakMap<Epoch['fds'], FdWire[]>();

function fdsOnWire(fds: Epoch['fds']): FdWire[] {
  let w = fdWires.get(fds);
  if (!w) { w = fds.map((f) => ({ fd: f.fd, target: f.target, pos: f.pos, flags: f.flags, size: f.size, kind: f.kind })); fdWires.set(fds, w); }
  return w;
}

export function toCaptured(e: Epoch, pid: number, base = ''): CapturedEpoch {
  const state: EpochState = {
    pid,
    threads: e.threads.map((t) => ({ tid: t.tid, gpregs: t.gpregs, xsave: t.xsave, sigmask: t.sigmask, restart: t.restart, rseq: { addr: t.rseqAddr, size: t.rseqSize } })),
    vmas: e.vmas,
    brk: e.brk,
    clocks: e.clocks,
    fds: fdsOnWire(e.fds),
    children: e.children,
    base,
  };
  // The wall-clock time read while the target was frozen: the instant this state is of.
  const capturedAt = Number(e.clocks.realtimeNs / 1_000_000n);
  return { seq: e.seq, capturedAt, ranges: e.ranges, pages: e.pages, state, release: () => e.release() };
}

/**
 * Events: 'capture' (CaptureInfo), 'skip' (the queue is at its high-water mark),
 * 'error' (an Error from the tracker; the loop stops itself: TARGET_GONE and the like).
 */
export class EpochLoop extends EventEmitter {
  readonly #tracker: Tracker;
  readonly #queue: EpochQueue;
  readonly epochMs: number;
  #timer: NodeJS.Timeout | undefined;
  #active = false;
  #stopped = false;
  #busy: Promise<unknown> = Promise.resolve();
  #lastSeq = 0;

  constructor(tracker: Tracker, queue: EpochQueue, options: { epochMs: number }) {
    super();
    this.#tracker = tracker;
    this.#queue = queue;
    this.epochMs = options.epochMs;
  }

  /** Seq of the last epoch captured (the tracker numbers them from 1). */
  get lastSeq(): number { return this.#lastSeq; }
  get active(): boolean { return this.#active; }

  /** Captures one epoch every `epochMs`, into the queue. */
  resume(): void {
    if (this.#stopped || this.#active) return;
    this.#active = true;
    this.#schedule(this.epochMs);
  }

  /** Stops capturing (the kernel keeps tracking); resolves once no capture is running. */
  async pause(): Promise<void> {
    this.#active = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#busy.catch(() => undefined);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.pause();
  }

  /** One capture now, returned rather than queued (the end of a full synchronisation). */
  async captureOne(): Promise<CapturedEpoch> {
    const run = this.#busy.catch(() => undefined).then(() => this.#capture());
    this.#busy = run;
    return run;
  }

  #schedule(delay: number): void {
    if (!this.#active) return;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, delay));
  }

  #tick(): void {
    this.#timer = undefined;
    if (!this.#active) return;
    const started = performance.now();
    if (this.#queue.full) {
      // The link is behind: let the kernel accumulate the dirty set instead of us.
      this.#queue.noteSkipped();
      this.emit('skip');
      this.#schedule(this.epochMs);
      return;
    }
    const run = this.captureOne().then(
      (e) => {
        if (this.#active) this.#queue.push(e);
        else e.release(); // paused meanwhile (the link went down): a resync follows
      },
      (err: unknown) => {
        this.#active = false;
        this.emit('error', err);
      },
    );
    void run.then(() => this.#schedule(this.epochMs - (performance.now() - started)));
  }

  async #capture(): Promise<CapturedEpoch> {
    const e = await this.#tracker.epoch();
    this.#lastSeq = e.seq;
    const c = toCaptured(e, this.#tracker.pid);
    const info: CaptureInfo = { seq: e.seq, pages: e.stats.pages, pauseMs: e.timings.pauseNs / 1e6, capturedAt: c.capturedAt };
    this.emit('capture', info);
    return c;
  }
}
