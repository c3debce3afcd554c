// The CRIU base image on the primary: what page deltas, registers and layout cannot
// express (open files and sockets, threads, file mappings, signal handlers...) comes from
// a `criu dump --leave-running` of the target. An epoch can be restored on top of a base
// only if those resources are as they were at the dump: each epoch's resource
// fingerprint is compared with the base's, and a difference means a new base (a re-base).
import { mkdir, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { criuDump } from '../criu/criu-runner.js';
import { ReplicateError } from '../errors.js';
import type { EpochState } from '../protocol/messages.js';

export interface BaseImage {
  id: string;
  dir: string;
  /** Resource fingerprint of the target when the dump was taken. */
  fingerprint: string;
  files: Array<{ name: string; size: number }>;
  bytes: number;
  dumpMs: number;
}

/**
 * What must not change between a base and an epoch restored on top of it: the threads,
 * the open descriptors but TCP connections (what they refer to and their flags; not their
 * positions, which the image builder sets), and the file-backed mappings. Children are
 * refused elsewhere.
 */
export function fingerprint(s: EpochState): string {
  const threads = s.threads.map((t) => t.tid).sort((a, b) => a - b).join(',');
  // TCP connections are left out: restore brings them back closed anyway, and one that
  // is not in the base gets a closed placeholder socket at its number (see promotion), so
  // a service's clients coming and going need no new base.
  const fds = s.fds.filter((f) => f.kind !== 'tcp').map((f) => `${f.fd}=${f.target}@${f.flags.toString(8)}`).join(',');
  const maps = [...new Set(s.vmas.filter((v) => v.inode !== 0).map((v) => `${v.path}#${v.inode}`))].sort().join(',');
  return `threads:${threads}|fds:${fds}|maps:${maps}`;
}

/** A short human account of what differs between two fingerprints. */
export function describeChange(before: string, after: string): string {
  const parts = (f: string) => Object.fromEntries(f.split('|').map((p) => [p.slice(0, p.indexOf(':')), new Set(p.slice(p.indexOf(':') + 1).split(',').filter(Boolean))]));
  const a = parts(before);
  const b = parts(after);
  const out: string[] = [];
  const names: Record<string, string> = { threads: 'thread', fds: 'descriptor', maps: 'file mapping' };
  for (const k of Object.keys(names)) {
    const added = [...(b[k] ?? [])].filter((x) => !a[k]?.has(x));
    const gone = [...(a[k] ?? [])].filter((x) => !b[k]?.has(x));
    if (added.length) out.push(`new ${names[k]}${added.length > 1 ? 's' : ''} ${added.slice(0, 3).join(' ')}${added.length > 3 ? ' ...' : ''}`);
    if (gone.length) out.push(`${names[k]}${gone.length > 1 ? 's' : ''} gone ${gone.slice(0, 3).join(' ')}${gone.length > 3 ? ' ...' : ''}`);
  }
  return out.join('; ') || 'no change';
}

/** Refuses process trees: replicating a parent without its children would be half a service. */
export function checkNoChildren(s: EpochState): void {
  if (s.children.length > 0)
    throw new ReplicateError('INVALID_TARGET',
      `process ${s.pid} has child processes (${s.children.slice(0, 5).join(', ')}${s.children.length > 5 ? ', ...' : ''}): replicating process trees is not supported, and replicating only the parent would restore half a service. Protect a process without children.`,
      { pid: s.pid, op: 'children' });
}

let counter = 0;

/** Our note inside a base image directory. */
export const BASE_META = 'remus-base.json';
export interface BaseMeta { id: string; pid: number; shellJob: boolean; dumpedAt: number; dumpMs: number }

/** Dumps `pid` (left running) into a new base directory under `workDir`. */
export async function takeBase(o: { criu: string; pid: number; workDir: string; generation: number; state: EpochState }): Promise<BaseImage> {
  const id = `g${o.generation}-${Date.now().toString(36)}-${(++counter).toString(36)}`;
  const dir = join(o.workDir, `base-${id}`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    const r = await criuDump({ criu: o.criu, pid: o.pid, dir });
    // What restore needs to know about how the dump was taken.
    const meta: BaseMeta = { id, pid: o.pid, shellJob: !!r.shellJob, dumpedAt: Date.now(), dumpMs: r.ms };
    await writeFile(join(dir, BASE_META), `${JSON.stringify(meta)}\n`);
    const files: BaseImage['files'] = [];
    let bytes = 0;
    for (const name of (await readdir(dir)).sort()) {
      if (name === 'dump.log') continue;
      const st = await stat(join(dir, name));
      if (!st.isFile()) continue;
      files.push({ name, size: st.size });
      bytes += st.size;
    }
    return { id, dir, fingerprint: fingerprint(o.state), files, bytes, dumpMs: r.ms };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

/** The base's files in pieces of at most `chunk` bytes (an empty file is one empty last piece). */
export async function* basePieces(base: BaseImage, chunk = 1 << 20): AsyncGenerator<{ name: string; offset: number; data: Buffer; last: boolean }> {
  for (const f of base.files) {
    const fh = await open(join(base.dir, f.name), 'r');
    try {
      if (f.size === 0) { yield { name: f.name, offset: 0, data: Buffer.alloc(0), last: true }; continue; }
      for (let off = 0; off < f.size; off += chunk) {
        const n = Math.min(chunk, f.size - off);
        const data = Buffer.allocUnsafe(n);
        const { bytesRead } = await fh.read(data, 0, n, off);
        if (bytesRead !== n) throw new ReplicateError('SYSTEM_ERROR', `base image file ${f.name} shrank while being sent`);
        yield { name: f.name, offset: off, data, last: off + n >= f.size };
      }
    } finally {
      await fh.close();
    }
  }
}

export async function removeBase(base: BaseImage): Promise<void> {
  await rm(base.dir, { recursive: true, force: true });
}
