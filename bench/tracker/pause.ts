// Pause per epoch against the dirty set, per backend, with the physical floor measured in
// the same run, and the cost a target pays for its first write to a tracked page.
//
// Targets: test/targets/dirtier with a 64 MiB and a 1 GiB region, every page populated.
// Each sample: the target writes a random p % of its pages (all of them for 100 %), then
// one epoch. The floor for the same dirty set: one PAGEMAP_SCAN walk over the region (no
// write-protection) plus process_vm_readv of exactly the reported pages.
import { chooseBackend, PAGE_SIZE, Tracker, type BackendName } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { percentile } from '../../src/util/stats.js';
import { buildTargets } from '../../test/helpers/build-targets.js';
import { Target } from '../../test/helpers/target.js';
import { mulberry32, randomSubset } from '../../test/helpers/tracking.js';
import { Figures, summary, type PlotSink, type RunContext, type Scenario, type ScenarioOutput, type ScenarioResult, type Summary } from '../lib/harness.js';
import { figureTable, fmt, provenance, table } from '../lib/report.js';

export interface PauseRow {
  backend: BackendName; sizeMiB: number; percent: number; dirtyPages: number; samples: number;
  pauseP50Ms: number; pauseP99Ms: number; pauseMaxMs: number;
  freezeMs: number; captureMs: number; scanMs: number; readMs: number; thawMs: number;
  floorP50Ms: number; floorP99Ms: number; ratioP50: number; ratioP99: number;
  pauseMinMs: number; floorMinMs: number; floorMaxMs: number;
  /** pause / floor of each sample (same dirty set): median, min, max. */
  ratio: Summary;
}

const ms = (ns: number) => ns / 1e6;

/** Pages of `ranges` inside [lo, hi). */
function regionOnly(ranges: BigUint64Array, lo: bigint, hi: bigint): number {
  let n = 0;
  for (let i = 0; i < ranges.length; i += 2) {
    const s = ranges[i]!; const e = s + ranges[i + 1]! * 4096n;
    if (e > lo && s < hi) n += Number(((e < hi ? e : hi) - (s > lo ? s : lo)) / 4096n);
  }
  return n;
}

async function measure(backend: BackendName, pages: number, percent: number, samples: number, rnd: () => number): Promise<PauseRow> {
  const t = await Target.spawn({ pages, readyTimeoutMs: 60_000 });
  const tracker = await Tracker.attach(t.pid, { backend });
  try {
    const region = t.info.region;
    const end = region + BigInt(pages * PAGE_SIZE);
    const count = Math.max(1, Math.round((pages * percent) / 100));
    const pause: number[] = []; const floor: number[] = [];
    const parts = { freeze: [] as number[], capture: [] as number[], scan: [] as number[], read: [] as number[], thaw: [] as number[] };
    let dirty = 0;
    let last = '';
    for (let i = 0; i < samples + 3; i++) {
      last = percent >= 100 ? `wr 0 ${pages}` : `w ${randomSubset(pages, count, rnd).join(' ')}`;
      await t.ok(last, 120_000);
      const e = await tracker.epoch();
      if (i >= 3) { // the first epochs warm the buffer pool
        pause.push(ms(e.timings.pauseNs));
        parts.freeze.push(ms(e.timings.freezeNs)); parts.capture.push(ms(e.timings.captureNs));
        parts.scan.push(ms(e.timings.scanNs)); parts.read.push(ms(e.timings.readNs)); parts.thaw.push(ms(e.timings.thawNs));
        dirty = e.stats.pages;
        // The floor on the same dirty set: the target writes the same pages again and
        // the floor finds them with the kernel's fast scan (uffd-wp), or, for backends
        // without registered memory, only reads them.
        if (backend === 'uffd-wp') {
          await t.ok(last, 120_000);
          const f = native().benchFloor(t.pid, region, end);
          if (Math.abs(f.pages - regionOnly(e.ranges, region, end)) > 2) throw new Error(`floor found ${f.pages} pages, the epoch ${regionOnly(e.ranges, region, end)}`);
          floor.push(ms(f.scanNs + f.readNs));
        } else {
          const f = native().benchFloor(t.pid, region, end, e.ranges);
          floor.push(ms(f.scanNs + f.readNs));
        }
      }
      e.release();
    }
    const p50 = (xs: number[]) => percentile(xs, 50);
    return {
      backend, sizeMiB: (pages * PAGE_SIZE) / 2 ** 20, percent, dirtyPages: dirty, samples,
      pauseP50Ms: p50(pause), pauseP99Ms: percentile(pause, 99), pauseMaxMs: Math.max(...pause),
      freezeMs: p50(parts.freeze), captureMs: p50(parts.capture), scanMs: p50(parts.scan), readMs: p50(parts.read), thawMs: p50(parts.thaw),
      floorP50Ms: p50(floor), floorP99Ms: percentile(floor, 99),
      ratioP50: p50(pause) / p50(floor), ratioP99: percentile(pause, 99) / percentile(floor, 99),
      pauseMinMs: Math.min(...pause), floorMinMs: Math.min(...floor), floorMaxMs: Math.max(...floor),
      ratio: summary(pause.map((x, i) => x / floor[i]!)),
    };
  } finally {
    await tracker.close();
    await t.kill();
  }
}

