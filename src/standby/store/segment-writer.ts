// Writes one batch's segment file: pages are copied into 8 MiB staging chunks (or, for
// inputs of 8 MiB and more, referenced as they are) and written by a single pump with
// large sequential writev() calls, never one syscall per page. Reads of pages of the open
// batch come from memory while their chunk is not yet written, from the file afterwards.
import { read as fsRead, readSync } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { PAGE_SIZE, SEGMENT_HEADER_SIZE, slotOffset } from './format.js';
import { StoreError, ioError } from './errors.js';

const STAGING_BYTES = 8 << 20;
/** With the pump idle, staged data of at least this size is written at once. */
const EAGER_BYTES = 1 << 20;
/** addPages waits while more than this is queued and unwritten... */
const HIGH_WATER = 64 << 20;
/** ...until it is back under this. */
const LOW_WATER = 32 << 20;
const MAX_WRITE_BYTES = 32 << 20;
const MAX_WRITE_BUFFERS = 256;

/** Staging buffers are reused (fresh 8 MiB buffers cost page faults and GC): at most this many are kept. */
const POOL_MAX = 4;
const pool: Buffer[] = [];

function takeBuffer(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(STAGING_BYTES);
}

function giveBuffer(b: Buffer): void {
  if (pool.length < POOL_MAX) pool.push(b);
}

/** `owned`: a staging buffer (back to the pool once written); otherwise the caller's data. */
interface Chunk { firstSlot: number; count: number; buf: Buffer; owned: boolean }
interface Waiter { ready: () => boolean; resolve: () => void; reject: (e: Error) => void }

/** Writes all of `bufs` at `pos`, looping over short writes. */
export async function writevAll(fh: FileHandle, bufs: Buffer[], pos: number): Promise<void> {
  let list = bufs.filter((b) => b.length > 0);
  while (list.length > 0) {
    const part = list.slice(0, MAX_WRITE_BUFFERS);
    const { bytesWritten } = await fh.writev(part, pos);
    if (bytesWritten <= 0) throw Object.assign(new Error('write returned 0 bytes'), { code: 'EIO' });
    pos += bytesWritten;
    let n = bytesWritten;
    let i = 0;
    while (i < list.length && n >= list[i]!.length) n -= list[i++]!.length;
    list = list.slice(i);
    if (n > 0) list[0] = list[0]!.subarray(n);
  }
}

