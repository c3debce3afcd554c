// A `replicate` CLI process started with --json: its events as they come, waiting for
// one, stopping it by its PID.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { packageRoot } from '../../src/util/paths.js';

export const CLI = join(packageRoot, 'bin', 'replicate.js');

/** A replicate CLI process printing --json events; `next(event)` waits for one. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly events: Array<Record<string, unknown>> = [];
  #waiters: Array<{ event: string; resolve: (e: Record<string, unknown>) => void }> = [];
  stderr = '';

  /** `script`: another Node.js script printing JSON event lines, run with `args` as they are. */
  constructor(args: string[], options: { script?: string } = {}) {
    // Our flags go before a `--` (after it come a command's own arguments).
    const dd = args.indexOf('--');
    const ours = ['--json', ...(args.includes('--log-level') ? [] : ['--log-level', process.env.REMUS_CLI_LOG ?? 'warn'])];
    const full = options.script ? [options.script, ...args] : dd < 0 ? [CLI, ...args, ...ours] : [CLI, ...args.slice(0, dd), ...ours, ...args.slice(dd)];
    this.child = spawn(process.execPath, full, { stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      let e: Record<string, unknown>;
      try { e = JSON.parse(line) as Record<string, unknown>; } catch { return; }
      this.events.push(e);
      for (const w of [...this.#waiters]) if (w.event === e.event) { this.#waiters.splice(this.#waiters.indexOf(w), 1); w.resolve(e); }
    });
    this.child.stderr!.on('data', (d) => { this.stderr += d; if (this.stderr.length > 100_000) this.stderr = this.stderr.slice(-50_000); });
  }

  next(event: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no '${event}' within ${timeoutMs} ms; stderr: ${this.stderr.slice(-2000)}`)), timeoutMs);
      this.#waiters.push({ event, resolve: (e) => { clearTimeout(timer); resolve(e); } });
      this.child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`replicate exited (${code}) before '${event}': ${this.stderr.slice(-2000)}`)); });
    });
  }

  last(event: string): Record<string, unknown> | undefined {
    for (let i = this.events.length - 1; i >= 0; i--) if (this.events[i]!.event === event) return this.events[i];
    return undefined;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill(signal);
    await Promise.race([exited, sleep(10_000).then(() => this.child.kill('SIGKILL'))]);
  }
}
