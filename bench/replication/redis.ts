// What replication costs a real service: redis-server under redis-benchmark (SET, 50
// clients, 100k keys), unreplicated and replicated at several epoch lengths, in the same
// run, runs interleaved so that drift on a noisy machine hits every configuration alike.
// The primary and the standby are separate `replicate` processes on loopback (TLS with
// a pre-shared key, fsync on every commit), as a user would run them.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSecretFile } from '../../src/transport/security.js';
import { percentile } from '../../src/util/stats.js';
import { CliProcess, run, startRedis, stopTarget } from '../lib/processes.js';
import { fmt, machine, table, updateDocSection, writeJson } from '../lib/report.js';

interface Sample {
  epochMs: number | null;
  rps: number;
  p99Ms: number;
  commits: number;
  pagesPerEpoch: number;
  bytesPerEpoch: number;
  compression: number;
  pauseP50Ms: number;
  pauseP99Ms: number;
}

export interface RedisRow {
  config: string; epochMs: number | null; runs: number;
  rps: number; rpsMin: number; rpsMax: number; throughputRatio: number;
  p99Ms: number; p99Min: number; p99Max: number; p99Ratio: number;
  pagesPerEpoch: number; bytesPerEpoch: number; compression: number; pauseP50Ms: number; pauseP99Ms: number;
}