function readAt(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fsRead(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

/**
 * Reads exactly `len` bytes at `pos` (a short read means the file is shorter than it must
 * be). Uses the callback API on the fd: a third of FileHandle.read's cost per call, which
 * matters for the many 4 KiB reads of scattered pages.
 */
export async function readExactly(fh: FileHandle, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  while (len > 0) {
    const bytesRead = await readAt(fh.fd, buf, off, len, pos);
    if (bytesRead <= 0) throw Object.assign(new Error(`unexpected end of file at offset ${pos}`), { code: 'EIO' });
    off += bytesRead;
    pos += bytesRead;
    len -= bytesRead;
  }
}

export function readExactlySync(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  while (len > 0) {
    const n = readSync(fd, buf, off, len, pos);
    if (n <= 0) throw Object.assign(new Error(`unexpected end of file at offset ${pos}`), { code: 'EIO' });
    off += n;
    pos += n;
    len -= n;
  }
}

export interface SegmentWriterOptions {
  path: string;
  header: Buffer;
  fsync: boolean;
  /** "the segment of epoch 12", for error messages. */
  describe: string;
  /** Appended to error messages ("the batch is dropped; committed epoch 11 is intact"). */
  consequence: () => string;
  /** Called before every data write (failpoints). */
  beforeWrite: () => void;
  /** Called once when a background write fails (the owner cleans up). */
  onError: (e: StoreError) => void;
}

export class SegmentWriter {
  private fh: FileHandle | null = null;
  private headerWritten = false;
  private staging: Chunk | null = null;
  /** Flushed chunks not yet written, in slot order (the first ones may be in flight). */
  private queue: Chunk[] = [];
  private queuedBytes = 0;
  private totalSlots = 0;
  /** Slots [0, writtenSlots) are in the file. */
  private writtenSlots = 0;
  private pumping: Promise<void> | null = null;
  private waiters: Waiter[] = [];
  private stopped = false;
  error: StoreError | null = null;

  constructor(private readonly o: SegmentWriterOptions) {}

  get path(): string { return this.o.path; }
  get slots(): number { return this.totalSlots; }

  /** Appends `count` pages (slots totalSlots..); copies unless `data` is large. */
  append(data: Buffer, count: number): { firstSlot: number; referenced: boolean } {
    const firstSlot = this.totalSlots;
    const bytes = count * PAGE_SIZE;
    if (bytes >= STAGING_BYTES) {
      this.flushStaging();
      this.queue.push({ firstSlot, count, buf: data.subarray(0, bytes), owned: false });
      this.queuedBytes += bytes;
      this.totalSlots += count;
      this.kick();
      return { firstSlot, referenced: true };
    }
    let done = 0;
    while (done < count) {
      if (!this.staging) this.staging = { firstSlot: this.totalSlots, count: 0, buf: takeBuffer(), owned: true };
      const room = STAGING_BYTES / PAGE_SIZE - this.staging.count;
      const n = Math.min(room, count - done);
      data.copy(this.staging.buf, this.staging.count * PAGE_SIZE, done * PAGE_SIZE, (done + n) * PAGE_SIZE);
      this.staging.count += n;
      this.totalSlots += n;
      done += n;
      if (this.staging.count * PAGE_SIZE >= STAGING_BYTES) this.flushStaging();
    }
    if (this.staging && !this.pumping && this.staging.count * PAGE_SIZE >= EAGER_BYTES) this.flushStaging();
    this.kick();
    return { firstSlot, referenced: false };
  }

  /** Resolves when the caller may go on: the queue is under the high-water mark and, with `slotEnd`, slots below it are written. */
  settle(slotEnd?: number): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (slotEnd === undefined && this.queuedBytes <= HIGH_WATER) return Promise.resolve();
    const ready = slotEnd === undefined ? () => this.queuedBytes <= LOW_WATER : () => this.writtenSlots >= slotEnd;
    return this.waitFor(ready);
  }

  /** Slot `slot`'s page copied into `out` at byte `at`, from memory or the file. */
  readSlotInto(slot: number, out: Buffer, at: number): void {
    if (slot < this.writtenSlots) {
      try {
        readExactlySync(this.fh!.fd, out, at, PAGE_SIZE, slotOffset(slot));
      } catch (e) {
        throw ioError(e, `reading a page of ${this.o.describe}`, this.o.path);
      }
      return;
    }
    for (let i = 0; i <= this.queue.length; i++) {
      const c = i < this.queue.length ? this.queue[i]! : this.staging;
      if (c && slot >= c.firstSlot && slot < c.firstSlot + c.count) {
        c.buf.copy(out, at, (slot - c.firstSlot) * PAGE_SIZE, (slot - c.firstSlot + 1) * PAGE_SIZE);
        return;
      }
    }
    throw new StoreError('STATE', `slot ${slot} of ${this.o.describe} is neither written nor queued`);
  }

  /**
   * Writes everything queued, then `tail` (index, state, footer) right after the last
   * slot, then fsyncs. Returns the file's size and hands over its handle.
   */
  async finish(tail: Buffer): Promise<{ fh: FileHandle; size: number }> {
    this.flushStaging();
    this.kick();
    await this.waitFor(() => this.queue.length === 0 && this.pumping === null);
    try {
      const fh = await this.handle();
      const bufs = this.headerWritten ? [tail] : [this.o.header, tail];
      await writevAll(fh, bufs, this.headerWritten ? slotOffset(this.totalSlots) : 0);
      this.headerWritten = true;
      if (this.o.fsync) await fh.sync();
      this.stopped = true;
      return { fh, size: slotOffset(this.totalSlots) + tail.length };
    } catch (e) {
      throw ioError(e, `writing ${this.o.describe}`, this.o.path, this.o.consequence());
    }
  }

  /** Stops writing, closes and deletes the file. */
  async destroy(): Promise<void> {
    this.stopped = true;
    this.rejectAll(this.error ?? new StoreError('STATE', `${this.o.describe} was discarded`));
    if (this.pumping) await this.pumping;
    for (const c of this.staging ? [...this.queue, this.staging] : this.queue) if (c.owned) giveBuffer(c.buf);
    this.staging = null;
    this.queue = [];
    this.queuedBytes = 0;
    await this.fh?.close().catch(() => undefined);
    this.fh = null;
    await unlink(this.o.path).catch(() => undefined);
  }

  // -------------------------------------------------------------------------------------

  private async handle(): Promise<FileHandle> {
    if (!this.fh) this.fh = await open(this.o.path, 'wx+', 0o600);
    return this.fh;
  }

  private flushStaging(): void {
    const s = this.staging;
    if (!s || s.count === 0) return;
    this.staging = null;
    this.queue.push(s);
    this.queuedBytes += s.count * PAGE_SIZE;
  }

  private kick(): void {
    if (this.pumping || this.stopped || this.error || this.queue.length === 0) return;
    this.pumping = this.pump().finally(() => {
      this.pumping = null;
      this.check();
      this.kick();
    });
  }

  private async pump(): Promise<void> {
    try {
      const fh = await this.handle();
      while (this.queue.length > 0 && !this.stopped && !this.error) {
        const take: Chunk[] = [];
        let bytes = 0;
        for (const c of this.queue) {
          const b = c.count * PAGE_SIZE;
          if (take.length > 0 && (bytes + b > MAX_WRITE_BYTES || take.length >= MAX_WRITE_BUFFERS - 1)) break;
          take.push(c);
          bytes += b;
        }
        const bufs = take.map((c) => c.buf.subarray(0, c.count * PAGE_SIZE));
        let pos = slotOffset(take[0]!.firstSlot);
        if (!this.headerWritten) {
          bufs.unshift(this.o.header);
          pos -= SEGMENT_HEADER_SIZE;
        }
        this.o.beforeWrite();
        await writevAll(fh, bufs, pos);
        this.headerWritten = true;
        const last = take[take.length - 1]!;
        this.queue.splice(0, take.length);
        this.queuedBytes -= bytes;
        this.writtenSlots = last.firstSlot + last.count;
        for (const c of take) if (c.owned) giveBuffer(c.buf);
        this.check();
      }
    } catch (e) {
      if (!this.stopped) {
        this.error = ioError(e, `writing ${this.o.describe}`, this.o.path, this.o.consequence());
        this.rejectAll(this.error);
        this.o.onError(this.error);
      }
    }
  }

  private waitFor(ready: () => boolean): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (ready()) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ ready, resolve, reject }));
  }

  private check(): void {
    if (this.waiters.length === 0) return;
    const keep: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.ready()) w.resolve();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  private rejectAll(e: Error): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.reject(e);
  }
}
