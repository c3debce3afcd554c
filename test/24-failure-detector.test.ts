// The failure detectors, fed with heartbeat timings (the detector is pure arithmetic over
// times: the end-to-end runs with real processes are in 22-failover).
import { describe, expect, it } from 'vitest';
import { createDetector, PhiDetector } from '../src/failover/failure-detector.js';

/** Feeds `n` heartbeats `gapMs` apart (by the sender's clock and ours); returns the last time. */
function feed(d: PhiDetector, n: number, gapMs: number, from = 0): number {
  let t = from;
  for (let i = 0; i < n; i++) { t += gapMs; d.heartbeat(t, 1e6 + t); }
  return t;
}

describe('failure detector', () => {
  it('phi: regular 50 ms heartbeats imply about mean + pause + 5 sigma; silence past that is suspected', () => {
    const d = new PhiDetector({ heartbeatMs: 50 });
    const t = feed(d, 100, 50);
    const expected = d.expectedDetectionMs();
    expect(expected).toBeGreaterThan(100);
    expect(expected).toBeLessThan(170);
    expect(d.suspected(t + expected - 5)).toBe(false);
    expect(d.suspected(t + expected + 5)).toBe(true);
  });

  it('phi: a gap over heartbeats the sender skipped (backed-up socket) is not learnt; the same gap unannounced is', () => {
    const skipping = new PhiDetector({ heartbeatMs: 50 });
    const unannounced = new PhiDetector({ heartbeatMs: 50 });
    for (const d of [skipping, unannounced]) feed(d, 100, 50);
    const before = skipping.expectedDetectionMs();
    // 400 ms without a heartbeat, then they resume.
    let t = 100 * 50 + 400;
    skipping.heartbeat(t, 1e6 + t, 7);
    unannounced.heartbeat(t, 1e6 + t);
    for (let i = 0; i < 20; i++) { t += 50; skipping.heartbeat(t, 1e6 + t); unannounced.heartbeat(t, 1e6 + t); }
    expect(skipping.expectedDetectionMs()).toBeCloseTo(before, 0);
    expect(unannounced.learnt().stdMs).toBeGreaterThan(skipping.learnt().stdMs * 2);
    expect(unannounced.expectedDetectionMs()).toBeGreaterThan(before + 100);
  });

  it('says how long until it would suspect (what the standby sleeps before looking again)', () => {
    for (const d of [new PhiDetector({ heartbeatMs: 50 }), createDetector({ kind: 'timeout', timeoutMs: 200 })]) {
      expect(d.msUntilSuspected(1000)).toBe(Infinity); // nothing heard yet
      let t = 0;
      for (let i = 0; i < 50; i++) { t += 50; d.heartbeat(t, 1e6 + t); }
      const full = d.expectedDetectionMs();
      expect(d.msUntilSuspected(t)).toBeCloseTo(full, 6);
      expect(d.msUntilSuspected(t + 40)).toBeCloseTo(full - 40, 6);
      expect(d.suspected(t + d.msUntilSuspected(t + 40) + 40 - 1)).toBe(false);
      expect(d.suspected(t + d.msUntilSuspected(t + 40) + 40 + 1)).toBe(true);
      expect(d.msUntilSuspected(t + full + 5)).toBe(0);
      d.heartbeat(t + 100, 1e6 + t + 100); // a late heartbeat moves it on
      expect(d.msUntilSuspected(t + 100)).toBeGreaterThan(full - 60);
    }
  });

  it('fixed timeout: suspected exactly after the timeout', () => {
    const d = createDetector({ kind: 'timeout', timeoutMs: 200 });
    d.heartbeat(1000);
    expect(d.suspected(1199)).toBe(false);
    expect(d.suspected(1201)).toBe(true);
  });
});
