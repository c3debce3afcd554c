// Failover of redis-server: ours against Redis's own replication with Sentinel (baseline b).
//
// Both: redis-server with 100 000 keys (DEBUG POPULATE) and a client writing `INCR counter`
// as fast as the server answers (4 commands in flight on one connection), counting the
// writes the server acknowledged. Then the primary side is SIGKILLed, and the clock runs
// until a client can write to the new master; the writes lost are the acknowledged ones
// the new master does not have (acknowledged count − the counter it holds).
//
//   ours: the target started through the keeper; a `replicate` primary process at the
//         epoch given and 50 ms heartbeats; a standby (in this process, phi accrual) with
//         a TCP health check on redis's port. SIGKILL of the agent and of redis-server at
//         once; done when the restored redis-server (same port, same PID) acknowledges a
//         SET. Writes acknowledged after the last committed epoch are lost by design.
//   Sentinel: a master, a replica (`replicaof`) and one Sentinel (quorum 1) with the most
//         aggressive sane settings: down-after-milliseconds 200, failover-timeout 2000.
//         SIGKILL of the master; done when the Sentinel names the replica as master and it
//         acknowledges a SET (what a Sentinel-aware client does).
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PromotionResult } from '../../src/failover/promoter.js';
import { native } from '../../src/native/binding.js';
import { Standby } from '../../src/standby/standby.js';
import { readSecretFile, writeSecretFile } from '../../src/transport/security.js';
import { Figures, summary, type Figure, type PlotSink, type RunContext, type Scenario, type ScenarioOutput, type ScenarioResult } from '../lib/harness.js';
import { barsWithRange } from '../lib/plot.js';
import { cleanup, freePort, redisPing, startChild, startCli, startRedis, stopChild, waitFor } from '../lib/processes.js';
import { fmt, figureTable, provenance, table } from '../lib/report.js';
import { IncrWriter, redisCommand } from '../lib/resp.js';

export interface RedisFailoverSample {
  system: string; epochMs?: number; round: number;
  /** Kill to a write acknowledged by the new master. */
  killToWritableMs: number;
  /** Parts: detection (kill to the decision), then the rest (ours: image, restore, health; Sentinel: election, promotion, reconfiguration). */
  detectionMs: number; buildMs?: number; restoreMs?: number; healthMs?: number; sentinelSwitchMs?: number;
  acked: number; onNewMaster: number; lost: number; writeRate: number; lostWindowMs: number;
  error?: string;
}

export interface RedisFailoverData {
  rounds: number; keys: number; writeMs: number; oursEpochs: number[];
  sentinel: { downAfterMs: number; failoverTimeoutMs: number; quorum: number };
  samples: RedisFailoverSample[];
}

const KEYS = 100_000;

async function populate(port: number): Promise<void> {
  await redisCommand(port, ['DEBUG', 'POPULATE', String(KEYS)], 30_000);
}

async function probeWritable(port: number, deadlineMs: number): Promise<number> {
  for (;;) {
    try {
      if ((await redisCommand(port, ['SET', 'failover-probe', '1'], 500)) === 'OK') return performance.now();
    } catch { /* not yet */ }
    if (performance.now() > deadlineMs) throw new Error(`no writable redis on port ${port} in time`);
    await sleep(2);
  }
}

async function counterOn(port: number): Promise<number> {
  const v = await redisCommand(port, ['GET', 'counter'], 2000);
  return v === null ? 0 : Number(v);
}

async function killRestored(pid: number): Promise<void> {
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  for (let i = 0; i < 1000; i++) {
    if (native().reapChild(pid)) return;
    await sleep(5);
  }
}

