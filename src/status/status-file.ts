// Status files: how `replicate status` learns about a running agent without talking to
// it. Each agent rewrites its file about once a second (atomically: a reader never sees
// half a file) and once more, with `running: false`, when it stops.
//   standby: DIR/status.json
//   primary: RUN_DIR/primary-<target pid>.json, RUN_DIR = $REPLICATE_RUN_DIR, else
//            /run/remus-replicate when writable, else $TMPDIR/remus-replicate
import { accessSync, constants, mkdirSync } from 'node:fs';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let writes = 0;

export async function writeStatusFile(path: string, status: object): Promise<void> {
  // A name per write: two writes in flight in one process must not share a temp file.
  const tmp = `${path}.${process.pid}.${++writes}.tmp`;
  const text = `${JSON.stringify(status, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(text);
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

export async function readStatusFile<T = Record<string, unknown>>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

export function runDir(): string {
  if (process.env.REPLICATE_RUN_DIR) return process.env.REPLICATE_RUN_DIR;
  for (const dir of ['/run/remus-replicate', join(tmpdir(), 'remus-replicate')]) {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      accessSync(dir, constants.W_OK);
      return dir;
    } catch { /* try the next */ }
  }
  return tmpdir();
}

export function primaryStatusPath(targetPid: number, dir = runDir()): string {
  return join(dir, `primary-${targetPid}.json`);
}

/** True if a process with this PID exists (signal 0). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
