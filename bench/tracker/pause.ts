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
import { fmt, machine, table, updateDocSection, writeJson } from '../lib/report.js';

export interface PauseRow {
  backend: BackendName; sizeMiB: number; percent: number; dirtyPages: number; samples: number;
  pauseP50Ms: number; pauseP99Ms: number; pauseMaxMs: number;
  freezeMs: number; captureMs: number; scanMs: number; readMs: number; thawMs: number;
  floorP50Ms: number; floorP99Ms: number; ratioP50: number; ratioP99: number;
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

export async function runPauseBench(opts: { quick: boolean; log: (s: string) => void }): Promise<void> {
  await buildTargets();
  const sizes = [16384, 262144]; // 64 MiB, 1 GiB
  const percents = [0.1, 1, 10, 100];
  const rnd = mulberry32(42);
  const rows: PauseRow[] = [];
  const unavailable: Array<{ backend: string; reason: string }> = [];
  const costs = [];
  for (const backend of ['uffd-wp', 'soft-dirty', 'hash'] as BackendName[]) {
    const c = chooseBackend(backend);
    if (!c.available) { unavailable.push({ backend, reason: c.reason }); opts.log(`${backend}: unavailable (${c.reason})`); continue; }
    for (const pages of sizes) {
      for (const percent of percents) {
        const samples = backend === 'hash' ? (opts.quick ? 5 : 10) : percent <= 1 ? (opts.quick ? 50 : 200) : (opts.quick ? 10 : 30);
        opts.log(`${backend} ${(pages * 4) / 1024} MiB ${percent}%: ${samples} epochs`);
        const row = await measure(backend, pages, percent, samples, rnd);
        opts.log(`  pause p50 ${fmt(row.pauseP50Ms, 3)} ms p99 ${fmt(row.pauseP99Ms, 3)} ms, floor p50 ${fmt(row.floorP50Ms, 3)} ms (x${fmt(row.ratioP50)})`);
        rows.push(row);
      }
    }
    costs.push(await firstWriteCost(backend, 65536));
  }
  const result = { name: 'tracker-pause', machine: machine(), command: 'npm run bench -- --only tracker-pause', rows, firstWrite: costs, unavailable };
  const json = writeJson('tracker-pause', result);
  opts.log(`wrote ${json}`);
  const goal = rows.find((r) => r.backend === 'uffd-wp' && r.sizeMiB === 1024 && r.percent === 1);
  updateDocSection('tracker-pause', [
    '## Pause per epoch against the dirty set (tracker)',
    '',
    `Command: \`npm run bench -- --only tracker-pause\` (quick: \`--quick\`). Machine: ${result.machine.cpu}, ${result.machine.cores} cores, kernel ${result.machine.kernel}, commit ${result.machine.commit}, ${String(result.machine.date).slice(0, 10)}. Raw data: \`bench/results/tracker-pause.json\`.`,
    '',
    'Each sample: the target (test/targets/dirtier, every page populated) writes a random p % of its pages, then one epoch: freeze every thread, capture registers, layout and brk, find the dirty pages and re-arm, read them, thaw. The **floor** is measured in the same run on the same dirty set, without freezing: the target writes the same pages again, then one `PAGEMAP_SCAN` fast-path walk over the region finds and re-protects them and one thread reads exactly those pages with `process_vm_readv`: what any tracker must at least spend. (For hash, whose memory is not registered, the floor is the read alone.) Ratios are pause / floor; below 1 means the epoch beat a single-threaded floor (pages are read by two threads while the target is frozen).',
    '',
    table(['backend', 'target', 'written', 'pages', 'pause p50 ms', 'pause p99 ms', 'max ms', 'freeze', 'capture', 'scan', 'read', 'thaw', 'floor p50 ms', 'p50 / floor', 'p99 / floor p99'],
      rows.map((r) => [r.backend, `${r.sizeMiB} MiB`, `${r.percent} %`, r.dirtyPages, fmt(r.pauseP50Ms, 3), fmt(r.pauseP99Ms, 3), fmt(r.pauseMaxMs, 3), fmt(r.freezeMs, 3), fmt(r.captureMs, 3), fmt(r.scanMs, 3), fmt(r.readMs, 3), fmt(r.thawMs, 3), fmt(r.floorP50Ms, 3), fmt(r.ratioP50), fmt(r.ratioP99)])),
    '',
    '(freeze, capture, scan, read, thaw: p50 in ms.)',
    '',
    goal ? `**Goal (uffd-wp, 1 GiB, 1 % per epoch): pause p99 ≤ 3 ms and within 1.5× of the floor.** Measured: p99 ${fmt(goal.pauseP99Ms, 3)} ms (${goal.pauseP99Ms <= 3 ? 'met' : 'not met'}); p99 / floor p99 = ${fmt(goal.ratioP99)} (${goal.ratioP99 <= 1.5 ? 'met' : 'not met'}).` : '',
    '',
    '### First write to a tracked page',
    '',
    'The target writes 65 536 pages (256 MiB) and times the loop itself (`wrt`), untracked, then right after each epoch re-armed tracking.',
    '',
    table(['backend', 'untracked ns/page', 'tracked ns/page', 'extra ns per first write'], costs.map((c) => [c.backend, fmt(c.untrackedNsPerPage, 0), fmt(c.trackedNsPerPage, 0), fmt(c.extraNsPerPage, 0)])),
    '',
    unavailable.length ? `Not measured: ${unavailable.map((u) => `${u.backend} (${u.reason})`).join('; ')}.` : '',
  ].join('\n'));
}
