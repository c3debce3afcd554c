// Deciding that the primary is gone, from the heartbeats it sends.
//
// Two detectors behind one interface:
//  - PhiDetector: phi accrual (Hayashibara et al., as in Akka and Cassandra). It learns the
//    distribution of heartbeat inter-arrival times and turns the silence since the last one
//    into a suspicion level phi = -log10(P(a heartbeat arrives later than this)). phi = 8
//    means a 1e-8 chance that the primary is merely late. It adapts to a jittery network.
//  - FixedTimeoutDetector: suspects after a fixed silence. Predictable, not adaptive.
//
// Heartbeats (any frame) feed `heartbeat()`; `alive()` (bytes arriving, e.g. a large batch
// in flight that delays heartbeat frames) resets the silence without skewing the statistics.

export interface FailureDetector {
  /**
   * A heartbeat arrived. `sentAt`, the sender's own clock when it sent it, measures the
   * gaps as the sender made them: a receiver whose event loop was busy for a while takes
   * in several heartbeats at once, which would teach phi a jitter the link does not have.
   */
  heartbeat(now?: number, sentAt?: number, skipped?: number): void;
  /** Traffic that proves liveness but is not a heartbeat (bulk data). */
  alive(now?: number): void;
  /** Suspicion now: phi, or for the fixed timeout 0 until it expires, then Infinity. */
  suspicion(now?: number): number;
  suspected(now?: number): boolean;
  /** Milliseconds of silence after a regular heartbeat until `suspected()` (for the CLI's summary). */
  expectedDetectionMs(): number;
  /**
   * Milliseconds from `now` until `suspected()` turns true if nothing more arrives (0: it
   * is; Infinity: nothing heard yet). What a watcher sleeps before looking again.
   */
  msUntilSuspected(now?: number): number;
  /** Forget the history (a new connection). */
  reset(): void;
  readonly description: string;
  /** What the detector has learnt of the heartbeats (phi: mean and standard deviation of the gaps). */
  learnt(): { meanMs: number; stdMs: number };
}

export interface PhiOptions {
  /** Heartbeat interval the primary uses (first estimate of the mean). */
  heartbeatMs: number;
  /** Suspect at or above this phi. Default 8. */
  threshold?: number;
  /** Floor of the standard deviation, so that a very regular history is not over-trusted. Default heartbeatMs / 5. */
  minStdDevMs?: number;
  /** Silence tolerated on top of the mean (a GC pause, a busy primary). Default heartbeatMs. */
  acceptablePauseMs?: number;
  /** Inter-arrival samples kept. Default 200. */
  window?: number;
}

export class PhiDetector implements FailureDetector {
  readonly threshold: number;
  readonly #o: Required<PhiOptions>;
  #intervals: number[] = [];
  #sum = 0;
  #sumSq = 0;
  #lastBeat: number | undefined;
  #lastSent: number | undefined;
  #lastAlive: number | undefined;

