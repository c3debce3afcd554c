// `replicate demo`, run as users run it (the built CLI, a child process): it must pass,
// say what it did, restore the exact committed state, and leave nothing behind: no
// process it started (checked by the PIDs its --json events give), no temp dir; also
// when it is interrupted, and when a prerequisite is missing.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI } from './helpers/cli-process.js';

type Ev = Record<string, any> & { event: string };

interface DemoRun { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; events: Ev[] }

const cleanups: Array<() => void> = [];
afterEach(() => { for (const f of cleanups.splice(0).reverse()) { try { f(); } catch { /* best effort */ } } });

/** Runs `replicate demo ARGS`; `onEvent` may act on its --json events as they come. */
function runDemo(args: string[], o: { env?: NodeJS.ProcessEnv; onEvent?: (e: Ev, child: ReturnType<typeof spawn>) => void } = {}): Promise<DemoRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'demo', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } });
    const run: DemoRun = { code: null, signal: null, stdout: '', stderr: '', events: [] };
    const timer = setTimeout(() => child.kill('SIGKILL'), 80_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      run.stdout += `${line}\n`;
      if (!args.includes('--json')) return;
      const e = JSON.parse(line) as Ev; // with --json every line is an event
      run.events.push(e);
      o.onEvent?.(e, child);
    });
    child.stderr!.on('data', (d) => { run.stderr += d; });
    child.once('close', (code, signal) => { clearTimeout(timer); Object.assign(run, { code, signal }); resolve(run); });
  });
}

const all = (r: DemoRun, type: string) => r.events.filter((e) => e.event === type);
const one = (r: DemoRun, type: string, pred: (e: Ev) => boolean = () => true) => {
  const e = r.events.find((x) => x.event === type && pred(x));
  expect(e, `no '${type}' event in:\n${r.stdout}\n${r.stderr}`).toBeDefined();
  return e!;
};

/** PIDs of processes the demo reported starting that still exist (zombies included). */
async function leftovers(pids: number[]): Promise<string[]> {
  const out: string[] = [];
  for (const pid of new Set(pids)) {
    // The service's keeper and the standby reap what they own at once; give them a moment.
    for (let i = 0; i < 50 && existsSync(`/proc/${pid}`); i++) await sleep(20);
    if (!existsSync(`/proc/${pid}`)) continue;
    let cmd = '';
    try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' '); } catch { /* gone */ }
    // A PID reused by something else is not ours.
    if (cmd === '' || /replicate|counter-service|keeper/.test(cmd)) out.push(`${pid} ${cmd || '(zombie)'}`);
  }
  return out;
}

function startedPids(r: DemoRun): number[] {
  const pids: number[] = [];
  for (const e of all(r, 'started')) { pids.push(e.pid); if (e.keeperPid) pids.push(e.keeperPid); }
  return pids;
}

