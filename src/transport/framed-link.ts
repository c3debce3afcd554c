// A Link: messages over one connected socket (TLS or, on loopback, plain TCP), framed by
// frame-codec.ts, with heartbeats both ways.
//
// Liveness: `lastHeardAt` moves whenever bytes arrive, not only heartbeats: behind megabytes
// of pages a heartbeat frame can wait a long time in the stream while the peer is plainly
// alive.
//
// Round-trip time: each heartbeat carries `sentAt` (our clock) and `echo`. We set `echo` to
// the peer's last `sentAt` plus the time we held it before this heartbeat, so the peer gets
// the network round trip as `now - echo` without the up-to-one-interval wait between its
// heartbeat and ours (a peer that echoes the bare `sentAt` only inflates our figure).
//
// Nothing here throws from a socket callback or logs: every failure ends the link and is
// reported once, through the `close` event.
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { ReplicateError } from '../errors.js';
import type { HeartbeatMsg, Message, ByeMsg } from '../protocol/messages.js';
import { FrameError, TransportError } from './errors.js';
import { checkMaxFrameBytes, encodeFrameParts, FrameDecoder } from './frame-codec.js';
import { MESSAGE_LIMITS } from './message-schema.js';
import { describeRemote } from './security.js';

export interface LinkOptions {
  /** Largest frame sent or accepted. Default 64 MiB. */
  maxFrameBytes?: number;
  /** Heartbeat interval, ms. Default 50. */
  heartbeatMs?: number;
  /** How long close() waits for queued data and the peer's FIN before cutting, ms. Default 2000. */
  closeTimeoutMs?: number;
}

export interface LinkCloseInfo {
  /** Why, in words: ours (close(reason)), the peer's (its bye), or what failed. */
  reason: string;
  /** The failure, when there was one (a FrameError for bad frames). */
  error?: Error;
  /** Who ended the link: this side, the peer (bye, FIN), or an error. */
  by: 'local' | 'peer' | 'error';
  /** The peer's goodbye, when it said one (its reason may mean something to the owner). */
  bye?: ByeMsg;
}

export interface HeartbeatInfo {
  sentAt: number;
  echo: number;
  /** The peer's status field, if it sent one. */
  status?: string;
  /** The round-trip time this heartbeat measured, if it carried an echo. */
  rttMs?: number;
  /** Heartbeats the peer skipped just before this one (its socket was backed up). */
  skipped?: number;
}

export interface LinkEvents {
  message: [message: Message];
  close: [info: LinkCloseInfo];
  heartbeat: [info: HeartbeatInfo];
  newListener: [event: string | symbol, listener: (...args: never[]) => void];
}

export interface ResolvedLinkOptions { maxFrameBytes: number; heartbeatMs: number; closeTimeoutMs: number }

export function checkLinkOptions(o: LinkOptions): ResolvedLinkOptions {
  const heartbeatMs = o.heartbeatMs ?? 50;
  if (!Number.isFinite(heartbeatMs) || heartbeatMs < 1 || heartbeatMs > 600_000) {
    throw new ReplicateError('INVALID_ARGUMENT', `heartbeatMs must be between 1 and 600000, got ${String(o.heartbeatMs)}`);
  }
  const closeTimeoutMs = o.closeTimeoutMs ?? 2000;
  if (!Number.isFinite(closeTimeoutMs) || closeTimeoutMs < 0) {
    throw new ReplicateError('INVALID_ARGUMENT', `closeTimeoutMs must be a non-negative number, got ${String(o.closeTimeoutMs)}`);
  }
  return { maxFrameBytes: checkMaxFrameBytes(o.maxFrameBytes), heartbeatMs, closeTimeoutMs };
}

/** Our clock for heartbeats: wall-clock milliseconds that never jump (sub-ms resolution). */
const heartbeatClock = (): number => performance.timeOrigin + performance.now();

