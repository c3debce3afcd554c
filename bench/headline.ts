// The table at the top of docs/benchmarks.md: ours next to what a user would pick instead,
// each line a figure of the latest results with the baseline measured in the same run.
import type { Figure, ScenarioResult } from './lib/harness.js';
import { fmt, range, table } from './lib/report.js';

function find(results: Map<string, ScenarioResult>, scenario: string, what: string, config: string): Figure | undefined {
  return results.get(scenario)?.figures.find((f) => f.what === what && f.config === config);
}

export function headline(results: Map<string, ScenarioResult>): string {
  const rows: Array<Array<string>> = [];
  const add = (question: string, f: Figure | undefined, digits = 2, base?: Figure, section = '') => {
    if (!f) return;
    const b = base ?? (f.baseline ? results.get(f.scenario)?.figures.find((x) => x.id === f.baseline!.id) : undefined);
    rows.push([
      question, `${range(f, digits)} ${f.unit}`, f.config,
      b ? `${range(b, digits)} ${b.unit}` : '–', b ? b.config : '–',
      f.ratio ? `${fmt(f.ratio.median)}× (${fmt(f.ratio.min)}–${fmt(f.ratio.max)})` : b && Number.isFinite(f.median / b.median) ? `${fmt(f.median / b.median)}×` : '–', section,
    ]);
  };
  const O = 'target-overhead';
  add('Pause per epoch, 1 GiB target, 1 % of it written (uffd-wp)', find(results, 'tracker-pause', 'pause per epoch', results.get('tracker-pause')?.figures.find((f) => f.what === 'pause per epoch' && /^uffd-wp, 1024 MiB target, 1 %/.test(f.config))?.config ?? ''), 3, undefined, '1');
  add('redis SET throughput, protected every 100 ms', find(results, O, 'redis SET throughput', 'ours, epoch 100 ms'), 0, undefined, '2');
  add('redis SET throughput, protected every 100 ms, standby at idle priority (a rough stand-in for its own host: starved, it commits fewer, coalesced epochs; see section 2)', find(results, O, 'redis SET throughput', 'ours, epoch 100 ms, standby idle-priority'), 0, undefined, '2');
  add('redis SET throughput, protected every 100 ms, the standby\'s decoding and storing off this host (a stand-in that receives and acknowledges, storing nothing: about the primary\'s own cost; see section 2)', find(results, O, 'redis SET throughput', 'ours, epoch 100 ms, standby discards'), 0, undefined, '2');
  add('redis SET throughput, dumped by CRIU every 100 ms', find(results, O, 'redis SET throughput', 'CRIU dump every 100 ms'), 0, undefined, '2');
  add('redis SET throughput: ours against CRIU dumps, both every 100 ms', find(results, O, 'redis SET throughput, ours against CRIU dumps', 'ours, epoch 100 ms'), 0, undefined, '2');
  add('redis GET throughput, protected every 100 ms', find(results, O, 'redis GET throughput', 'ours, epoch 100 ms'), 0, undefined, '2');
  add('Node.js HTTP throughput, protected every 100 ms', find(results, O, 'node HTTP throughput', 'ours, epoch 100 ms'), 0, undefined, '2');
  add('Node.js HTTP throughput, dumped by CRIU every 100 ms', find(results, O, 'node HTTP throughput', 'CRIU dump every 100 ms'), 0, undefined, '2');
  add('redis SET p99 latency, protected every 100 ms', find(results, O, 'redis SET p99 latency', 'ours, epoch 100 ms'), 2, undefined, '2');
  add('Pause per checkpoint (p99), redis under SET load: ours against CRIU, every 100 ms', find(results, O, 'redis SET pause per checkpoint, p99', 'ours, epoch 100 ms'), 2, undefined, '2');
  add('Checkpoints per second achieved with a 100 ms period, redis SET load: ours against CRIU', find(results, O, 'redis SET checkpoints per second achieved', 'ours, epoch 100 ms'), 1, undefined, '2');
  add('Bytes shipped per second, redis SET load: ours against CRIU, every 100 ms', find(results, O, 'redis SET bytes shipped per second', 'ours, epoch 100 ms'), 0, undefined, '3');
  add('Redis failover time (SIGKILL to an acknowledged write): ours (100 ms) against Sentinel', find(results, 'redis-failover', 'failover time (SIGKILL to a write acknowledged by the new master)', 'ours, epoch 100 ms'), 0, undefined, '5b');
  add('Acknowledged redis writes lost at failover: ours (100 ms) against Sentinel', find(results, 'redis-failover', 'acknowledged writes lost', 'ours, epoch 100 ms'), 0,
    find(results, 'redis-failover', 'acknowledged writes lost', 'Redis Sentinel'), '5b');
  add('Failover time of a 1 GiB process (SIGKILL to serving)', find(results, 'failover', 'failover time (SIGKILL to the first answer of the restored process)', '1024 MiB target'), 0, undefined, '5');
  add('Redis SET pages on the wire: page-delta against LZ4 of whole pages', find(results, 'codec', 'redis: smaller than raw', 'page-delta (this codec)'), 1, undefined, '4');
  if (!rows.length) return '';
  return [
    '## At a glance: ours against the alternatives',
    '',
    'Each line: a figure (mostly ours) and the baseline it is compared to, both measured in the same run (the section named gives the command, the setup and every other figure). Medians with min–max; the ratio is figure / baseline (per round where rounds pair up).',
    '',
    table(['question', 'figure', 'configuration', 'compared with', 'its configuration', 'ratio', 'section'], rows),
  ].join('\n');
}
