// The benchmark harness's reporting, on canned data (no measurement): figures with their
// baseline and paired ratios, the docs generator with its tables and SVG plots (vega-lite,
// headless), CRIU's stats-dump parser and the RESP parser the failover benchmark uses.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseStatsDump } from '../bench/baselines/criu-periodic.js';
import { headline } from '../bench/headline.js';
import { Figures, RESULT_FORMAT, summary, type ScenarioResult } from '../bench/lib/harness.js';
import { renderDocs } from '../bench/lib/report.js';
import { parseReplies } from '../bench/lib/resp.js';
import { configLabel, figuresOf, rowsOf, overheadScenario, type Config, type Session } from '../bench/overhead/overhead.js';
import { redisFailoverScenario, type RedisFailoverData } from '../bench/failover/redis-failover.js';

const dir = mkdtempSync(join(tmpdir(), 'remus-bench-harness-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const machine = { cpu: 'test cpu', cores: 2, memoryGiB: 24, kernel: '6.18', node: 'v20', commit: 'abc1234', dirty: false, date: '2026-11-23T10:00:00.000Z', hostname: 'h' };

function result<D>(scenario: string, figures: ScenarioResult['figures'], data: D): ScenarioResult<D> {
  return {
    format: RESULT_FORMAT, scenario, title: scenario, command: 'npm run bench', reproduce: `npm run bench -- --only ${scenario}`, mode: 'quick',
    machine, versions: { node: 'v20' }, startedAt: machine.date, durationS: 60, runFile: 'bench/results/run-test.json', figures, data,
  };
}

describe('figures', () => {
  it('median is the middle value (mean of the two middle ones for an even count), with min and max', () => {
    expect(summary([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3, n: 3 });
    expect(summary([4, 1, 2, 3, Number.NaN])).toEqual({ median: 2.5, min: 1, max: 4, n: 4 });
  });

  it('pairs each run with the baseline of the same round', () => {
    const F = new Figures('s');
    const base = F.add({ what: 'throughput', config: 'unreplicated', unit: 'req/s', values: [100, 200] });
    const f = F.add({ what: 'throughput', config: 'ours', unit: 'req/s', values: [90, 100] }, { figure: base, values: [100, 200] });
    expect(f.baseline).toMatchObject({ config: 'unreplicated', median: 150, unit: 'req/s' });
    expect(f.ratio).toEqual({ median: 0.7, min: 0.5, max: 0.9, n: 2 });
    expect(f.id).toBe('s/throughput/ours');
  });
});

describe('parsers', () => {
  it('reads frozen time and pages written from a CRIU 4.2 stats-dump', () => {
    // A real stats-dump of a redis-server dump: freezing 558 µs, frozen 73 836 µs, 1075 pages written.
    const buf = Buffer.from('4059105506330957260000000a2408ae0410ecc00418e2ba0120bd5a288e0a300038b3084000480050085808600068007000', 'hex');
    const s = parseStatsDump(buf);
    expect(s[1]).toBe(558);
    expect(s[2]).toBe(73836);
    expect(s[7]).toBe(1075);
  });

  it('parses RESP replies, arrays and partial input', () => {
    const full = Buffer.from('+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n-ERR no\r\n');
    const r = parseReplies(full);
    expect(r.replies.slice(0, 4)).toEqual(['OK', 42, 'abc', null]);
    expect(r.replies[4]).toEqual(['127.0.0.1', '6380']);
    expect(r.replies[5]).toBeInstanceOf(Error);
    expect(r.off).toBe(full.length);
    const part = parseReplies(Buffer.from('*2\r\n$3\r\nabc\r\n$4\r\n63'));
    expect(part.replies).toEqual([]);
    expect(part.off).toBe(0);
  });
});

describe('docs/benchmarks.md generation', () => {
  it('renders tables and SVG plots from the stored JSON alone', async () => {
    const results = join(dir, 'results');
    mkdirSync(results, { recursive: true });
    // target-overhead: two rounds of every configuration, made up.
    const epochs = [25, 100, 1000];
    const configs: Config[] = [{ kind: 'none' }, ...epochs.map((e) => ({ kind: 'ours' as const, epochMs: e })), { kind: 'ours', epochMs: 100, discardingStandby: true }, { kind: 'track', epochMs: 100 }, { kind: 'track', epochMs: 25 }, ...epochs.map((e) => ({ kind: 'criu' as const, epochMs: e }))];
    const sessions: Session[] = [];
    for (const round of [1, 2]) {
      for (const workload of ['redis', 'http'] as const) {
        for (const c of configs) {
          const label = configLabel(c);
          const f = c.kind === 'none' ? 1 : c.kind === 'ours' ? (c.discardingStandby ? 0.93 : 0.9) : c.kind === 'track' ? 0.95 : 0.5;
          const phases = (workload === 'redis' ? ['redis SET', 'redis GET'] : ['node HTTP']).map((phase) => ({
            phase: phase as 'redis SET', rps: 10_000 * f * round, p50Ms: 1, p99Ms: 2 / f, maxMs: 10 / f, ms: 3000,
            ...(c.kind === 'ours' ? { commits: 10, epochs: 10, pages: 1000, wireBytes: 100_000, pauseMs: { p50: 1, p99: 2, max: 3 } } : {}),
            ...(c.kind === 'track' ? { agentCores: 0.05 } : {}),
            ...(c.kind === 'ours' && c.discardingStandby ? { agentCores: 0.08 } : {}),
            ...(c.kind === 'ours' ? { standbyDiskBytesPerSecond: 50e6 * round } : {}),
            ...(c.kind === 'criu' ? { dumps: 3, dumpsFailed: 0, frozenMs: { p50: 60, p99: 80, max: 80 }, dumpMs: 90, shippedBytes: 3 * 5e6, imageBytes: 5e6 } : {}),
          }));
          sessions.push({ round, workload, config: c, label, phases, ...(c.kind === 'ours' ? { rebases: 1 } : {}) });
        }
      }
    }
    const rows = rowsOf(sessions, configs);
    const figures = figuresOf(sessions, configs, rows);
    const set100 = figures.find((f) => f.what === 'redis SET throughput' && f.config === 'ours, epoch 100 ms')!;
    expect(set100.ratio?.median).toBeCloseTo(0.9);
    expect(set100.baseline?.config).toBe('unreplicated');
    expect(figures.find((f) => f.what === 'redis SET throughput, ours against CRIU dumps' && f.config === 'ours, epoch 100 ms')?.ratio?.median).toBeCloseTo(1.8);
    const overhead = result('target-overhead', figures, { rounds: 2, redisRequests: 1000, httpSeconds: 1, httpConnections: 20, epochs, criu: 'criu (4.2.1)', criuNetworkLock: 'nftables', sessions, rows });
    writeFileSync(join(results, 'target-overhead.json'), JSON.stringify(overhead));
    const failover: RedisFailoverData = {
      rounds: 1, keys: 100, writeMs: 100, oursEpochs: [100, 25], sentinel: { downAfterMs: 200, failoverTimeoutMs: 2000, quorum: 1 },
      samples: [
        { system: 'ours, epoch 100 ms', epochMs: 100, round: 1, killToWritableMs: 500, detectionMs: 300, buildMs: 60, restoreMs: 80, healthMs: 1, acked: 1000, onNewMaster: 900, lost: 100, writeRate: 10_000, lostWindowMs: 10 },
        { system: 'Redis Sentinel', round: 1, killToWritableMs: 1300, detectionMs: 270, sentinelSwitchMs: 1200, acked: 2000, onNewMaster: 2000, lost: 0, writeRate: 20_000, lostWindowMs: 0 },
      ],
    };
    const F = new Figures('redis-failover');
    const s = F.add({ what: 'failover time (SIGKILL to a write acknowledged by the new master)', config: 'Redis Sentinel', unit: 'ms', values: [1300] });
    F.add({ what: 'failover time (SIGKILL to a write acknowledged by the new master)', config: 'ours, epoch 100 ms', unit: 'ms', values: [500] }, { figure: s, values: [1300] });
    writeFileSync(join(results, 'redis-failover.json'), JSON.stringify(result('redis-failover', F.list, failover)));
    writeFileSync(join(results, 'codec.json'), JSON.stringify({ format: 1, name: 'codec' })); // an old format: not rendered

    const doc = join(dir, 'docs', 'benchmarks.md');
    const plots = join(dir, 'docs', 'plots');
    mkdirSync(plots, { recursive: true });
    writeFileSync(join(plots, 'stale.svg'), '<svg/>'); // a plot no scenario makes any more: removed
    const r = await renderDocs({ scenarios: [overheadScenario, redisFailoverScenario, { ...overheadScenario, name: 'codec', title: 'Codec' }], results, doc, plots, headline });
    expect(r.missing).toEqual(['codec']);
    const md = readFileSync(doc, 'utf8');
    expect(md).toContain('## At a glance');
    expect(md).toContain('| ours, epoch 100 ms | 13500 (9000–18000) | 0.900 (0.900–0.900) |');
    expect(md).toContain('the primary\'s capture alone (tracking only: freeze, find, read, thaw) costs 5 % (at 25 ms: 5 % of the 15 % budget). Capture, encoding and sending together, with the standby\'s decoding and storing off this host (the discarding stand-in; its receiving stays): 7 %, the agent using 0.08 cores. The rest is CPU.');
    expect(md).toContain('ours, epoch 100 ms, standby discards: 7 % lost (not met)');
    expect(md).toMatch(/\| tracking only, epoch 100 ms \| 14250 \(9500–19000\) \| 0\.950 \(0\.950–0\.950\) \|[^\n]*\| 0\.05 \/ – \|/);
    expect(md).toMatch(/\| redis SET \| ours, epoch 100 ms \|[^\n]* MB\/s of dirty pages \| 75\.0 \|/); // standby disk writes: median of 50 and 100 MB/s
    expect(md).toMatch(/\| redis SET \| ours, epoch 100 ms, standby discards \|[^\n]* MB\/s of dirty pages \| – \|/); // no disk: no figure
    expect(md).toContain('Produced by `npm run bench` (quick mode');
    expect(md).toContain('No results yet: run `npm run bench -- --only codec`.');
    expect(md).toMatch(/!\[[^\]]+\]\(plots\/target-overhead-throughput\.svg\)/);
    const svgs = readdirSync(plots).sort();
    expect(svgs).toEqual(['redis-failover-lost.svg', 'redis-failover-time.svg', 'target-overhead-link.svg', 'target-overhead-p99.svg', 'target-overhead-pause.svg', 'target-overhead-throughput.svg']);
    for (const f of svgs) {
      const svg = readFileSync(join(plots, f), 'utf8');
      expect(svg).toMatch(/<svg[^>]+width="\d+"/);
      expect(svg).toMatch(/class="mark-rect role-mark[^"]*"[^>]*><path aria-label="[^"]+: [\d.]+/); // bars with data, not an empty frame
      // every plot image the markdown names exists
      expect(md).toContain(`plots/${f}`);
    }
    expect(existsSync(join(plots, 'stale.svg'))).toBe(false);
  }, 30_000);
});
