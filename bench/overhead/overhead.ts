// Scenarios 2 and 3 and the periodic-CRIU baseline: what protecting a real service costs it,
// and what it puts on the link.
//
// Workloads: redis-server 7 (no persistence) under redis-benchmark (SET, then GET over the
// keys SET wrote; 50 clients, 100 000 keys), and a Node.js HTTP server with in-memory state
// (bench/targets/http-server.mjs) under autocannon (20 connections). Configurations, in the
// same run, interleaved round by round (the order reversed every other round):
//   - unreplicated (baseline c: no replication at all),
//   - ours: a `replicate` primary process protecting the target, streaming to a
//     `replicate standby` process on loopback (TLS 1.3 with a pre-shared key, fsync on
//     every commit), at epochs of 25, 100 and 1000 ms,
//   - baseline a: periodic CRIU dumps (bench/baselines/criu-periodic.ts) at the same periods.
// Each session starts a fresh target, and the agents or the dumper, then runs the load.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../../src/util/paths.js';
import { locateCriu } from '../../src/criu/locate.js';
import { readStatus } from '../../src/status/status.js';
import { writeSecretFile } from '../../src/transport/security.js';
import { percentile } from '../../src/util/stats.js';
import { PeriodicDumps, type DumpRecord } from '../baselines/criu-periodic.js';
import { Figures, median, summary, type Figure, type RunContext, type Scenario, type ScenarioOutput, type ScenarioResult } from '../lib/harness.js';
import { barsWithRange } from '../lib/plot.js';
import { autocannon, cleanup, CliProcess, freePort, redisBenchmark, startChild, startCli, startHttpServer, startRedis, stopChild, type LoadResult, type Target } from '../lib/processes.js';
import { CLI } from '../../test/helpers/cli-process.js';
import { fmt, figureTable, provenance, table } from '../lib/report.js';

/**
 * `idleStandby`: the standby runs at idle priority (SCHED_IDLE, every thread): it gets only
 * the CPU the target and the load generator leave, which is what a standby on its own host
 * costs the primary's host (nothing). This machine cannot give it cores of its own.
 * `discardingStandby`: no standby at all but bench/overhead/discarding-standby.mjs, which
 * receives over the real transport and acknowledges every batch at once, storing nothing:
 * the primary's own cost, with the standby's work off this host as two hosts would have it.
 */
export type Config = { kind: 'none' } | { kind: 'ours'; epochMs: number; idleStandby?: boolean; discardingStandby?: boolean } | { kind: 'track'; epochMs: number } | { kind: 'criu'; epochMs: number };
export type Workload = 'redis' | 'http';

const DISCARDING_STANDBY = join(packageRoot, 'bench', 'overhead', 'discarding-standby.mjs');
export type PhaseName = 'redis SET' | 'redis GET' | 'node HTTP';

const PHASES: PhaseName[] = ['redis SET', 'redis GET', 'node HTTP'];
export const LINK_BYTES_PER_S = 1e9 / 8; // 1 Gbit/s

export function configLabel(c: Config): string {
  return c.kind === 'none' ? 'unreplicated' : c.kind === 'ours' ? `ours, epoch ${c.epochMs} ms${c.idleStandby ? ', standby idle-priority' : c.discardingStandby ? ', standby discards' : ''}`
    : c.kind === 'track' ? `tracking only, epoch ${c.epochMs} ms` : `CRIU dump every ${c.epochMs} ms`;
}

/** The series a configuration is drawn in. */
function kindLabel(k: Config['kind']): string {
  return k === 'ours' ? 'ours' : k === 'track' ? 'ours, tracking only' : 'CRIU dumps';
}

export interface PhaseSample {
  phase: PhaseName; rps: number; p50Ms: number; p99Ms: number; ms: number; requests?: number; errors?: number;
  /** The slowest request: the longest stall the clients saw. */
  maxMs?: number;
  /** ours: CPU the primary agent and the standby used during the phase, in cores (CPU seconds per second). */
  agentCores?: number; standbyCores?: number;
  /** ours: bytes the standby process wrote to its disk per second during the phase (/proc/PID/io write_bytes: store and compactions). */
  standbyDiskBytesPerSecond?: number;
  /** ours: commits during the phase. */
  commits?: number; epochs?: number; pages?: number; wireBytes?: number;
  pauseMs?: { p50: number; p99: number; max: number };
  /** CRIU: dumps that started during the phase. */
  dumps?: number; dumpsFailed?: number; frozenMs?: { p50: number; p99: number; max: number }; dumpMs?: number;
  shippedBytes?: number; imageBytes?: number;
}

export interface Session {
  round: number; workload: Workload; config: Config; label: string; phases: PhaseSample[];
  rebases?: number; syncs?: number; compressionRatio?: number; error?: string;
  criuErrors?: string[];
}

export interface OverheadData {
  rounds: number; redisRequests: number; httpSeconds: number; httpConnections: number; epochs: number[];
  criu: string; criuNetworkLock: string; sessions: Session[];
  rows: Row[];
}

/** One configuration of one workload phase, over the rounds. */
export interface Row {
  phase: PhaseName; config: string; kind: Config['kind']; epochMs: number | null; runs: number;
  rps: number; rpsMin: number; rpsMax: number; tputRatio: number; tputRatioMin: number; tputRatioMax: number;
  p99Ms: number; p99Min: number; p99Max: number; p99Ratio: number; p99RatioMin: number; p99RatioMax: number;
  /** The slowest request of a run (median over rounds, min–max). */
  maxMs: number; maxMin: number; maxMax: number;
  /** ours: agent's pause per epoch; CRIU: frozen time per dump (p50, p99, max: medians over rounds). */
  pauseP50Ms?: number; pauseP99Ms?: number; pauseMaxMs?: number;
  /** Link: wire bytes per epoch / per checkpoint, per second, compression (ours), checkpoints per second (CRIU). */
  bytesPerEpoch?: number; bytesPerSecond?: number; bytesPerSecondMin?: number; bytesPerSecondMax?: number; compression?: number; epochsPerSecond?: number;
  rebases?: number;
  /** ours: CPU of the primary agent and of the standby during the phase, cores (medians over rounds). */
  agentCores?: number; standbyCores?: number;
  /** ours: the standby's disk writes, bytes per second (median over rounds). */
  standbyDiskBytesPerSecond?: number;
}

