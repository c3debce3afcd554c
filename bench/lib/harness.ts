// What every scenario of the benchmark harness shares: the result format (figures with
// their unit, baseline and ratio; a scenario's own data), summaries (median with min and
// max), progress on stderr, and the clean-up of everything a run starts, also on Ctrl-C.
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import cliProgress from 'cli-progress';

/** Result files carry this; a file with another format is not rendered. */
export const RESULT_FORMAT = 2;

export interface Summary { median: number; min: number; max: number; n: number }

/** The median (the mean of the two middle values for an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

export function summary(xs: readonly number[]): Summary {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return { median: Number.NaN, min: Number.NaN, max: Number.NaN, n: 0 };
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

/** One figure: a median over repeated runs with min and max, its unit, and what it is compared to. */
export interface Figure {
  /** Stable key: scenario/what/config. */
  id: string;
  scenario: string;
  /** What was measured, for a reader. */
  what: string;
  /** The configuration it was measured in (e.g. "ours, epoch 100 ms", "CRIU dump every 100 ms"). */
  config: string;
  unit: string;
  median: number; min: number; max: number;
  /** How many runs (or samples, see `over`) the median is over. */
  runs: number;
  over?: string;
  better?: 'higher' | 'lower';
  /** The figure it is compared to, measured in the same run. */
  baseline?: { id: string; config: string; median: number; unit: string };
  /** figure / baseline: the median of per-round ratios when rounds pair them, with min and max. */
  ratio?: Summary;
}

export interface FigureInput {
  what: string; config: string; unit: string; values: readonly number[];
  better?: 'higher' | 'lower'; over?: string; key?: string;
}

