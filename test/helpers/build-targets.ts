// Compiles every test/targets/*.c into test/targets/bin/<name>, only when the
// binary is missing or older than its source. Called from vitest globalSetup.
import { execFile } from 'node:child_process';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

const TARGETS_DIR = fileURLToPath(new URL('../targets/', import.meta.url));
const BIN_DIR = join(TARGETS_DIR, 'bin');
const CFLAGS = ['-O1', '-g', '-pthread', '-Wall', '-Werror'];

/** Absolute path of the compiled target `name` (e.g. "dirtier", "keeper"). */
export function targetPath(name: string): string {
  return join(BIN_DIR, name);
}

async function mtimeMs(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mtimeMs;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

async function buildOne(source: string): Promise<void> {
  const name = basename(source, '.c');
  const out = targetPath(name);
  const [srcTime, binTime] = await Promise.all([mtimeMs(source), mtimeMs(out)]);
  if (binTime !== undefined && srcTime !== undefined && binTime >= srcTime) return;
  // Compile to a temporary name and rename, so a concurrent reader never sees
  // a half-written binary.
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    await execFileP('cc', [...CFLAGS, '-o', tmp, source]);
    await rename(tmp, out);
  } catch (e) {
    await rm(tmp, { force: true });
    const err = e as { stderr?: string; message: string };
    throw new Error(`building test target ${name} failed:\n${err.stderr || err.message}`);
  }
}

/** Builds all test targets that are missing or out of date. */
export async function buildTargets(): Promise<void> {
  await mkdir(BIN_DIR, { recursive: true });
  const sources = (await readdir(TARGETS_DIR))
    .filter((f) => f.endsWith('.c'))
    .map((f) => join(TARGETS_DIR, f));
  await Promise.all(sources.map(buildOne));
}