  constructor(o: PhiOptions) {
    this.#o = {
      heartbeatMs: o.heartbeatMs, threshold: o.threshold ?? 8, minStdDevMs: o.minStdDevMs ?? o.heartbeatMs / 5,
      acceptablePauseMs: o.acceptablePauseMs ?? o.heartbeatMs, window: o.window ?? 200,
    };
    this.threshold = this.#o.threshold;
    this.reset();
  }

  get description(): string {
    return `phi accrual (threshold ${this.threshold}, heartbeat ${this.#o.heartbeatMs} ms, acceptable pause ${this.#o.acceptablePauseMs} ms)`;
  }

  reset(): void {
    // Seed with the nominal interval so that the first seconds behave sensibly.
    this.#intervals = [];
    this.#sum = 0;
    this.#sumSq = 0;
    const h = this.#o.heartbeatMs;
    this.#push(h - this.#o.minStdDevMs);
    this.#push(h + this.#o.minStdDevMs);
    this.#lastBeat = undefined;
    this.#lastSent = undefined;
    this.#lastAlive = undefined;
  }

  #push(x: number): void {
    this.#intervals.push(x);
    this.#sum += x;
    this.#sumSq += x * x;
    if (this.#intervals.length > this.#o.window) {
      const old = this.#intervals.shift()!;
      this.#sum -= old;
      this.#sumSq -= old * old;
    }
  }

  heartbeat(now = performance.now(), sentAt?: number, skipped = 0): void {
    // A gap over heartbeats the sender skipped on purpose (its socket was backed up, we
    // were hearing its data) is not a sample of its regularity: not learnt.
    const bySender = sentAt !== undefined && this.#lastSent !== undefined ? sentAt - this.#lastSent : undefined;
    if (skipped > 0) { /* not a sample */ }
    else if (bySender !== undefined && bySender > 0 && bySender < 100 * this.#o.heartbeatMs) this.#push(bySender);
    else if (this.#lastBeat !== undefined) this.#push(now - this.#lastBeat);
    this.#lastBeat = now;
    this.#lastSent = sentAt;
    this.#lastAlive = now;
  }

  alive(now = performance.now()): void {
    this.#lastAlive = now;
  }

  learnt(): { meanMs: number; stdMs: number } { return { meanMs: this.#mean(), stdMs: this.#std() }; }

  #mean(): number { return this.#sum / this.#intervals.length; }
  #std(): number {
    const m = this.#mean();
    return Math.max(this.#o.minStdDevMs, Math.sqrt(Math.max(0, this.#sumSq / this.#intervals.length - m * m)));
  }

  /** phi for a silence of `elapsed` ms under the current statistics. */
  phiAfter(elapsed: number): number {
    const mean = this.#mean() + this.#o.acceptablePauseMs;
    const y = (elapsed - mean) / this.#std();
    // Logistic approximation of the normal CDF (as Akka uses): accurate to ~1e-4.
    const e = Math.exp(-y * (1.5976 + 0.070566 * y * y));
    return elapsed > mean ? -Math.log10(e / (1 + e)) : -Math.log10(1 - 1 / (1 + e));
  }

  suspicion(now = performance.now()): number {
    const last = this.#lastAlive ?? this.#lastBeat;
    if (last === undefined) return 0;
    return this.phiAfter(Math.max(0, now - last));
  }

  suspected(now = performance.now()): boolean {
    return this.suspicion(now) >= this.threshold;
  }

  msUntilSuspected(now = performance.now()): number {
    const last = this.#lastAlive ?? this.#lastBeat;
    if (last === undefined) return Infinity;
    return Math.max(0, last + this.expectedDetectionMs() - now);
  }

  expectedDetectionMs(): number {
    let lo = 0;
    let hi = 3_600_000;
    for (let i = 0; i < 60; i++) {
      const mid = (lo + hi) / 2;
      if (this.phiAfter(mid) >= this.threshold) hi = mid; else lo = mid;
    }
    return hi;
  }
}

export class FixedTimeoutDetector implements FailureDetector {
  readonly timeoutMs: number;
  #last: number | undefined;

  constructor(o: { timeoutMs: number }) {
    this.timeoutMs = o.timeoutMs;
  }

  get description(): string { return `fixed timeout (${this.timeoutMs} ms of silence)`; }
  reset(): void { this.#last = undefined; }
  heartbeat(now = performance.now()): void { this.#last = now; }
  alive(now = performance.now()): void { this.#last = now; }
  suspicion(now = performance.now()): number {
    if (this.#last === undefined) return 0;
    return now - this.#last >= this.timeoutMs ? Infinity : 0;
  }
  suspected(now = performance.now()): boolean { return this.suspicion(now) === Infinity; }
  expectedDetectionMs(): number { return this.timeoutMs; }
  msUntilSuspected(now = performance.now()): number {
    return this.#last === undefined ? Infinity : Math.max(0, this.#last + this.timeoutMs - now);
  }
  learnt(): { meanMs: number; stdMs: number } { return { meanMs: 0, stdMs: 0 }; }
}

export type DetectorOptions =
  | ({ kind: 'phi' } & PhiOptions)
  | { kind: 'timeout'; timeoutMs: number };

export function createDetector(o: DetectorOptions): FailureDetector {
  return o.kind === 'phi' ? new PhiDetector(o) : new FixedTimeoutDetector(o);
}