/** Extra time per page for a target's first write to a page after an epoch re-armed tracking. */
async function firstWriteCost(backend: BackendName, pages: number): Promise<{ backend: BackendName; untrackedNsPerPage: number; trackedNsPerPage: number; extraNsPerPage: number }> {
  const t = await Target.spawn({ pages, readyTimeoutMs: 60_000 });
  try {
    const untracked: number[] = []; const tracked: number[] = [];
    for (let i = 0; i < 5; i++) untracked.push(Number(await t.ok(`wrt 0 ${pages}`, 60_000)) / pages);
    const tracker = await Tracker.attach(t.pid, { backend });
    try {
      for (let i = 0; i < 5; i++) {
        (await tracker.epoch({ pages: false })).release();
        tracked.push(Number(await t.ok(`wrt 0 ${pages}`, 60_000)) / pages);
      }
    } finally { await tracker.close(); }
    const u = percentile(untracked, 50); const k = percentile(tracked, 50);
    return { backend, untrackedNsPerPage: u, trackedNsPerPage: k, extraNsPerPage: k - u };
  } finally { await t.kill(); }
}

export interface PauseData {
  rows: PauseRow[];
  firstWrite: Array<{ backend: BackendName; untrackedNsPerPage: number; trackedNsPerPage: number; extraNsPerPage: number }>;
  unavailable: Array<{ backend: string; reason: string }>;
}

