// Spawns and drives test/targets/dirtier (protocol: see test/targets/dirtier.c).
//
// By default the target is started through the project's keeper (build/Release/replicate-keeper):
// the keeper forks, its child calls setsid() and execs dirtier. The test
// process, which may ptrace the target, must not be the target's parent:
// libuv's SIGCHLD handler waitpid()s its own children and would steal
// ptrace-stop notifications.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { createInterface } from 'node:readline';
import { keeperPath as KEEPER } from '../../src/native/binding.js';
import { targetPath } from './build-targets.js';

export interface TargetInfo {
  pid: number;
  region: bigint;
  pages: number;
  file: bigint;
  filePages: number;
}

export interface TargetExit {
  code: number | null;
  signal: string | null;
}

export interface SpawnOptions {
  /** Main region size in pages (default 256). */
  pages?: number;
  /** Persistent worker threads for `rand` (default 0, meaning 1 writer). */
  threads?: number;
  /** Path of a file to map MAP_PRIVATE (created/extended as needed). */
  file?: string;
  /** Size of the file mapping in pages (default 16). */
  filePages?: number;
  /** Start through the keeper so this process is not the parent (default true). */
  viaKeeper?: boolean;
  /** How long to wait for the ready line (default 10 s). */
  readyTimeoutMs?: number;
}

interface Pending {
  line: string;
  settled: boolean;
  timer: NodeJS.Timeout;
  resolve: (reply: string) => void;
  reject: (err: Error) => void;
}

const PAGE = 4096n;
const DEFAULT_TIMEOUT_MS = 10_000;
const KILL_TIMEOUT_MS = 10_000;

const live = new Set<Target>();

const signalNames = new Map<number, string>(
  Object.entries(osConstants.signals).map(([name, num]) => [num, name]),
);

function short(line: string): string {
  return line.length > 80 ? `${line.slice(0, 77)}...` : line;
}

function describeExit(e: TargetExit): string {
  return e.signal !== null ? `signal ${e.signal}` : `code ${e.code}`;
}

function parseReady(line: string): TargetInfo {
  const m = /^ready pid=(\d+) region=([0-9a-f]+) pages=(\d+) file=([0-9a-f]+) filepages=(\d+)$/.exec(line);
  if (!m) throw new Error(`target: expected ready line, got ${JSON.stringify(line)}`);
  return {
    pid: Number(m[1]),
    region: BigInt(`0x${m[2]}`),
    pages: Number(m[3]),
    file: BigInt(`0x${m[4]}`),
    filePages: Number(m[5]),
  };
}

/** Children of a process (needs CONFIG_PROC_CHILDREN); [] if unavailable. */
function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .split(/\s+/)
      .filter((s) => s !== '')
      .map(Number);
  } catch {
    return [];
  }
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

export class Target {
  /** Resolves when the target has been reaped (with the keeper: when the keeper exits). */
  readonly exited: Promise<TargetExit>;

  private readonly child: ChildProcess;
  private readonly viaKeeper: boolean;
  private readonly pending: Pending[] = [];
  private readyInfo: TargetInfo | undefined;
  private onReady: ((info: TargetInfo) => void) | undefined;
  private exitInfo: TargetExit | undefined;
  private closed = false;
  private closeError: Error | undefined;

  private constructor(child: ChildProcess, viaKeeper: boolean) {
    this.child = child;
    this.viaKeeper = viaKeeper;
    this.exited = new Promise<TargetExit>((resolve) => {
      const done = (e: TargetExit): void => {
        if (this.exitInfo !== undefined) return;
        this.exitInfo = e;
        live.delete(this);
        resolve(e);
      };
      child.once('exit', (code, signal) => done(this.translateExit(code, signal)));
      child.once('error', (err) => {
        // spawn failure: no 'exit' will follow
        this.closeError = err;
        done({ code: null, signal: null });
        this.onClose();
      });
    });
    // 'close' comes after 'exit' and after stdout has been fully read, so a
    // reply written just before exiting (e.g. to `exit N`) is still delivered.
    child.once('close', () => this.onClose());

    child.stdin!.on('error', () => {
      /* EPIPE after the target died: reported through `exited` */
    });
    child.stderr!.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    const rl = createInterface({ input: child.stdout!, crlfDelay: Infinity });
    rl.on('line', (line) => this.onLine(line));
  }

