// A page server for CRIU's lazy-pages daemon (`criu lazy-pages --page-server`), serving pages
// from our own page store instead of a dumping CRIU. See docs/lazy-pages.md.
//
//   criu lazy-pages ──TCP (or --ps-socket)──> LazyPageServer ──read(addr, n, pid)──> LazyPageSource
//        │  PS_IOV_GET {n, vaddr, pid}  ─────────>
//        │  <───────── PS_IOV_ADD_F|PE_PRESENT {n, vaddr, pid} + n * 4096 bytes
//        │  ... (faults: 1 page; background: 16 pages growing to 1024) ...
//        │  PS_IOV_CLOSE  ─────────>  <───────── i32 0        (every page transferred)
//
// The daemon matches answers to its requests in order (a FIFO), so requests are answered
// strictly one after the other on a connection, each completely before the next starts.
import net, { type Server } from 'node:net';
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import type { LazyPageSource } from './page-source.js';
import { cmdName, decodeHeader, encodeHeader, encodeStatus, HEADER_SIZE, PAGE_SIZE, PE_PRESENT, PsCmd, type PsHeader } from './protocol.js';

export interface LazyPageServerOptions {
  source: LazyPageSource;
  /** Address to listen on; loopback by default (the daemon runs on this host). */
  host?: string;
  /** TCP port; 0 (default) picks a free one: read it from `port` after listen(). */
  port?: number;
  /** Largest request accepted, in pages (a larger one is a protocol error). Default 1 Mi pages (4 GiB). */
  maxRequestPages?: number;
  /** Pages read from the source and sent at a time within one answer. Default 1024 (4 MiB). */
  chunkPages?: number;
  /** Called on every protocol or source error (the connection is then dropped). */
  onError?: (err: Error) => void;
}

export interface LazyPageServerStats {
  /** Connections accepted (or streams given to serve()). */
  connections: number;
  /** PS_IOV_GET requests answered. */
  requests: number;
  /** Of those, one-page requests: the daemon's answers to page faults (background transfers ask for 16+). */
  singlePageRequests: number;
  /** Pages sent. */
  pagesServed: number;
  /** Largest request seen, in pages. */
  largestRequest: number;
  /** PS_IOV_CLOSE / PS_IOV_FORCE_CLOSE received: the daemon has transferred everything. */
  closes: number;
  /** Protocol or source errors (each dropped its connection). */
  errors: number;
  /** performance.now() of the first request and of the end of the last answer. */
  firstRequestAt: number | undefined;
  lastAnswerAt: number | undefined;
  /** performance.now() when the first PS_IOV_CLOSE arrived. */
  closedAt: number | undefined;
}

/** Longest run of answers between two turns of the event loop. */
const YIELD_AFTER_MS = 2;

export class LazyPageServerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LazyPageServerError';
  }
}