describe('replicate demo', () => {
  it('--json: commits epochs, promotes, restores exactly the committed state, and leaves nothing behind', async () => {
    const r = await runDemo(['--json']);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);

    expect(one(r, 'prerequisites').ok).toBe(true);
    const service = one(r, 'started', (e) => e.what === 'service');
    const standby = one(r, 'started', (e) => e.what === 'standby');
    const primary = one(r, 'started', (e) => e.what === 'primary');
    expect(primary.target).toBe(service.pid);
    expect(one(r, 'synced').pages).toBeGreaterThan(0);

    // Epochs committed, in order, while the client ran.
    const progress = all(r, 'progress').filter((e) => e.epoch !== null);
    expect(progress.length).toBeGreaterThanOrEqual(3);
    const epochs = progress.map((e) => e.epoch as number);
    expect(epochs).toEqual([...epochs].sort((a, b) => a - b));
    expect(epochs.at(-1)!).toBeGreaterThan(epochs[0]!);
    expect(progress.at(-1)!.total).toBeGreaterThan(progress[0]!.total);

    const committed = one(r, 'committed-state');
    expect(committed.state.pid).toBe(service.pid);
    expect(committed.state.total).toBeGreaterThan(0);
    expect(committed.epoch).toBeGreaterThanOrEqual(epochs.at(-1)!);

    expect(one(r, 'killed', (e) => e.what === 'primary').pid).toBe(primary.pid);
    expect(one(r, 'killed', (e) => e.what === 'service').pid).toBe(service.pid);
    const lost = one(r, 'lost-increments');
    expect(lost.count).toBeGreaterThan(0);
    expect(lost.total).toBe(committed.state.total + lost.count);

    const promoted = one(r, 'promoted');
    expect(promoted).toMatchObject({ ok: true, outcome: 'restored', pid: service.pid });
    expect(promoted.epoch).toBeGreaterThanOrEqual(committed.epoch);
    for (const k of ['detectionMs', 'buildMs', 'restoreMs', 'healthMs']) expect(promoted.timings[k]).toBeGreaterThan(0);

    const restored = one(r, 'restored-state');
    expect(restored.match).toBe(true);
    expect(restored.state).toEqual(committed.state); // exact: total, every counter, the recent requests, the PID
    expect(restored.lost).toBe(lost.count);

    const cleanup = one(r, 'cleanup');
    expect(cleanup.leftRunning).toEqual([]);
    expect(cleanup.killed).toContain(service.pid); // the restored copy (same PID)
    expect(cleanup.stopped).toContain(standby.pid);
    const setup = one(r, 'setup');
    expect(existsSync(setup.dir)).toBe(false);
    expect(existsSync(setup.restoreDir)).toBe(false);
    const done = one(r, 'done');
    expect(done).toMatchObject({ ok: true, exitCode: 0 });
    expect(await leftovers([...startedPids(r), ...Object.values(done.pids as Record<string, number | null>).filter((p): p is number => !!p)])).toEqual([]);
  }, 90_000);

  it('text output: the story in short lines, no colours when not on a terminal; --keep leaves the restored service answering', async () => {
    const r = await runDemo(['--keep', '--epoch', '50ms']);
    const kept = /stop it with: kill (\d+); .* are in (\S+) \(rm -rf/.exec(r.stdout);
    if (kept) cleanups.push(() => { try { process.kill(Number(kept[1]), 'SIGKILL'); } catch { /* gone */ } rmSync(kept[2]!, { recursive: true, force: true }); });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).not.toMatch(/\x1b\[/);
    for (const re of [
      /prerequisites\s+root/,
      /service\s+node examples\/counter-service\.mjs on 127\.0\.0\.1:\d+, pid \d+/,
      /primary\s+pid \d+, protects pid \d+ every 50 ms/,
      /^\s+\d+ s\s+epoch \d+/m,
      /epoch \d+ is committed on the standby with total=\d+/,
      /primary agent \(pid \d+\) killed/,
      /the service took \d+ more increments/,
      /detection\s+\d+ ms/, /image\s+\d+ ms/, /criu restore\s+\d+ ms/, /health check\s+\d+ ms/,
      /promoted: the service runs again as pid \d+ \(the same PID\)/,
      /total=\d+: exactly the state of committed epoch \d+/,
      /Demo passed in [\d.]+ s\./,
    ]) expect(r.stdout).toMatch(re);
    expect(kept, r.stdout).not.toBeNull();
    const committedTotal = Number(/committed on the standby with total=(\d+)/.exec(r.stdout)![1]);
    const port = Number(/GET http:\/\/127\.0\.0\.1:(\d+)\/state/.exec(r.stdout)![1]);
    // Still serving after the demo exited, with the restored state.
    const state = await (await fetch(`http://127.0.0.1:${port}/state`)).json() as { pid: number; total: number };
    expect(state).toMatchObject({ pid: Number(kept![1]), total: committedTotal });
  }, 90_000);

  it('Ctrl-C (SIGINT) while replicating: exit 130, everything it started stopped, temp dirs removed', async () => {
    let sent = false;
    const r = await runDemo(['--json'], {
      onEvent: (e, child) => { if (e.event === 'progress' && !sent) { sent = true; child.kill('SIGINT'); } },
    });
    expect(sent).toBe(true);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(130);
    one(r, 'interrupted');
    expect(one(r, 'cleanup').leftRunning).toEqual([]);
    const setup = one(r, 'setup');
    expect(existsSync(setup.dir)).toBe(false);
    expect(existsSync(setup.restoreDir)).toBe(false);
    expect(await leftovers(startedPids(r))).toEqual([]);
  }, 90_000);

  it('a missing prerequisite: exit 4, says what is missing and to run `replicate check`, starts nothing', async () => {
    const r = await runDemo([], { env: { REPLICATE_CRIU: '/nonexistent/criu' } });
    expect(r.code).toBe(4);
    expect(r.stdout).toMatch(/\/nonexistent\/criu/);
    expect(r.stdout).toMatch(/replicate check/);
    expect(r.stdout).not.toMatch(/Cleaned up/);
  }, 30_000);
});