export async function runPause(opts: RunContext): Promise<ScenarioOutput<PauseData>> {
  await buildTargets();
  const sizes = [16384, 262144]; // 64 MiB, 1 GiB
  const percents = [0.1, 1, 10, 100];
  const rnd = mulberry32(42);
  const rows: PauseRow[] = [];
  const unavailable: Array<{ backend: string; reason: string }> = [];
  const costs = [];
  const backends = (['uffd-wp', 'soft-dirty', 'hash'] as BackendName[]).filter((backend) => {
    const c = chooseBackend(backend);
    if (!c.available) { unavailable.push({ backend, reason: c.reason }); opts.log(`${backend}: unavailable (${c.reason})`); }
    return c.available;
  });
  const total = backends.length * (sizes.length * percents.length + 1);
  let done = 0;
  for (const backend of backends) {
    for (const pages of sizes) {
      for (const percent of percents) {
        const samples = backend === 'hash' ? (opts.quick ? 5 : 10) : percent <= 1 ? (opts.quick ? 50 : 200) : (opts.quick ? 10 : 30);
        opts.progress(done, total, `${backend} ${(pages * 4) / 1024} MiB, ${percent} % written: ${samples} epochs`);
        const row = await measure(backend, pages, percent, samples, rnd);
        done++;
        opts.log(`${backend} ${(pages * 4) / 1024} MiB ${percent}%: pause p50 ${fmt(row.pauseP50Ms, 3)} ms p99 ${fmt(row.pauseP99Ms, 3)} ms, floor p50 ${fmt(row.floorP50Ms, 3)} ms (x${fmt(row.ratioP50)})`);
        rows.push(row);
      }
    }
    opts.progress(done, total, `${backend}: first write to a tracked page`);
    costs.push(await firstWriteCost(backend, 65536));
    done++;
  }
  const F = new Figures('tracker-pause');
  for (const r of rows) {
    const config = `${r.backend}, ${r.sizeMiB} MiB target, ${r.percent} % written (${r.dirtyPages} pages)`;
    // Medians over the epochs with min and max; the ratio per epoch against the floor measured on the same dirty set.
    const floor = F.add({ what: 'physical floor (one PAGEMAP_SCAN walk + process_vm_readv of the same pages)', config, unit: 'ms', values: [r.floorMinMs, r.floorP50Ms, r.floorMaxMs], better: 'lower', over: `epochs (${r.samples}; median, min, max as measured)` });
    const f = F.add({ what: 'pause per epoch', config, unit: 'ms', values: [r.pauseMinMs, r.pauseP50Ms, r.pauseMaxMs], better: 'lower', over: `epochs (${r.samples}; median, min, max as measured)` }, { figure: floor });
    f.ratio = r.ratio;
    f.runs = r.samples; floor.runs = r.samples;
    F.add({ what: 'pause per epoch, p99', config, unit: 'ms', values: [r.pauseP99Ms], better: 'lower', over: 'epochs (p99)' });
  }
  for (const c of costs) F.add({ what: 'extra cost of the first write to a tracked page', config: c.backend, unit: 'ns/page', values: [c.extraNsPerPage], better: 'lower', over: 'run (median of 5 loops)' });
  return { figures: F.list, data: { rows, firstWrite: costs, unavailable } };
}