  static async spawn(opts: SpawnOptions = {}): Promise<Target> {
    const viaKeeper = opts.viaKeeper ?? true;
    const args: string[] = [];
    if (opts.pages !== undefined) args.push('--pages', String(opts.pages));
    if (opts.threads !== undefined) args.push('--threads', String(opts.threads));
    if (opts.file !== undefined) {
      args.push('--file', opts.file);
      if (opts.filePages !== undefined) args.push('--file-pages', String(opts.filePages));
    }
    const dirtier = targetPath('dirtier');
    const child = viaKeeper
      ? spawn(KEEPER, ['--', dirtier, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
      : spawn(dirtier, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const t = new Target(child, viaKeeper);
    live.add(t);

    const timeoutMs = opts.readyTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        new Promise<TargetInfo>((resolve) => {
          t.onReady = resolve;
        }),
        t.exited.then((e) => {
          const why = t.closeError ? `: ${t.closeError.message}` : '';
          throw new Error(`target exited before ready (${describeExit(e)})${why}`);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`target not ready after ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } catch (e) {
      await t.abandon();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    if (!viaKeeper && t.info.pid !== child.pid) {
      await t.kill();
      throw new Error(`target: ready pid ${t.info.pid} != child pid ${child.pid}`);
    }
    return t;
  }

  get info(): TargetInfo {
    if (this.readyInfo === undefined) throw new Error('target: not ready yet');
    return this.readyInfo;
  }

  /** The real target's pid (never the keeper's). */
  get pid(): number {
    return this.info.pid;
  }

  /** Address of page i of the main region. */
  pageAddr(i: number): bigint {
    return this.info.region + BigInt(i) * PAGE;
  }

  /**
   * Sends one command line and resolves with the target's one-line reply
   * (`ok ...` or `err ...`). Rejects on timeout or if the target exits first.
   */
  cmd(line: string, timeoutMs: number = DEFAULT_TIMEOUT_MS): Promise<string> {
    if (line.includes('\n')) return Promise.reject(new Error('target.cmd: line must not contain a newline'));
    if (this.exitInfo !== undefined || this.closed) {
      return Promise.reject(
        new Error(`target ${this.readyInfo?.pid} has exited (${describeExit(this.exitInfo ?? { code: null, signal: null })}); cannot send "${short(line)}"`),
      );
    }
    return new Promise<string>((resolve, reject) => {
      const p: Pending = {
        line,
        settled: false,
        resolve,
        reject,
        timer: setTimeout(() => {
          // Stays queued so that a late reply is consumed by this entry and
          // does not shift the replies of later commands.
          if (p.settled) return;
          p.settled = true;
          reject(new Error(`target ${this.readyInfo?.pid}: no reply to "${short(line)}" after ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.pending.push(p);
      this.child.stdin!.write(`${line}\n`);
    });
  }

  /** Like cmd(), but throws unless the reply is `ok[ ...]`; returns the text after `ok`. */
  async ok(line: string, timeoutMs?: number): Promise<string> {
    const reply = await this.cmd(line, timeoutMs);
    if (reply === 'ok') return '';
    if (reply.startsWith('ok ')) return reply.slice(3);
    throw new Error(`target ${this.pid}: "${short(line)}" -> ${reply}`);
  }

  /**
   * SIGKILLs the target by its pid if still alive and waits until it has been
   * reaped (with the keeper: until the keeper has exited).
   */
  async kill(): Promise<void> {
    if (this.exitInfo === undefined) {
      if (this.readyInfo !== undefined) killPid(this.readyInfo.pid);
      else await this.abandon();
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new Error(
                  `target ${this.readyInfo?.pid}: not reaped ${KILL_TIMEOUT_MS} ms after SIGKILL` +
                    (this.viaKeeper ? ' (is a tracer still attached and not waiting for it?)' : ''),
                ),
              ),
            KILL_TIMEOUT_MS,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Cleanup when the ready line never came (the target pid is unknown). */
  private async abandon(): Promise<void> {
    if (this.exitInfo === undefined) {
      if (this.viaKeeper && this.child.pid !== undefined) {
        for (const pid of childPids(this.child.pid)) killPid(pid);
      }
      this.child.kill('SIGKILL');
    }
    this.child.stdin!.destroy();
    await this.exited;
  }

  private translateExit(code: number | null, signal: NodeJS.Signals | null): TargetExit {
    // The keeper reports a signal death of the target as 128+signal.
    if (this.viaKeeper && code !== null && code > 128) {
      const name = signalNames.get(code - 128);
      if (name !== undefined) return { code: null, signal: name };
    }
    return { code, signal };
  }

  private onLine(line: string): void {
    if (this.readyInfo === undefined) {
      try {
        this.readyInfo = parseReady(line);
      } catch (e) {
        process.stderr.write(`${(e as Error).message}\n`);
        return;
      }
      this.onReady?.(this.readyInfo);
      return;
    }
    const p = this.pending.shift();
    if (p === undefined) {
      process.stderr.write(`target ${this.readyInfo.pid}: unexpected output ${JSON.stringify(line)}\n`);
      return;
    }
    clearTimeout(p.timer);
    if (p.settled) return;
    p.settled = true;
    p.resolve(line);
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    const e = this.exitInfo ?? { code: null, signal: null };
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      if (p.settled) continue;
      p.settled = true;
      p.reject(new Error(`target ${this.readyInfo?.pid} exited (${describeExit(e)}) before replying to "${short(p.line)}"`));
    }
  }
}

/** Kills every Target spawned by this module that is still alive. */
export async function killAll(): Promise<void> {
  const results = await Promise.allSettled([...live].map((t) => t.kill()));
  const errors = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason);
  if (errors.length > 0) throw new AggregateError(errors, 'killAll: some targets could not be reaped');
}
