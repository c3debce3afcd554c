// The standby: receives a primary's batches and commits each one atomically to its
// EpochStore; acknowledges an epoch only once it is durable. One primary at a time.
//
//   Link ──message──> session queue (in order) ──decode──> EpochBatch ──commit──> ack
//
// Anything wrong on a connection (a frame that does not parse, a batch that does not
// follow the committed epoch, a page count that does not add up) ends that connection
// with a logged reason and aborts its open batch: the committed epoch is untouched and
// the standby keeps serving.
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { Lz4PageDecoder, type PageDecoder } from '../codec/page-codec.js';
import { ReplicateError } from '../errors.js';
import { silentLogger, type Logger } from '../log/logger.js';
import { ReplicationMetrics } from '../metrics/metrics.js';
import { PROTOCOL_VERSION, type BeginMsg, type EndMsg, type HelloMsg, type Message, type PagesMsg } from '../protocol/messages.js';
import { writeStatusFile } from '../status/status-file.js';
import { listen, type Link, type ListeningServer } from '../transport/link.js';
import type { SecurityOptions } from '../transport/security.js';
import { EpochStore, type EpochBatch } from './epoch-store.js';

export interface StandbyOptions {
  host: string;
  /** 0 picks a free port (see `address`). */
  port: number;
  dir: string;
  security: SecurityOptions;
  heartbeatMs?: number;
  /** Hello must arrive within this long after the handshake. Default 10000. */
  helloTimeoutMs?: number;
  /** fsync every commit. Default true (an ack means durable). */
  fsync?: boolean;
  logger?: Logger;
  metrics?: ReplicationMetrics;
  decoder?: PageDecoder;
  /** How often the status file is rewritten. Default 1000. */
  statusIntervalMs?: number;
}

export interface PeerInfo { remote: string; lineage: string; pid: number; host: string; generation: number }

export interface StandbyStats {
  role: 'standby';
  pid: number;
  dir: string;
  listen: string;
  link: 'listening' | 'connected';
  peer: PeerInfo | null;
  lineage: string | null;
  generation: number;
  committedEpoch: number;
  committedAt: number;
  /** How old the committed state is: now − capture time of the committed epoch. */
  lagMs: number;
  /** Epochs committed by this process, pages and encoded bytes per commit (recent mean). */
  commits: number;
  pagesPerEpoch: number;
  bytesPerEpoch: number;
  compressionRatio: number;
  receivedBytes: number;
  rejectedConnections: number;
  lastError: string | null;
  rttMs: number;
  updatedAt: number;
}

/** Events: 'commit' ({ epoch, lineage, pages, bytes }), 'peer' ({ state, peer, reason? }), 'rejected' ({ remote, reason }), 'error'. */
export class Standby extends EventEmitter {
  readonly dir: string;
  readonly #o: StandbyOptions;
  readonly #log: Logger;
  readonly metrics: ReplicationMetrics;
  readonly #decoder: PageDecoder;
  #store!: EpochStore;
  #server!: ListeningServer;
  #session: Session | undefined;
  #capturedAt = 0;
  #commits = 0;
  #recent: Array<{ pages: number; bytes: number }> = [];
  #raw = 0;
  #wire = 0;
  #rejected = 0;
  #lastError: string | null = null;
  #statusTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #statusAt = 0;

  private constructor(o: StandbyOptions) {
    super();
    this.#o = o;
    this.dir = o.dir;
    this.#log = (o.logger ?? silentLogger).child({ role: 'standby' });
    this.metrics = o.metrics ?? new ReplicationMetrics('standby', { defaults: false });
    this.#decoder = o.decoder ?? new Lz4PageDecoder();
  }

