// Results and the document made from them.
//
//   bench/results/run-<date>.json   one file per `npm run bench`: machine, kernel, versions,
//                                   every figure (unit, baseline, ratio), each scenario's data
//   bench/results/<scenario>.json   the latest result of each scenario (what the docs show)
//   docs/benchmarks.md              generated from the latest results: tables and plots
//   docs/plots/*.svg                the plots, rendered from the same JSON by vega-lite
//
// The docs are regenerated from the JSON files alone (`npm run bench -- --report`), so
// that every table and plot can be checked against the data that made it.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, hostname, release, totalmem } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { packageRoot } from '../../src/util/paths.js';
import { RESULT_FORMAT, type Figure, type Machine, type PlotSink, type Scenario, type ScenarioResult } from './harness.js';
import { renderSvg } from './plot.js';

export const resultsDir = join(packageRoot, 'bench', 'results');
export const docPath = join(packageRoot, 'docs', 'benchmarks.md');
export const plotsDir = join(packageRoot, 'docs', 'plots');

export function machine(): Machine {
  let commit = 'unknown';
  let dirty = false;
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: packageRoot, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: packageRoot, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() !== '';
  } catch { /* not a checkout */ }
  return {
    cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version,
    commit, dirty, date: new Date().toISOString(), hostname: hostname(),
  };
}

function firstLine(cmd: string, args: string[], re?: RegExp): string {
  try {
    const out = execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 }).toString();
    const m = re ? re.exec(out) : null;
    return (m ? m[1] ?? m[0] : out.split('\n')[0] ?? '').trim();
  } catch { return 'not found'; }
}

