// The primary agent: protects one process by streaming its epochs to a standby.
//
//   Tracker ──capture──> EpochQueue ──coalesced batch──> encode ──frames──> Link ──> standby
//      ^ epoch loop, every epochMs                        (LZ4, off-thread)     <── ack
//
// A session is one connection: hello/welcome, a full synchronisation (every page, read
// while the target runs, then one frozen epoch on top so that the result is
// consistent), then batches until the link fails. Then the target keeps running, the
// agent reconnects with back-off and starts a new session with a full synchronisation.
import { EventEmitter } from 'node:events';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeltaPageEncoder, type DeltaEncoderTotals } from '../codec/delta-codec.js';
import type { PageEncoder } from '../codec/page-codec.js';
import { locateCriu } from '../criu/locate.js';
import { ReplicateError } from '../errors.js';
import { silentLogger, type Logger } from '../log/logger.js';
import { ReplicationMetrics } from '../metrics/metrics.js';
import { keepAliveMs, PROTOCOL_VERSION, standbyBeatsMs, type EndMsg, type EpochState, type HelloMsg, type Message, type WelcomeMsg } from '../protocol/messages.js';
import { stateDelta } from '../protocol/state-delta.js';
import { connect, type Link } from '../transport/link.js';
import { TransportError } from '../transport/errors.js';
import type { SecurityOptions } from '../transport/security.js';
import { Tracker, type TrackerOptions } from '../tracker/tracker.js';
import { Percentiles } from '../util/stats.js';
import { basePieces, checkNoChildren, describeChange, fingerprint, removeBase, takeBase, type BaseImage } from './base-image.js';
import { chunkRanges, EpochQueue, PAGE_SIZE, type Batch, type CapturedEpoch } from './epoch-queue.js';
import { BeatsChannel } from './beats-channel.js';
import { EpochLoop, type CaptureInfo } from './epoch-loop.js';

export interface PrimaryOptions {
  pid: number;
  /** The standby's address. */
  host: string;
  port: number;
  security: SecurityOptions;
  /** Epoch length, 10 ms to 1 h. Default 100. */
  epochMs?: number;
  backend?: TrackerOptions['backend'];
  /** Bytes of captured pages the queue may hold before captures are skipped. Default 256 MiB. */
  highWaterBytes?: number;
  /** Heartbeat interval on the link. Default 50. */
  heartbeatMs?: number;
  /**
   * A second connection for heartbeats only (default true): the standby then detects a dead
   * primary in the same time whatever data is queued on the first. False: heartbeats travel
   * with the data.
   */
  heartbeatChannel?: boolean;
  /** Reconnection back-off, doubling from min to max with jitter. Default 100 and 5000. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Batches sent and not yet acknowledged before the sender waits. Default 2. */
  maxInFlight?: number;
  /** Pages per `pages` frame. Default 256 (1 MiB raw). */
  framePages?: number;
  /**
   * Take CRIU base images (needed for failover: the standby restores epochs on top of
   * one). Default true. Without them the standby has the memory but cannot restore it.
   */
  baseImage?: boolean;
  /** CRIU binary (default: REPLICATE_CRIU, the project's build, PATH). */
  criu?: string;
  /** Where base images are dumped before they are sent. Default $TMPDIR/remus-replicate-<pid>. */
  workDir?: string;
  /**
   * Stop (SIGKILL) the target once the standby has been unreachable this long: past that
   * the standby may have promoted, and two copies must not both serve. Default: never.
   */
  selfFenceAfterMs?: number;
  /** Bytes of last-sent page versions kept for deltas (the shadow cache). Default 64 MiB. */
  shadowCacheBytes?: number;
  logger?: Logger;
  metrics?: ReplicationMetrics;
  encoder?: PageEncoder;
}

export type LinkState = 'connecting' | 'syncing' | 'streaming' | 'disconnected' | 'stopped';

export interface SyncProgress { sentPages: number; totalPages: number; bytes: number }
export interface CommitInfo { epoch: number; lagMs: number; pages: number; bytes: number }