async function ours(epochMs: number, round: number, work: string, writeMs: number): Promise<RedisFailoverSample> {
  const dir = mkdtempSync(join(work, `ours-${epochMs}-`));
  const key = join(dir, 'key');
  writeSecretFile(key, { force: true });
  const port = await freePort();
  const redis = await startRedis(port, ['--enable-debug-command', 'local']);
  let restored: number | null = null;
  let offRestored = () => undefined as void;
  const sb = await Standby.start({
    host: '127.0.0.1', port: 0, dir: join(dir, 'standby'), security: { kind: 'psk', key: readSecretFile(key) }, heartbeatMs: 50,
    detector: { kind: 'phi', heartbeatMs: 50 }, promotion: { health: { kind: 'tcp', host: '127.0.0.1', port }, healthTimeoutMs: 30_000 },
  });
  const offSb = cleanup.fn('standby', () => sb.stop());
  const pr = startCli(['--pid', String(redis.pid), '--to', `127.0.0.1:${sb.port}`, '--secret-file', key, '--epoch', `${epochMs}ms`, '--heartbeat', '50ms'], 'replicate primary');
  try {
    await populate(port);
    await pr.next('synced', 120_000);
    const writer = new IncrWriter(port, 'counter', 4);
    const w0 = performance.now();
    await sleep(writeMs);
    const promoted = new Promise<PromotionResult>((resolve) => sb.once('promoted', resolve));
    const tKill = performance.now();
    pr.child.kill('SIGKILL');
    try { process.kill(redis.pid, 'SIGKILL'); } catch { /* gone */ }
    await writer.done;
    const writeRate = writer.acked / ((tKill - w0) / 1000);
    const ac = new AbortController();
    const r = await Promise.race([promoted, sleep(120_000, undefined, { signal: ac.signal }).then(() => { throw new Error('no promotion within 120 s'); })]).finally(() => ac.abort());
    if (r.outcome !== 'restored' || !r.pid) throw new Error(`promotion ${r.outcome}: ${r.errors.join(' | ')}`);
    restored = r.pid;
    offRestored = cleanup.pid(restored, 'restored redis-server');
    const tOk = await probeWritable(port, performance.now() + 30_000);
    const onNewMaster = await counterOn(port);
    const lost = Math.max(0, writer.acked - onNewMaster);
    return {
      system: `ours, epoch ${epochMs} ms`, epochMs, round, killToWritableMs: tOk - tKill,
      detectionMs: r.timings.detectionMs, buildMs: r.timings.buildMs, restoreMs: r.timings.restoreMs, healthMs: r.timings.healthMs,
      acked: writer.acked, onNewMaster, lost, writeRate, lostWindowMs: (1000 * lost) / writeRate,
    };
  } finally {
    await pr.stop('SIGKILL');
    await sb.stop();
    offSb();
    if (restored) { await killRestored(restored); offRestored(); }
    await redis.stop();
  }
}

async function sentinel(round: number, work: string, writeMs: number, o: RedisFailoverData['sentinel']): Promise<RedisFailoverSample> {
  const dir = mkdtempSync(join(work, 'sentinel-'));
  const [mport, rport, sport] = [await freePort(), await freePort(), await freePort()];
  const common = ['--save', '', '--appendonly', 'no', '--bind', '127.0.0.1', '--dir', dir, '--enable-debug-command', 'local'];
  const master = startChild('redis master', 'redis-server', ['--port', String(mport), ...common]);
  const replica = startChild('redis replica', 'redis-server', ['--port', String(rport), ...common, '--replicaof', '127.0.0.1', String(mport)]);
  const conf = join(dir, 'sentinel.conf');
  const log = join(dir, 'sentinel.log');
  writeFileSync(conf, [
    `port ${sport}`, 'bind 127.0.0.1', `dir ${dir}`, `logfile ${log}`,
    `sentinel monitor m 127.0.0.1 ${mport} ${o.quorum}`,
    `sentinel down-after-milliseconds m ${o.downAfterMs}`,
    `sentinel failover-timeout m ${o.failoverTimeoutMs}`,
    'sentinel parallel-syncs m 1', '',
  ].join('\n'));
  let sent: ReturnType<typeof startChild> | undefined;
  try {
    await waitFor(() => redisPing(mport), 10_000, 'redis master did not start');
    await waitFor(() => redisPing(rport), 10_000, 'redis replica did not start');
    await populate(mport);
    await waitFor(async () => /master_link_status:up/.test(String(await redisCommand(rport, ['INFO', 'replication']).catch(() => ''))), 30_000, 'the replica did not sync');
    sent = startChild('redis sentinel', 'redis-server', [conf, '--sentinel']);
    // The Sentinel learns of the replica from the master's INFO (at once, then every 10 s).
    await waitFor(async () => {
      const r = await redisCommand(sport, ['SENTINEL', 'REPLICAS', 'm']).catch(() => '');
      return Array.isArray(r) && r.length > 0;
    }, 30_000, 'the Sentinel did not see the replica', 100);
    // Wait until the replica is caught up with the populate, then write.
    await waitFor(async () => Number(/db0:keys=(\d+)/.exec(String(await redisCommand(rport, ['INFO', 'keyspace']).catch(() => '')))?.[1] ?? 0) >= KEYS, 30_000, 'the replica did not receive the keys');
    const writer = new IncrWriter(mport, 'counter', 4);
    const w0 = performance.now();
    await sleep(writeMs);
    const tKill = performance.now();
    const killWall = Date.now();
    master.kill('SIGKILL');
    await writer.done;
    const writeRate = writer.acked / ((tKill - w0) / 1000);
    // A Sentinel-aware client asks the Sentinel for the master, then writes to it.
    let tSwitch = 0;
    await waitFor(async () => {
      const a = await redisCommand(sport, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'm']).catch(() => null);
      const ok = Array.isArray(a) ? String(a[1]) === String(rport) : false;
      if (ok && !tSwitch) tSwitch = performance.now();
      return ok;
    }, 60_000, 'the Sentinel did not switch the master', 2);
    const tOk = await probeWritable(rport, performance.now() + 30_000);
    const onNewMaster = await counterOn(rport);
    const lost = Math.max(0, writer.acked - onNewMaster);
    // Detection: the Sentinel's +sdown (its log has millisecond timestamps, wall clock).
    let detectionMs = Number.NaN;
    const m = /(\d\d) (\w{3}) (\d{4}) (\d\d):(\d\d):(\d\d)\.(\d{3}) # \+sdown master/.exec(readFileSync(log, 'utf8'));
    if (m) {
      const t = new Date(`${m[2]} ${m[1]} ${m[3]} ${m[4]}:${m[5]}:${m[6]}.${m[7]}`).getTime();
      if (Number.isFinite(t)) detectionMs = t - killWall;
    }
    return {
      system: 'Redis Sentinel', round, killToWritableMs: tOk - tKill, detectionMs, sentinelSwitchMs: tSwitch - tKill,
      acked: writer.acked, onNewMaster, lost, writeRate, lostWindowMs: (1000 * lost) / writeRate,
    };
  } finally {
    if (sent) await stopChild(sent);
    await stopChild(master);
    await stopChild(replica);
  }
}