async function benchmark(port: number, requests: number): Promise<{ rps: number; p99Ms: number }> {
  const csv = await run('redis-benchmark', ['-p', String(port), '-t', 'set', '-c', '50', '-r', '100000', '-n', String(requests), '--csv'], { timeoutMs: 600_000 });
  const line = csv.trim().split('\n').find((l) => l.startsWith('"SET"'));
  if (!line) throw new Error(`redis-benchmark printed no SET line: ${csv}`);
  const f = line.split(',').map((x) => x.replace(/"/g, ''));
  return { rps: Number(f[1]), p99Ms: Number(f[6]) };
}

async function one(epochMs: number | null, requests: number, work: string, port: number): Promise<Sample> {
  const redis = await startRedis(port);
  let standby: CliProcess | undefined;
  let primary: CliProcess | undefined;
  try {
    if (epochMs !== null) {
      const key = join(work, 'key');
      writeSecretFile(key, { force: true });
      const sport = port + 1000;
      standby = new CliProcess(['standby', '--listen', `127.0.0.1:${sport}`, '--dir', join(work, `standby-${epochMs}-${Date.now()}`), '--secret-file', key]);
      await standby.next('listening', 10_000);
      primary = new CliProcess(['--pid', String(redis.pid), '--to', `127.0.0.1:${sport}`, '--epoch', `${epochMs}ms`, '--secret-file', key]);
      await primary.next('synced', 60_000);
    }
    const from = primary?.events.length ?? 0;
    const r = await benchmark(port, requests);
    let commits: Array<Record<string, unknown>> = [];
    if (primary) {
      await primary.next('commit', 10_000 + epochMs! * 3);
      commits = primary.events.slice(from).filter((e) => e.event === 'commit');
    }
    const pages = commits.reduce((s, c) => s + Number(c.pages), 0);
    const bytes = commits.reduce((s, c) => s + Number(c.bytes), 0);
    const last = commits.at(-1) as { pauseMs?: { p50: number; p99: number } } | undefined;
    return {
      epochMs, rps: r.rps, p99Ms: r.p99Ms, commits: commits.length,
      pagesPerEpoch: commits.length ? pages / commits.length : 0, bytesPerEpoch: commits.length ? bytes / commits.length : 0,
      compression: bytes ? (pages * 4096) / bytes : 0, pauseP50Ms: last?.pauseMs?.p50 ?? 0, pauseP99Ms: last?.pauseMs?.p99 ?? 0,
    };
  } finally {
    await primary?.stop();
    await standby?.stop();
    await stopTarget(redis);
  }
}

export async function runRedisBench(opts: { quick: boolean; log: (s: string) => void }): Promise<RedisRow[]> {
  const configs: Array<number | null> = [null, 1000, 100, 25];
  const runs = opts.quick ? 2 : 5;
  const requests = opts.quick ? 150_000 : 400_000;
  const work = mkdtempSync(join(tmpdir(), 'remus-bench-redis-'));
  const samples: Sample[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      for (const epochMs of configs) {
        const s = await one(epochMs, requests, work, 17379);
        opts.log(`run ${i + 1}/${runs} ${epochMs === null ? 'unreplicated' : `epoch ${epochMs} ms`}: ${Math.round(s.rps)} SET/s, p99 ${s.p99Ms} ms${s.commits ? `, ${s.commits} commits, ${Math.round(s.bytesPerEpoch)} B/epoch, ratio ${s.compression.toFixed(1)}x` : ''}`);
        samples.push(s);
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const med = (xs: number[]) => percentile(xs, 50);
  const base = samples.filter((s) => s.epochMs === null);
  const baseRps = med(base.map((s) => s.rps));
  const baseP99 = med(base.map((s) => s.p99Ms));
  const rows: RedisRow[] = configs.map((epochMs) => {
    const ss = samples.filter((s) => s.epochMs === epochMs);
    const rps = ss.map((s) => s.rps); const p99 = ss.map((s) => s.p99Ms);
    return {
      config: epochMs === null ? 'unreplicated' : `epoch ${epochMs} ms`, epochMs, runs: ss.length,
      rps: med(rps), rpsMin: Math.min(...rps), rpsMax: Math.max(...rps), throughputRatio: med(rps) / baseRps,
      p99Ms: med(p99), p99Min: Math.min(...p99), p99Max: Math.max(...p99), p99Ratio: med(p99) / baseP99,
      pagesPerEpoch: med(ss.map((s) => s.pagesPerEpoch)), bytesPerEpoch: med(ss.map((s) => s.bytesPerEpoch)),
      compression: med(ss.map((s) => s.compression)), pauseP50Ms: med(ss.map((s) => s.pauseP50Ms)), pauseP99Ms: med(ss.map((s) => s.pauseP99Ms)),
    };
  });
  const result = { name: 'replication-redis', machine: machine(), command: 'npm run bench -- --only replication-redis', runs, requests, samples, rows };
  opts.log(`wrote ${writeJson('replication-redis', result)}`);
  const at = (ms: number) => rows.find((r) => r.epochMs === ms)!;
  const loss = (ms: number) => (1 - at(ms).throughputRatio) * 100;
  updateDocSection('replication-redis', [
    '## Replicating redis-server: throughput, latency, link use',
    '',
    `Command: \`npm run bench -- --only replication-redis\` (quick: \`--quick\`). Machine: ${result.machine.cpu}, ${result.machine.cores} cores, kernel ${result.machine.kernel}, commit ${result.machine.commit}, ${String(result.machine.date).slice(0, 10)}. Raw data: \`bench/results/replication-redis.json\`.`,
    '',
    `redis-server 7 (no persistence) under \`redis-benchmark -t set -c 50 -r 100000 -n ${requests}\`, unreplicated and replicated by a \`replicate\` primary process to a \`replicate standby\` process on loopback (TLS 1.3 with a pre-shared key; the standby fsyncs every commit). ${runs} runs per configuration, interleaved; medians with min–max. Everything runs on the same ${result.machine.cores} cores: redis, the load generator, the primary agent and the standby compete for them, which a two-host deployment would not.`,
    '',
    table(['configuration', 'SET/s (min–max)', 'throughput ratio', 'p99 ms (min–max)', 'p99 ratio', 'pause p50 / p99 ms', 'pages per epoch', 'bytes on the wire per epoch', 'compression'],
      rows.map((r) => [r.config, `${Math.round(r.rps)} (${Math.round(r.rpsMin)}–${Math.round(r.rpsMax)})`, fmt(r.throughputRatio, 3), `${fmt(r.p99Ms, 2)} (${fmt(r.p99Min, 2)}–${fmt(r.p99Max, 2)})`, fmt(r.p99Ratio),
        r.epochMs === null ? '–' : `${fmt(r.pauseP50Ms)} / ${fmt(r.pauseP99Ms)}`, r.epochMs === null ? '–' : Math.round(r.pagesPerEpoch), r.epochMs === null ? '–' : Math.round(r.bytesPerEpoch), r.epochMs === null ? '–' : `${fmt(r.compression, 1)}x`])),
    '',
    `**Goal: at most 5 % throughput loss at 100 ms and at most 15 % at 25 ms.** Measured: ${fmt(loss(100), 1)} % at 100 ms (${loss(100) <= 5 ? 'met' : 'not met'}), ${fmt(loss(25), 1)} % at 25 ms (${loss(25) <= 15 ? 'met' : 'not met'}). Compression is whole pages with zero pages split out and LZ4 on the rest; the page-delta codec is to improve it.`,
  ].join('\n'));
  return rows;
}
