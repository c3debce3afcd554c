// The benchmark harness (issue 6).
//
//   npm run bench                       quick pass over every scenario (a few minutes)
//   npm run bench -- --full             the long run (more and longer runs)
//   npm run bench -- --only NAME[,NAME] only these scenarios (--list shows them)
//   npm run bench -- --report           regenerate docs/benchmarks.md and docs/plots/ from bench/results/
//
// Each run writes bench/results/run-<date>.json (machine, kernel, versions, every figure
// with its unit, baseline and ratio, and each scenario's data) and bench/results/<scenario>.json
// (the latest result of each scenario), then regenerates docs/benchmarks.md and its plots
// from those files. Everything a scenario starts is ended by PID when it fails or on Ctrl-C.
import { execFileSync } from 'node:child_process';
import { join, relative } from 'node:path';
import { locateCriu } from '../src/criu/locate.js';
import { packageRoot } from '../src/util/paths.js';
import { codecScenario } from './codec/codec.js';
import { failoverScenario } from './failover/failover.js';
import { redisFailoverScenario } from './failover/redis-failover.js';
import { headline } from './headline.js';
import { Progress, RESULT_FORMAT, type Figure, type Scenario, type ScenarioResult } from './lib/harness.js';
import { cleanup } from './lib/processes.js';
import { docPath, machine, renderDocs, resultsDir, versions, writeJson } from './lib/report.js';
import { overheadScenario } from './overhead/overhead.js';
import { pauseScenario } from './tracker/pause.js';

export const SCENARIOS: Scenario[] = [pauseScenario, overheadScenario, codecScenario, failoverScenario, redisFailoverScenario] as Scenario[];

const USAGE = `usage: npm run bench [-- [--full | --quick] [--only NAME[,NAME...]] [--report] [--list]]

  (default)   quick pass: every scenario, fewer and shorter runs (a few minutes)
  --full      the long run
  --only      run only these scenarios (comma-separated); the others keep their last results in the docs
  --report    measure nothing: regenerate docs/benchmarks.md and docs/plots/ from bench/results/
  --list      list the scenarios`;

function parseArgs(argv: string[]): { full: boolean; only?: string[]; report: boolean; list: boolean } {
  const o = { full: false, only: undefined as string[] | undefined, report: false, list: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--full') o.full = true;
    else if (a === '--quick') o.full = false;
    else if (a === '--report') o.report = true;
    else if (a === '--list') o.list = true;
    else if (a === '--only' || a.startsWith('--only=')) {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      if (!v) throw new Error('--only needs a scenario name');
      o.only = [...(o.only ?? []), ...v.split(',').map((s) => s.trim()).filter(Boolean)];
    } else if (a === '--help' || a === '-h') { process.stdout.write(`${USAGE}\n`); process.exit(0); }
    else throw new Error(`unknown argument '${a}'`);
  }
  return o;
}

function resolveScenario(name: string): Scenario | undefined {
  return SCENARIOS.find((s) => s.name === name || s.aliases?.includes(name));
}

function have(cmd: string): boolean {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }); return true; } catch { return false; }
}

/** What the scenarios need from the system; installs Redis from Debian when it is missing and we are root. */
function setup(selected: Scenario[], log: (s: string) => void): void {
  const needRedis = selected.some((s) => ['target-overhead', 'redis-failover', 'codec'].includes(s.name));
  if (!needRedis) return;
  const missing = ['redis-server', 'redis-cli', 'redis-benchmark'].filter((c) => !have(c));
  if (!missing.length) return;
  if (process.getuid?.() !== 0 || !have('apt-get')) throw new Error(`missing ${missing.join(', ')}: install Debian's redis-server and redis-tools (Sentinel runs as \`redis-server --sentinel\`)`);
  log(`installing redis-server and redis-tools (missing: ${missing.join(', ')})`);
  try {
    execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'redis-server', 'redis-tools'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  } catch {
    execFileSync('apt-get', ['update'], { stdio: 'inherit' });
    execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'redis-server', 'redis-tools'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  }
}

