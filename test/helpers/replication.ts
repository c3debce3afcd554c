// Helpers for replication tests: keys, a standby in this process, and comparing what a
// standby committed with a (stopped) target's memory.
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EpochStore } from '../../src/standby/epoch-store.js';
import { readSecretFile, writeSecretFile, type SecurityOptions } from '../../src/transport/security.js';

const PAGE = 4096;

export function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `remus-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** A fresh pre-shared key file in `dir`; returns its path and the TLS options. */
export function makeKey(dir: string, name = 'key'): { file: string; security: SecurityOptions } {
  const file = join(dir, name);
  writeSecretFile(file, { force: true });
  return { file, security: { kind: 'psk', key: readSecretFile(file) } };
}

export interface Comparison {
  /** Pages compared with content from the store. */
  compared: number;
  /** Anonymous pages the store does not have, checked to be zero in the target. */
  zeroChecked: number;
  mismatches: string[];
}

interface MapsLine { start: bigint; end: bigint; perms: string; inode: number; path: string }

export function readMaps(pid: number): MapsLine[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n').map((l) => {
    const f = l.split(/\s+/);
    const [s, e] = f[0]!.split('-');
    return { start: BigInt(`0x${s}`), end: BigInt(`0x${e}`), perms: f[1]!, inode: Number(f[4]), path: f.slice(5).join(' ') };
  });
}

const special = (path: string) => path === '[vdso]' || path === '[vvar]' || path === '[vsyscall]' || path === '[vvar_vclock]';

/**
 * Compares a store's committed state with a target that must not run meanwhile
 * (SIGSTOP it, or keep it idle): the layout must match the committed VMAs; every page
 * the store has must equal the target's; anonymous private pages the store lacks must
 * be zero in the target (file-backed ones come from the CRIU base image instead).
 */
export async function compareWithTarget(store: EpochStore, pid: number): Promise<Comparison> {
  const committed = store.committed;
  if (!committed) throw new Error('the store has no committed epoch');
  const out: Comparison = { compared: 0, zeroChecked: 0, mismatches: [] };
  const now = readMaps(pid).filter((v) => !special(v.path)).map((v) => `${v.start.toString(16)}-${v.end.toString(16)} ${v.perms}`);
  const then = committed.state.vmas.filter((v) => !special(v.path)).map((v) => `${v.start.toString(16)}-${v.end.toString(16)} ${v.perms}`);
  if (now.join('\n') !== then.join('\n')) out.mismatches.push(`layout differs:\n committed ${then.join(', ')}\n target    ${now.join(', ')}`);
  const have = new Map<bigint, Buffer | null>();
  for await (const p of store.pages()) have.set(p.addr, p.data);
  // The kernel rewrites each thread's rseq cpu ids whenever it resumes on another CPU, after
  // any capture: those bytes are not part of the comparison (CRIU re-registers rseq anyway).
  const rseq = committed.state.threads.filter((t) => t.rseq.addr !== 0n).map((t) => [t.rseq.addr, t.rseq.addr + BigInt(t.rseq.size)] as const);
  const blank = (page: Buffer, a: bigint) => {
    for (const [lo, hi] of rseq) {
      if (hi <= a || lo >= a + BigInt(PAGE)) continue;
      page.fill(0, Number((lo > a ? lo : a) - a), Number((hi < a + BigInt(PAGE) ? hi : a + BigInt(PAGE)) - a));
    }
  };
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  const buf = Buffer.alloc(PAGE);
  const zero = Buffer.alloc(PAGE);
  try {
    for (const v of committed.state.vmas) {
      if (v.perms[3] !== 'p' || special(v.path)) continue;
      for (let a = v.start; a < v.end; a += BigInt(PAGE)) {
        const stored = have.get(a);
        const anon = v.inode === 0;
        if (stored === undefined && !anon) continue;
        let n = 0;
        try { n = readSync(fd, buf, 0, PAGE, a); } catch { n = -1; }
        if (n !== PAGE) { if (stored !== undefined) out.mismatches.push(`page ${a.toString(16)}: unreadable in the target`); continue; }
        const expect = Buffer.from(stored ?? zero);
        blank(buf, a);
        blank(expect, a);
        if (stored === undefined) out.zeroChecked++; else out.compared++;
        if (!buf.equals(expect)) {
          let first = 0;
          while (first < PAGE && buf[first] === expect[first]) first++;
          const diffs = [...Array(PAGE).keys()].filter((k) => buf[k] !== expect[k]).length;
          out.mismatches.push(`page ${a.toString(16)} (${v.path || 'anon'} ${v.start.toString(16)}-${v.end.toString(16)} ${v.perms}): ${stored === undefined ? 'missing from the store, non-zero in the target' : `content differs: ${diffs} bytes from offset ${first}, target ${buf.subarray(first, first + 16).toString('hex')} store ${expect.subarray(first, first + 16).toString('hex')}`}`);
          if (out.mismatches.length > 20) return out;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Resolves when `pred()` holds, polling; rejects after `ms` with `what`. */
export async function until(pred: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
