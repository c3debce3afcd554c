// What the demo starts and must stop: `replicate` CLI processes read through their --json
// events, and small helpers to wait, to ask the example service over HTTP, and to tell
// whether a PID is still one of ours.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { packageRoot } from '../util/paths.js';

export type DemoEvent = Record<string, unknown> & { event: string };

export const CLI_PATH = join(packageRoot, 'bin', 'replicate.js');

/** `p`, or a rejection with the abort reason once `signal` aborts (no listener left behind). */
export function withAbort<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  let onAbort = (): void => undefined;
  const stop = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(signal.reason as Error);
    if (signal.aborted) onAbort(); else signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([p, stop]).finally(() => signal.removeEventListener('abort', onAbort));
}

/** `setTimeout` as a promise that an abort cuts short. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return withAbort(new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); }), signal).finally(() => clearTimeout(timer));
}

/** A `replicate ... --json` child process: its events as they come. */
export class CliChild {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly pid: number;
  readonly events: DemoEvent[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr = '';
  #listeners = new Set<(e: DemoEvent) => void>();

  constructor(name: string, args: string[], env: NodeJS.ProcessEnv) {
    this.name = name;
    // Its own process group: a Ctrl-C reaches the demo only, which stops everything in order.
    this.proc = spawn(process.execPath, [CLI_PATH, ...args, '--json', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
    if (this.proc.pid === undefined) throw new Error(`cannot start replicate ${args[0]}`);
    this.pid = this.proc.pid;
    this.exited = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      let e: DemoEvent;
      try { e = JSON.parse(line) as DemoEvent; } catch { return; }
      if (typeof e.event !== 'string') return;
      this.events.push(e);
      for (const f of [...this.#listeners]) f(e);
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      if (this.stderr.length > 64_000) this.stderr = this.stderr.slice(-32_000);
    });
  }

  get alive(): boolean { return this.proc.exitCode === null && this.proc.signalCode === null; }

  /** "replicate NAME (pid N) exited (HOW)" and the last lines of its log. */
  describeExit(): string {
    const how = this.proc.signalCode ?? `code ${String(this.proc.exitCode)}`;
    return `replicate ${this.name} (pid ${this.pid}) exited (${how})${this.stderr.trim() ? `:\n${this.stderrTail()}` : ''}`;
  }

  on(f: (e: DemoEvent) => void): () => void {
    this.#listeners.add(f);
    return () => { this.#listeners.delete(f); };
  }

  /** The last lines of its structured log, for error messages. */
  stderrTail(lines = 6): string {
    return this.stderr.trim().split('\n').slice(-lines).map((l) => {
      try { const j = JSON.parse(l) as { msg?: string; err?: string; errors?: string[] }; return [j.msg, j.err, ...(j.errors ?? [])].filter(Boolean).join(': '); } catch { return l; }
    }).filter(Boolean).join('\n');
  }

  /**
   * The first event of type `type` (matching `pred`) from index `from` of `events` on:
   * take `from = events.length` before causing it, so that nothing is missed.
   */
  waitFor(type: string, o: { from?: number; pred?: (e: DemoEvent) => boolean; timeoutMs: number; signal?: AbortSignal }): Promise<DemoEvent> {
    const match = (e: DemoEvent) => e.event === type && (!o.pred || o.pred(e));
    const seen = this.events.slice(o.from ?? this.events.length).find(match);
    if (seen) return Promise.resolve(seen);
    let off = (): void => undefined;
    let timer: NodeJS.Timeout | undefined;
    return withAbort(Promise.race([
      new Promise<DemoEvent>((resolve, reject) => {
        off = this.on((e) => { if (match(e)) resolve(e); });
        timer = setTimeout(() => reject(new Error(`replicate ${this.name} (pid ${this.pid}) did not report '${type}' within ${o.timeoutMs} ms${this.stderr ? `:\n${this.stderrTail()}` : ''}`)), o.timeoutMs);
      }),
      this.exited.then(({ code, signal }) => {
        throw new Error(`replicate ${this.name} (pid ${this.pid}) exited (${signal ?? `code ${code}`}) before '${type}'${this.stderr ? `:\n${this.stderrTail()}` : ''}`);
      }),
    ]), o.signal).finally(() => { off(); clearTimeout(timer); });
  }

  /** Sends `signal`; resolves once it has exited (SIGKILL after `graceMs`). */
  async stop(signal: NodeJS.Signals, graceMs = 10_000): Promise<void> {
    if (!this.alive) return;
    try { this.proc.kill(signal); } catch { /* gone */ }
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => { timer = setTimeout(resolve, graceMs); });
    await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (this.alive) {
      try { this.proc.kill('SIGKILL'); } catch { /* gone */ }
      await this.exited;
    }
  }
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** One HTTP request, the JSON answer back. */
export function httpJson(method: 'GET' | 'POST', url: string, o: { agent?: Agent | false; timeoutMs?: number } = {}): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, agent: o.agent ?? false, timeout: o.timeoutMs ?? 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => {
        if (res.statusCode !== 200) { reject(new Error(`${method} ${url}: HTTP ${res.statusCode} ${body.trim()}`)); return; }
        try { resolve(JSON.parse(body) as Record<string, unknown>); } catch { reject(new Error(`${method} ${url}: not JSON: ${body.slice(0, 200)}`)); }
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: no answer within ${o.timeoutMs ?? 2000} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** True while /proc/PID exists and its command line contains `marker` (a PID is reused, eventually). */
export function isOurs(pid: number, marker: string): boolean {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker); } catch { return false; }
}

/** The command line of a process ('' when it is gone or a zombie). */
export function cmdlineOf(pid: number): string {
  try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim(); } catch { return ''; }
}

/** Every live descendant of `pid` (children first), with its command line. */
export function descendants(pid: number): Array<{ pid: number; cmdline: string }> {
  const out: Array<{ pid: number; cmdline: string }> = [];
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift()!;
    let tids: string[] = [];
    try { tids = readdirSync(`/proc/${p}/task`); } catch { continue; }
    for (const tid of tids) {
      let kids = '';
      try { kids = readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8').trim(); } catch { continue; }
      for (const k of kids.split(/\s+/).filter(Boolean).map(Number)) {
        if (out.some((d) => d.pid === k)) continue;
        out.push({ pid: k, cmdline: cmdlineOf(k) });
        queue.push(k);
      }
    }
  }
  return out;
}

/** Waits until /proc/PID is gone (reaped); false on timeout. */
export async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  for (const end = Date.now() + timeoutMs; existsSync(`/proc/${pid}`);) {
    if (Date.now() > end) return false;
    await sleep(10);
  }
  return true;
}

export function killQuietly(pid: number, signal: NodeJS.Signals = 'SIGKILL'): boolean {
  try { process.kill(pid, signal); return true; } catch { return false; }
}