/** Builds figures for one scenario, pairing each with a baseline when asked. */
export class Figures {
  readonly list: Figure[] = [];
  readonly #scenario: string;
  constructor(scenario: string) { this.#scenario = scenario; }

  static id(scenario: string, what: string, config: string): string {
    const slug = (s: string) => s.toLowerCase().replace(/[^a-z0-9.]+/g, '-').replace(/^-|-$/g, '');
    return `${scenario}/${slug(what)}/${slug(config)}`;
  }

  add(f: FigureInput, baseline?: { figure: Figure; values?: readonly number[] }): Figure {
    const s = summary(f.values);
    const fig: Figure = {
      id: Figures.id(this.#scenario, f.key ?? f.what, f.config), scenario: this.#scenario, what: f.what, config: f.config, unit: f.unit,
      median: s.median, min: s.min, max: s.max, runs: s.n, ...(f.over ? { over: f.over } : {}), ...(f.better ? { better: f.better } : {}),
    };
    if (baseline) {
      const b = baseline.figure;
      fig.baseline = { id: b.id, config: b.config, median: b.median, unit: b.unit };
      // Paired per round when both series line up (runs interleaved: one round, one ratio).
      const bv = baseline.values;
      fig.ratio = bv && bv.length === f.values.length && bv.length > 0
        ? summary(f.values.map((x, i) => x / bv[i]!))
        : { median: s.median / b.median, min: s.min / b.median, max: s.max / b.median, n: 1 };
    }
    this.list.push(fig);
    return fig;
  }
}

export interface Machine {
  cpu: string; cores: number; memoryGiB: number; kernel: string; node: string; commit: string; dirty: boolean; date: string; hostname: string;
}

/** What a scenario's run function gets. */
export interface RunContext {
  quick: boolean;
  log(line: string): void;
  /** Progress inside the scenario: step `done` of `total`, with what is going on. */
  progress(done: number, total: number, what: string): void;
  /** Registers something to clean up if the run is interrupted; returns a function that unregisters it. */
  cleanup: Cleanup;
}

export interface ScenarioOutput<D = unknown> { figures: Figure[]; data: D; notes?: string[] }

export interface ScenarioResult<D = unknown> extends ScenarioOutput<D> {
  format: number;
  scenario: string;
  title: string;
  /** The command that produced this result, and the one that reproduces only it. */
  command: string;
  reproduce: string;
  mode: 'quick' | 'full';
  machine: Machine;
  versions: Record<string, string>;
  startedAt: string;
  durationS: number;
  runFile: string;
}

/** Adds a plot (a Vega-Lite spec) to the docs; returns the markdown that shows it. */
export type PlotSink = (name: string, spec: Record<string, unknown>, alt: string) => string;

export interface Scenario<D = unknown> {
  name: string;
  aliases?: string[];
  title: string;
  /** What it runs, for --list. */
  summary: string;
  run(ctx: RunContext): Promise<ScenarioOutput<D>>;
  /** Markdown for docs/benchmarks.md from the stored result alone (no measurement). */
  render(r: ScenarioResult<D>, plot: PlotSink): string;
}

// ---------------------------------------------------------------------------------------
// Clean-up: every process and directory a run makes is registered here, so that a failure
// or Ctrl-C ends them (by PID, SIGKILL) and removes them. Scenarios still clean up in their
// own finally blocks; this is the net under them.

type Item = { kind: 'pid'; pid: number; what: string } | { kind: 'child'; child: ChildProcess; what: string } | { kind: 'dir'; path: string } | { kind: 'fn'; fn: () => void | Promise<void>; what: string };

export class Cleanup {
  readonly #items = new Set<Item>();

  pid(pid: number, what: string): () => void { return this.#add({ kind: 'pid', pid, what }); }
  child(child: ChildProcess, what: string): () => void {
    const off = this.#add({ kind: 'child', child, what });
    child.once('exit', off);
    return off;
  }
  dir(path: string): () => void { return this.#add({ kind: 'dir', path }); }
  fn(what: string, fn: () => void | Promise<void>): () => void { return this.#add({ kind: 'fn', fn, what }); }

  #add(i: Item): () => void {
    this.#items.add(i);
    return () => { this.#items.delete(i); };
  }

  get size(): number { return this.#items.size; }

  /** Ends everything still registered: functions first (they stop agents), then processes, then directories. */
  async runAll(log: (s: string) => void): Promise<void> {
    const items = [...this.#items].reverse();
    this.#items.clear();
    for (const i of items) {
      if (i.kind !== 'fn') continue;
      try { await Promise.race([i.fn(), new Promise((r) => setTimeout(r, 5000))]); } catch (e) { log(`clean-up of ${i.what} failed: ${(e as Error).message}`); }
    }
    for (const i of items) {
      if (i.kind === 'pid') { try { process.kill(i.pid, 'SIGKILL'); log(`killed ${i.what} (pid ${i.pid})`); } catch { /* gone */ } }
      if (i.kind === 'child' && i.child.exitCode === null && i.child.signalCode === null && i.child.pid) {
        try { process.kill(i.child.pid, 'SIGKILL'); log(`killed ${i.what} (pid ${i.child.pid})`); } catch { /* gone */ }
      }
    }
    for (const i of items) if (i.kind === 'dir') rmSync(i.path, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------
// Progress: a bar with the scenario's step and elapsed time on a terminal, plain
// timestamped lines otherwise (CI logs, redirected output).

export class Progress {
  readonly #tty = !!process.stderr.isTTY;
  readonly #t0 = performance.now();
  #multi?: cliProgress.MultiBar;
  #bar?: cliProgress.SingleBar;
  #scenario = '';
  #index = 0;
  #count = 0;

  #stamp(): string {
    const s = Math.round((performance.now() - this.#t0) / 1000);
    return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  }

  startScenario(name: string, index: number, count: number): void {
    this.#scenario = name; this.#index = index; this.#count = count;
    this.log(`── scenario ${index}/${count}: ${name}`);
    if (this.#tty) {
      this.#multi ??= new cliProgress.MultiBar({
        format: `{scenario} [{bar}] {value}/{total} | {elapsed} | {what}`, stream: process.stderr, hideCursor: true, clearOnComplete: true, forceRedraw: true,
      }, cliProgress.Presets.shades_classic);
      this.#bar = this.#multi.create(1, 0, { scenario: `${this.#index}/${this.#count} ${name}`, what: 'starting', elapsed: this.#stamp() });
    }
  }

  step(done: number, total: number, what: string): void {
    if (this.#bar) {
      this.#bar.setTotal(Math.max(1, total));
      this.#bar.update(Math.min(done, total), { what, elapsed: this.#stamp() });
    } else {
      process.stderr.write(`[bench ${this.#stamp()}] ${this.#index}/${this.#count} ${this.#scenario} (${done}/${total}) ${what}\n`);
    }
  }

  log(line: string): void {
    const text = `[bench ${this.#stamp()}] ${line}\n`;
    if (this.#multi) this.#multi.log(text); else process.stderr.write(text);
  }

  endScenario(): void {
    if (this.#bar && this.#multi) { this.#multi.remove(this.#bar); this.#bar = undefined; }
  }

  stop(): void { this.#multi?.stop(); this.#multi = undefined; }
}
