// The heartbeat channel's handle on the main thread.
//
// Why a thread: the standby's phi detector learns how regular our heartbeats are, and sets
// its detection time from that. Sent from the main thread, they wait behind whatever the
// event loop is doing (framing a large batch, the initial sync of a 1 GiB target): the
// detector then learns a jitter of tens of milliseconds (23 ms measured at 1 GiB against
// 10 ms at 64 MiB), detects a dead primary later, and has suspected a live one during a
// long sync. A worker thread has an event loop of its own that does nothing else.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../log/logger.js';
import type { HelloMsg } from '../protocol/messages.js';
import type { SecurityOptions } from '../transport/security.js';

/** What the worker is given (structured-cloned: the key travels as bytes). */
export interface BeatsWorkerData {
  host: string;
  port: number;
  security: { kind: 'psk'; key: Uint8Array } | { kind: 'cert'; cert: string; key: string; ca: string } | { kind: 'insecure' };
  heartbeatMs: number;
  hello: HelloMsg;
  /** One Float64: Date.now() when the worker last heard the standby. */
  heard: SharedArrayBuffer;
  /** The thread's nice value (-20..19; lower runs first). */
  niceness: number;
}

export type BeatsToMain =
  | { t: 'open' }
  | { t: 'lost' }
  | { t: 'refused'; code: string; reason: string }
  | { t: 'log'; level: 'warn' | 'debug'; msg: string; fields: Record<string, unknown> }
  | { t: 'ended' };

/**
 * The worker's module next to this one: the built .js, or when run from source (the tests)
 * the .ts through tsx's loader (an --import in a worker's execArgv does not reach its entry
 * module on Node 20).
 */
function startWorker(data: BeatsWorkerData): Worker {
  const options = { workerData: data, name: 'heartbeats' };
  const js = new URL('./heartbeat-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(js))) return new Worker(js, options);
  const ts = JSON.stringify(new URL('./heartbeat-worker.ts', import.meta.url).href);
  return new Worker(`import('tsx/esm/api').then((tsx) => tsx.tsImport(${ts}, ${ts}))`, { ...options, eval: true });
}

/** The heartbeat thread's nice value (see heartbeat-worker.ts). */
export const HEARTBEAT_NICENESS = -10;

export class BeatsChannel {
  readonly #worker: Worker;
  readonly #heard: Float64Array;
  #open = false;
  #ended: Promise<void>;

  /** `onState(open)`: the channel opened, or an open channel closed (or the thread ended). */
  constructor(o: { host: string; port: number; security: SecurityOptions; heartbeatMs: number; hello: HelloMsg; log: Logger; onState?: (open: boolean) => void }) {
    const shared = new SharedArrayBuffer(8);
    this.#heard = new Float64Array(shared);
    const security = o.security.kind === 'psk' ? { kind: 'psk' as const, key: new Uint8Array(o.security.key) } : o.security;
    const data: BeatsWorkerData = { host: o.host, port: o.port, security, heartbeatMs: o.heartbeatMs, hello: o.hello, heard: shared, niceness: HEARTBEAT_NICENESS };
    this.#worker = startWorker(data);
    this.#worker.unref();
    const setOpen = (open: boolean): void => {
      if (open === this.#open) return;
      this.#open = open;
      o.onState?.(open);
    };
    this.#worker.on('message', (m: BeatsToMain) => {
      if (m.t === 'open') { setOpen(true); o.log.debug('heartbeat channel open'); }
      else if (m.t === 'lost' || m.t === 'ended') setOpen(false);
      else if (m.t === 'refused') o.log.warn({ code: m.code, reason: m.reason }, 'the standby refused a heartbeat channel: heartbeats travel with the data only');
      else if (m.t === 'log') o.log[m.level](m.fields, m.msg);
    });
    this.#ended = new Promise<void>((resolve) => {
      this.#worker.once('error', (e: Error) => { o.log.warn({ err: e.message }, 'the heartbeat thread failed: heartbeats travel with the data only'); setOpen(false); resolve(); });
      this.#worker.once('exit', () => { setOpen(false); resolve(); });
    });
  }

  /** Date.now() when the standby was last heard on this channel (0: never). */
  get lastHeardAt(): number { return this.#heard[0]!; }
  get open(): boolean { return this.#open; }

  /** Closes the channel and ends the thread (cut after 2.5 s if it does not end by itself). */
  async close(reason: string): Promise<void> {
    this.#worker.postMessage({ t: 'stop', reason });
    const cut = setTimeout(() => void this.#worker.terminate(), 2500);
    cut.unref();
    await this.#ended;
    clearTimeout(cut);
  }
}
