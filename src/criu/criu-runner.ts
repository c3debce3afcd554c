// Running CRIU: `dump --leave-running` for a base image, `restore` for a promotion. CRIU
// writes its story to a log file; when it fails we quote the log's errors, which say far
// more than its exit code.
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ReplicateError } from '../errors.js';
import { native } from '../native/binding.js';

export interface CriuResult { ms: number; log: string; shellJob?: boolean }

/** Lines of a CRIU log that explain a failure (errors, not the harmless RLIMIT_NOFILE one). */
export function criuErrors(log: string, max = 6): string[] {
  return log.split('\n')
    .filter((l) => /Error|error/.test(l) && !/RLIMIT_NOFILE/.test(l))
    .map((l) => l.replace(/^\(\d+\.\d+\)\s*/, '').trim())
    .slice(-max);
}

function run(criu: string, args: string[], timeoutMs: number): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(criu, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20 }, (err, _stdout, stderr) => {
      const e = err as { code?: unknown; killed?: boolean } | null;
      const code = e ? (typeof e.code === 'number' ? e.code : -1) : 0;
      resolve({ code, stderr: `${String(stderr)}${e?.killed ? `\n(criu killed after ${timeoutMs} ms)` : ''}` });
    });
  });
}

/** True when `pid` leads its own session (CRIU then needs no --shell-job). */
export async function isSessionLeader(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[3]) === pid; // state ppid pgrp session ...
}

/** The network lock dumps use: nftables until it fails once, then CRIU's default. */
let networkLock: 'nftables' | 'default' | undefined;

export interface DumpOptions {
  criu: string;
  pid: number;
  dir: string;
  /** Keep the target running after the dump (a base image). Default true. */
  leaveRunning?: boolean;
  timeoutMs?: number;
}

/**
 * `criu dump` of `pid` into `dir`. Established TCP connections are dumped too (restore
 * brings them back closed with --tcp-close), so that a service with clients can be based.
 */
export async function criuDump(o: DumpOptions): Promise<CriuResult> {
  // nftables locks the target's connections during the dump in one transaction; CRIU's
  // default (iptables, a command per rule) froze a redis with 50 clients ~2.4 s instead of
  // ~0.2 s here. Falls back to the default if this CRIU or kernel lacks nftables.
  const lock = networkLock ?? 'nftables';
  const args = ['dump', '-t', String(o.pid), '-D', o.dir, '-o', 'dump.log', '-v2', '--tcp-established', '--skip-in-flight', '--ext-unix-sk', '--file-locks'];
  if (lock !== 'default') args.push('--network-lock', lock);
  if (o.leaveRunning !== false) args.push('--leave-running');
  const shellJob = !(await isSessionLeader(o.pid).catch(() => true));
  if (shellJob) args.push('--shell-job');
  const t0 = performance.now();
  const r = await run(o.criu, args, o.timeoutMs ?? 120_000);
  const ms = performance.now() - t0;
  const log = await readFile(join(o.dir, 'dump.log'), 'utf8').catch(() => r.stderr);
  if (r.code !== 0 && lock === 'nftables' && /nft|network.?lock/i.test(log)) {
    networkLock = 'default';
    return criuDump(o);
  }
  if (r.code !== 0) {
    const why = criuErrors(log);
    throw new ReplicateError('CRIU_FAILED', `criu dump of process ${o.pid} failed (exit ${r.code}): ${why.join(' | ') || r.stderr.trim() || 'see ' + join(o.dir, 'dump.log')}${dumpAdvice(log)}`, { pid: o.pid, op: 'criu_dump' });
  }
  return { ms, log, shellJob };
}

/** What to do about the dump failures a user can act on ('' for the others). */
export function dumpAdvice(log: string): string {
  if (/half of stream unix connection/.test(log))
    return '. A client is connected to the process over a unix stream socket, and CRIU cannot dump one end of such a connection: disconnect that client (or let it use TCP), then start protection again';
  return '';
}

export interface RestoreOptions {
  criu: string;
  dir: string;
  /** Established connections come back closed (the peer sees a reset). Default true. */
  tcpClose?: boolean;
  /** Restore with lazy pages served by `criu lazy-pages` (see lazy restore). */
  lazyPages?: boolean;
  /** Whether the base needed --shell-job. */
  shellJob?: boolean;
  /** Leave the restored process stopped (SIGSTOP); the caller sends SIGCONT. */
  leaveStopped?: boolean;
  timeoutMs?: number;
  extraArgs?: string[];
}