export interface PrimaryStats {
  role: 'primary';
  pid: number;
  lineage: string;
  generation: number;
  backend: string;
  link: LinkState;
  standby: string;
  epochMs: number;
  capturedEpoch: number;
  committedEpoch: number;
  /** Epochs captured and not committed yet. */
  lagEpochs: number;
  /** Bytes captured and not committed yet (queued or in flight, raw). */
  lagBytes: number;
  /** Age of the oldest captured epoch not committed yet. */
  lagMs: number;
  pauseMs: { p50: number; p99: number; max: number };
  /** Pages and encoded bytes per committed batch (recent mean). */
  pagesPerEpoch: number;
  bytesPerEpoch: number;
  /** Raw bytes / encoded bytes over the session. */
  compressionRatio: number;
  sentBytes: number;
  syncs: number;
  /** New base images taken because the target's resources changed. */
  rebases: number;
  /** The current base image (empty without base images). */
  base: string;
  reconnects: number;
  /** The heartbeat channel (a connection of its own, on a thread of its own) is open. */
  heartbeatChannel: boolean;
  queue: ReturnType<EpochQueue['stats']>;
  rttMs: number;
  startedAt: number;
  /** Pages encoded over the session by kind (delta codec only): `unchanged` is a delta of length 0. */
  codec?: { pages: number; zero: number; full: number; delta: number; unchanged: number };
}

interface InFlight {
  /** Batch number (what the standby commits). */
  epoch: number;
  /** Newest capture (tracker epoch) in the batch. */
  lastCapture: number;
  capturedAt: number;
  rawBytes: number;
  wireBytes: number;
  pages: number;
}

/**
 * A running protection. Events: 'link' (LinkState), 'sync-progress' (SyncProgress),
 * 'synced' ({ epoch, pages, ms }), 'epoch' (CaptureInfo), 'commit' (CommitInfo),
 * 'lag' (lagMs), 'standby-lost' ({ reason, retryInMs }), 'rebase' ({ base, dumpMs, bytes }),
 * 'fenced' ({ reason }: the target was stopped by self-fencing), 'target-exit' (Error), 'error' (Error).
 */
export class Primary extends EventEmitter {
  readonly pid: number;
  readonly lineage = randomUUID();
  readonly generation: number = 1;
  readonly #o: Required<Omit<PrimaryOptions, 'logger' | 'metrics' | 'encoder' | 'backend' | 'criu' | 'workDir' | 'selfFenceAfterMs' | 'shadowCacheBytes'>> & Pick<PrimaryOptions, 'backend' | 'criu' | 'workDir' | 'selfFenceAfterMs'>;
  readonly #log: Logger;
  readonly metrics: ReplicationMetrics;
  readonly #encoder: PageEncoder;
  #tracker!: Tracker;
  #queue: EpochQueue;
  #loop!: EpochLoop;
  #link: Link | undefined;
  /** The heartbeat channel of the current session (HelloMsg.channel), while connected. */
  #beats: BeatsChannel | undefined;
  #state: LinkState = 'connecting';
  #stopping = false;
  #stopped: Promise<void> | undefined;
  #abort = new AbortController();
  #run: Promise<void> | undefined;
  #inFlight: InFlight[] = [];
  #ackWaiters: Array<() => void> = [];
  #committed = 0;
  #committedCapture = 0;
  #lastSent = 0;
  /** The whole state of the last batch sent on `link`, what the next batch's state is a delta from. */
  #prevState: { link: Link; state: EpochState } | undefined;
  #batchSeq = 0;
  #base: BaseImage | undefined;
  #criu: string | undefined;
  #workDir = '';
  #rebases = 0;
  #pauses = new Percentiles(1024);
  #recent: Array<{ pages: number; bytes: number }> = [];
  #raw = 0;
  #wire = 0;
  #syncs = 0;
  #reconnects = 0;
  #everSynced = false;
  #lastContact = 0;
  #startedAt = Date.now();

