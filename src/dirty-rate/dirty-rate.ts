import { setTimeout as sleep } from 'node:timers/promises';
import type { BackendRequest } from '../native/binding.js';
import { PAGE_SIZE, Tracker } from '../tracker/tracker.js';
import { summarize, type Summary } from '../util/stats.js';

export interface DirtyRateOptions {
  pid: number;
  durationMs?: number;
  epochMs?: number;
  backend?: BackendRequest;
  /** Called after each epoch (for progress output). */
  onEpoch?: (e: { seq: number; pages: number; pauseMs: number }) => void;
  signal?: AbortSignal;
}

/**
 * What `replicate dirty-rate --json` prints. Stable field names:
 * - pagesPerSecond, bytesPerSecond: pages (4 KiB) written per second, averaged over the run
 * - pagesPerEpoch, bytesPerEpoch: distribution over epochs (mean, p50, p99, max, min)
 * - workingSetPages, workingSetBytes: distinct pages written over the whole run
 * - pauseMs: freeze-to-thaw pause per epoch (p50, p99, max, mean, min), including the page copy
 * - backend, backendReason: the dirty-tracking backend used and why
 */
export interface DirtyRateReport {
  pid: number;
  backend: string;
  backendReason: string;
  epochMs: number;
  durationMs: number;
  epochs: number;
  pagesPerSecond: number;
  bytesPerSecond: number;
  pagesPerEpoch: Summary;
  bytesPerEpoch: Summary;
  workingSetPages: number;
  workingSetBytes: number;
  pauseMs: Summary;
  /** Pages reported because memory was newly mapped or lost its content (not writes). */
  newPages: number;
  zappedPages: number;
}

/** Like QEMU's calc-dirty-rate, for a process: tracks it for a while and measures. */
export async function measureDirtyRate(opts: DirtyRateOptions): Promise<DirtyRateReport> {
  const durationMs = opts.durationMs ?? 5000;
  const epochMs = opts.epochMs ?? 100;
  const tracker = await Tracker.attach(opts.pid, { backend: opts.backend ?? 'auto' });
  const perEpoch: number[] = [];
  const pauses: number[] = [];
  const workingSet = new Set<number>();
  let newPages = 0;
  let zappedPages = 0;
  const start = performance.now();
  try {
    for (let seq = 1; performance.now() - start < durationMs && !opts.signal?.aborted; seq++) {
      // Fixed-rate epochs: wait for the next boundary, not a fixed gap after the last one.
      const due = start + seq * epochMs;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      const e = await tracker.epoch({ pages: true, registers: true, layout: true });
      // Written pages only: new mappings are layout, not a write rate.
      perEpoch.push(e.stats.pagesWritten + e.stats.pagesZapped);
      newPages += e.stats.pagesNew;
      zappedPages += e.stats.pagesZapped;
      pauses.push(e.timings.pauseNs / 1e6);
      for (let i = 0; i < e.ranges.length; i += 2) {
        const first = Number(e.ranges[i]! / BigInt(PAGE_SIZE));
        for (let p = 0; p < Number(e.ranges[i + 1]!); p++) workingSet.add(first + p);
      }
      e.release();
      opts.onEpoch?.({ seq, pages: perEpoch[perEpoch.length - 1]!, pauseMs: pauses[pauses.length - 1]! });
    }
  } finally {
    await tracker.close();
  }
  const elapsed = performance.now() - start;
  const total = perEpoch.reduce((a, b) => a + b, 0);
  const pagesPerSecond = elapsed > 0 ? (total / elapsed) * 1000 : 0;
  return {
    pid: opts.pid,
    backend: tracker.backend,
    backendReason: tracker.backendReason,
    epochMs,
    durationMs: Math.round(elapsed),
    epochs: perEpoch.length,
    pagesPerSecond,
    bytesPerSecond: pagesPerSecond * PAGE_SIZE,
    pagesPerEpoch: summarize(perEpoch),
    bytesPerEpoch: summarize(perEpoch.map((p) => p * PAGE_SIZE)),
    workingSetPages: workingSet.size,
    workingSetBytes: workingSet.size * PAGE_SIZE,
    pauseMs: summarize(pauses),
    newPages,
    zappedPages,
  };
}

export function formatDirtyRate(r: DirtyRateReport): string {
  const mb = (b: number) => `${(b / 1e6).toFixed(2)} MB`;
  return [
    `process ${r.pid}: ${r.epochs} epochs of ${r.epochMs} ms over ${(r.durationMs / 1000).toFixed(1)} s (backend ${r.backend})`,
    `  written per epoch   ${r.pagesPerEpoch.mean.toFixed(0)} pages (${mb(r.bytesPerEpoch.mean)}) mean, p99 ${r.pagesPerEpoch.p99} pages, max ${r.pagesPerEpoch.max}`,
    `  written per second  ${r.pagesPerSecond.toFixed(0)} pages, ${mb(r.bytesPerSecond)}/s`,
    `  working set         ${r.workingSetPages} distinct pages (${mb(r.workingSetBytes)})`,
    `  pause per epoch     p50 ${r.pauseMs.p50.toFixed(3)} ms, p99 ${r.pauseMs.p99.toFixed(3)} ms, max ${r.pauseMs.max.toFixed(3)} ms`,
    `  link needed         ${((r.bytesPerSecond * 8) / 1e6).toFixed(1)} Mbit/s before compression`,
  ].join('\n');
}