export class Link extends EventEmitter<LinkEvents> {
  /** The peer, "ip:port". */
  readonly remote: string;
  /** Date.now() when bytes last arrived from the peer (any bytes, not only heartbeats). */
  lastHeardAt = Date.now();
  /** Smoothed round-trip time from heartbeats, ms; undefined until measured. */
  rttMs: number | undefined;
  /** Carried in our outgoing heartbeats (primary: the target's state; standby: its role). */
  status: string | undefined;

  private readonly socket: Socket;
  private readonly options: ResolvedLinkOptions;
  private readonly decoder: FrameDecoder;
  private sentFrames = 0;
  private lastHeardMono = performance.now();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private heartbeatEveryMs: number;
  private skippedBeats = 0;
  /** The peer's last `sentAt` and when (our monotonic ms) it arrived. */
  private peerSentAt = 0;
  private peerSentHeardAt = 0;
  private closeInfo: LinkCloseInfo | undefined;
  private readonly socketClosed: Promise<void>;
  private drain: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } | undefined;
  /** Messages that arrived before anyone listened for them. */
  private readonly held: Message[] = [];
  private pausedByOwner = false;
  private ending = false;
  private firstFrame: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } | undefined;

  constructor(socket: Socket, options: LinkOptions = {}) {
    super();
    this.options = checkLinkOptions(options);
    this.socket = socket;
    this.remote = describeRemote(socket);
    this.decoder = new FrameDecoder({ maxFrameBytes: this.options.maxFrameBytes });
    this.socketClosed = new Promise<void>((resolve) => {
      if (socket.destroyed) resolve();
      else socket.once('close', () => resolve());
    });
    socket.setNoDelay(true); // acks and heartbeats are small and latency-bound
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.onDrain());
    socket.on('end', () => {
      this.finish({ reason: 'the peer closed the connection without a bye', by: 'peer' });
      this.endGracefully();
    });
    socket.on('error', (e: Error) => this.onSocketError(e));
    socket.on('close', () => this.finish({ reason: 'the connection closed', by: 'peer' }));
    this.on('newListener', (event) => {
      if (event === 'message' && this.held.length > 0) queueMicrotask(() => this.releaseHeld());
    });
    this.heartbeatEveryMs = this.options.heartbeatMs;
    this.heartbeatTimer = setInterval(() => this.beat(), this.options.heartbeatMs);
    this.heartbeatTimer.unref();
    this.beat(); // at once: the peer learns we are here, and connect() waits for this frame
  }

  /**
   * Changes how often this side sends heartbeats (ms). A connection whose peer judges
   * liveness by another channel (the primary's heartbeat channel) needs only a keep-alive:
   * fewer frames to build, send, read and decode on both sides.
   */
  setHeartbeatMs(ms: number): void {
    if (this.closeInfo || ms === this.heartbeatEveryMs) return;
    this.heartbeatEveryMs = ms;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => this.beat(), ms);
    this.heartbeatTimer.unref();
  }

  /** True once the link is closed (or closing): send() rejects. */
  get closed(): boolean {
    return this.closeInfo !== undefined;
  }

  /** Why the link closed, once it has. */
  get closeReason(): LinkCloseInfo | undefined {
    return this.closeInfo;
  }

  /** Milliseconds since bytes last arrived, on a clock that does not jump. */
  get silentMs(): number {
    return performance.now() - this.lastHeardMono;
  }

  /** Bytes queued in user space for sending (the kernel's socket buffer is not counted). */
  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  /**
   * Sends a message. Resolves once the frame is handed to the socket with room to spare, or
   * after the socket drained: a sender that awaits each send keeps at most one frame (plus
   * the socket buffers) in memory. Rejects with FrameError if the message is invalid or too
   * large (nothing is sent), TransportError CLOSED if the link is closed. The `data` of a
   * large `pages` message is written as it is, not copied: leave it unchanged afterwards.
   */
  send(msg: Message): Promise<void> {
    if (this.closeInfo) return Promise.reject(this.closedError());
    let roomLeft: boolean;
    try {
      roomLeft = this.writeFrame(msg);
    } catch (e) {
      return Promise.reject(e);
    }
    return roomLeft ? Promise.resolve() : this.whenDrained();
  }

  /**
   * Resolves when the first frame from the peer has arrived (every Link sends a heartbeat as
   * soon as it exists): the peer accepted the handshake and speaks this protocol.
   */
  ready(): Promise<void> {
    if (this.decoder.framesDecoded > 0) return Promise.resolve();
    if (this.closeInfo) return Promise.reject(this.closedError());
    this.firstFrame ??= deferred();
    return this.firstFrame.promise;
  }

  /** Stops reading from the peer (TCP flow control then stops the sender). */
  pause(): void {
    this.pausedByOwner = true;
    this.socket.pause();
  }

  resume(): void {
    this.pausedByOwner = false;
    if (this.held.length === 0 || this.listenerCount('message') > 0) this.socket.resume();
  }

  /**
   * Says bye to the peer, then ends the connection once queued data is out. Resolves when the
   * socket is closed (cut after closeTimeoutMs if the peer does not cooperate). Never rejects.
   */
  close(reason = 'closed'): Promise<void> {
    if (!this.closeInfo) {
      this.finish({ reason, by: 'local' });
      if (!this.socket.destroyed && this.socket.writable) {
        try {
          this.writeFrame({ t: 'bye', reason: reason.slice(0, MESSAGE_LIMITS.maxReasonChars) });
        } catch {
          // Nothing more to say then: the FIN alone tells the peer.
        }
      }
      this.endGracefully();
    }
    return this.socketClosed;
  }

  // --- sending --------------------------------------------------------------------------------

  /** Encodes and writes one frame; returns false if the socket wants us to wait for drain. */
  private writeFrame(msg: Message): boolean {
    const parts = encodeFrameParts(msg, this.sentFrames + 1, this.options.maxFrameBytes);
    this.sentFrames++; // only once encoded: a refused message must not leave a gap
    let room = true;
    for (const p of parts) room = this.socket.write(p);
    return room;
  }

  private whenDrained(): Promise<void> {
    this.drain ??= deferred();
    return this.drain.promise;
  }

  private onDrain(): void {
    const d = this.drain;
    this.drain = undefined;
    d?.resolve();
  }

  private beat(): void {
    // While the socket is backed up the peer hears our bytes anyway; queueing heartbeats
    // behind them would only grow the queue of a peer that stopped reading.
    // The next heartbeat says how many were skipped, so that the peer's failure detector
    // does not learn that gap as jitter (it would then wait longer to declare us dead).
    if (this.closeInfo) return;
    if (this.socket.writableNeedDrain) { this.skippedBeats++; return; }
    const echo = this.peerSentAt === 0 ? 0 : this.peerSentAt + (performance.now() - this.peerSentHeardAt);
    const hb: HeartbeatMsg = { t: 'hb', sentAt: heartbeatClock(), echo };
    if (this.status !== undefined) hb.status = this.status.slice(0, MESSAGE_LIMITS.maxShortChars);
    if (this.skippedBeats > 0) hb.skipped = this.skippedBeats;
    try {
      this.writeFrame(hb);
      this.skippedBeats = 0;
    } catch (e) {
      this.fail(e as Error, `cannot send a heartbeat: ${(e as Error).message}`);
    }
  }

  // --- receiving ------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    this.lastHeardAt = Date.now();
    this.lastHeardMono = performance.now();
    if (this.closeInfo) return; // we said bye or failed: nothing more is taken in
    try {
      this.decoder.write(chunk);
      // One frame at a time: frames before a bad one are delivered, and a listener that
      // closes the link stops the decoding.
      for (let m = this.decoder.read(); m; m = this.closeInfo ? null : this.decoder.read()) {
        if (this.firstFrame) {
          this.firstFrame.resolve();
          this.firstFrame = undefined;
        }
        this.dispatch(m);
      }
    } catch (e) {
      const reason = e instanceof FrameError ? `protocol error (${e.reason}): ${e.message}` : String(e);
      this.fail(e as Error, reason);
    }
  }

  private dispatch(m: Message): void {
    if (m.t === 'hb') {
      this.onHeartbeat(m);
    } else if (m.t === 'bye') {
      this.finish({ reason: `the peer closed the link: ${m.reason}`, by: 'peer', bye: m });
      this.endGracefully();
    } else if (this.held.length > 0 || this.listenerCount('message') === 0) {
      // Nobody listens yet (connect() has not returned the link to its caller): keep it,
      // and stop reading until someone does.
      this.held.push(m);
      this.socket.pause();
    } else {
      this.deliver(m);
    }
  }

  private releaseHeld(): void {
    while (this.held.length > 0 && !this.closeInfo && this.listenerCount('message') > 0) this.deliver(this.held.shift()!);
    if (this.held.length === 0 && !this.pausedByOwner && !this.closeInfo) this.socket.resume();
  }

  private deliver(m: Message): void {
    try {
      this.emit('message', m);
    } catch (e) {
      this.fail(e as Error, `a 'message' listener failed on '${m.t}': ${(e as Error).message}`);
    }
  }

  private onHeartbeat(m: HeartbeatMsg): void {
    this.peerSentAt = m.sentAt;
    this.peerSentHeardAt = performance.now();
    const info: HeartbeatInfo = { sentAt: m.sentAt, echo: m.echo };
    if (m.status !== undefined) info.status = m.status;
    if (m.skipped !== undefined) info.skipped = m.skipped;
    if (m.echo > 0) {
      const sample = Math.max(0, heartbeatClock() - m.echo);
      // Smoothed like TCP's SRTT, so one delayed heartbeat does not swing the figure.
      this.rttMs = this.rttMs === undefined ? sample : this.rttMs * 0.875 + sample * 0.125;
      info.rttMs = sample;
    }
    try {
      this.emit('heartbeat', info);
    } catch (e) {
      this.fail(e as Error, `a 'heartbeat' listener failed: ${(e as Error).message}`);
    }
  }

  // --- ending ---------------------------------------------------------------------------------

  private onSocketError(e: Error): void {
    const code = (e as NodeJS.ErrnoException).code;
    const what = code === 'ECONNRESET' ? 'the connection was reset by the peer'
      : code === 'EPIPE' ? 'the peer stopped reading (broken pipe)'
        : code === 'ETIMEDOUT' ? 'the connection timed out'
          : `connection error: ${e.message}`;
    this.fail(e, what);
  }

  /** Sends our FIN after what is queued; cuts the connection if that takes too long. */
  private endGracefully(): void {
    const socket = this.socket;
    if (socket.destroyed || this.ending) return;
    this.ending = true;
    socket.end();
    const cut = setTimeout(() => socket.destroy(), this.options.closeTimeoutMs);
    cut.unref();
    void this.socketClosed.then(() => clearTimeout(cut));
  }

  /** Ends the link on a failure: reported through `close`, the socket destroyed at once. */
  private fail(error: Error, reason: string): void {
    this.finish({ reason, error, by: 'error' });
    this.socket.destroy();
  }

  /** Marks the link closed and reports it, once. */
  private finish(info: LinkCloseInfo): void {
    if (this.closeInfo) return;
    this.closeInfo = info;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    this.held.length = 0;
    const err = this.closedError();
    this.drain?.reject(err);
    this.drain = undefined;
    this.firstFrame?.reject(err);
    this.firstFrame = undefined;
    // Outside the socket callback we may be in; a throwing listener is the listener's bug.
    process.nextTick(() => this.emit('close', info));
  }

  private closedError(): TransportError {
    const info = this.closeInfo;
    return new TransportError('CLOSED', `the link to ${this.remote} is closed${info ? `: ${info.reason}` : ''}`, info?.error ? { cause: info.error } : undefined);
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
  promise.catch(() => undefined); // a rejection nobody awaits (the link closed while idle) is not an error
  return { promise, resolve, reject };
}
