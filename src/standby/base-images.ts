// CRIU base images on the standby, next to the EpochStore:
//
//   DIR/base-<id>/            a complete base (every file fsync'd, then the directory
//                             renamed into place); the committed state names its base
//   DIR/base-<id>.partial/    one arriving inside an open batch
//
// A base is received inside a batch, made complete before the batch commits, and kept
// until a commit names another one. At start, partial bases and bases the committed
// state does not name are removed. So the committed epoch always has its base.
import { mkdir, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

const PREFIX = 'base-';
const PARTIAL = '.partial';

export function baseDir(dir: string, id: string): string {
  return join(dir, `${PREFIX}${id}`);
}

async function fsyncDir(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}

/** Removes partial bases and every base but `keep` (the committed one). */
export async function pruneBases(dir: string, keep: string | null): Promise<string[]> {
  const removed: string[] = [];
  let names: string[] = [];
  try { names = await readdir(dir); } catch { return removed; }
  for (const n of names) {
    if (!n.startsWith(PREFIX)) continue;
    if (keep && n === `${PREFIX}${keep}`) continue;
    await rm(join(dir, n), { recursive: true, force: true });
    removed.push(n);
  }
  return removed;
}

/** One base image arriving in pieces. */
export class BaseImageWriter {
  readonly id: string;
  readonly #dir: string;
  readonly #partial: string;
  readonly #fsync: boolean;
  #open = new Map<string, FileHandle>();
  #bytes = 0;
  #started = false;
  #done = false;

  constructor(dir: string, id: string, options: { fsync: boolean }) {
    this.id = id;
    this.#dir = dir;
    this.#partial = `${baseDir(dir, id)}${PARTIAL}`;
    this.#fsync = options.fsync;
  }

  get bytes(): number { return this.#bytes; }
  get files(): number { return this.#open.size; }

  async write(name: string, offset: number, data: Buffer, last: boolean): Promise<void> {
    if (this.#done) throw new Error(`base ${this.id} is already complete`);
    if (!this.#started) {
      await rm(this.#partial, { recursive: true, force: true });
      await mkdir(this.#partial, { recursive: true, mode: 0o700 });
      this.#started = true;
    }
    let fh = this.#open.get(name);
    if (!fh) {
      fh = await open(join(this.#partial, name), 'w', 0o600);
      this.#open.set(name, fh);
    }
    if (data.length) await fh.write(data, 0, data.length, offset);
    this.#bytes += data.length;
    if (last) {
      if (this.#fsync) await fh.sync();
      await fh.close();
      this.#open.set(name, CLOSED);
    }
  }

  /** Makes the base complete and durable under its final name. */
  async finish(): Promise<string> {
    for (const [name, fh] of this.#open) if (fh !== CLOSED) throw new Error(`base ${this.id}: file ${name} is incomplete`);
    const final = baseDir(this.#dir, this.id);
    await rm(final, { recursive: true, force: true });
    if (this.#fsync) await fsyncDir(this.#partial);
    await rename(this.#partial, final);
    if (this.#fsync) await fsyncDir(this.#dir);
    this.#done = true;
    return final;
  }

  async abort(): Promise<void> {
    for (const fh of this.#open.values()) if (fh !== CLOSED) await fh.close().catch(() => undefined);
    this.#open.clear();
    if (!this.#done) await rm(this.#partial, { recursive: true, force: true });
  }
}

// Marks a file handle that was closed after its last piece.
const CLOSED = {} as FileHandle;