export function renderPause(r: ScenarioResult<PauseData>, plot: PlotSink): string {
  const { rows, firstWrite: costs, unavailable } = r.data;
  const goal = rows.find((x) => x.backend === 'uffd-wp' && x.sizeMiB === 1024 && x.percent === 1);
  const points = rows.flatMap((x) => [
    { series: `${x.backend}, ${x.sizeMiB} MiB`, dirtyPages: x.dirtyPages, ms: x.pauseP50Ms, min: x.pauseMinMs, max: x.pauseMaxMs, kind: 'pause per epoch' },
    { series: `${x.backend}, ${x.sizeMiB} MiB`, dirtyPages: x.dirtyPages, ms: x.floorP50Ms, min: x.floorMinMs, max: x.floorMaxMs, kind: 'floor (same pages)' },
  ]);
  return [
    '## 1. Pause per epoch against the dirty set (tracker), with the physical floor',
    '',
    provenance(r),
    '',
    'Each sample: the target (test/targets/dirtier, every page populated) writes a random p % of its pages, then one epoch: freeze every thread, capture registers, layout and brk, find the dirty pages and re-arm, read them, thaw. The **floor** is measured in the same run on the same dirty set, without freezing: the target writes the same pages again, then one `PAGEMAP_SCAN` fast-path walk over the region finds and re-protects them and one thread reads exactly those pages with `process_vm_readv`: what any tracker must at least spend. (For hash, whose memory is not registered, the floor is the read alone.) Ratios are pause / floor of the same sample: median (min–max) over the samples; below 1 means the epoch beat a single-threaded floor (pages are read by two threads while the target is frozen).',
    '',
    plot('pause', {
      title: { text: 'Pause per epoch against pages written, and the physical floor', subtitle: 'solid: pause per epoch; dashed: the floor on the same pages; median over epochs, rule = min–max; log–log' },
      data: { values: points }, width: 520, height: 300,
      layer: [
        { mark: { type: 'line', point: true, tooltip: true }, encoding: {
          x: { field: 'dirtyPages', type: 'quantitative', scale: { type: 'log' }, title: 'pages written in the epoch (4 KiB)' },
          y: { field: 'ms', type: 'quantitative', scale: { type: 'log' }, title: 'ms' },
          color: { field: 'series', type: 'nominal', title: 'backend, target' },
          strokeDash: { field: 'kind', type: 'nominal', title: null, scale: { domain: ['pause per epoch', 'floor (same pages)'], range: [[1, 0], [4, 3]] }, legend: null },
          detail: { field: 'kind', type: 'nominal' },
        } },
        { mark: { type: 'rule' }, encoding: {
          x: { field: 'dirtyPages', type: 'quantitative', scale: { type: 'log' } },
          y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' },
          color: { field: 'series', type: 'nominal' },
        } },
      ],
    }, 'Pause per epoch against pages written, with the physical floor'),
    '',
    table(['backend', 'target', 'written', 'pages', 'pause p50 ms (min–max)', 'pause p99 ms', 'freeze', 'capture', 'scan', 'read', 'thaw', 'floor p50 ms (min–max)', 'pause / floor (min–max)', 'p99 / floor p99'],
      rows.map((x) => [x.backend, `${x.sizeMiB} MiB`, `${x.percent} %`, x.dirtyPages, `${fmt(x.pauseP50Ms, 3)} (${fmt(x.pauseMinMs, 3)}–${fmt(x.pauseMaxMs, 3)})`, fmt(x.pauseP99Ms, 3),
        fmt(x.freezeMs, 3), fmt(x.captureMs, 3), fmt(x.scanMs, 3), fmt(x.readMs, 3), fmt(x.thawMs, 3), `${fmt(x.floorP50Ms, 3)} (${fmt(x.floorMinMs, 3)}–${fmt(x.floorMaxMs, 3)})`,
        x.ratio ? `${fmt(x.ratio.median)} (${fmt(x.ratio.min)}–${fmt(x.ratio.max)})` : fmt(x.ratioP50), fmt(x.ratioP99)])),
    '',
    '(freeze, capture, scan, read, thaw: p50 in ms.)',
    '',
    goal ? `**Goal (uffd-wp, 1 GiB, 1 % per epoch): pause p99 ≤ 3 ms and within 1.5× of the floor.** Measured: p99 ${fmt(goal.pauseP99Ms, 3)} ms (${goal.pauseP99Ms <= 3 ? 'met' : 'not met'}); p99 / floor p99 = ${fmt(goal.ratioP99)} (${goal.ratioP99 <= 1.5 ? 'met' : 'not met'}).` : '',
    '',
    '### First write to a tracked page',
    '',
    'The target writes 65 536 pages (256 MiB) and times the loop itself (`wrt`), untracked, then right after each epoch re-armed tracking (median of 5 loops each).',
    '',
    table(['backend', 'untracked ns/page', 'tracked ns/page', 'extra ns per first write'], costs.map((c) => [c.backend, fmt(c.untrackedNsPerPage, 0), fmt(c.trackedNsPerPage, 0), fmt(c.extraNsPerPage, 0)])),
    '',
    unavailable.length ? `Not measured: ${unavailable.map((u) => `${u.backend} (${u.reason})`).join('; ')}.` : '',
    '',
    '<details><summary>The figures as stored in the JSON</summary>',
    '',
    figureTable(r.figures, 3),
    '',
    '</details>',
  ].join('\n');
}

export const pauseScenario: Scenario<PauseData> = {
  name: 'tracker-pause',
  aliases: ['pause'],
  title: '1. Pause per epoch against the dirty set (tracker)',
  summary: 'pause per epoch against pages written, 64 MiB and 1 GiB, every backend, with the physical floor',
  run: runPause,
  render: renderPause,
};