const CONFIGS = (epochs: number[]): Config[] => [
  { kind: 'none' },
  ...epochs.map((epochMs) => ({ kind: 'ours' as const, epochMs })),
  { kind: 'ours', epochMs: 100, idleStandby: true },
  ...[100, 25].filter((epochMs) => epochs.includes(epochMs)).map((epochMs) => ({ kind: 'ours' as const, epochMs, discardingStandby: true })),
  // The primary's capture alone, at the two epochs the goal names: what is left of the
  // loss budget for encoding, sending and the standby.
  ...[100, 25].filter((epochMs) => epochs.includes(epochMs)).map((epochMs) => ({ kind: 'track' as const, epochMs })),
  ...epochs.map((epochMs) => ({ kind: 'criu' as const, epochMs })),
];

interface Ctx { o: RunContext; work: string; key: string; criu: string; redisRequests: number; httpSeconds: number; httpConnections: number; networkLock: string }

async function load(ctx: Ctx, workload: Workload, port: number, phase: PhaseName): Promise<LoadResult & { requests?: number; errors?: number }> {
  if (workload === 'http') return autocannon(`http://127.0.0.1:${port}/`, ctx.httpSeconds, ctx.httpConnections);
  return redisBenchmark(port, phase === 'redis SET' ? 'set' : 'get', ctx.redisRequests);
}

function oursPhase(events: Array<Record<string, unknown>>, from: number, to: number, lastEpochBefore: number): Partial<PhaseSample> {
  const commits = events.slice(from, to).filter((e) => e.event === 'commit');
  const pages = commits.reduce((s, c) => s + Number(c.pages), 0);
  const bytes = commits.reduce((s, c) => s + Number(c.bytes), 0);
  const last = commits.at(-1) as { epoch?: number; pauseMs?: { p50: number; p99: number; max: number } } | undefined;
  return {
    commits: commits.length, epochs: last?.epoch !== undefined ? Number(last.epoch) - lastEpochBefore : 0, pages, wireBytes: bytes,
    pauseMs: last?.pauseMs ? { p50: last.pauseMs.p50, p99: last.pauseMs.p99, max: last.pauseMs.max } : undefined,
  };
}

/** User + system CPU seconds of a process (all its threads) so far; NaN when it is gone. */
function cpuSeconds(pid: number | undefined): number {
  if (!pid) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}
const CLOCK_TICKS = 100; // USER_HZ: 100 on every Linux x86_64 build

/**
 * Bytes a process has caused to be written to storage so far: counted when it dirties
 * page-cache pages, less those of files deleted before they reached the disk; NaN when it
 * is gone.
 */