export async function runRedisFailover(o: RunContext): Promise<ScenarioOutput<RedisFailoverData>> {
  const rounds = o.quick ? 2 : 5;
  const writeMs = o.quick ? 1500 : 3000;
  const oursEpochs = [100, 25];
  const sentinelCfg = { downAfterMs: 200, failoverTimeoutMs: 2000, quorum: 1 };
  const work = mkdtempSync(join(tmpdir(), 'remus-bench-redis-failover-'));
  const offWork = cleanup.dir(work);
  const samples: RedisFailoverSample[] = [];
  const systems = [...oursEpochs.map((e) => ({ label: `ours, epoch ${e} ms`, epochMs: e as number | undefined })), { label: 'Redis Sentinel', epochMs: undefined }];
  const total = rounds * systems.length;
  let done = 0;
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const s of round % 2 ? systems : [...systems].reverse()) {
        o.progress(done, total, `round ${round}/${rounds} · ${s.label}`);
        let x: RedisFailoverSample;
        try {
          x = s.epochMs !== undefined ? await ours(s.epochMs, round, work, writeMs) : await sentinel(round, work, writeMs, sentinelCfg);
          o.log(`round ${round} ${x.system}: kill → writable ${fmt(x.killToWritableMs, 0)} ms (detection ${fmt(x.detectionMs, 0)} ms), ${x.acked} writes acknowledged, ${x.lost} lost (${fmt(x.lostWindowMs, 0)} ms of writes)`);
        } catch (e) {
          x = { system: s.label, epochMs: s.epochMs, round, killToWritableMs: Number.NaN, detectionMs: Number.NaN, acked: 0, onNewMaster: 0, lost: Number.NaN, writeRate: Number.NaN, lostWindowMs: Number.NaN, error: (e as Error).message.slice(0, 1000) };
          o.log(`round ${round} ${s.label}: FAILED: ${x.error}`);
        }
        samples.push(x);
        done++;
      }
    }
  } finally {
    const { rmSync } = await import('node:fs');
    rmSync(work, { recursive: true, force: true });
    offWork();
  }
  o.progress(total, total, 'done');
  if (samples.every((x) => x.error)) throw new Error(`every run failed; the first: ${samples[0]?.error}`);
  // Figures: each of ours against Sentinel, round by round.
  const F = new Figures('redis-failover');
  const series = (label: string, f: (s: RedisFailoverSample) => number) => Array.from({ length: rounds }, (_, i) => {
    const s = samples.find((x) => x.round === i + 1 && x.system === label && !x.error);
    return s ? f(s) : Number.NaN;
  });
  const fin = (xs: number[]) => xs.filter(Number.isFinite);
  const sT = series('Redis Sentinel', (s) => s.killToWritableMs);
  const sL = series('Redis Sentinel', (s) => s.lost);
  const sD = series('Redis Sentinel', (s) => s.detectionMs);
  const bT = F.add({ what: 'failover time (SIGKILL to a write acknowledged by the new master)', config: 'Redis Sentinel', unit: 'ms', values: fin(sT), better: 'lower', over: 'runs' });
  const bL = F.add({ what: 'acknowledged writes lost', config: 'Redis Sentinel', unit: 'writes', values: fin(sL), better: 'lower', over: 'runs' });
  const bD = F.add({ what: 'detection', config: 'Redis Sentinel', unit: 'ms', values: fin(sD), better: 'lower', over: 'runs' });
  F.add({ what: 'acknowledged writes lost, as time of writing', config: 'Redis Sentinel', unit: 'ms', values: fin(series('Redis Sentinel', (s) => s.lostWindowMs)), better: 'lower', over: 'runs' });
  for (const e of oursEpochs) {
    const label = `ours, epoch ${e} ms`;
    const pair = (values: number[], base: number[]) => {
      const keep = values.map((v, i) => Number.isFinite(v) && Number.isFinite(base[i]!));
      return { values: values.filter((_, i) => keep[i]), base: base.filter((_, i) => keep[i]) };
    };
    const t = pair(series(label, (s) => s.killToWritableMs), sT);
    F.add({ what: 'failover time (SIGKILL to a write acknowledged by the new master)', config: label, unit: 'ms', values: t.values, better: 'lower', over: 'runs' }, { figure: bT, values: t.base });
    // Sentinel often loses 0 writes: a ratio against 0 means nothing, so the comparison is against its median.
    F.add({ what: 'acknowledged writes lost', config: label, unit: 'writes', values: fin(series(label, (s) => s.lost)), better: 'lower', over: 'runs' }, bL.median > 0 ? { figure: bL } : undefined);
    F.add({ what: 'acknowledged writes lost, as time of writing', config: label, unit: 'ms', values: fin(series(label, (s) => s.lostWindowMs)), better: 'lower', over: 'runs' });
    const d = pair(series(label, (s) => s.detectionMs), sD);
    F.add({ what: 'detection', config: label, unit: 'ms', values: d.values, better: 'lower', over: 'runs' }, { figure: bD, values: d.base });
    for (const [k, name] of [['buildMs', 'image building'], ['restoreMs', 'criu restore'], ['healthMs', 'health check']] as const) {
      F.add({ what: name, config: label, unit: 'ms', values: fin(series(label, (s) => Number(s[k]))), better: 'lower', over: 'runs' });
    }
  }
  return { figures: F.list, data: { rounds, keys: KEYS, writeMs, oursEpochs, sentinel: sentinelCfg, samples } };
}

