// The standby: receives a primary's batches and commits each one atomically to its
// EpochStore; acknowledges an epoch only once it is durable. One primary at a time.
//
//   Link ──message──> session queue (in order) ──decode──> EpochBatch ──commit──> ack
//
// Anything wrong on a connection (a frame that does not parse, a batch that does not
// follow the committed epoch, a page count that does not add up) ends that connection
// with a logged reason and aborts its open batch: the committed epoch is untouched and
// the standby keeps serving.
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { DeltaPageDecoder } from '../codec/delta-codec.js';
import type { PageDecoder } from '../codec/page-codec.js';
import { ReplicateError } from '../errors.js';
import { silentLogger, type Logger } from '../log/logger.js';
import { ReplicationMetrics } from '../metrics/metrics.js';
import { applyStateDelta } from '../protocol/state-delta.js';
import { keepAliveMs, PROTOCOL_VERSION, type BeginMsg, type EndMsg, type HelloMsg, type Message, type PagesMsg, type WelcomeMsg } from '../protocol/messages.js';
import { writeStatusFile } from '../status/status-file.js';
import { listen, type HeartbeatInfo, type Link, type LinkCloseInfo, type ListeningServer } from '../transport/link.js';
import type { SecurityOptions } from '../transport/security.js';
import { abortRestores } from '../criu/criu-runner.js';
import { locateCriu } from '../criu/locate.js';
import { createDetector, type DetectorOptions, type FailureDetector } from '../failover/failure-detector.js';
import { LazyRestorer } from '../failover/lazy-restore.js';
import { defaultRestoreRoot, promote, pruneStaleRestoreDirs, type PromotionOptions, type PromotionResult } from '../failover/promoter.js';
import { native } from '../native/binding.js';
import { baseDir, BaseImageWriter, pruneBases } from './base-images.js';
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
  /**
   * Decoded pages the store holds in memory before a checkpoint writes them to disk
   * (default 64 MiB): less memory, more disk writes (see EpochStoreOptions).
   */
  checkpointBytes?: number;
  logger?: Logger;
  metrics?: ReplicationMetrics;
  decoder?: PageDecoder;
  /** How often the status file is rewritten. Default 1000. */
  statusIntervalMs?: number;
  /** How the primary's death is decided. Default phi accrual over the heartbeats. */
  detector?: DetectorOptions;
  /** Promote when the detector fires. Default true; false waits for `promote()` (`replicate promote`). */
  autoPromote?: boolean;
  /** Promote also when the primary reports that the target itself exited. Default false. */
  promoteOnTargetExit?: boolean;
  /**
   * At promotion, first commit the epochs already received but not yet applied (the
   * backlog a standby slower than the link builds up). Default false: they were never
   * acknowledged to the primary, and applying them delays the failover by the standby's
   * lag; the batch being committed at that moment finishes either way.
   */
  applyReceived?: boolean;
  /** How to promote (health check, fencing, hooks...). CRIU is located at start when omitted. */
  promotion?: Omit<PromotionOptions, 'criu'> & { criu?: string };
}

export interface PeerInfo { remote: string; lineage: string; pid: number; host: string; generation: number }

export type StandbyRole = 'standby' | 'promoting' | 'primary' | 'failed';

export interface StandbyStats {
  /** 'primary' once a promotion restored the process here. */
  role: StandbyRole;
  /** The outcome of the last promotion, if any. */
  promotion: (PromotionResult & { at: number; reason: string }) | null;
  /** The restored process is still running (after a promotion). */
  restoredRunning: boolean;
  detector: string;
  /** Detection time the detector implies, with what it has learnt of the heartbeats so far. */
  expectedDetectionMs: number;
  /** Heartbeat gaps as the detector sees them. */
  heartbeatGapMs: { mean: number; std: number };
  /** The connected primary keeps a heartbeat channel (HelloMsg.channel): the detector hears only it. */
  heartbeatChannel: boolean;
  suspicion: number;
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
  /** Wall-clock time (primary's clock) the committed epoch was captured; 0 if unknown (after a restart). */
  committedCapturedAt: number;
  /** Epochs committed by this process, pages and encoded bytes per commit (recent mean). */
  commits: number;
  pagesPerEpoch: number;
  bytesPerEpoch: number;
  compressionRatio: number;
  receivedBytes: number;
  rejectedConnections: number;
  lastError: string | null;
  rttMs: number;
  /**
   * The store: segments (files of decoded pages), pages held in memory since the last
   * checkpoint, the journal's bytes, and the bytes on disk in all.
   */
  store: { segments: number; memoryPages: number; journalBytes: number; bytesOnDisk: number };
  updatedAt: number;
}