export class LazyPageServer {
  readonly #source: LazyPageSource;
  readonly #maxRequestPages: number;
  readonly #chunkPages: number;
  readonly #onError: ((err: Error) => void) | undefined;
  readonly #streams = new Set<Duplex>();
  /** Reused chunk buffers (chunkPages pages each), for sources with readInto. */
  readonly #pool: Buffer[] = [];
  #server: Server | undefined;
  #host = '';
  #port = 0;
  #closed = false;
  #finished!: () => void;
  #failed!: (err: Error) => void;
  readonly #stats: LazyPageServerStats = {
    connections: 0, requests: 0, singlePageRequests: 0, pagesServed: 0, largestRequest: 0,
    closes: 0, errors: 0, firstRequestAt: undefined, lastAnswerAt: undefined, closedAt: undefined,
  };
  /**
   * Settles when the first connection ends: resolves when the daemon said PS_IOV_CLOSE (it has
   * transferred every page, or the processes are gone), rejects when a connection failed first
   * (protocol error, source error, the daemon hung up without CLOSE).
   */
  readonly finished: Promise<void>;

  constructor(options: LazyPageServerOptions) {
    if (!options || typeof options.source?.read !== 'function') throw new TypeError('LazyPageServer: a source with read(addr, nrPages, pid) is needed');
    this.#source = options.source;
    this.#maxRequestPages = options.maxRequestPages ?? 1 << 20;
    this.#chunkPages = Math.max(1, Math.floor(options.chunkPages ?? 1024));
    this.#onError = options.onError;
    this.#host = options.host ?? '127.0.0.1';
    this.#port = options.port ?? 0;
    this.finished = new Promise<void>((resolve, reject) => {
      this.#finished = resolve;
      this.#failed = reject;
    });
    // Nobody may be waiting on it; do not let a rejection go unhandled.
    this.finished.catch(() => undefined);
  }

  #takeBuffer(): Buffer {
    return this.#pool.pop() ?? Buffer.allocUnsafeSlow(this.#chunkPages * PAGE_SIZE);
  }

  #giveBuffer(b: Buffer): void {
    if (this.#pool.length < 8) this.#pool.push(b);
  }

  /** Creates a server listening on host:port (loopback, a free port by default). */
  static async listen(options: LazyPageServerOptions): Promise<LazyPageServer> {
    const s = new LazyPageServer(options);
    await s.listen();
    return s;
  }

  async listen(): Promise<void> {
    if (this.#server) throw new LazyPageServerError('already listening');
    if (this.#closed) throw new LazyPageServerError('closed');
    const server = net.createServer((sock) => this.serve(sock));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#port, this.#host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const a = server.address();
    if (a && typeof a === 'object') this.#port = a.port;
  }

  get host(): string {
    return this.#host;
  }

  get port(): number {
    return this.#port;
  }

  /** A snapshot of the counters. */
  get stats(): LazyPageServerStats {
    return { ...this.#stats };
  }

  /**
   * Serves one connected stream: a TCP connection accepted by listen(), or the parent's end of
   * a socket pair whose other end the daemon got with --ps-socket.
   */
  serve(stream: Duplex): void {
    if (this.#closed) {
      stream.destroy();
      return;
    }
    this.#stats.connections++;
    this.#streams.add(stream);
    if (stream instanceof net.Socket) stream.setNoDelay(true);

    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const queue: PsHeader[] = [];
    let running = false;
    let done = false; // CLOSE answered, or failed
    let drainWaiter: (() => void) | undefined;

    const fail = (err: Error): void => {
      if (done) return;
      done = true;
      this.#stats.errors++;
      this.#onError?.(err);
      this.#failed(err);
      stream.destroy();
    };

    const waitDrain = (): Promise<void> =>
      new Promise<void>((resolve) => {
        drainWaiter = resolve;
      });
    stream.on('drain', () => {
      const w = drainWaiter;
      drainWaiter = undefined;
      w?.();
    });

    const send = async (b: Buffer): Promise<void> => {
      if (!stream.write(b)) await waitDrain();
    };

    const answerGet = async (h: PsHeader): Promise<void> => {
      if (h.nrPages === 0n || h.nrPages > BigInt(this.#maxRequestPages))
        throw new LazyPageServerError(`PS_IOV_GET of ${h.nrPages} pages at 0x${h.vaddr.toString(16)} (accepted: 1..${this.#maxRequestPages})`);
      if (h.vaddr % BigInt(PAGE_SIZE) !== 0n) throw new LazyPageServerError(`PS_IOV_GET at unaligned address 0x${h.vaddr.toString(16)}`);
      const n = Number(h.nrPages);
      const pid = Number(BigInt.asIntN(32, h.dstId));
      this.#stats.firstRequestAt ??= performance.now();
      // The answer: the same request as "pages added, present", then the data; the header
      // and the first chunk leave in one write.
      const header = encodeHeader({ cmd: PsCmd.ADD_F, flags: PE_PRESENT, nrPages: h.nrPages, vaddr: h.vaddr, dstId: h.dstId });
      for (let sent = 0; sent < n; sent += this.#chunkPages) {
        const k = Math.min(this.#chunkPages, n - sent);
        const addr = h.vaddr + BigInt(sent) * BigInt(PAGE_SIZE);
        let data: Buffer;
        let pooled: Buffer | undefined;
        if (this.#source.readInto) {
          pooled = this.#takeBuffer();
          data = pooled.subarray(0, k * PAGE_SIZE);
          const r = this.#source.readInto(data, addr, k, pid);
          if (r instanceof Promise) await r;
        } else {
          const r = this.#source.read(addr, k, pid);
          data = r instanceof Promise ? await r : r;
          if (!Buffer.isBuffer(data) || data.length !== k * PAGE_SIZE)
            throw new LazyPageServerError(`source gave ${Buffer.isBuffer(data) ? data.length : typeof data} bytes for ${k} pages at 0x${addr.toString(16)}`);
        }
        if (stream.destroyed) return;
        // A pooled buffer goes back once the stream is done with it.
        const release = pooled ? (): void => this.#giveBuffer(pooled) : undefined;
        let ok: boolean;
        if (sent === 0) {
          stream.cork();
          stream.write(header);
          ok = stream.write(data, release);
          stream.uncork();
        } else {
          ok = stream.write(data, release);
        }
        if (!ok) await waitDrain();
      }
      this.#stats.requests++;
      if (n === 1) this.#stats.singlePageRequests++;
      this.#stats.pagesServed += n;
      if (n > this.#stats.largestRequest) this.#stats.largestRequest = n;
      this.#stats.lastAnswerAt = performance.now();
    };

    const pump = async (): Promise<void> => {
      if (running) return;
      running = true;
      try {
        let slice = performance.now();
        while (queue.length > 0 && !done && !stream.destroyed) {
          // Answers from memory never wait: without a turn of the event loop now and then,
          // streaming a large process would hold up everything else in this process (a
          // promotion's last steps, its health check) until the transfer ends.
          if (performance.now() - slice > YIELD_AFTER_MS) {
            await new Promise<void>((r) => setImmediate(r));
            slice = performance.now();
          }
          const h = queue.shift()!;
          switch (h.cmd) {
            case PsCmd.GET:
              await answerGet(h);
              break;
            case PsCmd.CLOSE:
            case PsCmd.FORCE_CLOSE:
              // The daemon waits for this status before it goes away.
              await send(encodeStatus(0));
              this.#stats.closes++;
              this.#stats.closedAt ??= performance.now();
              done = true;
              this.#finished();
              stream.end();
              break;
            default:
              // OPEN/ADD/HOLE/PARENT come from a dumping CRIU sending pages: not what this serves.
              throw new LazyPageServerError(`unexpected command ${cmdName(h.cmd)} (flags 0x${h.flags.toString(16)}): this server only answers PS_IOV_GET`);
          }
        }
      } catch (e) {
        fail(e instanceof Error ? e : new Error(String(e)));
      } finally {
        running = false;
      }
    };

    stream.on('data', (chunk: Buffer) => {
      if (done) return;
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes < HEADER_SIZE) return;
      let buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
      let at = 0;
      while (buf.length - at >= HEADER_SIZE) {
        queue.push(decodeHeader(buf, at));
        at += HEADER_SIZE;
      }
      buf = buf.subarray(at);
      pending = buf.length > 0 ? [Buffer.from(buf)] : [];
      pendingBytes = buf.length;
      void pump();
    });
    stream.on('error', (e) => fail(e));
    stream.on('close', () => {
      this.#streams.delete(stream);
      drainWaiter?.();
      drainWaiter = undefined;
      if (!done) fail(new LazyPageServerError(`the daemon hung up without PS_IOV_CLOSE (${queue.length} requests unanswered)`));
    });
  }

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#streams) s.destroy();
    this.#streams.clear();
    const server = this.#server;
    this.#server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    this.#failed(new LazyPageServerError('the page server was closed'));
  }
}