  static async start(o: StandbyOptions): Promise<Standby> {
    if (!o.dir) throw new ReplicateError('INVALID_ARGUMENT', 'dir is required (where the standby keeps the committed epoch)');
    const s = new Standby(o);
    s.#store = await EpochStore.open(o.dir, { fsync: o.fsync ?? true });
    const c = s.#store.committed;
    if (c) {
      s.#log.info({ epoch: c.epoch, lineage: c.lineage, pages: c.pages }, 'committed epoch found on disk');
      s.metrics.committedEpoch.set(c.epoch);
    }
    try {
      s.#server = await listen(
        { host: o.host, port: o.port, security: o.security, heartbeatMs: o.heartbeatMs ?? 50 },
        (link) => s.#onLink(link),
      );
    } catch (e) {
      await s.#store.close();
      throw e;
    }
    s.#server.on('rejected', (r: { remote: string; reason: string }) => s.#reject(r.remote, r.reason));
    s.#log.info({ address: s.address }, 'standby listening');
    s.#statusTimer = setInterval(() => void s.#writeStatus(), o.statusIntervalMs ?? 1000);
    s.#statusTimer.unref();
    await s.#writeStatus();
    return s;
  }

  get address(): string { return this.#server.address; }
  get port(): number { return this.#server.port; }
  get store(): EpochStore { return this.#store; }

  stats(): StandbyStats {
    const c = this.#store.committed;
    const n = this.#recent.length || 1;
    return {
      role: 'standby', pid: process.pid, dir: this.dir, listen: this.address,
      link: this.#session ? 'connected' : 'listening', peer: this.#session?.peer ?? null,
      lineage: c?.lineage ?? null, generation: c?.generation ?? 0, committedEpoch: c?.epoch ?? 0, committedAt: c?.committedAt ?? 0,
      lagMs: this.#capturedAt ? Date.now() - this.#capturedAt : 0,
      commits: this.#commits,
      pagesPerEpoch: this.#recent.reduce((s, r) => s + r.pages, 0) / n,
      bytesPerEpoch: this.#recent.reduce((s, r) => s + r.bytes, 0) / n,
      compressionRatio: this.#wire > 0 ? this.#raw / this.#wire : 0,
      receivedBytes: this.#wire, rejectedConnections: this.#rejected, lastError: this.#lastError,
      rttMs: this.#session?.link.rttMs ?? 0, updatedAt: Date.now(),
    };
  }

  async stop(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#statusTimer) clearInterval(this.#statusTimer);
    await this.#server.close();
    await this.#session?.finished;
    await this.#writeStatus(false);
    await this.#store.close();
  }

  async #writeStatus(running = true): Promise<void> {
    this.#statusAt = Date.now();
    try {
      await writeStatusFile(join(this.dir, 'status.json'), { ...this.stats(), running });
    } catch (e) {
      this.#log.warn({ err: (e as Error).message }, 'cannot write status.json');
    }
  }

  #reject(remote: string, reason: string): void {
    this.#rejected++;
    this.#lastError = `${remote}: ${reason}`;
    this.#log.warn({ remote, reason }, 'connection rejected');
    this.emit('rejected', { remote, reason });
  }

  #onLink(link: Link): void {
    if (this.#closed) { link.close('standby stopping'); return; }
    const session = new Session(this, link);
    session.finished = session.run().then(
      () => undefined,
      (e: Error) => { this.#reject(link.remote, e.message); },
    ).finally(() => {
      if (this.#session === session) {
        this.#session = undefined;
        this.emit('peer', { state: 'disconnected', peer: session.peer, reason: session.endReason });
        this.#log.warn({ reason: session.endReason }, 'primary disconnected');
        void this.#writeStatus();
      }
      link.close(session.endReason || 'session ended');
    });
  }

  // --- used by Session -------------------------------------------------------------

  /** Admits a primary after hello, or says why not. */
  admit(session: Session, hello: HelloMsg): { ok: true } | { ok: false; code: string; reason: string } {
    if (hello.proto !== PROTOCOL_VERSION) return { ok: false, code: 'VERSION', reason: `protocol ${hello.proto} is not spoken here (we speak ${PROTOCOL_VERSION})` };
    const c = this.#store.committed;
    if (c && hello.generation < c.generation)
      return { ok: false, code: 'STALE_GENERATION', reason: `generation ${hello.generation} is older than this standby's ${c.generation}: a newer primary took over` };
    const current = this.#session;
    if (current && current !== session) {
      const silentMs = Date.now() - current.link.lastHeardAt;
      if (silentMs < 3 * (this.#o.heartbeatMs ?? 50) + 1000)
        return { ok: false, code: 'BUSY', reason: `another primary (${current.peer?.host ?? '?'} pid ${current.peer?.pid ?? '?'}) is connected and alive` };
      this.#log.warn({ silentMs }, 'replacing a silent primary connection');
      current.link.close('replaced by a new connection');
    }
    this.#session = session;
    this.emit('peer', { state: 'connected', peer: session.peer });
    this.#log.info({ peer: session.peer }, 'primary connected');
    void this.#writeStatus();
    return { ok: true };
  }

  welcome(): Message {
    const c = this.#store.committed;
    return { t: 'welcome', proto: PROTOCOL_VERSION, lineage: c?.lineage ?? null, generation: c?.generation ?? 0, committedEpoch: c?.epoch ?? 0 };
  }

  begin(peer: PeerInfo, m: BeginMsg): EpochBatch {
    return this.#store.begin({ lineage: peer.lineage, generation: peer.generation, epoch: m.epoch, base: m.base, full: m.full });
  }

  async addPages(batch: EpochBatch, m: PagesMsg): Promise<number> {
    const d = await this.#decoder.decode(m);
    if (d.addrs.length) await batch.addPages(d.addrs, d.pages);
    if (d.zeros.length) await batch.addZeroPages(d.zeros);
    const wire = m.data.length + m.addrs.length + m.zeros.length;
    this.#raw += (d.addrs.length + d.zeros.length) * 4096;
    this.#wire += wire;
    this.metrics.receivedBytes.inc(wire);
    return wire;
  }

  async commit(batch: EpochBatch, m: EndMsg, wire: number): Promise<void> {
    const c = await batch.commit(m.state, { committedAt: Date.now() });
    this.#capturedAt = m.capturedAt;
    this.#commits++;
    this.#recent.push({ pages: m.pages, bytes: wire });
    if (this.#recent.length > 64) this.#recent.shift();
    this.metrics.committedEpoch.set(c.epoch);
    this.metrics.epochs.inc();
    this.metrics.lag.set(Math.max(0, Date.now() - m.capturedAt) / 1000);
    this.emit('commit', { epoch: c.epoch, lineage: c.lineage, pages: m.pages, bytes: wire });
    if (Date.now() - this.#statusAt > 250) void this.#writeStatus();
  }

  get helloTimeoutMs(): number { return this.#o.helloTimeoutMs ?? 10_000; }
  get log(): Logger { return this.#log; }
}

/** One connection from a primary: messages are handled strictly in order. */
class Session {
  readonly standby: Standby;
  readonly link: Link;
  peer: PeerInfo | null = null;
  endReason = '';
  finished: Promise<void> = Promise.resolve();
  #queue: Message[] = [];
  #wake: (() => void) | undefined;
  #closed = false;
  #queuedBytes = 0;
  #paused = false;

  constructor(standby: Standby, link: Link) {
    this.standby = standby;
    this.link = link;
    link.on('message', (m: Message) => {
      if (m.t === 'hb') return;
      this.#queue.push(m);
      if (m.t === 'pages') {
        this.#queuedBytes += m.data.length;
        // Decoding and writing are slower than the socket on a fast link: stop reading
        // rather than buffer without bound.
        if (this.#queuedBytes > 64 * 2 ** 20 && !this.#paused) { this.#paused = true; link.pause(); }
      }
      this.#wake?.();
    });
    link.once('close', (c: { reason: string }) => {
      this.#closed = true;
      if (!this.endReason) this.endReason = c.reason;
      this.#wake?.();
    });
  }

  async #next(timeoutMs?: number): Promise<Message | null> {
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    while (this.#queue.length === 0) {
      if (this.#closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no hello within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        if (Number.isFinite(left)) setTimeout(resolve, left).unref();
      });
      this.#wake = undefined;
    }
    const m = this.#queue.shift()!;
    if (m.t === 'pages') {
      this.#queuedBytes -= m.data.length;
      if (this.#paused && this.#queuedBytes < 16 * 2 ** 20) { this.#paused = false; this.link.resume(); }
    }
    return m;
  }

  #fail(reason: string): never {
    this.endReason = reason;
    throw new Error(reason);
  }

  async run(): Promise<void> {
    const s = this.standby;
    const hello = await this.#next(s.helloTimeoutMs);
    if (!hello) return;
    if (hello.t !== 'hello') this.#fail(`protocol error: expected hello, got ${hello.t}`);
    this.peer = { remote: this.link.remote, lineage: hello.lineage, pid: hello.pid, host: hello.host, generation: hello.generation };
    const verdict = s.admit(this, hello);
    if (!verdict.ok) {
      await this.link.send({ t: 'refuse', code: verdict.code, reason: verdict.reason }).catch(() => undefined);
      this.#fail(`refused: ${verdict.reason}`);
    }
    await this.link.send(s.welcome());
    let batch: EpochBatch | undefined;
    let begin: BeginMsg | undefined;
    let wire = 0;
    try {
      for (;;) {
        const m = await this.#next();
        if (!m) return;
        switch (m.t) {
          case 'begin':
            if (batch) this.#fail('protocol error: begin inside an open batch');
            try { batch = s.begin(this.peer, m); } catch (e) { this.#fail(`batch refused: ${(e as Error).message}`); }
            begin = m; wire = 0;
            break;
          case 'pages':
            if (!batch || !begin) this.#fail('protocol error: pages outside a batch');
            if (m.epoch !== begin.epoch) this.#fail(`protocol error: pages for epoch ${m.epoch} inside batch ${begin.epoch}`);
            try { wire += await s.addPages(batch, m); } catch (e) { this.#fail(`bad pages: ${(e as Error).message}`); }
            break;
          case 'end': {
            if (!batch || !begin) this.#fail('protocol error: end outside a batch');
            if (m.epoch !== begin.epoch) this.#fail(`protocol error: end of epoch ${m.epoch} closes batch ${begin.epoch}`);
            if (m.pages !== batch.pages) this.#fail(`batch ${m.epoch}: ${batch.pages} pages arrived, ${m.pages} were sent`);
            const b = batch;
            batch = undefined;
            try { await s.commit(b, m, wire); } catch (e) { this.#fail(`commit of epoch ${m.epoch} failed: ${(e as Error).message}`); }
            await this.link.send({ t: 'ack', epoch: m.epoch, committedAt: Date.now() }).catch(() => undefined);
            break;
          }
          case 'bye':
            this.endReason = `primary said bye: ${m.reason}`;
            return;
          default:
            this.#fail(`protocol error: unexpected ${m.t}`);
        }
      }
    } finally {
      if (batch) await batch.abort().catch((e: Error) => s.log.error({ err: e.message }, 'aborting a batch failed'));
    }
  }
}

/** Starts a standby; see Standby. */
export function standby(options: StandbyOptions): Promise<Standby> {
  return Standby.start(options);
}