/**
 * Events: 'commit' ({ epoch, lineage, pages, bytes }), 'peer' ({ state, peer, reason? }),
 * 'rejected' ({ remote, reason }), 'suspect' ({ silentMs }), 'promoting' ({ reason }),
 * 'promoted' (PromotionResult), 'restored-exit' ({ pid, code, signal }), 'error'.
 */
export class Standby extends EventEmitter {
  readonly dir: string;
  readonly #o: StandbyOptions;
  readonly #log: Logger;
  readonly metrics: ReplicationMetrics;
  readonly #decoder: PageDecoder;
  /** Deltas apply to the newest version of a page: the open batch's, else the committed one. */
  readonly #readBase = { into: (addrs: BigUint64Array, out: Buffer, outPages: Int32Array): void => { this.#store.readPagesInto(addrs, out, outPages); } };
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
  /** The base pruneBases last kept (see commit). */
  #prunedFor: string | undefined;
  #role: StandbyRole = 'standby';
  #detector!: FailureDetector;
  /** Watching the primary: set from its first admitted session until an orderly goodbye. */
  #armed = false;
  #lastHeard = 0; // performance.now() of the last sign of life
  #confirmPending = false;
  #watchTimer: NodeJS.Timeout | undefined;
  /** When the watch timer fires (performance.now()). */
  #watchAt = 0;
  #reapTimer: NodeJS.Timeout | undefined;
  #promotion: (PromotionResult & { at: number; reason: string }) | null = null;
  #restoredRunning = false;
  #criu = '';
  #promoting: Promise<PromotionResult> | undefined;
  /** A lazy restore's page transfer still reading the store. */
  #lazyTransfer: Promise<unknown> | undefined;
  /** A lazy restore prepared for the committed base (daemon listening), for a fast promotion. */
  #warm: LazyRestorer | undefined;
  #warming: Promise<void> = Promise.resolve();

  private constructor(o: StandbyOptions) {
    super();
    this.#o = o;
    this.dir = o.dir;
    this.#log = (o.logger ?? silentLogger).child({ role: 'standby' });
    this.metrics = o.metrics ?? new ReplicationMetrics('standby', { defaults: false });
    this.#decoder = o.decoder ?? new DeltaPageDecoder();
  }