export function renderRedisFailover(r: ScenarioResult<RedisFailoverData>, plot: PlotSink): string {
  const d = r.data;
  const systems = [...d.oursEpochs.map((e) => `ours, epoch ${e} ms`), 'Redis Sentinel'];
  const get = (label: string, what: string): Figure | undefined => r.figures.find((f) => f.config === label && f.what === what);
  const T = 'failover time (SIGKILL to a write acknowledged by the new master)';
  const rows = systems.map((s) => {
    const ss = d.samples.filter((x) => x.system === s && !x.error);
    const med = (f: (x: RedisFailoverSample) => number | undefined) => summary(ss.map(f).filter((x): x is number => x !== undefined && Number.isFinite(x)));
    return {
      s, ss, t: med((x) => x.killToWritableMs), ratio: get(s, T)?.ratio, lost: med((x) => x.lost), det: med((x) => x.detectionMs),
      rest: med((x) => x.killToWritableMs - x.detectionMs), rate: med((x) => x.writeRate), win: med((x) => x.lostWindowMs), acked: med((x) => x.acked),
    };
  });
  const rg = (s: { median: number; min: number; max: number }, digits = 0) => (Number.isFinite(s.median) ? `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})` : '–');
  const failed = d.samples.filter((x) => x.error);
  const parts = rows.flatMap((x) => [
    { system: x.s, part: '1 detection', ms: x.det.median },
    { system: x.s, part: x.s === 'Redis Sentinel' ? '2 Sentinel: election, promotion' : '2 ours: image, restore, health', ms: x.rest.median },
  ]).filter((p) => Number.isFinite(p.ms));
  return [
    '## 5b. Failover of redis-server: ours against Redis replication with Sentinel',
    '',
    provenance(r),
    '',
    `Both systems hold ${d.keys.toLocaleString('en')} keys (\`DEBUG POPULATE\`) while one client writes \`INCR counter\` as fast as the server answers (4 commands in flight) for ${d.writeMs} ms; then the primary side is SIGKILLed. **Failover time**: from the SIGKILL to the first write (\`SET\`) the new master acknowledges. **Writes lost**: writes acknowledged to the client (the largest counter value it was told) that the new master does not have. **Ours**: \`replicate --pid PID --epoch E --heartbeat 50ms\` protecting redis-server; the standby (phi accrual over 50 ms heartbeats, TCP health check on redis's port); the agent and redis are SIGKILLed together; the restored redis has the same PID and port. Writes acknowledged after the last committed epoch are lost by design: that is the price of not delaying redis's replies (Remus buffers output until the epoch commits; this project does not, yet). **Redis Sentinel**: a master, a replica (\`replicaof\`) and one Sentinel (quorum ${d.sentinel.quorum}, \`down-after-milliseconds ${d.sentinel.downAfterMs}\`, \`failover-timeout ${d.sentinel.failoverTimeoutMs}\`, the most aggressive settings that do not fail over on a busy machine's hiccups); the client asks the Sentinel for the master (\`SENTINEL GET-MASTER-ADDR-BY-NAME\`) and writes to it. Detection for Sentinel: from the kill to its \`+sdown\` log line. ${d.rounds} rounds, the systems interleaved; medians with min–max.`,
    '',
    table(['system', 'failover ms (min–max)', 'ratio to Sentinel', 'detection ms', 'the rest ms', 'writes/s before the kill', 'writes acknowledged', 'acknowledged writes lost (min–max)', 'lost, as ms of writing'],
      rows.map((x) => [x.s, rg(x.t), x.ratio ? `${fmt(x.ratio.median)}× (${fmt(x.ratio.min)}–${fmt(x.ratio.max)})` : '–', rg(x.det), rg(x.rest), fmt(x.rate.median, 0), fmt(x.acked.median, 0), rg(x.lost), rg(x.win)])),
    '',
    plot('time', {
      title: { text: 'Failover time of redis-server: ours against Sentinel', subtitle: 'SIGKILL to the first acknowledged write; medians over rounds' },
      data: { values: parts }, width: 420, height: { step: 28 },
      mark: { type: 'bar', tooltip: true },
      encoding: {
        y: { field: 'system', type: 'nominal', title: null, sort: systems },
        x: { field: 'ms', type: 'quantitative', title: 'ms', stack: 'zero' },
        color: { field: 'part', type: 'nominal', title: null, legend: { labelLimit: 400 } },
        order: { field: 'part', type: 'nominal', sort: 'ascending' },
      },
    }, 'Failover time of redis-server, ours and Sentinel'),
    '',
    plot('lost', barsWithRange({
      title: 'Acknowledged writes lost at failover', subtitle: 'median over rounds, bar = min–max',
      data: rows.map((x) => ({ system: x.s, value: x.lost.median, min: x.lost.min, max: x.lost.max })),
      x: 'system', xTitle: null, y: 'value', yTitle: 'writes', xOrder: systems, width: { step: 60 },
    }), 'Acknowledged writes lost'),
    '',
    failed.length ? `Runs that failed (left out): ${failed.map((x) => `round ${x.round} ${x.system}: ${x.error?.slice(0, 300)}`).join('; ')}.` : '',
    '',
    '<details><summary>The figures as stored in the JSON (unit, baseline, ratio)</summary>',
    '',
    figureTable(r.figures, 1),
    '',
    '</details>',
  ].join('\n');
}

export const redisFailoverScenario: Scenario<RedisFailoverData> = {
  name: 'redis-failover',
  aliases: ['sentinel'],
  title: '5b. Failover of redis-server: ours against Redis Sentinel',
  summary: 'redis under writes, SIGKILL: failover time and acknowledged writes lost, ours at 100 and 25 ms against a replica + Sentinel',
  run: runRedisFailover,
  render: renderRedisFailover,
};