function pkgVersion(name: string): string {
  try { return (JSON.parse(readFileSync(join(packageRoot, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version; } catch { return 'not installed'; }
}

/** Versions of everything a run measures or uses. */
export function versions(criu?: string): Record<string, string> {
  const own = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  return {
    'remus-replicate': own.version,
    node: process.version,
    kernel: release(),
    criu: criu ? firstLine(criu, ['--version'], /Version:\s*(\S+)/) : 'not found',
    'redis-server': firstLine('redis-server', ['--version'], /v=(\S+)/),
    'redis-benchmark': firstLine('redis-benchmark', ['--version'], /redis-benchmark (\S+)/),
    autocannon: pkgVersion('autocannon'),
    vega: pkgVersion('vega'),
    'vega-lite': pkgVersion('vega-lite'),
    os: firstLine('sh', ['-c', '. /etc/os-release && echo "$PRETTY_NAME"']),
  };
}

const json = (data: unknown) => `${JSON.stringify(data, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`;

export function writeJson(path: string, data: unknown): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, json(data));
  return path;
}

export function readResult(path: string): ScenarioResult | undefined {
  try {
    const r = JSON.parse(readFileSync(path, 'utf8')) as ScenarioResult;
    return r.format === RESULT_FORMAT && typeof r.scenario === 'string' ? r : undefined;
  } catch { return undefined; }
}

export function table(head: string[], rows: Array<Array<string | number>>): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export const fmt = (x: number | undefined, digits = 2): string => (x !== undefined && Number.isFinite(x) ? x.toFixed(digits) : '–');

/** "median (min–max)" with `digits` decimals. */
export const range = (s: { median: number; min: number; max: number } | undefined, digits = 2): string =>
  s && Number.isFinite(s.median) ? (s.min === s.max ? fmt(s.median, digits) : `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`) : '–';

/** A figure's value as text: "median (min–max) unit". */
export function figureText(f: Figure, digits = 2): string {
  return `${range(f, digits)} ${f.unit}`;
}

export function ratioText(f: Figure, digits = 2): string {
  return f.ratio && Number.isFinite(f.ratio.median) ? `${range(f.ratio, digits)}×` : '–';
}

/** The header line of a section: the command, machine and data behind it. */
export function provenance(r: ScenarioResult): string {
  const m = r.machine;
  return [
    `Produced by \`${r.command}\` (${r.mode} mode, ${fmt(r.durationS / 60, 1)} min for this scenario) on ${String(m.date).slice(0, 16).replace('T', ' ')} UTC; to run only this: \`${r.reproduce}\`.`,
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}, commit ${m.commit}${m.dirty ? ' (with uncommitted changes)' : ''}.`,
    `Data: [\`bench/results/${r.scenario}.json\`](../bench/results/${r.scenario}.json) (from \`${r.runFile}\`).`,
  ].join(' ');
}

/** Every figure of a result as a table: the JSON's figures, one line each. */
export function figureTable(figs: Figure[], digits = 2): string {
  return table(['what', 'configuration', 'median (min–max)', 'unit', 'n', 'compared with', 'ratio (min–max)'],
    figs.map((f) => [f.what, f.config, range(f, digits), f.unit, `${f.runs}${f.over ? ` ${f.over}` : ''}`, f.baseline ? f.baseline.config : '–', ratioText(f)]));
}

// ---------------------------------------------------------------------------------------
// The document.

export interface RenderOptions {
  scenarios: Scenario[];
  results?: string;   // directory of <scenario>.json
  doc?: string;       // output markdown
  plots?: string;     // output SVG directory
  /** The headline table: figures picked across scenarios (ours next to the baselines). */
  headline?: (results: Map<string, ScenarioResult>) => string;
}

/** Regenerates docs/benchmarks.md and docs/plots/*.svg from the latest result of each scenario. */
export async function renderDocs(o: RenderOptions): Promise<{ doc: string; plots: string[]; missing: string[] }> {
  const dir = o.results ?? resultsDir;
  const doc = o.doc ?? docPath;
  const plotDir = o.plots ?? plotsDir;
  const results = new Map<string, ScenarioResult>();
  const missing: string[] = [];
  for (const s of o.scenarios) {
    const r = readResult(join(dir, `${s.name}.json`));
    if (r) results.set(s.name, r); else missing.push(s.name);
  }
  const pending: Array<{ file: string; spec: Record<string, unknown> }> = [];
  const sections: string[] = [];
  for (const s of o.scenarios) {
    const r = results.get(s.name);
    if (!r) {
      sections.push(`## ${s.title}\n\nNo results yet: run \`npm run bench -- --only ${s.name}\`.`);
      continue;
    }
    const plot: PlotSink = (name, spec, alt) => {
      const file = join(plotDir, `${s.name}-${name}.svg`);
      pending.push({ file, spec });
      return `![${alt}](${relative(dirname(doc), file)})`;
    };
    try {
      sections.push(s.render(r, plot).trim());
    } catch (e) {
      sections.push(`## ${s.title}\n\nThe stored result could not be rendered (${(e as Error).message}); run \`npm run bench -- --only ${s.name}\` again.`);
    }
  }
  mkdirSync(plotDir, { recursive: true });
  // Plots of scenarios that are no longer rendered go; the rest are rewritten.
  const keep = new Set(pending.map((p) => basename(p.file)));
  for (const f of existsSync(plotDir) ? readdirSync(plotDir) : []) if (f.endsWith('.svg') && !keep.has(f)) rmSync(join(plotDir, f));
  for (const p of pending) writeFileSync(p.file, await renderSvg(p.spec));

  const runs = [...results.values()].map((r) => r.runFile).filter((v, i, a) => a.indexOf(v) === i);
  const text = [
    '# Benchmarks',
    '',
    '<!-- Generated by bench/run.ts from bench/results/*.json: edit the generator, not this file. -->',
    '',
    'Every figure below comes from the harness in `bench/` and is stored, with its unit, the baseline it is compared to and the ratio, in the JSON file each section names. Run it yourself:',
    '',
    '```sh',
    'npm run bench                      # quick pass (a few minutes): every scenario, fewer and shorter runs',
    'npm run bench -- --full            # the long run',
    'npm run bench -- --only NAME       # one scenario (names below; comma-separated for several)',
    'npm run bench -- --report          # regenerate this file and docs/plots/ from bench/results/ without measuring',
    '```',
    '',
    'Rules: every figure is a median over repeated runs (or over the samples named) with min and max; every comparison is a ratio of two figures measured in the same run, on the same machine, with the configurations interleaved so that drift hits them alike; where runs pair up (one round = one run of each configuration) the ratio is the median of the per-round ratios. Each section names the command that produced it. The machine is a shared 2-core VM: the target, the load generator, the primary agent and the standby all compete for the same two cores, which a two-host deployment would not, and other work may run on it too: absolute figures moved by 30 % and more between rounds here, the paired ratios less. Quick mode runs 2 rounds (min and max are then the two runs); `--full` runs 5.',
    '',
    `Scenarios: ${o.scenarios.map((s) => `\`${s.name}\` (${s.summary})`).join('; ')}.`,
    '',
    runs.length ? `Runs shown: ${runs.map((f) => `\`${f}\``).join(', ')}.` : '',
    '',
    o.headline ? o.headline(results) : '',
    '',
    ...sections.flatMap((s) => [s, '']),
  ].join('\n').replace(/\n{3,}/g, '\n\n');
  mkdirSync(dirname(doc), { recursive: true });
  writeFileSync(doc, `${text.trim()}\n`);
  return { doc, plots: pending.map((p) => p.file), missing };
}
