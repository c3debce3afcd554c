// The store directory's lock: a file LOCK holding "PID STARTTIME\n" of its owner.
//
// Node has no flock(), so this is a pid lock with a liveness check. It is created
// atomically with link(2) from a fully written temporary file (so LOCK never exists
// half-written); a LOCK whose process is gone (kill(pid, 0) fails with ESRCH), or whose
// pid now belongs to a process with another start time (pid reuse), or that does not
// parse, is stale: it is renamed away, checked to be still the stale one, and replaced.
import { link, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { StoreError, ioError } from './errors.js';

export const LOCK_NAME = 'LOCK';

/** Field 22 of /proc/PID/stat: the start time in clock ticks since boot; null if unknown. */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

interface LockOwner { pid: number; start: string | null }

function parseLock(text: string): LockOwner | null {
  const m = /^(\d+)(?: (\d+))?\n?$/.exec(text);
  if (!m) return null;
  return { pid: Number(m[1]), start: m[2] ?? null };
}

function isAlive(owner: LockOwner): boolean {
  try {
    process.kill(owner.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  // Alive (or EPERM: alive, not ours). A different start time means the pid was reused.
  if (owner.start !== null) {
    const now = processStartTime(owner.pid);
    if (now !== null && now !== owner.start) return false;
  }
  return true;
}

export class DirLock {
  private constructor(readonly path: string, private readonly content: string) {}

  static async acquire(dir: string): Promise<DirLock> {
    const path = join(dir, LOCK_NAME);
    const content = `${process.pid} ${processStartTime(process.pid) ?? ''}`.trim() + '\n';
    const tmp = join(dir, `LOCK.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      await writeFile(tmp, content, { mode: 0o600 });
    } catch (e) {
      throw ioError(e, 'creating the lock file', tmp);
    }
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await link(tmp, path);
          return new DirLock(path, content);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(e, 'taking the lock', path);
        }
        let text: string;
        try {
          text = await readFile(path, 'utf8');
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // released meanwhile
          throw ioError(e, 'reading the lock', path);
        }
        const owner = parseLock(text);
        if (owner && isAlive(owner)) {
          const who = owner.pid === process.pid ? `this process (pid ${owner.pid})` : `process ${owner.pid}`;
          throw new StoreError('LOCKED', `store ${dir} is locked by ${who}: another standby uses this directory (lock file ${path})`, { path });
        }
        if (attempt >= 5) throw new StoreError('LOCKED', `store ${dir}: could not take over the stale lock ${path}`, { path });
        // Stale: move it aside, and make sure what we moved is the stale lock we judged.
        const aside = join(dir, `LOCK.stale.${process.pid}`);
        try {
          await rename(path, aside);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
          throw ioError(e, 'removing a stale lock', path);
        }
        const moved = await readFile(aside, 'utf8').catch(() => null);
        if (moved !== text) {
          // Someone took the lock between our read and rename: give it back.
          await link(aside, path).catch(() => undefined);
          await unlink(aside).catch(() => undefined);
          const o = moved === null ? null : parseLock(moved);
          throw new StoreError('LOCKED', `store ${dir} is locked by process ${o?.pid ?? '?'}: another standby took it just now (lock file ${path})`, { path });
        }
        await unlink(aside).catch(() => undefined);
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }

  /**
   * Whether `name` is a lock-taking leftover (LOCK.PID.X.tmp, LOCK.stale.PID) of a process
   * that is gone: those can be deleted.
   */
  static isDeadLeftover(name: string): boolean {
    const m = /^LOCK\.(?:stale\.(\d+)|(\d+)\.[0-9a-f]+\.tmp)$/.exec(name);
    if (!m) return false;
    const pid = Number(m[1] ?? m[2]);
    return pid !== process.pid && !isAlive({ pid, start: null });
  }

  /** Removes LOCK if it is still ours. */
  async release(): Promise<void> {
    const text = await readFile(this.path, 'utf8').catch(() => null);
    if (text === this.content) await unlink(this.path).catch(() => undefined);
  }
}
