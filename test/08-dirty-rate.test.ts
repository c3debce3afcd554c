// `replicate dirty-rate`: the documented JSON shape, from a real writer.
import { afterEach, expect, it } from 'vitest';
import { measureDirtyRate } from '../src/index.js';
import { cli } from './helpers/cli.js';
import { killAll, Target } from './helpers/target.js';

afterEach(async () => { await killAll(); });

it('measures a writer that dirties a known share of its pages', async () => {
  // 2048 pages; rand writes about 5 % of them per 10 ms, i.e. ~100 page writes per 10 ms.
  const t = await Target.spawn({ pages: 2048, threads: 2 });
  await t.ok('rand 30 5');
  const r = await cli(['dirty-rate', '--pid', String(t.pid), '--duration', '1500ms', '--epoch', '50ms', '--json']);
  await t.ok('stop');
  expect(r.code, r.stderr).toBe(0);
  const report = JSON.parse(r.stdout);
  for (const k of ['pagesPerSecond', 'bytesPerSecond', 'workingSetPages', 'backend']) expect(report).toHaveProperty(k);
  for (const k of ['p50', 'p99', 'max']) expect(report.pauseMs[k]).toBeGreaterThan(0);
  expect(report.backend).toBe('uffd-wp');
  expect(report.epochs).toBeGreaterThanOrEqual(20);
  expect(report.pagesPerSecond).toBeGreaterThan(500);
  expect(report.bytesPerSecond).toBe(report.pagesPerSecond * 4096);
  // Random pages of a 2048-page region, thousands of writes: the working set is most of it.
  expect(report.workingSetPages).toBeGreaterThan(1000);
  expect(report.workingSetPages).toBeLessThanOrEqual(2048 + 64);
});

it('an idle process writes (almost) nothing', async () => {
  const t = await Target.spawn({ pages: 512 });
  const r = await measureDirtyRate({ pid: t.pid, durationMs: 500, epochMs: 50 });
  expect(r.epochs).toBeGreaterThanOrEqual(5);
  // The target sleeps in read(): its stack page at most.
  expect(r.pagesPerEpoch.max).toBeLessThanOrEqual(2);
});

it('a PID that exits during the measurement: exit code 3 and a clear message', async () => {
  const t = await Target.spawn();
  const run = cli(['dirty-rate', '--pid', String(t.pid), '--duration', '5s', '--epoch', '20ms']);
  await new Promise((r) => setTimeout(r, 600));
  await t.kill();
  const r = await run;
  expect(r.code).toBe(3);
  expect(r.stderr).toMatch(/exited/);
});
