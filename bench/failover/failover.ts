// Failover time: from the SIGKILL of the primary side (agent and target) to the first
// successful request to the restored service, split into detection, image building,
// restore and the health check, for 64 MiB and 1 GiB targets at 50 ms heartbeats.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PromotionResult } from '../../src/failover/promoter.js';
import { native } from '../../src/native/binding.js';
import { Standby } from '../../src/standby/standby.js';
import { readSecretFile, writeSecretFile } from '../../src/transport/security.js';
import { percentile } from '../../src/util/stats.js';
import { buildTargets } from '../../test/helpers/build-targets.js';
import { CliProcess } from '../../test/helpers/cli-process.js';
import { field, query, startCounter, waitGone } from '../../test/helpers/counter.js';
import { fmt, machine, table, updateDocSection, writeJson } from '../lib/report.js';

export interface FailoverSample {
  sizeMiB: number; killToServingMs: number; detectionMs: number; buildMs: number; restoreMs: number; healthMs: number;
  epoch: number; counterAtRestore: string;
}

async function killRestored(pid: number): Promise<void> {
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  for (let i = 0; i < 1000; i++) {
    if (native().reapChild(pid)) return;
    await sleep(5);
  }
}

async function once(sizeMiB: number, work: string, log: (s: string) => void): Promise<FailoverSample> {
  const pages = (sizeMiB * 2 ** 20) / 4096;
  const dir = mkdtempSync(join(work, 'run-'));
  const key = join(dir, 'key');
  writeSecretFile(key, { force: true });
  const c = await startCounter(dir, 'c', ['--pages', String(pages), '--fill', '--writers', '1']);
  const sb = await Standby.start({
    host: '127.0.0.1', port: 0, dir: join(dir, 'standby'), security: { kind: 'psk', key: readSecretFile(key) }, heartbeatMs: 50,
    detector: { kind: 'phi', heartbeatMs: 50 }, promotion: { health: { kind: 'tcp', host: '127.0.0.1', port: c.port }, healthTimeoutMs: 30_000 },
  });
  const pr = new CliProcess(['--pid', String(c.pid), '--to', `127.0.0.1:${sb.port}`, '--secret-file', key, '--epoch', '100ms', '--heartbeat', '50ms']);
  let restoredPid: number | null = null;
  try {
    await pr.next('synced', 300_000);
    const first = sb.stats().committedEpoch;
    for (let i = 0; sb.stats().committedEpoch < first + 5; i++) { if (i > 3000) throw new Error('no commits'); await sleep(10); }
    const promotedP = new Promise<PromotionResult>((resolve) => sb.once('promoted', resolve));
    const tKill = performance.now();
    pr.child.kill('SIGKILL');
    await c.kill();
    const r = await promotedP;
    if (r.outcome !== 'restored') throw new Error(`promotion failed: ${r.errors.join(' | ')}`);
    restoredPid = r.pid;
    let reply = '';
    for (;;) {
      try { reply = await query(c.port, 'get', 2000); break; } catch { await sleep(1); }
    }
    const killToServingMs = performance.now() - tKill;
    const t = r.timings;
    log(`  ${sizeMiB} MiB: kill -> serving ${Math.round(killToServingMs)} ms (detection ${Math.round(t.detectionMs)}, image ${Math.round(t.buildMs)}, restore ${Math.round(t.restoreMs)}, health ${Math.round(t.healthMs)})`);
    return { sizeMiB, killToServingMs, detectionMs: t.detectionMs, buildMs: t.buildMs, restoreMs: t.restoreMs, healthMs: t.healthMs, epoch: r.epoch, counterAtRestore: String(field(reply, 'counter')) };
  } finally {
    await pr.stop('SIGKILL');
    await sb.stop();
    if (restoredPid) await killRestored(restoredPid);
    await c.kill().catch(() => undefined);
    await waitGone(c.pid).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function runFailoverBench(opts: { quick: boolean; log: (s: string) => void }): Promise<void> {
  await buildTargets();
  const sizes = [64, 1024];
  const runs = opts.quick ? 2 : 5;
  const work = mkdtempSync(join(tmpdir(), 'remus-bench-failover-'));
  const samples: FailoverSample[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      for (const size of sizes) {
        opts.log(`failover run ${i + 1}/${runs}, ${size} MiB`);
        samples.push(await once(size, work, opts.log));
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const med = (xs: number[]) => percentile(xs, 50);
  const rows = sizes.map((size) => {
    const ss = samples.filter((s) => s.sizeMiB === size);
    const col = (k: keyof FailoverSample) => ss.map((s) => Number(s[k]));
    return {
      sizeMiB: size, runs: ss.length,
      totalMs: med(col('killToServingMs')), totalMin: Math.min(...col('killToServingMs')), totalMax: Math.max(...col('killToServingMs')),
      detectionMs: med(col('detectionMs')), buildMs: med(col('buildMs')), restoreMs: med(col('restoreMs')), healthMs: med(col('healthMs')),
    };
  });
  const result = { name: 'failover', machine: machine(), command: 'npm run bench -- --only failover', runs, samples, rows };
  opts.log(`wrote ${writeJson('failover', result)}`);
  const big = rows.find((r) => r.sizeMiB === 1024)!;
  updateDocSection('failover', [
    '## Failover time',
    '',
    `Command: \`npm run bench -- --only failover\` (quick: \`--quick\`). Machine: ${result.machine.cpu}, ${result.machine.cores} cores, kernel ${result.machine.kernel}, commit ${result.machine.commit}, ${String(result.machine.date).slice(0, 10)}. Raw data: \`bench/results/failover.json\`.`,
    '',
    `The target is test/targets/counter with every page of its array written (64 MiB or 1 GiB) and one writer thread; a \`replicate\` primary process at 100 ms epochs and 50 ms heartbeats; a standby (phi accrual, threshold 8) with a TCP health check on the target's port. Each run SIGKILLs the primary agent and the target at once and measures from the kill to the first answer of the restored process on its port. ${runs} runs per size; medians with min–max.`,
    '',
    table(['target', 'kill → serving ms (min–max)', 'detection ms', 'image building ms', 'criu restore ms', 'health check ms'],
      rows.map((r) => [`${r.sizeMiB} MiB`, `${fmt(r.totalMs, 0)} (${fmt(r.totalMin, 0)}–${fmt(r.totalMax, 0)})`, fmt(r.detectionMs, 0), fmt(r.buildMs, 0), fmt(r.restoreMs, 0), fmt(r.healthMs, 0)])),
    '',
    `**Goal: at most 300 ms in total for the 1 GiB target.** Measured: ${fmt(big.totalMs, 0)} ms (${big.totalMs <= 300 ? 'met' : 'not met'}).`,
  ].join('\n'));
}