  static async start(o: StandbyOptions): Promise<Standby> {
    if (!o.dir) throw new ReplicateError('INVALID_ARGUMENT', 'dir is required (where the standby keeps the committed epoch)');
    const s = new Standby(o);
    s.#detector = createDetector(o.detector ?? { kind: 'phi', heartbeatMs: o.heartbeatMs ?? 50 });
    // CRIU is needed to promote, automatically or by hand: an auto-promoting standby
    // refuses to start without it; a manual one warns and looks again when asked.
    try {
      s.#criu = await usableCriu(o.promotion?.criu);
    } catch (e) {
      if (o.autoPromote !== false) throw e;
      s.#log.warn({ err: (e as Error).message }, 'no usable CRIU: `replicate promote` will fail until there is one');
    }
    s.#store = await EpochStore.open(o.dir, {
      fsync: o.fsync ?? true, decoder: s.#decoder, ...(o.checkpointBytes !== undefined ? { checkpointBytes: o.checkpointBytes } : {}),
    });
    const rec = s.#store.recovered;
    if (rec.records > 0 || rec.tornBytes > 0) {
      s.#log.info({ records: rec.records, tornBytes: rec.tornBytes }, `replayed ${rec.records} journal record(s)${rec.tornBytes ? `; cut off ${rec.tornBytes} bytes of an unfinished one` : ''}`);
    }
    const stale = pruneStaleRestoreDirs(o.promotion?.restoreRoot ?? defaultRestoreRoot(o.dir));
    if (stale.length) s.#log.info({ removed: stale }, 'removed restore directories of standbys that are gone');
    const c = s.#store.committed;
    // Leftovers of a batch that never committed, and bases no commit names.
    await pruneBases(o.dir, c?.state.base || null);
    s.#prunedFor = c?.state.base;
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
    s.#scheduleWatch();
    s.#keepWarm();
    await s.#writeStatus();
    return s;
  }

  get address(): string { return this.#server.address; }
  get port(): number { return this.#server.port; }
  get store(): EpochStore { return this.#store; }

  stats(): StandbyStats {
    const c = this.#store.committed;
    const st = this.#store.stats();
    const n = this.#recent.length || 1;
    return {
      role: this.#role, promotion: this.#promotion, restoredRunning: this.#restoredRunning,
      detector: this.#detector.description, expectedDetectionMs: this.#detector.expectedDetectionMs(),
      heartbeatGapMs: { mean: this.#detector.learnt().meanMs, std: this.#detector.learnt().stdMs },
      heartbeatChannel: !!this.#session?.beats && !this.#session.beats.closed,
      suspicion: this.#armed ? this.#detector.suspicion() : 0,
      pid: process.pid, dir: this.dir, listen: this.address,
      link: this.#session ? 'connected' : 'listening', peer: this.#session?.peer ?? null,
      lineage: c?.lineage ?? null, generation: c?.generation ?? 0, committedEpoch: c?.epoch ?? 0, committedAt: c?.committedAt ?? 0,
      lagMs: this.#capturedAt ? Date.now() - this.#capturedAt : 0,
      committedCapturedAt: this.#capturedAt,
      commits: this.#commits,
      pagesPerEpoch: this.#recent.reduce((s, r) => s + r.pages, 0) / n,
      bytesPerEpoch: this.#recent.reduce((s, r) => s + r.bytes, 0) / n,
      compressionRatio: this.#wire > 0 ? this.#raw / this.#wire : 0,
      receivedBytes: this.#wire, rejectedConnections: this.#rejected, lastError: this.#lastError,
      rttMs: this.#session?.link.rttMs ?? 0,
      store: { segments: st.segments, memoryPages: st.memoryPages, journalBytes: st.journalBytes, bytesOnDisk: st.bytesOnDisk },
      updatedAt: Date.now(),
    };
  }

  async stop(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#statusTimer) clearInterval(this.#statusTimer);
    if (this.#watchTimer) clearTimeout(this.#watchTimer);
    if (this.#reapTimer) clearInterval(this.#reapTimer);
    // A promotion in progress stops: its criu restore (which can hang) is ended, and no
    // further attempt starts.
    if (this.#role === 'promoting') {
      const n = abortRestores();
      if (n) this.#log.warn({ processes: n }, 'stopping: ended the criu restore in progress');
    }
    await this.#promoting?.catch(() => undefined);
    // A lazily restored process still gets pages from the store: wait for the transfer
    // (bounded), or it would read zeros and be killed.
    if (this.#lazyTransfer) {
      this.#log.info('waiting for the lazy page transfer to finish before closing the store');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#lazyTransfer, new Promise((r) => { timer = setTimeout(r, 120_000); })]);
      clearTimeout(timer); // else it keeps the process alive for 2 min after stop()
    }
    // The daemon prepared for a promotion that did not happen.
    await this.#warming;
    if (this.#warm?.ready) await this.#warm.close();
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
        this.#onSessionEnd(session);
        this.emit('peer', { state: 'disconnected', peer: session.peer, reason: session.endReason });
        this.#log.warn({ reason: session.endReason }, 'primary disconnected');
        void this.#writeStatus();
      }
      link.close(session.endReason || 'session ended');
      session.beats?.close('session ended');
    });
  }

  /** The primary said it stops replicating (on either connection): no promotion. */
  #stoppedInOrder(): void {
    if (!this.#armed) return;
    this.#armed = false;
    this.#log.info('the primary stopped replication in order: no promotion');
  }

  /** A session ended: an orderly goodbye disarms the detector, anything else leaves it watching. */
  #onSessionEnd(session: Session): void {
    const bye = session.byeReason;
    if (bye === 'primary stopping') {
      this.#stoppedInOrder();
    } else if (bye === 'target-exited') {
      if (this.#o.promoteOnTargetExit && this.#store.committed) {
        this.#log.warn('the protected process exited on the primary: promoting (promoteOnTargetExit)');
        void this.promote('the protected process exited on the primary');
      } else {
        this.#armed = false;
        this.#log.warn('the protected process exited on a healthy primary: no promotion (the standby keeps its last commit)');
      }
    }
  }

  /**
   * The next look at the detector: when it would suspect the primary if nothing more
   * arrived (a heartbeat since then moves that later, and the look finds nothing and sleeps
   * again), at most 250 ms from now (signs of life the detector is only told of by looking,
   * and a standby not armed yet). Rather than every 10 ms: fewer wakeups, and no polling
   * delay on top of the detection time.
   */
  #scheduleWatch(): void {
    if (this.#closed) return;
    if (this.#watchTimer) clearTimeout(this.#watchTimer);
    const watching = this.#armed && this.#role === 'standby';
    const wait = watching ? Math.min(250, Math.max(1, this.#detector.msUntilSuspected())) : 250;
    this.#watchAt = performance.now() + wait;
    this.#watchTimer = setTimeout(() => this.#watch(), wait);
    this.#watchTimer.unref();
  }

  /** After a heartbeat: looks earlier if the detector could now fire before the planned look (its first heartbeats). */
  #nudgeWatch(): void {
    if (this.#armed && !this.#confirmPending && performance.now() + this.#detector.msUntilSuspected() < this.#watchAt - 1) this.#scheduleWatch();
  }

  /**
   * Checks the detector; promotes when it fires (auto mode). A suspicion is confirmed only
   * after one turn of the event loop's I/O phase: timers run before pending reads, so after
   * this process was itself busy for a while, heartbeats that did arrive are still unread
   * when the timer fires, and the primary would be declared dead for our own stall.
   */
  #watch(confirming = false): void {
    if (!this.#armed || this.#role !== 'standby' || !this.#store.committed) { this.#scheduleWatch(); return; }
    if (this.#session?.beatsSeen) {
      // The heartbeat channel alone says whether the primary lives (attachBeats).
    } else if (this.#session?.readingPaused) {
      // We are not reading (the backlog of received epochs is full): heartbeats wait in
      // the socket unread, so silence now says nothing of the primary.
      this.#lastHeard = performance.now();
      this.#detector.alive(this.#lastHeard);
      this.#scheduleWatch();
      return;
    } else if (this.#session?.link) {
      const link = this.#session.link;
      // Bytes still arriving (a long frame) are a sign of life too.
      const heard = performance.now() - Math.max(0, Date.now() - link.lastHeardAt);
      if (heard > this.#lastHeard) { this.#lastHeard = heard; this.#detector.alive(heard); }
    }
    if (!this.#detector.suspected()) { this.#scheduleWatch(); return; }
    if (!confirming) {
      // No timer meanwhile: the confirmation decides, and looks again later if it clears.
      if (this.#watchTimer) clearTimeout(this.#watchTimer);
      if (!this.#confirmPending) {
        this.#confirmPending = true;
        setImmediate(() => { this.#confirmPending = false; this.#watch(true); });
      }
      return;
    }
    const silentMs = performance.now() - this.#lastHeard;
    this.#armed = false;
    this.#log.warn({ silentMs: Math.round(silentMs), detector: this.#detector.description }, 'the primary is considered dead');
    this.emit('suspect', { silentMs });
    this.#session?.link.close('primary considered dead');
    this.#session?.beats?.close('primary considered dead');
    if (this.#o.autoPromote === false) {
      this.#log.warn('auto-promotion is off: run `replicate promote --dir DIR` to restore the process here');
      void this.#writeStatus();
      return;
    }
    void this.promote(`no sign of life from the primary for ${Math.round(silentMs)} ms`, silentMs);
  }

  /**
   * Restores the last committed epoch here (see failover/promoter.ts). Idempotent while
   * one is running; after a promotion, new primaries are refused.
   */
  promote(reason = 'manual', detectionMs = 0, override: Partial<PromotionOptions> = {}): Promise<PromotionResult> {
    if (this.#promoting) return this.#promoting;
    this.#role = 'promoting';
    this.#armed = false;
    this.emit('promoting', { reason });
    this.#log.warn({ reason, epoch: this.#store.committed?.epoch }, 'promoting: restoring the last committed epoch here');
    const session = this.#session;
    session?.link.close('standby promoting');
    void this.#writeStatus();
    // No compaction from here on (one running is cancelled): it would compete with the
    // restore for the disk and hold the store while the generation is raised. Released
    // only if the promotion is called off and this stays a standby.
    const releaseCompaction = this.#store.holdCompaction();
    const run = (async (): Promise<PromotionResult> => {
      if (!this.#criu) this.#criu = await usableCriu(this.#o.promotion?.criu).catch(() => '');
      const criu = this.#criu;
      // The session may still be applying what arrived before the link closed: it stops
      // after the batch in hand (applyReceived: after all it received), committing a
      // complete batch or aborting a partial one, so that the image is built from one
      // committed epoch, not from a store that changes underneath.
      const td = performance.now();
      // The batch in hand, still receiving or committing, is cancelled unless its manifest
      // switch has begun: the promotion then waits neither for the pages being decoded nor
      // for an fsync (which can take longer than the rest of the promotion), and the epoch
      // restored is the one before (never acknowledged, so nothing the primary was told).
      const cancelled = !this.#o.applyReceived && session ? session.abandon() : false;
      if (!cancelled) await session?.finished;
      const drainMs = performance.now() - td;
      const tw = performance.now();
      await this.#warming;
      const warmWaitMs = performance.now() - tw;
      const onLazyFailure = (why: string) => { if (!this.#closed) void this.#afterLazyFailure(why); };
      const onLazyTransfer = (done: Promise<unknown>) => { this.#lazyTransfer = done.catch(() => undefined); };
      const r: PromotionResult = criu
        ? await promote(this.#store, this.dir, { ...this.#o.promotion, criu, logger: this.#log, onLazyFailure, onLazyTransfer, warm: () => this.#warm, cancelled: () => this.#closed, ...override }, detectionMs)
        : { ok: false, outcome: 'failed', lazy: false, pid: null, epoch: this.#store.committed?.epoch ?? 0, lineage: '', generation: 0, attempts: 0, errors: ['no CRIU: promotion needs CRIU 4.2+'], timings: { detectionMs, fenceMs: 0, prepareMs: 0, daemonMs: 0, pidWaitMs: 0, buildMs: 0, restoreMs: 0, healthMs: 0, totalMs: detectionMs } };
      r.timings.drainMs = drainMs;
      r.timings.warmWaitMs = warmWaitMs;
      r.timings.totalMs += drainMs + warmWaitMs;
      this.#promotion = { ...r, at: Date.now(), reason };
      if (r.outcome === 'fenced-out') {
        this.#role = 'standby'; // nothing was done: a later attempt may succeed
        this.#promoting = undefined;
        releaseCompaction();
      } else {
        this.#role = r.outcome === 'restored' ? 'primary' : 'failed';
      }
      this.metrics.setRole(this.#role === 'primary' ? 'promoted' : 'standby');
      if (r.pid !== null) this.#watchRestored(r.pid);
      this.#log[r.ok ? 'info' : 'error']({ outcome: r.outcome, pid: r.pid, epoch: r.epoch, timings: r.timings, errors: r.errors }, r.ok ? 'promotion done' : 'PROMOTION FAILED');
      this.emit('promoted', r);
      await this.#writeStatus();
      return r;
    })();
    this.#promoting = run;
    return run;
  }

  /**
   * The lazy transfer of a promoted process failed: the process was killed (it would have
   * read zeros). Restore again, eagerly, from the same committed epoch.
   */
  async #afterLazyFailure(why: string): Promise<void> {
    await this.#promoting?.catch(() => undefined);
    this.#log.error({ why }, 'the lazily restored process had to be killed: restoring again without lazy pages');
    if (this.#reapTimer) clearInterval(this.#reapTimer);
    const old = this.#promotion?.pid;
    if (old) for (let i = 0; i < 200 && !native().reapChild(old); i++) await new Promise((r) => setTimeout(r, 10));
    this.#promoting = undefined;
    this.#role = 'standby';
    await this.promote(`lazy transfer failed (${why}): eager restore`, 0, { lazy: false });
  }

  /**
   * Keeps a lazy restore ready for the committed base (a `criu lazy-pages` daemon already
   * listening), so that promotion does not wait for one to start. Redone when the base
   * changes or the daemon dies; skipped when promotion is eager or impossible here.
   */
  #keepWarm(): void {
    const c = this.#store.committed;
    const criu = this.#criu;
    if (!c?.state.base || !criu || this.#o.promotion?.lazy === false || this.#role !== 'standby' || this.#closed) return;
    if (this.#warm && this.#warm.baseId === c.state.base && this.#warm.ready) return;
    this.#warming = this.#warming.then(async () => {
      const cur = this.#store.committed;
      if (!cur?.state.base || this.#role !== 'standby' || this.#closed) return;
      if (this.#warm && this.#warm.baseId === cur.state.base && this.#warm.ready) return;
      const old = this.#warm;
      this.#warm = undefined;
      await old?.close();
      try {
        const root = this.#o.promotion?.restoreRoot ?? defaultRestoreRoot(this.dir);
        this.#warm = await LazyRestorer.prepare({
          criu, dir: join(root, `warm-${cur.state.base}-${process.pid}`), baseDir: baseDir(this.dir, cur.state.base), baseId: cur.state.base,
          store: this.#store, pid: cur.state.pid,
        });
        // The page runs a lazy image lists: built once now, then kept up to date by each commit.
        this.#store.pageRuns();
        this.#log.debug({ base: cur.state.base, ms: Math.round(this.#warm.daemonReadyMs) }, 'lazy restore ready');
      } catch (e) {
        this.#log.warn({ err: (e as Error).message }, 'cannot prepare a lazy restore ahead; a promotion would start one');
      }
    });
  }

  /** Reaps the restored process when it exits (we are its subreaper). */
  #watchRestored(pid: number): void {
    this.#restoredRunning = true;
    this.#reapTimer = setInterval(() => {
      const st = native().reapChild(pid);
      if (!st) return;
      clearInterval(this.#reapTimer);
      this.#restoredRunning = false;
      this.#log.warn({ pid, code: st.code, signal: st.signal }, 'the restored process exited');
      this.emit('restored-exit', { pid, code: st.code, signal: st.signal });
      void this.#writeStatus();
    }, 200);
    this.#reapTimer.unref();
  }

  // --- used by Session -------------------------------------------------------------

  /** Admits a primary after hello, or says why not. */
  admit(session: Session, hello: HelloMsg): { ok: true } | { ok: false; code: string; reason: string } {
    if (this.#role !== 'standby')
      return { ok: false, code: 'STALE_GENERATION', reason: `this standby has ${this.#role === 'primary' ? 'promoted: its copy of the process is the primary now' : 'started a promotion'}; the old primary must stop` };
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
    this.#detector.reset();
    this.#lastHeard = performance.now();
    this.#armed = true;
    this.#scheduleWatch();
    session.link.on('heartbeat', (hb: HeartbeatInfo) => {
      if (session.beatsSeen) return;
      this.#lastHeard = performance.now();
      this.#detector.heartbeat(this.#lastHeard, hb.sentAt, hb.skipped);
      this.#nudgeWatch();
    });
    session.link.on('message', () => {
      if (session.beatsSeen) return;
      this.#lastHeard = performance.now();
      this.#detector.alive(this.#lastHeard);
    });
    this.emit('peer', { state: 'connected', peer: session.peer });
    this.#log.info({ peer: session.peer }, 'primary connected');
    void this.#writeStatus();
    return { ok: true };
  }

  welcome(session: Session): WelcomeMsg {
    const c = this.#store.committed;
    return { t: 'welcome', proto: PROTOCOL_VERSION, lineage: c?.lineage ?? null, generation: c?.generation ?? 0, committedEpoch: c?.epoch ?? 0, session: session.id };
  }

  /**
   * A heartbeat channel for the current session, or why not. Once one is attached, the
   * detector hears only it: on the data connection, heartbeats and bytes of a primary that
   * died can still arrive for a while from full buffers, and look like life.
   */
  attachBeats(beats: Session, hello: HelloMsg): { ok: true } | { ok: false; code: string; reason: string } {
    if (this.#role !== 'standby') return { ok: false, code: 'STALE_GENERATION', reason: `this standby has ${this.#role === 'primary' ? 'promoted' : 'started a promotion'}` };
    const cur = this.#session;
    const p = cur?.peer;
    if (!cur || !p || cur.id !== hello.session || p.lineage !== hello.lineage || p.generation !== hello.generation || p.pid !== hello.pid)
      return { ok: false, code: 'NO_SESSION', reason: 'no replication session with this id here: the heartbeat channel follows the data connection' };
    cur.beats?.close('replaced by a new heartbeat channel');
    cur.beats = beats.link;
    if (!cur.beatsSeen) {
      cur.beatsSeen = true;
      // Learn the gaps of this channel only (the data connection's were noisier).
      this.#detector.reset();
      this.#lastHeard = performance.now();
    }
    beats.link.on('heartbeat', (hb: HeartbeatInfo) => {
      if (this.#session !== cur || cur.beats !== beats.link) return;
      this.#lastHeard = performance.now();
      this.#detector.heartbeat(this.#lastHeard, hb.sentAt, hb.skipped);
      this.#nudgeWatch();
    });
    // The primary hears us on the channel, as often as it asked: a keep-alive on the data
    // connection will do.
    const hb = this.#o.heartbeatMs ?? 50;
    beats.link.setHeartbeatMs(hello.beatsMs ?? hb);
    cur.link.setHeartbeatMs(keepAliveMs(hb));
    beats.link.once('close', (c: LinkCloseInfo) => {
      if (cur.beats !== beats.link) return;
      cur.link.setHeartbeatMs(hb);
      if (this.#session !== cur || !c.bye) return; // closed without a word: its silence counts (a crash)
      if (c.bye.reason === 'primary stopping') {
        // Said first on this channel: the data connection's own goodbye may wait behind
        // megabytes of unread pages, and meanwhile this channel's silence looked like death.
        this.#stoppedInOrder();
        return;
      }
      // Closed on purpose (its data connection ended, say): judge by the data connection
      // again, as before the channel existed.
      cur.beatsSeen = false;
      this.#detector.reset();
      this.#lastHeard = performance.now();
    });
    this.#log.debug({ remote: beats.link.remote }, 'heartbeat channel attached');
    return { ok: true };
  }

  /**
   * `m` with its whole state: the parts it left out (end.same) come from the committed
   * state, the one its batch applies on. Throws Error on a delta that does not fit.
   */
  resolveState(m: EndMsg, full: boolean): EndMsg {
    if (!m.same) return m;
    if (full) throw new Error('a full batch must carry its whole state (end.same is set)');
    const { same, ...rest } = m;
    return { ...rest, state: applyStateDelta(this.#store.committedState, m.state, same) };
  }

  begin(peer: PeerInfo, m: BeginMsg): EpochBatch {
    return this.#store.begin({ lineage: peer.lineage, generation: peer.generation, epoch: m.epoch, base: m.base, full: m.full });
  }

  async addPages(batch: EpochBatch, m: PagesMsg): Promise<number> {
    const d = await this.#decoder.decode(m, this.#readBase);
    try {
      await batch.addFrame(m, d);
    } finally {
      this.#decoder.release?.(d);
    }
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
    // Only when a commit switched bases: no directory listing on every commit.
    if (c.state.base !== this.#prunedFor) {
      this.#prunedFor = c.state.base;
      await pruneBases(this.dir, c.state.base || null).catch((e: Error) => this.#log.warn({ err: e.message }, 'cannot remove old base images'));
    }
    this.#keepWarm();
    this.emit('commit', { epoch: c.epoch, lineage: c.lineage, pages: m.pages, bytes: wire });
    if (Date.now() - this.#statusAt > 250) void this.#writeStatus();
  }

  newBaseWriter(id: string): BaseImageWriter {
    return new BaseImageWriter(this.dir, id, { fsync: this.#o.fsync ?? true });
  }

  /** The committed state's base is on disk (a batch may name it without resending it). */
  hasBase(id: string): boolean {
    return this.#store.committed?.state.base === id;
  }

  get helloTimeoutMs(): number { return this.#o.helloTimeoutMs ?? 10_000; }
  get log(): Logger { return this.#log; }
}

/** One connection from a primary: messages are handled strictly in order. */
class Session {
  readonly standby: Standby;
  readonly link: Link;
  /** Names this session to a heartbeat channel (HelloMsg.channel). */
  readonly id = randomBytes(16).toString('hex');
  /** The primary's heartbeat channel, while connected. */
  beats: Link | undefined;
  /** A heartbeat channel was attached: from then on only its heartbeats say the primary lives. */
  beatsSeen = false;
  peer: PeerInfo | null = null;
  endReason = '';
  /** The reason of the primary's `bye`, if it said one. */
  byeReason: string | undefined;
  finished: Promise<void> = Promise.resolve();
  #queue: Message[] = [];
  #wake: (() => void) | undefined;
  #closed = false;
  #queuedBytes = 0;
  #paused = false;
  #abandoned = false;
  /** What the run is doing (for the log when a promotion abandons it). */
  #inHand = 'waiting';
  /** The batch being committed, if any. */
  #committing: EpochBatch | undefined;
  /** The batch being received (begin seen, end not yet). */
  #open: EpochBatch | undefined;

  /**
   * Drops what is queued and not yet started: the run ends after the message in hand. A
   * commit in hand is cancelled when its commit point (journal append, or manifest switch of a full batch) has not been reached; then true: the
   * committed epoch will not change, and the caller need not wait for the run to end.
   */
  abandon(): boolean {
    const queued = this.#queue.length;
    this.#abandoned = true;
    this.#queue.length = 0;
    this.#queuedBytes = 0;
    const cancelled = (this.#committing ?? this.#open)?.cancelCommit() ?? false;
    this.standby.log.debug({ inHand: this.#inHand, queued, commitCancelled: cancelled }, 'session abandoned');
    this.#wake?.();
    return cancelled;
  }

  /** We stopped reading the link (our backlog is full): the primary's silence then is ours. */
  get readingPaused(): boolean { return this.#paused; }

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
        if (this.#queuedBytes > 64 * 2 ** 20 && !this.#paused) { this.#paused = true; link.pause(); this.standby.log.debug({ wire: this.#queuedBytes, n: this.#queue.length }, 'backlog full: reading from the primary paused'); }
      }
      this.#wake?.();
    });
    link.once('close', (c: LinkCloseInfo) => {
      this.#closed = true;
      if (c.bye) this.byeReason = c.bye.reason;
      if (!this.endReason) this.endReason = c.reason;
      this.#wake?.();
    });
  }

  async #next(timeoutMs?: number): Promise<Message | null> {
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    if (this.#abandoned) return null;
    while (this.#queue.length === 0) {
      if (this.#closed || this.#abandoned) return null;
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
      if (this.#paused && this.#queuedBytes < 16 * 2 ** 20) { this.#paused = false; this.link.resume(); this.standby.log.debug({ wire: this.#queuedBytes }, 'backlog drained: reading from the primary again'); }
    }
    return m;
  }

  /** A heartbeat channel: welcome, then heartbeats only (the link handles them) until it closes. */
  async #runBeats(hello: HelloMsg): Promise<void> {
    const s = this.standby;
    const verdict = s.attachBeats(this, hello);
    if (!verdict.ok) {
      await this.link.send({ t: 'refuse', code: verdict.code, reason: verdict.reason }).catch(() => undefined);
      this.#fail(`heartbeat channel refused: ${verdict.reason}`);
    }
    await this.link.send({ ...s.welcome(this), session: hello.session! });
    const m = await this.#next();
    if (m) this.#fail(`protocol error: '${m.t}' on a heartbeat channel`);
    this.endReason ||= 'heartbeat channel closed';
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
    if (hello.channel === 'beats') return this.#runBeats(hello);
    const verdict = s.admit(this, hello);
    if (!verdict.ok) {
      await this.link.send({ t: 'refuse', code: verdict.code, reason: verdict.reason }).catch(() => undefined);
      this.#fail(`refused: ${verdict.reason}`);
    }
    await this.link.send(s.welcome(this));
    let batch: EpochBatch | undefined;
    let begin: BeginMsg | undefined;
    let wire = 0;
    const bases = new Map<string, BaseImageWriter>();
    try {
      for (;;) {
        this.#inHand = 'waiting';
        const m = await this.#next();
        if (!m) return;
        this.#inHand = m.t === 'end' ? `commit of epoch ${m.epoch}` : m.t === 'pages' ? `pages (${m.data.length} bytes)` : m.t;
        switch (m.t) {
          case 'begin':
            if (batch) this.#fail('protocol error: begin inside an open batch');
            try { batch = s.begin(this.peer, m); } catch (e) { this.#fail(`batch refused: ${(e as Error).message}`); }
            this.#open = batch;
            begin = m; wire = 0;
            break;
          case 'image': {
            if (!batch || !begin) this.#fail('protocol error: image outside a batch');
            let w = bases.get(m.base);
            if (!w) { w = s.newBaseWriter(m.base); bases.set(m.base, w); }
            try { await w.write(m.name, m.offset, m.data, m.last); } catch (e) { this.#fail(`cannot store base image ${m.base}/${m.name}: ${(e as Error).message}`); }
            wire += m.data.length;
            break;
          }
          case 'pages':
            if (!batch || !begin) this.#fail('protocol error: pages outside a batch');
            if (m.epoch !== begin.epoch) this.#fail(`protocol error: pages for epoch ${m.epoch} inside batch ${begin.epoch}`);
            try { wire += await s.addPages(batch, m); } catch (e) {
              if (this.#abandoned) { this.endReason ||= `promoting: the batch of epoch ${m.epoch} was dropped`; return; }
              this.#fail(`bad pages: ${(e as Error).message}`);
            }
            break;
          case 'end': {
            if (!batch || !begin) this.#fail('protocol error: end outside a batch');
            if (m.epoch !== begin.epoch) this.#fail(`protocol error: end of epoch ${m.epoch} closes batch ${begin.epoch}`);
            if (m.pages !== batch.pages) this.#fail(`batch ${m.epoch}: ${batch.pages} pages arrived, ${m.pages} were sent`);
            let end: EndMsg = m;
            try { end = s.resolveState(m, begin.full); } catch (e) { this.#fail(`protocol error: batch ${m.epoch}: ${(e as Error).message}`); }
            const b = batch;
            batch = undefined;
            this.#open = undefined;
            const named = end.state.base;
            if (named && !bases.has(named) && !s.hasBase(named)) this.#fail(`batch ${m.epoch} names base image ${named}, which this standby does not have`);
            try {
              // The base must be complete and durable before the commit that names it.
              const w = bases.get(named);
              if (w) await w.finish();
              for (const [id, other] of bases) if (id !== named) await other.abort();
              bases.clear();
              this.#committing = b;
              await s.commit(b, end, wire);
            } catch (e) {
              if (this.#abandoned) { this.endReason ||= `promoting: the commit of epoch ${m.epoch} was dropped`; return; }
              this.#fail(`commit of epoch ${m.epoch} failed: ${(e as Error).message}`);
            } finally {
              this.#committing = undefined;
            }
            await this.link.send({ t: 'ack', epoch: m.epoch, committedAt: Date.now() }).catch(() => undefined);
            break;
          }
          case 'bye':
            this.endReason = `primary said bye: ${m.reason}`;
            this.byeReason = m.reason;
            return;
          default:
            this.#fail(`protocol error: unexpected ${m.t}`);
        }
      }
    } finally {
      this.#open = undefined;
      if (batch) await batch.abort().catch((e: Error) => s.log.error({ err: e.message }, 'aborting a batch failed'));
      for (const w of bases.values()) await w.abort().catch(() => undefined);
    }
  }
}

/** The path of a CRIU that can restore (4.2+, `criu check` passes), or a CRIU_UNAVAILABLE error saying why not. */
async function usableCriu(option?: string): Promise<string> {
  const criu = await locateCriu(option);
  if (!criu.versionOk || !criu.checkOk)
    throw new ReplicateError('CRIU_UNAVAILABLE', `CRIU at ${criu.path} is not usable (version ${criu.version}${criu.checkOk ? '' : ', \`criu check\` failed'}): promotion needs CRIU 4.2+ (run \`replicate check\`)`);
  return criu.path;
}

/** Starts a standby; see Standby. */
export function standby(options: StandbyOptions): Promise<Standby> {
  return Standby.start(options);
}
