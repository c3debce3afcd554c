// Running `criu lazy-pages` against our page server, and the matching `criu restore` options.
//
//   1. LazyPageServer.listen({ source })                   our pages, on 127.0.0.1:PORT
//   2. startLazyPagesDaemon({ criu, imagesDir, port })     criu lazy-pages -D DIR --page-server
//        --address 127.0.0.1 --port PORT --status-fd 3       resolves once DIR/lazy-pages.socket
//                                                            listens (the status byte)
//   3. criu restore -D DIR --lazy-pages [...]               connects to DIR/lazy-pages.socket,
//        (lazyRestoreArgs)                                   hands the daemon one userfaultfd per
//                                                            process, resumes them, says "finished"
//   4. the daemon connects to PORT, asks for faulting pages at once and, after the restore
//      finished, for everything else in the background; when all is transferred it sends
//      PS_IOV_CLOSE and exits 0 (server.finished resolves).
//
// The daemon is started as this process's child (not with -d, which would orphan it), so it
// can be waited for and killed by PID.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { keeperPath } from '../../native/binding.js';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';

export interface LazyPagesDaemonOptions {
  /** The criu binary. */
  criu: string;
  /** The image directory (also the working directory: lazy-pages.socket is created there). */
  imagesDir: string;
  /**
   * How the daemon reaches the page server: 'tcp' (default) connects to address:port;
   * 'socketpair' hands it one end of a socket pair (--ps-socket 4): no port at all, and the
   * other end is `stream`, to give to LazyPageServer.serve().
   */
  transport?: 'tcp' | 'socketpair';
  address?: string;
  port?: number;
  /** Log file, relative to imagesDir (default lazy-pages.log) and level (default 2: errors and warnings). */
  logFile?: string;
  logLevel?: number;
  /** How long to wait for the daemon to be ready (default 10 s). */
  readyTimeoutMs?: number;
  extraArgs?: string[];
}

export interface LazyPagesDaemon {
  pid: number;
  child: ChildProcess;
  /** With transport 'socketpair': this process's end of the daemon's page-server socket. */
  stream: Duplex | undefined;
  /** Resolves with the exit code (128 + signal number when killed). */
  exited: Promise<number>;
  /** The log's last lines (for error messages). */
  logTail(lines?: number): Promise<string>;
  /** Kills the daemon by PID (SIGKILL) if it still runs and waits for it. */
  stop(): Promise<void>;
}

const SIGNALS: Record<string, number> = { SIGKILL: 9, SIGTERM: 15, SIGINT: 2, SIGSEGV: 11, SIGABRT: 6, SIGBUS: 7, SIGPIPE: 13 };

/** Starts `criu lazy-pages` and resolves once it listens for `criu restore --lazy-pages`. */
export async function startLazyPagesDaemon(o: LazyPagesDaemonOptions): Promise<LazyPagesDaemon> {
  const transport = o.transport ?? 'tcp';
  const logFile = o.logFile ?? 'lazy-pages.log';
  const args = ['lazy-pages', '-D', o.imagesDir, '--page-server', '--status-fd', '3', '-o', logFile, `-v${o.logLevel ?? 2}`];
  if (transport === 'tcp') {
    if (!o.port) throw new TypeError('startLazyPagesDaemon: port is needed with the tcp transport');
    args.push('--address', o.address ?? '127.0.0.1', '--port', String(o.port));
  } else {
    args.push('--ps-socket', '4');
  }
  args.push(...(o.extraArgs ?? []));
  // fd 3: the status pipe (one byte when ready); fd 4: a socket pair (libuv makes stdio
  // "pipes" with socketpair(AF_UNIX, SOCK_STREAM)), the page-server connection.
  const stdio: Array<'ignore' | 'pipe'> = ['ignore', 'ignore', 'pipe', 'pipe'];
  if (transport === 'socketpair') stdio.push('pipe');
  // Through the keeper: the daemon dies with us (a standby killed with SIGKILL must not
  // leave it running).
  const child = existsSync(keeperPath)
    ? spawn(keeperPath, ['--die-with-parent', '--', o.criu, ...args], { stdio, cwd: o.imagesDir })
    : spawn(o.criu, args, { stdio, cwd: o.imagesDir });
  const exited = new Promise<number>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? 128 + (signal ? SIGNALS[signal] ?? 0 : 0)));
  });
  const logTail = async (lines = 15): Promise<string> => {
    try { return (await readFile(join(o.imagesDir, logFile), 'utf8')).trimEnd().split('\n').slice(-lines).join('\n'); } catch { return '(no log)'; }
  };
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone meanwhile */ }
    }
    await exited;
  };
  if (child.pid === undefined) {
    await exited.catch(() => undefined);
    throw new Error(`cannot start ${o.criu}`);
  }
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  const status = child.stdio[3] as Duplex;
  const ready = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), o.readyTimeoutMs ?? 10_000);
    status.once('data', () => { clearTimeout(timer); resolve(true); });
    void exited.then(() => { clearTimeout(timer); resolve(false); });
  });
  status.destroy();
  if (!ready) {
    await stop();
    throw new Error(`criu lazy-pages did not get ready (exit ${child.exitCode ?? child.signalCode ?? 'none'}): ${stderr.trim()}\n${await logTail()}`);
  }
  return {
    pid: child.pid,
    child,
    stream: transport === 'socketpair' ? (child.stdio[4] as Duplex) : undefined,
    exited,
    logTail,
    stop,
  };
}

/** Arguments of the `criu restore` that goes with the daemon (same directory: same socket). */
export function lazyRestoreArgs(imagesDir: string, extra: string[] = []): string[] {
  return ['restore', '-D', imagesDir, '--lazy-pages', ...extra];
}