function diskWriteBytes(pid: number | undefined): number {
  if (!pid) return Number.NaN;
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    const w = /^write_bytes: (\d+)$/m.exec(io);
    const c = /^cancelled_write_bytes: (\d+)$/m.exec(io);
    return w && c ? Number(w[1]) - Number(c[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Moves every thread of `pid` to SCHED_IDLE (threads made later inherit it). */
function idlePriority(pid: number): void {
  const r = spawnSync('chrt', ['-a', '--idle', '-p', '0', String(pid)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`chrt --idle on the standby (pid ${pid}) failed: ${r.stderr || r.error?.message}`);
}

function criuPhase(records: DumpRecord[], t0: number, t1: number): Partial<PhaseSample> {
  const rs = records.filter((r) => r.startAt >= t0 && r.startAt < t1);
  const ok = rs.filter((r) => r.ok);
  // The pause of every dump that overlapped the phase (a short phase may see no dump start).
  const frozen = records.filter((r) => r.ok && r.startAt < t1 && r.startAt + r.dumpMs > t0).map((r) => r.frozenMs);
  return {
    dumps: rs.length, dumpsFailed: rs.length - ok.length,
    frozenMs: frozen.length ? { p50: median(frozen), p99: percentile(frozen, 99), max: Math.max(...frozen) } : undefined,
    dumpMs: ok.length ? median(ok.map((r) => r.dumpMs)) : undefined,
    shippedBytes: ok.reduce((s, r) => s + r.shippedBytes, 0), imageBytes: ok.length ? median(ok.map((r) => r.imageBytes)) : undefined,
  };
}

function lastCommitEpoch(events: Array<Record<string, unknown>>, upTo: number): number {
  for (let i = upTo - 1; i >= 0; i--) if (events[i]!.event === 'commit') return Number(events[i]!.epoch);
  return 0;
}

async function session(ctx: Ctx, round: number, workload: Workload, config: Config): Promise<Session> {
  const phases: PhaseName[] = workload === 'redis' ? ['redis SET', 'redis GET'] : ['node HTTP'];
  const out: Session = { round, workload, config, label: configLabel(config), phases: [] };
  const port = await freePort();
  let target: Target | undefined;
  let standby: CliProcess | undefined;
  let primary: CliProcess | undefined;
  let dumps: PeriodicDumps | undefined;
  let tracking: ChildProcess | undefined;
  try {
    target = workload === 'redis' ? await startRedis(port) : await startHttpServer(port);
    if (config.kind === 'ours') {
      const sport = await freePort();
      standby = config.discardingStandby
        ? new CliProcess(['--listen', `127.0.0.1:${sport}`, '--secret-file', ctx.key], { script: DISCARDING_STANDBY })
        : startCli(['standby', '--listen', `127.0.0.1:${sport}`, '--dir', join(ctx.work, `standby-${workload}-${config.epochMs}-${round}`), '--secret-file', ctx.key, '--no-auto-promote'], 'replicate standby');
      if (config.discardingStandby) cleanup.child(standby.child, 'discarding standby');
      await standby.next('listening', 20_000);
      if (config.idleStandby) idlePriority(standby.child.pid!);
      primary = startCli(['--pid', String(target.pid), '--to', `127.0.0.1:${sport}`, '--epoch', `${config.epochMs}ms`, '--secret-file', ctx.key], 'replicate primary');
      await primary.next('synced', 120_000);
    } else if (config.kind === 'track') {
      // The primary's capture alone: freeze, find the written pages, read them, thaw, every
      // epoch; nothing encoded, sent or stored (replicate dirty-rate).
      tracking = startChild('replicate dirty-rate', process.execPath, [CLI, 'dirty-rate', '--pid', String(target.pid), '--epoch', `${config.epochMs}ms`, '--duration', '1h', '--json'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      tracking.stderr!.on('data', (d) => { err += d; });
      await sleep(1000);
      if (tracking.exitCode !== null) throw new Error(`replicate dirty-rate exited (${tracking.exitCode}): ${err.slice(-500)}`);
    } else if (config.kind === 'criu') {
      dumps = new PeriodicDumps({ criu: ctx.criu, pid: target.pid, epochMs: config.epochMs, work: join(ctx.work, `criu-${workload}-${config.epochMs}-${round}`), networkLock: ctx.networkLock }).start();
      await dumps.firstDone;
    }
    for (const phase of phases) {
      const from = primary?.events.length ?? 0;
      const before = primary ? lastCommitEpoch(primary.events, from) : 0;
      const cpu0 = [cpuSeconds(primary?.child.pid ?? tracking?.pid), cpuSeconds(standby?.child.pid)];
      const disk0 = diskWriteBytes(standby?.child.pid);
      const t0 = performance.now();
      const r = await load(ctx, workload, port, phase);
      const t1 = performance.now();
      const cpu1 = [cpuSeconds(primary?.child.pid ?? tracking?.pid), cpuSeconds(standby?.child.pid)];
      const disk1 = diskWriteBytes(standby?.child.pid);
      if (config.kind === 'ours') await primary!.next('commit', 10_000 + config.epochMs * 3).catch(() => undefined);
      const sample: PhaseSample = { phase, rps: r.rps, p50Ms: r.p50Ms, p99Ms: r.p99Ms, ...(r.maxMs !== undefined ? { maxMs: r.maxMs } : {}), ms: t1 - t0, ...(r.requests !== undefined ? { requests: r.requests, errors: r.errors } : {}) };
      if (primary || tracking) {
        if (primary) Object.assign(sample, oursPhase(primary.events, from, primary.events.length, before));
        const s = (t1 - t0) / 1000;
        sample.agentCores = (cpu1[0]! - cpu0[0]!) / s;
        sample.standbyCores = (cpu1[1]! - cpu0[1]!) / s;
        if (standby) sample.standbyDiskBytesPerSecond = (disk1 - disk0) / s;
      }
      if (dumps) Object.assign(sample, criuPhase(dumps.records, t0, t1));
      out.phases.push(sample);
    }
    if (config.kind === 'ours') {
      const st = await readStatus({ pid: target.pid }).catch(() => undefined);
      if (st) { out.rebases = Number(st.rebases ?? 0); out.syncs = Number(st.syncs ?? 0); out.compressionRatio = Number(st.compressionRatio ?? 0); }
    }
  } catch (e) {
    out.error = (e as Error).message.slice(0, 2000);
    if (primary?.stderr) out.error += ` | primary: ${primary.stderr.slice(-500)}`;
  } finally {
    if (dumps) {
      const recs = await dumps.stop();
      const errs = recs.filter((r) => !r.ok).map((r) => r.error ?? 'failed');
      if (errs.length) out.criuErrors = [...new Set(errs)].slice(0, 3);
    }
    await primary?.stop();
    if (tracking) await stopChild(tracking, 'SIGINT');
    await standby?.stop();
    await target?.stop();
  }
  return out;
}

/** The sample of `phase` in the session of `round` with configuration `label` (none if that session failed). */
function phaseOf(sessions: Session[], round: number, label: string, phase: PhaseName): PhaseSample | undefined {
  for (const s of sessions) {
    if (s.round !== round || s.label !== label || s.error) continue;
    const p = s.phases.find((x) => x.phase === phase);
    if (p) return p;
  }
  return undefined;
}

export function rowsOf(sessions: Session[], configs: Config[]): Row[] {
  const rows: Row[] = [];
  const phases: PhaseName[] = ['redis SET', 'redis GET', 'node HTTP'];
  const rounds = [...new Set(sessions.map((s) => s.round))];
  for (const phase of phases) {
    const of = (label: string) => rounds.map((round) => phaseOf(sessions, round, label, phase));
    const base = of('unreplicated');
    if (base.every((b) => !b)) continue;
    for (const c of configs) {
      const label = configLabel(c);
      const ps = of(label);
      const got = ps.filter((p): p is PhaseSample => !!p);
      if (got.length === 0) continue;
      const paired = (f: (p: PhaseSample) => number) => ps.map((p, i) => (p && base[i] ? f(p) / f(base[i]!) : Number.NaN)).filter(Number.isFinite);
      const rps = summary(got.map((p) => p.rps)); const p99 = summary(got.map((p) => p.p99Ms)); const mx = summary(got.map((p) => p.maxMs ?? Number.NaN));
      const tr = summary(paired((p) => p.rps)); const lr = summary(paired((p) => p.p99Ms));
      const row: Row = {
        phase, config: label, kind: c.kind, epochMs: c.kind === 'none' ? null : c.epochMs, runs: got.length,
        rps: rps.median, rpsMin: rps.min, rpsMax: rps.max, tputRatio: tr.median, tputRatioMin: tr.min, tputRatioMax: tr.max,
        p99Ms: p99.median, p99Min: p99.min, p99Max: p99.max, p99Ratio: lr.median, p99RatioMin: lr.min, p99RatioMax: lr.max,
        maxMs: mx.median, maxMin: mx.min, maxMax: mx.max,
      };
      const med = (xs: Array<number | undefined>) => median(xs.filter((x): x is number => x !== undefined && Number.isFinite(x)));
      if (c.kind === 'ours') {
        row.pauseP50Ms = med(got.map((p) => p.pauseMs?.p50)); row.pauseP99Ms = med(got.map((p) => p.pauseMs?.p99)); row.pauseMaxMs = med(got.map((p) => p.pauseMs?.max));
        const bps = got.map((p) => (p.wireBytes ?? 0) / (p.ms / 1000));
        const s = summary(bps);
        row.bytesPerSecond = s.median; row.bytesPerSecondMin = s.min; row.bytesPerSecondMax = s.max;
        row.bytesPerEpoch = med(got.map((p) => (p.epochs ? (p.wireBytes ?? 0) / p.epochs : undefined)));
        row.compression = med(got.map((p) => (p.wireBytes ? ((p.pages ?? 0) * 4096) / p.wireBytes : undefined)));
        row.epochsPerSecond = med(got.map((p) => (p.epochs ?? 0) / (p.ms / 1000)));
        row.agentCores = med(got.map((p) => p.agentCores));
        row.standbyCores = med(got.map((p) => p.standbyCores));
        row.standbyDiskBytesPerSecond = med(got.map((p) => p.standbyDiskBytesPerSecond));
        row.rebases = med(sessions.filter((x) => x.label === label && x.phases.some((p) => p.phase === phase)).map((x) => x.rebases));
      } else if (c.kind === 'track') {
        row.agentCores = med(got.map((p) => p.agentCores));
      } else if (c.kind === 'criu') {
        row.pauseP50Ms = med(got.map((p) => p.frozenMs?.p50)); row.pauseP99Ms = med(got.map((p) => p.frozenMs?.p99)); row.pauseMaxMs = med(got.map((p) => p.frozenMs?.max));
        const s = summary(got.map((p) => (p.shippedBytes ?? 0) / (p.ms / 1000)));
        row.bytesPerSecond = s.median; row.bytesPerSecondMin = s.min; row.bytesPerSecondMax = s.max;
        row.bytesPerEpoch = med(got.map((p) => p.imageBytes));
        row.epochsPerSecond = med(got.map((p) => (p.dumps ?? 0) / (p.ms / 1000)));
      }
      rows.push(row);
    }
  }
  return rows;
}

export function figuresOf(sessions: Session[], configs: Config[], rows: Row[]): Figure[] {
  const F = new Figures('target-overhead');
  const rounds = [...new Set(sessions.map((s) => s.round))];
  const phases: PhaseName[] = ['redis SET', 'redis GET', 'node HTTP'];
  for (const phase of phases) {
    const series = (label: string, f: (p: PhaseSample) => number | undefined) => rounds.map((round) => {
      const p = phaseOf(sessions, round, label, phase);
      const v = p ? f(p) : undefined;
      return v === undefined ? Number.NaN : v;
    });
    const baseT = series('unreplicated', (p) => p.rps);
    const baseL = series('unreplicated', (p) => p.p99Ms);
    if (baseT.every((x) => !Number.isFinite(x))) continue;
    const bT = F.add({ what: `${phase} throughput`, config: 'unreplicated', unit: 'req/s', values: baseT.filter(Number.isFinite), better: 'higher', over: 'runs' });
    const bL = F.add({ what: `${phase} p99 latency`, config: 'unreplicated', unit: 'ms', values: baseL.filter(Number.isFinite), better: 'lower', over: 'runs' });
    const baseM = series('unreplicated', (p) => p.maxMs);
    const bM = F.add({ what: `${phase} slowest request`, config: 'unreplicated', unit: 'ms', values: baseM.filter(Number.isFinite), better: 'lower', over: 'runs' });
    const pairedAdd = (what: string, unit: string, label: string, values: number[], base: { figure: Figure; values: number[] }, better: 'higher' | 'lower', key?: string) => {
      const keep = values.map((v, i) => Number.isFinite(v) && Number.isFinite(base.values[i]!));
      F.add({ what, config: label, unit, values: values.filter((_, i) => keep[i]), better, over: 'runs', key }, { figure: base.figure, values: base.values.filter((_, i) => keep[i]) });
    };
    for (const c of configs) {
      if (c.kind === 'none') continue;
      const label = configLabel(c);
      const t = series(label, (p) => p.rps);
      if (t.every((x) => !Number.isFinite(x))) continue;
      pairedAdd(`${phase} throughput`, 'req/s', label, t, { figure: bT, values: baseT }, 'higher');
      pairedAdd(`${phase} p99 latency`, 'ms', label, series(label, (p) => p.p99Ms), { figure: bL, values: baseL }, 'lower');
      pairedAdd(`${phase} slowest request`, 'ms', label, series(label, (p) => p.maxMs), { figure: bM, values: baseM }, 'lower');
    }
    // Ours against periodic CRIU dumps at the same period, round by round.
    for (const c of configs) {
      if (c.kind !== 'ours' || c.idleStandby || c.discardingStandby) continue;
      const ours = configLabel(c); const criu = configLabel({ kind: 'criu', epochMs: c.epochMs });
      const ct = series(criu, (p) => p.rps);
      if (ct.every((x) => !Number.isFinite(x))) continue;
      const cT = F.add({ what: `${phase} throughput`, config: criu, unit: 'req/s', values: ct.filter(Number.isFinite), better: 'higher', over: 'runs', key: `${phase} throughput vs criu base` });
      pairedAdd(`${phase} throughput, ours against CRIU dumps`, 'req/s', ours, series(ours, (p) => p.rps), { figure: cT, values: ct }, 'higher');
      const cP = F.add({ what: `${phase} pause per checkpoint, p99`, config: criu, unit: 'ms', values: series(criu, (p) => p.frozenMs?.p99).filter(Number.isFinite), better: 'lower', over: 'runs (p99 of the dumps in each)' });
      pairedAdd(`${phase} pause per checkpoint, p99`, 'ms', ours, series(ours, (p) => p.pauseMs?.p99), { figure: cP, values: series(criu, (p) => p.frozenMs?.p99) }, 'lower');
      const cR = F.add({ what: `${phase} checkpoints per second achieved`, config: criu, unit: '1/s', values: series(criu, (p) => (p.dumps ?? 0) / (p.ms / 1000)).filter(Number.isFinite), better: 'higher', over: 'runs' });
      pairedAdd(`${phase} checkpoints per second achieved`, '1/s', ours, series(ours, (p) => (p.epochs ?? 0) / (p.ms / 1000)), { figure: cR, values: series(criu, (p) => (p.dumps ?? 0) / (p.ms / 1000)) }, 'higher');
      const cB = F.add({ what: `${phase} bytes shipped per second`, config: criu, unit: 'B/s', values: series(criu, (p) => (p.shippedBytes ?? 0) / (p.ms / 1000)).filter(Number.isFinite), better: 'lower', over: 'runs' });
      pairedAdd(`${phase} bytes shipped per second`, 'B/s', ours, series(ours, (p) => (p.wireBytes ?? 0) / (p.ms / 1000)), { figure: cB, values: series(criu, (p) => (p.shippedBytes ?? 0) / (p.ms / 1000)) }, 'lower');
    }
    // Link (scenario 3): what one epoch carries, the compression, and a 1 Gbit/s link.
    for (const r of rows.filter((x) => x.phase === phase && x.kind === 'ours')) {
      const label = r.config;
      const ss = sessions.filter((s) => s.label === label && !s.error).map((s) => s.phases.find((p) => p.phase === phase)).filter((p): p is PhaseSample => !!p);
      F.add({ what: `${phase} link: wire bytes per epoch`, config: label, unit: 'B', values: ss.map((p) => (p.epochs ? (p.wireBytes ?? 0) / p.epochs : Number.NaN)), better: 'lower', over: 'runs' });
      F.add({ what: `${phase} link: compression (raw / wire)`, config: label, unit: '×', values: ss.map((p) => (p.wireBytes ? ((p.pages ?? 0) * 4096) / p.wireBytes : Number.NaN)), better: 'higher', over: 'runs' });
      F.add({ what: `${phase} link: share of a 1 Gbit/s link`, config: label, unit: '%', values: ss.map((p) => (100 * (p.wireBytes ?? 0)) / (p.ms / 1000) / LINK_BYTES_PER_S), better: 'lower', over: 'runs' });
      F.add({ what: `${phase} link: dirty rate a 1 Gbit/s link sustains at this compression`, config: label, unit: 'MB/s', values: ss.map((p) => (p.wireBytes ? (LINK_BYTES_PER_S * ((p.pages ?? 0) * 4096)) / p.wireBytes / 1e6 : Number.NaN)), better: 'higher', over: 'runs' });
      const disk = ss.map((p) => p.standbyDiskBytesPerSecond).filter((x): x is number => x !== undefined && Number.isFinite(x));
      if (disk.length) F.add({ what: `${phase} standby: disk writes per second`, config: label, unit: 'B/s', values: disk, better: 'lower', over: 'runs' });
    }
    for (const r of rows.filter((x) => x.phase === phase && x.kind === 'criu')) {
      const ss = sessions.filter((s) => s.label === r.config && !s.error).map((s) => s.phases.find((p) => p.phase === phase)).filter((p): p is PhaseSample => !!p && !!p.imageBytes);
      F.add({ what: `${phase} link: bytes per checkpoint`, config: r.config, unit: 'B', values: ss.map((p) => p.imageBytes!), better: 'lower', over: 'runs' });
      F.add({ what: `${phase} link: checkpoints per second a 1 Gbit/s link sustains`, config: r.config, unit: '1/s', values: ss.map((p) => LINK_BYTES_PER_S / p.imageBytes!), better: 'higher', over: 'runs' });
    }
  }
  return F.list;
}

export async function runOverhead(o: RunContext): Promise<ScenarioOutput<OverheadData>> {
  const criu = await locateCriu();
  if (!criu.versionOk) throw new Error(`CRIU ${criu.version} at ${criu.path} is too old for the CRIU baseline and for base images (4.2+ needed)`);
  const epochs = [25, 100, 1000];
  const configs = CONFIGS(epochs);
  const rounds = o.quick ? 2 : 5;
  const work = mkdtempSync(join(tmpdir(), 'remus-bench-overhead-'));
  const offWork = cleanup.dir(work);
  const key = join(work, 'key');
  writeSecretFile(key, { force: true });
  // CRIU locks every dumped TCP connection while it dumps: with its default (iptables, one
  // rule per connection) a redis with 50 clients stayed frozen ~2.3 s per dump here; the
  // nftables lock froze it ~0.2 s. The baseline gets the faster one.
  const networkLock = process.env.BENCH_CRIU_NETWORK_LOCK ?? 'nftables';
  const ctx: Ctx = { o, work, key, criu: criu.path, redisRequests: o.quick ? 50_000 : 300_000, httpSeconds: o.quick ? 3 : 10, httpConnections: 20, networkLock };
  const sessions: Session[] = [];
  const total = rounds * configs.length * 2;
  let done = 0;
  try {
    for (let round = 1; round <= rounds; round++) {
      const order = round % 2 ? configs : [...configs].reverse();
      for (const workload of ['redis', 'http'] as Workload[]) {
        for (const c of order) {
          o.progress(done, total, `round ${round}/${rounds} ${workload === 'redis' ? 'redis' : 'node HTTP'} · ${configLabel(c)}`);
          const s = await session(ctx, round, workload, c);
          done++;
          sessions.push(s);
          if (s.error) o.log(`round ${round} ${workload} ${s.label}: FAILED: ${s.error.slice(0, 400)}`);
          for (const p of s.phases) {
            const extra = p.commits !== undefined ? `, ${p.epochs} epochs, ${Math.round((p.wireBytes ?? 0) / Math.max(1, p.epochs ?? 1))} B/epoch, pause p99 ${fmt(p.pauseMs?.p99)} ms`
              : p.dumps !== undefined ? `, ${p.dumps} dumps (${p.dumpsFailed} failed), frozen p50 ${fmt(p.frozenMs?.p50)} ms, ${Math.round((p.shippedBytes ?? 0) / Math.max(1, p.dumps - (p.dumpsFailed ?? 0)))} B/dump` : '';
            o.log(`round ${round} ${p.phase} ${s.label}: ${Math.round(p.rps)} req/s, p99 ${fmt(p.p99Ms)} ms, slowest ${fmt(p.maxMs, 0)} ms${extra}${s.rebases ? `, ${s.rebases} re-bases` : ''}`);
          }
          if (s.criuErrors) o.log(`  CRIU dump failures: ${s.criuErrors.join(' / ')}`);
        }
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
    offWork();
  }
  o.progress(total, total, 'done');
  if (sessions.every((s) => s.error)) throw new Error(`every session failed; the first: ${sessions[0]?.error}`);
  const rows = rowsOf(sessions, configs);
  return {
    figures: figuresOf(sessions, configs, rows),
    data: { rounds, redisRequests: ctx.redisRequests, httpSeconds: ctx.httpSeconds, httpConnections: ctx.httpConnections, epochs, criu: `${criu.path} (${criu.version})`, criuNetworkLock: networkLock, sessions, rows },
  };
}

// ---------------------------------------------------------------------------------------

const CONFIG_ORDER = (epochs: number[]) => CONFIGS(epochs).map(configLabel);
const mb = (b: number | undefined) => (b === undefined || !Number.isFinite(b) ? '–' : b >= 1e6 ? `${fmt(b / 1e6, 2)} MB` : `${fmt(b / 1e3, 1)} kB`);

export function renderOverhead(r: ScenarioResult<OverheadData>, plot: (name: string, spec: Record<string, unknown>, alt: string) => string): string {
  const d = r.data;
  const order = CONFIG_ORDER(d.epochs);
  const failed = d.sessions.filter((s) => s.error);
  const rows = d.rows;
  const tput = rows.filter((x) => x.kind !== 'none').map((x) => ({ phase: x.phase, config: x.config, kind: kindLabel(x.kind), value: x.tputRatio, min: x.tputRatioMin, max: x.tputRatioMax }));
  const p99 = rows.filter((x) => x.kind !== 'none').map((x) => ({ phase: x.phase, config: x.config, kind: kindLabel(x.kind), value: x.p99Ratio, min: x.p99RatioMin, max: x.p99RatioMax }));
  const pause = rows.filter((x) => x.kind !== 'none' && x.pauseP99Ms !== undefined && Number.isFinite(x.pauseP99Ms)).map((x) => ({ phase: x.phase, config: x.config, kind: kindLabel(x.kind), value: x.pauseP99Ms!, min: x.pauseP50Ms!, max: x.pauseMaxMs! }));
  const link = rows.filter((x) => x.kind !== 'none' && x.bytesPerSecond !== undefined).map((x) => ({ phase: x.phase, config: x.config, kind: kindLabel(x.kind), value: x.bytesPerSecond! / 1e6, min: x.bytesPerSecondMin! / 1e6, max: x.bytesPerSecondMax! / 1e6 }));
  const figs = r.figures;
  const byPhase = (p: PhaseName) => rows.filter((x) => x.phase === p);
  const lines: string[] = [
    '## 2. Target overhead: redis-server and a Node.js HTTP server, unreplicated, ours, and periodic CRIU dumps',
    '',
    provenance(r),
    '',
    `Workloads: redis-server (no persistence) under \`redis-benchmark -t set\` then \`-t get\` over the keys SET wrote (\`-c 50 -r 100000 -n ${d.redisRequests}\` each), and a Node.js HTTP server with 20 000 objects in memory, every request updating one (\`bench/targets/http-server.mjs\`), under \`autocannon -c ${d.httpConnections} -d ${d.httpSeconds}\`. Configurations: **unreplicated** (baseline: no replication at all); **ours**: a \`replicate --pid PID --epoch E\` primary process streaming to a \`replicate standby\` process on loopback (TLS 1.3 with a pre-shared key, the standby fsyncs every commit, CRIU base image taken at start); **ours, standby idle-priority**: the same at 100 ms with every thread of the standby at \`SCHED_IDLE\` (it runs only on CPU the target and the load generator leave: what a standby on its own host costs the primary's host, which this 2-core machine cannot otherwise show; it then lags and its epochs coalesce); **ours, standby discards** (100 and 25 ms): the same primary streaming to \`bench/overhead/discarding-standby.mjs\` instead, a measuring instrument that speaks the real protocol over the real transport (TLS, checksummed frames, heartbeats both ways) and acknowledges each batch as soon as its end arrives, storing nothing: the primary's own cost on the host it protects, with the standby's decoding, storing and fsyncs off this machine as a second host would have them (its receiving is still here); **tracking only**: \`replicate dirty-rate --epoch 100ms\` (and \`25ms\`) on the target, the primary's capture alone (freeze every thread, find the written pages and re-arm, read them, thaw; nothing encoded, sent or stored): the floor of what protecting costs the target itself; **CRIU dumps** (baseline: the recipe of the CRIU and docker-checkpoint guides): \`criu dump --leave-running --tcp-established --network-lock ${d.criuNetworkLock}\` of the same target every E ms into a fresh directory, then shipped as a tar stream into another directory (a dump starts every E ms, or as soon as the previous dump and shipment are done when they take longer). ${d.rounds} rounds; each round runs every configuration once on a fresh target, in an order reversed every other round. Ratios are per round (configuration / unreplicated of the same round), median with min–max over the rounds.`,
    '',
    `CRIU: ${d.criu}. No soft-dirty in this kernel, so CRIU cannot dump incrementally (\`--track-mem\`, pre-dump): every dump is a full one, which is what the recipe gets here. CRIU's network lock: \`${d.criuNetworkLock}\`; with its default (\`iptables\`, one rule per connection, set and removed while the target is frozen) a redis-server with 50 clients stayed frozen about 2.3 s per dump on this machine, so the baseline gets the faster lock.`,
    '',
    plot('throughput', barsWithRange({
      title: 'Throughput relative to unreplicated (same round)', subtitle: 'median over rounds, bar = min–max; 1.0 = no loss',
      data: tput, x: 'config', xTitle: null, y: 'value', yTitle: 'throughput / unreplicated', color: 'kind', colorTitle: '', column: 'phase', columnOrder: PHASES, offset: false, xOrder: order, rule: { y: 1, label: 'unreplicated' }, width: { step: 26 },
    }), 'Throughput relative to unreplicated, per workload and configuration'),
    '',
    plot('p99', barsWithRange({
      title: 'p99 latency relative to unreplicated (same round)', subtitle: 'median over rounds, bar = min–max; log scale',
      data: p99, x: 'config', xTitle: null, y: 'value', yTitle: 'p99 latency / unreplicated', color: 'kind', colorTitle: '', column: 'phase', columnOrder: PHASES, offset: false, xOrder: order, yLog: true, rule: { y: 1, label: 'unreplicated' }, width: { step: 26 },
    }), 'p99 latency relative to unreplicated'),
    '',
  ];
  for (const phase of ['redis SET', 'redis GET', 'node HTTP'] as PhaseName[]) {
    const rs = byPhase(phase);
    if (!rs.length) continue;
    lines.push(`### ${phase}`, '', table(['configuration', 'req/s (min–max)', 'throughput / unreplicated', 'p99 ms (min–max)', 'p99 / unreplicated', 'slowest request ms (min–max)', 'pause per checkpoint p50 / p99 / max ms', 'agent / standby CPU (cores)', 're-bases'],
      rs.map((x) => [x.config, `${fmt(x.rps, 0)} (${fmt(x.rpsMin, 0)}–${fmt(x.rpsMax, 0)})`, x.kind === 'none' ? '1' : `${fmt(x.tputRatio, 3)} (${fmt(x.tputRatioMin, 3)}–${fmt(x.tputRatioMax, 3)})`,
        `${fmt(x.p99Ms)} (${fmt(x.p99Min)}–${fmt(x.p99Max)})`, x.kind === 'none' ? '1' : `${fmt(x.p99Ratio)} (${fmt(x.p99RatioMin)}–${fmt(x.p99RatioMax)})`,
        x.maxMs !== undefined && Number.isFinite(x.maxMs) ? `${fmt(x.maxMs, 0)} (${fmt(x.maxMin, 0)}–${fmt(x.maxMax, 0)})` : '–',
        x.pauseP50Ms !== undefined ? `${fmt(x.pauseP50Ms)} / ${fmt(x.pauseP99Ms)} / ${fmt(x.pauseMaxMs)}` : '–',
        (x.kind === 'ours' || x.kind === 'track') && x.agentCores !== undefined && Number.isFinite(x.agentCores) ? `${fmt(x.agentCores, 2)} / ${x.kind === 'track' ? '–' : fmt(x.standbyCores, 2)}` : '–',
        x.kind === 'ours' ? fmt(x.rebases, 0) : '–'])), '');
  }
  const setRow = (label: string) => rows.find((x) => x.phase === 'redis SET' && x.config === label);
  const goal = (label: string, loss: number) => {
    const x = setRow(label);
    if (!x) return `${label}: not measured`;
    const lost = 100 * (1 - x.tputRatio);
    return `${label}: ${fmt(lost, 0)} % lost (${lost <= loss ? 'met' : 'not met'})`;
  };
  lines.push(`**Goal (redis SET): at most 5 % throughput lost at 100 ms and at most 15 % at 25 ms.** Measured: ${goal('ours, epoch 100 ms', 5)}; ${goal('ours, epoch 25 ms', 15)}; ${goal('ours, epoch 100 ms, standby idle-priority', 5)}; ${goal('ours, epoch 100 ms, standby discards', 5)}; ${goal('ours, epoch 25 ms, standby discards', 15)}.`, '');
  const track = setRow(configLabel({ kind: 'track', epochMs: 100 }));
  const track25 = setRow(configLabel({ kind: 'track', epochMs: 25 }));
  const ours100 = setRow('ours, epoch 100 ms');
  if (track && ours100) {
    const at25 = track25 ? ` (at 25 ms: ${fmt(100 * (1 - track25.tputRatio), 0)} % of the 15 % budget)` : '';
    const discard = setRow('ours, epoch 100 ms, standby discards');
    const discard25 = setRow('ours, epoch 25 ms, standby discards');
    const primaryOnly = discard ? ` Capture, encoding and sending together, with the standby's decoding and storing off this host (the discarding stand-in; its receiving stays): ${fmt(100 * (1 - discard.tputRatio), 0)} %${discard25 ? ` (at 25 ms: ${fmt(100 * (1 - discard25.tputRatio), 0)} %)` : ''}, the agent using ${fmt(discard.agentCores, 2)} cores.` : '';
    lines.push(`Where the loss comes from (redis SET, 100 ms): the primary's capture alone (tracking only: freeze, find, read, thaw) costs ${fmt(100 * (1 - track.tputRatio), 0)} %${at25}.${primaryOnly} The rest is CPU. The agent (${fmt(ours100.agentCores, 2)} cores) and the standby (${fmt(ours100.standbyCores, 2)} cores) share this host's 2 cores with redis and redis-benchmark, which use them all; a standby on its own host takes none of it (the idle-priority row approximates that). Each session starts a fresh agent and standby and a phase lasts a few seconds, so their start-up (V8 still compiling our code: about a tenth of the standby's CPU in its first 20 s) is part of these figures.`, '');
  }
  lines.push(
    'Pause per checkpoint: for ours, the agent\'s pause per epoch (freeze, capture, thaw; p50, p99 and max over the session\'s epochs, as the primary reports them); for CRIU, the `frozen_time` CRIU records in the dump\'s `stats-dump` (every thread stopped until they run again), p50 / p99 / max over the dumps that overlapped the phase. Agent / standby CPU: CPU seconds the \`replicate\` primary process and the standby process used per second of the load phase (all their threads), medians over rounds; the load generator and the target share the same two cores. Re-bases: new CRIU base images ours took during the session (the target\'s descriptors changed, e.g. clients connected), each one a full `criu dump` with its own freeze. Both are medians over the rounds.',
    '',
    plot('pause', barsWithRange({
      title: 'Pause per checkpoint: ours (pause per epoch) and CRIU (frozen time per dump)', subtitle: 'bar = p99, rule = p50 to max; medians over rounds; log scale',
      data: pause, x: 'config', xTitle: null, y: 'value', yTitle: 'ms', color: 'kind', colorTitle: '', offset: false, column: 'phase', columnOrder: PHASES, xOrder: order.filter((x) => x !== 'unreplicated'), yLog: true, width: { step: 26 },
    }), 'Pause per checkpoint, ours and CRIU'),
    '',
  );
  if (failed.length) lines.push(`Sessions that failed (left out of the figures): ${failed.map((s) => `round ${s.round} ${s.workload} ${s.label}: ${s.error?.slice(0, 200)}`).join('; ')}.`, '');

  // Scenario 3: link use, from the same sessions.
  const linkRows = rows.filter((x) => x.kind === 'ours' || x.kind === 'criu');
  lines.push(
    '## 3. Link use: bytes per epoch, compression, and a 1 Gbit/s link',
    '',
    `Derived from the sessions of section 2 (same run, same command: ${`\`${r.command}\``}). Ours: the wire bytes of the batches the primary committed during the load phase (encoded pages plus message framing; what TLS carries), over the epochs those batches covered; compression = raw dirty pages (4096 B each) / wire bytes. A re-base (see the re-bases column above) sends a whole new CRIU base image inside its batch, and those bytes count here too: where a re-base falls in a short phase, it dominates the bytes (compression below 1× means that). CRIU: the tar stream shipped per dump (every page of the process, each time). A 1 Gbit/s link carries 125 MB/s: the share of it the workload uses, and what it would sustain: for ours, the dirty rate (raw MB/s of written pages) at the compression measured; for CRIU, checkpoints per second of this size. Standby disk writes: what the standby process wrote to its disk per second of the phase (\`write_bytes\` less \`cancelled_write_bytes\` of /proc/PID/io). The store journals what the link carried (the encoded deltas) with the registers and layout, one record per epoch, and writes decoded pages only at checkpoints, once per page however often it was rewritten in between (and at compactions): about the link's rate, where storing every epoch's pages decoded wrote the dirty rate (82.5 MB/s for redis SET at 100 ms in the run of commit 6b56a20, for 9.0 MB/s on the link).`,
    '',
    table(['workload', 'configuration', 'bytes per epoch / checkpoint', 'MB/s on the link (min–max)', 'compression', 'epochs or dumps per s', 'share of 1 Gbit/s', '1 Gbit/s sustains', 'standby disk writes MB/s'],
      linkRows.map((x) => [x.phase, x.config, mb(x.bytesPerEpoch), `${fmt((x.bytesPerSecond ?? 0) / 1e6, 2)} (${fmt((x.bytesPerSecondMin ?? 0) / 1e6, 2)}–${fmt((x.bytesPerSecondMax ?? 0) / 1e6, 2)})`,
        x.kind === 'ours' ? `${fmt(x.compression, 1)}×` : '1× (full images)', fmt(x.epochsPerSecond, 1), `${fmt((100 * (x.bytesPerSecond ?? 0)) / LINK_BYTES_PER_S, 1)} %`,
        x.kind === 'ours' ? `${fmt((LINK_BYTES_PER_S * (x.compression ?? 0)) / 1e6, 0)} MB/s of dirty pages` : `${fmt(LINK_BYTES_PER_S / (x.bytesPerEpoch ?? Number.NaN), 1)} dumps/s (one every ${fmt((1000 * (x.bytesPerEpoch ?? 0)) / LINK_BYTES_PER_S, 0)} ms)`,
        x.kind === 'ours' && !x.config.endsWith(', standby discards') && x.standbyDiskBytesPerSecond !== undefined && Number.isFinite(x.standbyDiskBytesPerSecond) ? fmt(x.standbyDiskBytesPerSecond / 1e6, 1) : '–'])),
    '',
    plot('link', barsWithRange({
      title: 'Bytes on the link per second: ours against shipping CRIU dumps', subtitle: 'median over rounds, bar = min–max; log scale; red line = 1 Gbit/s',
      data: link, x: 'config', xTitle: null, y: 'value', yTitle: 'MB/s', color: 'kind', colorTitle: '', offset: false, column: 'phase', columnOrder: PHASES, xOrder: order.filter((x) => x !== 'unreplicated'), yLog: true, rule: { y: LINK_BYTES_PER_S / 1e6, label: '1 Gbit/s' }, width: { step: 26 },
    }), 'Bytes per second on the link'),
    '',
    '### Every figure of sections 2 and 3',
    '',
    '<details><summary>The figures as stored in the JSON (unit, baseline, ratio)</summary>',
    '',
    figureTable(figs),
    '',
    '</details>',
  );
  return lines.join('\n');
}

export const overheadScenario: Scenario<OverheadData> = {
  name: 'target-overhead',
  aliases: ['replication-redis', 'overhead', 'link'],
  title: '2. Target overhead and 3. link use (with the periodic-CRIU baseline)',
  summary: 'redis SET/GET and a Node.js HTTP server: unreplicated, ours at 25/100/1000 ms, periodic CRIU dumps; link use',
  run: runOverhead,
  render: renderOverhead,
};