/** Image directories a `criu restore` of this process is working on now. */
const restoring = new Set<string>();

/**
 * Ends every `criu restore` this process has running (and the tasks it forked): for a
 * standby that stops in the middle of a promotion. Returns how many processes it ended.
 */
export function abortRestores(): number {
  let n = 0;
  for (const dir of restoring) n += killRestoreLeftovers(dir).length;
  return n;
}

/**
 * `criu restore -d` (detached: CRIU returns once the process runs; it is re-parented to
 * the nearest subreaper) of the image in `dir`. Resolves with the restored PID.
 */
export async function criuRestore(o: RestoreOptions): Promise<CriuResult & { pid: number }> {
  restoring.add(o.dir);
  try {
    return await restoreIn(o);
  } finally {
    restoring.delete(o.dir);
  }
}

async function restoreIn(o: RestoreOptions): Promise<CriuResult & { pid: number }> {
  const pidfile = join(o.dir, 'restored.pid');
  const args = ['restore', '-D', o.dir, '-d', '-o', 'restore.log', '-v2', '--pidfile', pidfile, '--ext-unix-sk', '--file-locks'];
  if (o.tcpClose !== false) args.push('--tcp-close'); else args.push('--tcp-established');
  if (o.shellJob) args.push('--shell-job');
  if (o.lazyPages) args.push('--lazy-pages');
  if (o.leaveStopped) args.push('--leave-stopped');
  args.push(...(o.extraArgs ?? []));
  // Spawned without fork(): a standby holding a large store would pay ~50 ms per GB of its
  // own memory to fork (page tables), on the failover path.
  const t0 = performance.now();
  const stderrFile = join(o.dir, 'restore.stderr');
  const timeoutMs = o.timeoutMs ?? 60_000;
  const x = await native().runProgram(o.criu, args, { stderrFile, timeoutMs });
  const ms = performance.now() - t0;
  const code = x.timedOut || x.signal ? -1 : x.code;
  if (code !== 0) {
    let stderr = '';
    try { stderr = readFileSync(stderrFile, 'utf8'); } catch { /* none */ }
    stderr += x.timedOut ? `\n(criu killed after ${timeoutMs} ms)` : x.signal ? `\n(criu killed by signal ${x.signal})` : '';
    const log = await readFile(join(o.dir, 'restore.log'), 'utf8').catch(() => stderr);
    // A restore that failed or was cut off by the timeout can leave its forks behind,
    // waiting on each other for ever: end them (they are ours: criu restore of this dir).
    killRestoreLeftovers(o.dir);
    const why = criuErrors(log);
    const pidTaken = /File exists|EEXIST|pid.*(taken|busy)|Can't fork for \d+/i.test(log);
    throw new RestoreError(`criu restore failed (exit ${code}): ${why.join(' | ') || stderr.trim() || 'see ' + join(o.dir, 'restore.log')}`, pidTaken);
  }
  // Synchronous: a few bytes on tmpfs, and the thread pool may be busy with the store's I/O.
  let pidText = '';
  try { pidText = readFileSync(pidfile, 'utf8'); } catch { /* reported below */ }
  const pid = Number(pidText.trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new RestoreError(`criu restore wrote no PID to ${pidfile}`, false);
  // The log (megabytes at -v2 for a large process) stays in the image directory: reading it
  // on success cost a failover ~20 ms.
  return { ms, log: '', pid };
}

/** SIGKILLs every `criu restore -D dir` process (the forks of a failed restore of `dir`). */
export function killRestoreLeftovers(dir: string): number[] {
  const killed: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try { argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0'); } catch { continue; }
    const d = argv.indexOf('-D');
    if (argv[1] === 'restore' && d > 0 && argv[d + 1] === dir) {
      try { process.kill(Number(name), 'SIGKILL'); killed.push(Number(name)); } catch { /* gone */ }
    }
  }
  return killed;
}

export class RestoreError extends Error {
  /** The original PIDs were still taken: worth retrying once they are free. */
  readonly pidTaken: boolean;
  constructor(message: string, pidTaken: boolean) {
    super(message);
    this.name = 'RestoreError';
    this.pidTaken = pidTaken;
  }
}