  private constructor(options: PrimaryOptions) {
    super();
    this.pid = options.pid;
    this.#o = {
      pid: options.pid, host: options.host, port: options.port, security: options.security,
      epochMs: options.epochMs ?? 100, backend: options.backend, highWaterBytes: options.highWaterBytes ?? 256 * 2 ** 20,
      heartbeatMs: options.heartbeatMs ?? 50, heartbeatChannel: options.heartbeatChannel ?? true, reconnectMinMs: options.reconnectMinMs ?? 100, reconnectMaxMs: options.reconnectMaxMs ?? 5000,
      maxInFlight: options.maxInFlight ?? 2, framePages: options.framePages ?? 256,
      baseImage: options.baseImage ?? true, criu: options.criu, workDir: options.workDir, selfFenceAfterMs: options.selfFenceAfterMs,
    };
    this.#log = (options.logger ?? silentLogger).child({ role: 'primary', target: options.pid });
    this.metrics = options.metrics ?? new ReplicationMetrics('primary', { defaults: false });
    this.#encoder = options.encoder ?? new DeltaPageEncoder({ maxBytes: options.shadowCacheBytes });
    this.#queue = new EpochQueue({ highWaterBytes: this.#o.highWaterBytes });
  }

  /** Attaches to the target (tracking armed) and starts replicating in the background. */
  static async start(options: PrimaryOptions): Promise<Primary> {
    validate(options);
    const p = new Primary(options);
    if (p.#o.baseImage) {
      const criu = await locateCriu(options.criu);
      if (!criu.versionOk || !criu.checkOk)
        throw new ReplicateError('CRIU_UNAVAILABLE', `CRIU at ${criu.path} is not usable (version ${criu.version}${criu.checkOk ? '' : ', `criu check` failed'}): failover needs CRIU 4.2+; run \`replicate check\`, or pass baseImage: false (--no-base-image) to replicate without failover`);
      p.#criu = criu.path;
      p.#workDir = options.workDir ?? join(tmpdir(), `remus-replicate-${process.pid}-${options.pid}`);
      if (!options.workDir) await removeStaleWorkDirs(tmpdir());
      await mkdir(p.#workDir, { recursive: true, mode: 0o700 });
    }
    p.#tracker = await Tracker.attach(options.pid, { backend: options.backend });
    p.#log.info({ backend: p.#tracker.backend, reason: p.#tracker.backendReason }, 'tracking armed');
    p.#loop = new EpochLoop(p.#tracker, p.#queue, { epochMs: p.#o.epochMs });
    p.#loop.on('capture', (c: CaptureInfo) => p.#onCapture(c));
    p.#loop.on('error', (e: Error) => p.#onTrackerError(e));
    p.#run = p.#main();
    if (p.#o.selfFenceAfterMs !== undefined) p.#watchSelfFence(p.#o.selfFenceAfterMs);
    return p;
  }

  get state(): LinkState { return this.#state; }

  /**
   * Self-fencing: once the standby has been silent for `afterMs` (after a first
   * synchronisation), it may have promoted: stop the target so that two copies never serve.
   */
  #watchSelfFence(afterMs: number): void {
    const timer = setInterval(() => {
      if (this.#stopping) { clearInterval(timer); return; }
      if (!this.#everSynced) return;
      const heard = Math.max(this.#lastContact, this.#link?.lastHeardAt ?? 0, this.#beats?.lastHeardAt ?? 0);
      if (Date.now() - heard < afterMs) return;
      clearInterval(timer);
      this.#fence(`the standby has been unreachable for ${Date.now() - heard} ms (self-fence after ${afterMs} ms)`);
    }, Math.min(100, Math.max(10, afterMs / 10)));
    timer.unref();
  }

  /** Stops the target for good (SIGKILL) and replication with it. */
  #fence(reason: string): void {
    this.#log.error({ reason }, 'self-fencing: stopping the target so that only the standby\'s copy serves');
    try { process.kill(this.pid, 'SIGKILL'); } catch { /* already gone */ }
    this.emit('fenced', { reason });
    void this.stop();
  }
  get committedEpoch(): number { return this.#committed; }

  stats(): PrimaryStats {
    const n = this.#recent.length || 1;
    return {
      role: 'primary', pid: this.pid, lineage: this.lineage, generation: this.generation, backend: this.#tracker.backend,
      link: this.#state, standby: `${this.#o.host}:${this.#o.port}`, epochMs: this.#o.epochMs,
      capturedEpoch: this.#loop.lastSeq, committedEpoch: this.#committed,
      lagEpochs: Math.max(0, this.#loop.lastSeq - this.#committedCapture),
      lagBytes: this.#queue.pendingBytes + this.#inFlight.reduce((s, f) => s + f.rawBytes, 0),
      lagMs: this.#lagMs(),
      pauseMs: { p50: this.#pauses.p(50), p99: this.#pauses.p(99), max: this.#pauses.max() },
      pagesPerEpoch: this.#recent.reduce((s, r) => s + r.pages, 0) / n,
      bytesPerEpoch: this.#recent.reduce((s, r) => s + r.bytes, 0) / n,
      compressionRatio: this.#wire > 0 ? this.#raw / this.#wire : 0,
      sentBytes: this.#wire, syncs: this.#syncs, rebases: this.#rebases, base: this.#base?.id ?? '', reconnects: this.#reconnects, heartbeatChannel: this.#beats?.open ?? false, queue: this.#queue.stats(),
      rttMs: this.#link?.rttMs ?? 0, startedAt: this.#startedAt,
      ...(this.#encoder instanceof DeltaPageEncoder ? { codec: pickCodecTotals(this.#encoder.totals) } : {}),
    };
  }

  /** Stops replicating: the target keeps running, untouched; the standby keeps its last commit. */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      this.#stopping = true;
      // The heartbeat channel first, before anything closes the data connection: the
      // standby reads this goodbye at once, whereas the one on the data connection may wait
      // behind pages it has not read yet, and the channel's silence meanwhile looks like death.
      // At most a second: a standby that does not answer must not hold the stop up.
      if (this.#beats) await Promise.race([this.#beats.close('primary stopping'), sleep(1000, undefined, { ref: false })]);
      this.#abort.abort();
      await this.#loop.stop();
      this.#link?.close('primary stopping');
      await this.#run?.catch(() => undefined);
      this.#queue.clear();
      await this.#tracker.close();
      (this.#encoder as { close?: () => void }).close?.();
      if (this.#base) await removeBase(this.#base).catch(() => undefined);
      if (this.#workDir) await rm(this.#workDir, { recursive: true, force: true }).catch(() => undefined);
      this.#setState('stopped');
    })();
    return this.#stopped;
  }

  #setState(s: LinkState): void {
    if (this.#state === s) return;
    this.#state = s;
    this.emit('link', s);
  }

  #lagMs(): number {
    // The oldest epoch captured and not committed: the first in flight, or, if none
    // is in flight, the oldest still queued (its time is not kept: use the batch's).
    const oldest = this.#inFlight[0]?.capturedAt;
    if (oldest !== undefined) return Date.now() - oldest;
    return this.#queue.pendingEpochs > 0 ? this.#o.epochMs : 0;
  }

  #onCapture(c: CaptureInfo): void {
    this.#pauses.add(c.pauseMs);
    this.metrics.pause.observe(c.pauseMs / 1000);
    this.metrics.dirtyPages.inc(c.pages);
    this.metrics.epochs.inc();
    this.emit('epoch', c);
  }

  #onTrackerError(e: Error): void {
    const gone = e instanceof ReplicateError && (e.code === 'TARGET_GONE');
    if (gone) {
      this.#log.warn({ err: e.message }, 'the target exited; replication stops');
      this.#link?.close('target-exited');
      this.emit('target-exit', e);
    } else {
      this.#log.error({ err: e.message }, 'capture failed; replication stops');
      this.emit('error', e);
    }
    void this.stop();
  }

  async #main(): Promise<void> {
    let delay = this.#o.reconnectMinMs;
    while (!this.#stopping) {
      this.#setState('connecting');
      let reason = '';
      try {
        const link = await connect({ host: this.#o.host, port: this.#o.port, security: this.#o.security, heartbeatMs: this.#o.heartbeatMs, timeoutMs: 5000 });
        this.#link = link;
        delay = this.#o.reconnectMinMs;
        reason = await this.#session(link);
      } catch (e) {
        reason = (e as Error).message;
        if (e instanceof RefusedError && e.code === 'STALE_GENERATION' && this.#o.selfFenceAfterMs !== undefined) {
          this.#fence(`the standby refused us as stale: ${e.message}`);
          return;
        }
        if (this.#fatal(e)) {
          if (!this.#stopping) {
            this.#log.error({ err: reason }, 'replication cannot go on');
            this.emit('error', e);
            void this.stop();
          }
          return;
        }
      } finally {
        this.#link?.close('session ended');
        this.#link = undefined;
        void this.#beats?.close('session ended');
        this.#beats = undefined;
        await this.#loop.pause();
        this.#queue.clear();
        this.#inFlight = [];
        for (const w of this.#ackWaiters.splice(0)) w();
      }
      if (this.#stopping) return;
      this.#setState('disconnected');
      const wait = Math.min(this.#o.reconnectMaxMs, delay) * (0.75 + Math.random() * 0.5);
      this.#log.warn({ reason, retryInMs: Math.round(wait) }, 'session with the standby ended; the target keeps running; reconnecting');
      this.emit('standby-lost', { reason, retryInMs: wait });
      this.#reconnects++;
      await sleep(wait, undefined, { signal: this.#abort.signal }).catch(() => undefined);
      delay = Math.min(this.#o.reconnectMaxMs, delay * 2);
    }
  }

  /**
   * Errors that retrying cannot fix: the tracker failed, the standby refused us for good
   * (a newer generation took over, another protocol version), or, before any session
   * succeeded, a wrong key or a peer that is not a standby (a configuration mistake the
   * user wants to hear about at once rather than as endless retries).
   */
  #fatal(e: unknown): boolean {
    if (e instanceof RefusedError) return e.code === 'STALE_GENERATION' || e.code === 'VERSION';
    if (e instanceof TransportError) return !this.#everSynced && (e.code === 'AUTH_FAILED' || e.code === 'PROTOCOL' || e.code === 'INSECURE_NOT_LOOPBACK');
    return e instanceof ReplicateError && e.code !== 'SYSTEM_ERROR' && e.code !== 'TIMEOUT';
  }

  /** What this primary says first on a connection (a heartbeat channel adds `channel` and `session`). */
  #hello(channel?: Pick<HelloMsg, 'channel' | 'session' | 'beatsMs'>): HelloMsg {
    return { t: 'hello', proto: PROTOCOL_VERSION, role: 'primary', lineage: this.lineage, generation: this.generation, pid: this.pid, host: hostname(), agent: `remus-replicate/${process.pid}`, ...channel };
  }

  /** One connection's life; resolves with why it ended. */
  async #session(link: Link): Promise<string> {
    const closed = new Promise<string>((resolve) => link.once('close', (c: { reason: string }) => resolve(c.reason)));
    const messages: Message[] = [];
    let notify: (() => void) | undefined;
    link.on('message', (m: Message) => {
      this.#lastContact = Date.now();
      if (m.t === 'ack') this.#onAck(m.epoch);
      else if (m.t !== 'hb') { messages.push(m); notify?.(); }
    });
    const next = async (): Promise<Message> => {
      while (messages.length === 0) {
        const r = await Promise.race([closed.then((why) => ({ why })), new Promise<void>((res) => { notify = res; })]);
        if (r && 'why' in r) throw new ReplicateError('SYSTEM_ERROR', `standby closed the connection: ${r.why}`);
      }
      return messages.shift()!;
    };
    await link.send(this.#hello());
    const answer = await Promise.race([next(), sleep(10_000).then(() => { throw new ReplicateError('TIMEOUT', 'the standby did not answer hello within 10 s'); })]);
    if (answer.t === 'refuse') throw new RefusedError(answer.code, `the standby refused us: ${answer.reason} [${answer.code}]`);
    if (answer.t !== 'welcome') throw new ReplicateError('SYSTEM_ERROR', `protocol error: expected welcome, got ${answer.t}`);
    const welcome: WelcomeMsg = answer;
    this.#log.info({ standbyLineage: welcome.lineage, standbyEpoch: welcome.committedEpoch }, 'connected to the standby');
    if (welcome.session && this.#o.heartbeatChannel) this.#keepBeats(link, welcome.session);
    const work = (async () => {
      await this.#fullSync(link);
      this.#setState('streaming');
      this.#loop.resume();
      await this.#stream(link);
    })();
    return Promise.race([closed, work.then(() => 'stopped')]);
  }

  /**
   * Keeps a second connection to the standby that carries only heartbeats, for as long as
   * `data` is open: the standby's failure detector then hears us (or our silence) without
   * waiting behind the pages queued on `data`. It runs on its own thread (BeatsChannel), so
   * that our own busy event loop does not make the heartbeats irregular either.
   */
  #keepBeats(data: Link, session: string): void {
    const beats = new BeatsChannel({
      host: this.#o.host, port: this.#o.port, security: this.#o.security, heartbeatMs: this.#o.heartbeatMs,
      hello: this.#hello({ channel: 'beats', session, beatsMs: standbyBeatsMs(this.#o.heartbeatMs, this.#o.selfFenceAfterMs) }), log: this.#log,
      // While it is open the standby listens to it alone: on the data connection a
      // keep-alive is enough (fewer frames to make and read on both sides).
      onState: (open) => data.setHeartbeatMs(open ? keepAliveMs(this.#o.heartbeatMs) : this.#o.heartbeatMs),
    });
    this.#beats = beats;
    data.once('close', () => {
      if (this.#beats === beats) this.#beats = undefined;
      void beats.close('session ended');
    });
  }

  #onAck(epoch: number): void {
    const now = Date.now();
    while (this.#inFlight.length > 0 && this.#inFlight[0]!.epoch <= epoch) {
      const f = this.#inFlight.shift()!;
      this.#recent.push({ pages: f.pages, bytes: f.wireBytes });
      if (this.#recent.length > 64) this.#recent.shift();
      if (f.epoch === epoch) {
        this.#committed = epoch;
        this.#committedCapture = f.lastCapture;
        const info: CommitInfo = { epoch, lagMs: now - f.capturedAt, pages: f.pages, bytes: f.wireBytes };
        this.metrics.committedEpoch.set(epoch);
        this.metrics.lag.set(this.#lagMs() / 1000);
        this.emit('commit', info);
        this.emit('lag', this.#lagMs());
      }
    }
    for (const w of this.#ackWaiters.splice(0)) w();
  }

  async #waitForWindow(link: Link): Promise<void> {
    while (this.#inFlight.length >= this.#o.maxInFlight && !link.closed) await new Promise<void>((r) => this.#ackWaiters.push(r));
  }

  /**
   * A full synchronisation: a fresh base image, then every page read while the target
   * runs, then frozen epochs on top until the state matches the base: the standby gets a
   * consistent epoch it can restore, as one atomic batch.
   */
  async #fullSync(link: Link): Promise<void> {
    this.#setState('syncing');
    this.#syncs++;
    const started = performance.now();
    await this.#loop.pause();
    this.#queue.clear();
    const epoch = ++this.#batchSeq;
    // The standby starts from nothing: deltas against what an earlier session sent would be refused.
    this.#encoder.reset?.();
    await link.send({ t: 'begin', epoch, base: 0, full: true });
    let wire = 0;
    let sent = 0;
    if (this.#o.baseImage) {
      // Captures around the dump prove the base matches; their pages are not needed: the
      // live copy below reads every page afterwards.
      const { base, epochs } = await this.#newBase();
      for (const e of epochs) e.release();
      wire += await this.#sendBase(link, base);
    }
    const present = await this.#tracker.present();
    let total = 0;
    for (let i = 1; i < present.length; i += 2) total += Number(present[i]!);
    const progress: SyncProgress = { sentPages: 0, totalPages: total, bytes: 0 };
    this.#log.info({ pages: total, bytes: total * PAGE_SIZE }, 'full synchronisation: copying every page while the target runs');
    const readChunk = 4096; // pages read per process_vm_readv pass (16 MiB)
    for (const part of splitRanges(present, readChunk)) {
      const { pages } = await this.#tracker.readLive(part);
      for (const c of chunkRanges(part, pages, this.#o.framePages)) {
        const bytes = await this.#sendPages(link, epoch, c.addrs, c.pages);
        sent += c.addrs.length;
        wire += bytes;
        progress.sentPages = sent; progress.bytes += bytes;
        this.emit('sync-progress', { ...progress });
      }
    }
    // The consistent cut: frozen epochs with everything written during the copy.
    const tail = [await this.#loop.captureOne()];
    this.#prevState = undefined; // a full batch carries the whole state
    const r = await this.#finishBatch(link, epoch, tail, sent, wire);
    const ms = performance.now() - started;
    this.#log.info({ epoch, pages: r.pages, ms: Math.round(ms) }, 'full synchronisation sent');
    this.#everSynced = true;
    this.emit('synced', { epoch, pages: r.pages, ms });
  }

  async #stream(link: Link): Promise<void> {
    while (!this.#stopping && !link.closed) {
      await this.#waitForWindow(link);
      await this.#queue.wait(this.#abort.signal);
      if (this.#stopping || link.closed) return;
      const epochs = this.#queue.takeEpochs();
      if (epochs.length === 0) continue;
      const epoch = ++this.#batchSeq;
      await link.send({ t: 'begin', epoch, base: this.#lastSent, full: false });
      await this.#finishBatch(link, epoch, epochs, 0, 0);
    }
  }

  /**
   * Sends `epochs` (coalesced) and the batch's end. When the newest state no longer
   * matches the base (a descriptor, thread or file mapping changed), a new base is taken
   * first and sent in the same batch, with the epochs captured around it.
   */
  async #finishBatch(link: Link, epoch: number, epochs: CapturedEpoch[], pagesBefore: number, wireBefore: number): Promise<{ pages: number }> {
    let wire = wireBefore;
    let pages = pagesBefore;
    let all = epochs;
    try {
      const newest = all[all.length - 1]!.state;
      checkNoChildren(newest);
      if (this.#base && fingerprint(newest) !== this.#base.fingerprint) {
        this.#log.info({ change: describeChange(this.#base.fingerprint, fingerprint(newest)) }, 're-base: the target\'s resources changed since the base image');
        const resume = this.#loop.active;
        await this.#loop.pause();
        const more = this.#queue.takeEpochs();
        const { base, epochs: around } = await this.#newBase();
        all = [...all, ...more, ...around];
        wire += await this.#sendBase(link, base);
        this.#rebases++;
        this.emit('rebase', { base: base.id, dumpMs: base.dumpMs, bytes: base.bytes });
        if (resume) this.#loop.resume();
      }
    } catch (e) {
      for (const x of all) x.release();
      throw e;
    }
    let batch: Batch;
    try {
      batch = await this.#queue.coalesce(all);
    } catch (e) {
      for (const x of all) x.release();
      throw e;
    }
    try {
      for (const c of batch.chunks(this.#o.framePages)) wire += await this.#sendPages(link, epoch, c.addrs, c.pages);
    } finally {
      batch.release();
    }
    pages += batch.pageCount;
    this.#inFlight.push({ epoch, lastCapture: batch.epoch, capturedAt: batch.capturedAt, rawBytes: batch.pageCount * PAGE_SIZE, wireBytes: wire, pages });
    const state: EpochState = { ...batch.state, base: this.#base?.id ?? '' };
    const prev = this.#prevState;
    // #prevState is what the standby will have committed when this batch applies (it is
    // reset before a full batch, and a new connection starts from nothing).
    const delta = prev && prev.link === link ? stateDelta(prev.state, state) : { state };
    await link.send({ ...endMsg(epoch, pages, batch.capturedAt, delta.state), ...(delta.same ? { same: delta.same } : {}) });
    this.#lastSent = epoch;
    this.#prevState = { link, state };
    // The standby drops pages outside the committed layout: so must the delta cache.
    this.#encoder.retain?.(batch.state.vmas);
    return { pages };
  }

  /**
   * Takes a new base image: a frozen capture, the dump, another capture. If the two
   * captures agree on the resources, so does the dump taken between them. The captures
   * are returned (their pages belong to the batch being built).
   */
  async #newBase(): Promise<{ base: BaseImage; epochs: CapturedEpoch[] }> {
    const epochs: CapturedEpoch[] = [];
    try {
      for (let attempt = 1; ; attempt++) {
        const before = await this.#loop.captureOne();
        epochs.push(before);
        checkNoChildren(before.state);
        const base = await this.#dumpWithRetries(before);
        const after = await this.#loop.captureOne();
        epochs.push(after);
        const same = fingerprint(after.state) === base.fingerprint;
        if (same || attempt >= 3) {
          if (!same) this.#log.warn({ change: describeChange(base.fingerprint, fingerprint(after.state)) }, 'the target changes its resources faster than a base can be taken; going on, a new base follows');
          const old = this.#base;
          this.#base = base;
          if (old) await removeBase(old).catch(() => undefined);
          this.#log.info({ base: base.id, dumpMs: Math.round(base.dumpMs), bytes: base.bytes }, 'base image taken');
          return { base, epochs };
        }
        await removeBase(base);
      }
    } catch (e) {
      for (const x of epochs) x.release();
      throw e;
    }
  }

  /**
   * The dump itself, retried twice (a thread that exits in the middle of a dump makes
   * CRIU fail once); a dump that keeps failing stops replication with CRIU's reason (a
   * socket it cannot dump, for instance), since the standby could never restore.
   */
  async #dumpWithRetries(state: CapturedEpoch): Promise<BaseImage> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await takeBase({ criu: this.#criu!, pid: this.pid, workDir: this.#workDir, generation: this.generation, state: state.state });
      } catch (e) {
        if (attempt >= 3 || !(e instanceof ReplicateError) || e.code !== 'CRIU_FAILED') throw e;
        this.#log.warn({ err: e.message, attempt }, 'base image dump failed; retrying');
        await sleep(50 * attempt);
      }
    }
  }

  /** Sends the base image's files into the open batch; returns the bytes sent. */
  async #sendBase(link: Link, base: BaseImage): Promise<number> {
    let bytes = 0;
    for await (const piece of basePieces(base)) {
      await link.send({ t: 'image', base: base.id, ...piece });
      bytes += piece.data.length;
    }
    this.#wire += bytes;
    this.metrics.sentBytes.inc(bytes);
    return bytes;
  }

  /** Encodes and sends one frame of pages; returns the encoded bytes. */
  async #sendPages(link: Link, epoch: number, addrs: BigUint64Array, pages: Buffer): Promise<number> {
    const enc = await this.#encoder.encode(addrs, pages);
    await link.send({ t: 'pages', epoch, ...enc });
    const bytes = enc.data.length + enc.addrs.length + enc.zeros.length;
    this.#raw += pages.length;
    this.#wire += bytes;
    this.metrics.sentBytes.inc(bytes);
    return bytes;
  }
}

/** Work directories of agents that died without cleaning up (SIGKILL): their PID is gone. */
async function removeStaleWorkDirs(dir: string): Promise<void> {
  for (const n of await readdir(dir).catch(() => [] as string[])) {
    const m = /^remus-replicate-(\d+)-\d+$/.exec(n);
    if (!m || Number(m[1]) === process.pid) continue;
    let alive = true;
    try { process.kill(Number(m[1]), 0); } catch (e) { alive = (e as NodeJS.ErrnoException).code === 'EPERM'; }
    if (!alive) await rm(join(dir, n), { recursive: true, force: true }).catch(() => undefined);
  }
}

/** The standby answered hello with `refuse`. */
export class RefusedError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'RefusedError';
    this.code = code;
  }
}

function endMsg(epoch: number, pages: number, capturedAt: number, state: EndMsg['state']): EndMsg {
  return { t: 'end', epoch, pages, capturedAt, state };
}

/** Splits [start, npages] pairs into groups of at most `maxPages` pages. */
export function* splitRanges(ranges: BigUint64Array, maxPages: number): Generator<BigUint64Array> {
  let out: bigint[] = [];
  let n = 0;
  for (let i = 0; i < ranges.length; i += 2) {
    let start = ranges[i]!;
    let left = Number(ranges[i + 1]!);
    while (left > 0) {
      const take = Math.min(left, maxPages - n);
      out.push(start, BigInt(take));
      n += take; left -= take; start += BigInt(take) * 4096n;
      if (n === maxPages) { yield BigUint64Array.from(out); out = []; n = 0; }
    }
  }
  if (n > 0) yield BigUint64Array.from(out);
}

function validate(o: PrimaryOptions): void {
  const bad = (m: string) => { throw new ReplicateError('INVALID_ARGUMENT', m); };
  if (!Number.isInteger(o.pid) || o.pid <= 0) bad(`pid must be a positive integer, got ${String(o.pid)}`);
  if (typeof o.host !== 'string' || !o.host) bad('host is required (the standby\'s address)');
  if (!Number.isInteger(o.port) || o.port <= 0 || o.port > 65535) bad(`port must be 1-65535, got ${String(o.port)}`);
  if (!o.security) bad('security is required: a pre-shared key, certificates, or insecure (loopback only)');
  if (o.epochMs !== undefined && (!(o.epochMs >= 10) || o.epochMs > 3_600_000)) bad(`epochMs must be between 10 ms and 1 h, got ${o.epochMs}`);
  if (o.highWaterBytes !== undefined && !(o.highWaterBytes >= 1 << 20)) bad(`highWaterBytes must be at least 1 MiB, got ${o.highWaterBytes}`);
  if (o.heartbeatMs !== undefined && !(o.heartbeatMs >= 5 && o.heartbeatMs <= 60_000)) bad(`heartbeatMs must be between 5 ms and 60 s, got ${o.heartbeatMs}`);
}

/** Starts protecting `options.pid`; see Primary. */
export function replicate(options: PrimaryOptions): Promise<Primary> {
  return Primary.start(options);
}

function pickCodecTotals(t: DeltaEncoderTotals): NonNullable<PrimaryStats['codec']> {
  return { pages: t.pages, zero: t.zero, full: t.full, delta: t.delta, unchanged: t.unchanged };
}