async function main(): Promise<number> {
  let args: ReturnType<typeof parseArgs>;
  try { args = parseArgs(process.argv.slice(2)); } catch (e) { process.stderr.write(`${(e as Error).message}\n${USAGE}\n`); return 2; }
  if (args.list) {
    for (const s of SCENARIOS) process.stdout.write(`${s.name.padEnd(16)} ${s.summary}${s.aliases?.length ? ` (also: ${s.aliases.join(', ')})` : ''}\n`);
    return 0;
  }
  const progress = new Progress();
  const log = (s: string) => progress.log(s);
  if (args.report) {
    const r = await renderDocs({ scenarios: SCENARIOS, headline });
    log(`wrote ${relative(packageRoot, r.doc)} and ${r.plots.length} plots${r.missing.length ? `; no results yet for ${r.missing.join(', ')}` : ''}`);
    return 0;
  }
  const unknown = (args.only ?? []).filter((n) => !resolveScenario(n));
  if (unknown.length) {
    process.stderr.write(`unknown scenario${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}\n`);
    return 2;
  }
  const selected = args.only ? SCENARIOS.filter((s) => args.only!.some((n) => resolveScenario(n) === s)) : SCENARIOS;
  const mode = args.full ? 'full' : 'quick';
  const command = `npm run bench${args.full || args.only ? ' --' : ''}${args.full ? ' --full' : ''}${args.only ? ` --only ${selected.map((s) => s.name).join(',')}` : ''}`;

  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    progress.stop();
    process.stderr.write(`\n[bench] ${sig}: stopping, ending every process this run started\n`);
    void cleanup.runAll((s) => process.stderr.write(`[bench] ${s}\n`)).finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  setup(selected, log);
  const criu = await locateCriu().catch(() => undefined);
  const m = machine();
  const v = versions(criu?.path);
  const started = new Date();
  const stamp = started.toISOString().replace(/[:]/g, '-').replace(/\..*/, '');
  const runFile = `bench/results/run-${stamp}.json`;
  log(`${command}: ${mode} mode, ${selected.length} scenario${selected.length > 1 ? 's' : ''} (${selected.map((s) => s.name).join(', ')}); ${m.cpu}, ${m.cores} cores, kernel ${m.kernel}, CRIU ${v.criu}, redis ${v['redis-server']}`);

  const results: Record<string, ScenarioResult> = {};
  const status: Record<string, { ok: boolean; durationS: number; error?: string }> = {};
  for (const [i, s] of selected.entries()) {
    progress.startScenario(s.name, i + 1, selected.length);
    const t0 = performance.now();
    const startedAt = new Date().toISOString();
    try {
      const out = await s.run({ quick: !args.full, log, progress: (d, t, w) => progress.step(d, t, w), cleanup });
      const durationS = (performance.now() - t0) / 1000;
      const r: ScenarioResult = {
        format: RESULT_FORMAT, scenario: s.name, title: s.title, command, reproduce: `npm run bench -- --only ${s.name}${args.full ? ' --full' : ''}`, mode,
        machine: { ...m, date: startedAt }, versions: v, startedAt, durationS, runFile, ...out,
      };
      results[s.name] = r;
      writeJson(join(resultsDir, `${s.name}.json`), r);
      status[s.name] = { ok: true, durationS };
      log(`${s.name}: done in ${(durationS / 60).toFixed(1)} min, ${out.figures.length} figures → bench/results/${s.name}.json`);
    } catch (e) {
      const durationS = (performance.now() - t0) / 1000;
      status[s.name] = { ok: false, durationS, error: (e as Error).stack ?? String(e) };
      log(`${s.name}: FAILED after ${durationS.toFixed(0)} s: ${(e as Error).message}`);
    } finally {
      progress.endScenario();
      if (cleanup.size) { log(`${s.name}: ending what it left running`); await cleanup.runAll(log); }
    }
    if (interrupted) return 130;
  }
  const durationS = (Date.now() - started.getTime()) / 1000;
  const figures: Figure[] = Object.values(results).flatMap((r) => r.figures);
  writeJson(join(packageRoot, runFile), {
    format: RESULT_FORMAT, kind: 'run', command, mode, only: args.only ?? null, machine: m, versions: v, startedAt: started.toISOString(), durationS,
    scenarios: status, figures, results,
  });
  log(`wrote ${runFile} (${figures.length} figures)`);
  const r = await renderDocs({ scenarios: SCENARIOS, headline });
  log(`wrote ${relative(packageRoot, docPath)} and ${r.plots.length} plots in docs/plots/`);
  progress.stop();
  const failed = Object.entries(status).filter(([, x]) => !x.ok);
  process.stderr.write(`[bench] ${command}: ${(durationS / 60).toFixed(1)} min; ${Object.keys(results).length} scenario(s) done${failed.length ? `, FAILED: ${failed.map(([n]) => n).join(', ')}` : ''}\n`);
  return failed.length ? 1 : 0;
}

const code = await main();
// Whatever a library left pending (timers, sockets) must not keep a finished run alive.
process.stderr.write('', () => process.exit(code));
