// `replicate demo`: the whole story on one machine, in about ten seconds.
//
//   examples/counter-service.mjs ── protected by ──> replicate primary ──TLS──> replicate standby
//        ^ a client increments counters                   (every epoch)          (commits epochs)
//
// 1. prerequisites (what `replicate check` checks), a temp dir, a pre-shared key;
// 2. the service (spawnTarget: its own session, stdio to files), a standby and a primary,
//    each a `replicate ... --json` child process of this one;
// 3. a client increments counters at a steady rate; a line a second shows what commits;
// 4. the client pauses; once an epoch captured after the pause is committed, the state
//    the standby holds is known exactly;
// 5. SIGKILL of the primary agent; the service, still up, takes a few more increments that
//    no standby will ever see; SIGKILL of the service;
// 6. the standby detects the silence, builds the image of its last committed epoch and
//    restores the process (same PID, same listening socket);
// 7. the restored service is asked for its state: it must be exactly the committed one
//    (after a lazy restore, the demo also waits until every page is in place);
// 8. everything started is stopped by PID and the temp dirs are removed, also on Ctrl-C
//    or failure. Exit 0 only when step 7 matched.
// REPLICATE_DEMO_DEBUG=1 prints the standby's and the primary's logs at the end.
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { check } from '../check/check.js';
import { spawnTarget, type SpawnedTarget } from '../spawn/spawn-target.js';
import { writeSecretFile } from '../transport/security.js';
import { packageRoot } from '../util/paths.js';
import { formatBytes } from '../util/size.js';
import { cmdlineOf, CliChild, descendants, freePort, httpJson, isOurs, killQuietly, sleep, waitGone, type DemoEvent } from './children.js';
import { KEYS, LoadDriver, type ServiceState } from './load.js';
import { DemoOutput } from './output.js';

export interface DemoOptions {
  /** Epoch length (ms). Default 100. */
  epochMs?: number;
  /** JSON events on stdout instead of text. */
  json?: boolean;
  /** Leave the restored service running at the end. */
  keep?: boolean;
  /** How long the client runs before the kill (ms). Default 4000. */
  loadMs?: number;
  /** Increments a second. Default 100. */
  rate?: number;
  /** Increments made after the primary agent is killed (lost by design). Default 25. */
  lostIncrements?: number;
}

export const SERVICE_SCRIPT = join(packageRoot, 'examples', 'counter-service.mjs');
const MARKER = 'counter-service.mjs';

/** Exit codes, as the other commands use them. */
const EXIT = { ok: 0, failed: 1, platform: 4, interrupted: 130 } as const;

class DemoFailure extends Error {
  readonly exitCode: number;
  /** Already explained on the terminal. */
  readonly told: boolean;
  constructor(message: string, exitCode: number = EXIT.failed, told = false) {
    super(message);
    this.exitCode = exitCode;
    this.told = told;
  }
}

class Interrupted extends Error {
  constructor(signal: string) { super(`interrupted (${signal})`); }
}

interface Service { pid: number; port: number; target: SpawnedTarget; logs: string }

const fmtMs = (ms: number) => `${Math.round(ms)} ms`;
const stateLine = (s: { total: number; counters: Record<string, number> }) =>
  `total ${String(s.total).padEnd(5)} ${KEYS.map((k) => `${k} ${String(s.counters[k] ?? 0).padEnd(4)}`).join(' ').trimEnd()}`;

export function runDemo(options: DemoOptions = {}): Promise<number> {
  return new Demo(options).run();
}

class Demo {
  readonly o: Required<DemoOptions>;
  readonly out: DemoOutput;
  readonly ac = new AbortController();
  tmp = '';
  shm = '';
  service: Service | undefined;
  standby: CliChild | undefined;
  primary: CliChild | undefined;
  driver: LoadDriver | undefined;
  restoredPid: number | null = null;
  /** The restored service is left running (--keep, after a successful demo). */
  keepRestored = false;
  #cleaned = false;

  constructor(o: DemoOptions) {
    this.o = { epochMs: o.epochMs ?? 100, json: !!o.json, keep: !!o.keep, loadMs: o.loadMs ?? 4000, rate: o.rate ?? 100, lostIncrements: o.lostIncrements ?? 25 };
    this.out = new DemoOutput(this.o.json);
  }

  get signal(): AbortSignal { return this.ac.signal; }

  async run(): Promise<number> {
    const onSignal = (sig: NodeJS.Signals) => {
      if (this.ac.signal.aborted) return;
      this.out.say(`\n${sig}: stopping the demo and cleaning up...`);
      this.ac.abort(new Interrupted(sig));
    };
    const emergency = () => this.#emergencyCleanup();
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, onSignal);
    process.on('exit', emergency);
    let code: number = EXIT.failed;
    try {
      code = await this.#steps();
    } catch (e) {
      const err = this.ac.signal.aborted ? (this.ac.signal.reason as Error) : (e as Error);
      if (err instanceof Interrupted) {
        code = EXIT.interrupted;
        this.out.event('interrupted', { message: err.message });
      } else {
        code = err instanceof DemoFailure ? err.exitCode : EXIT.failed;
        this.out.event('error', { message: err.message }, err instanceof DemoFailure && err.told ? undefined : `\n${this.out.bad(this.out.paint('red', `demo failed: ${err.message}`))}`);
      }
    } finally {
      await this.#cleanup().catch((e: Error) => this.out.event('error', { message: `cleanup: ${e.message}` }, this.out.bad(`cleanup: ${e.message}`)));
      for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(s, onSignal);
      process.off('exit', emergency);
    }
    const secs = (this.out.elapsedMs / 1000).toFixed(1);
    this.out.event('done', { ok: code === 0, exitCode: code, pids: this.#pids() },
      code === 0 ? `\n${this.out.paint(['green', 'bold'], `Demo passed in ${secs} s.`)}` : `\n${this.out.paint(['red', 'bold'], `Demo did not pass (exit ${code}, ${secs} s).`)}`);
    return code;
  }

  #pids(): Record<string, number | null> {
    return {
      service: this.service?.pid ?? null, keeper: this.service?.target.keeper.pid ?? null,
      standby: this.standby?.pid ?? null, primary: this.primary?.pid ?? null, restored: this.restoredPid,
    };
  }

  async #steps(): Promise<number> {
    const { out, o } = this;
    out.say(out.paint('bold', 'replicate demo') + ': protect a small service, kill its host side with SIGKILL, and watch the standby bring it back with its state.');

    // --- 1. prerequisites -------------------------------------------------------------
    if (!existsSync(SERVICE_SCRIPT)) throw new DemoFailure(`the example service is missing (${SERVICE_SCRIPT}): run the demo from a full checkout of remus-replicate`);
    const report = await check();
    this.signal.throwIfAborted();
    const isRoot = process.getuid?.() === 0;
    out.event('prerequisites', { ok: report.ok, root: isRoot, problems: report.problems, backend: report.backend.name, criu: report.criu });
    if (!report.ok) {
      out.heading('Prerequisites are missing:');
      for (const p of report.problems) out.say(`  ${out.bad(p)}`);
      if (!isRoot) out.say(`  ${out.note('run it as root (sudo npx replicate demo): tracking needs CAP_SYS_PTRACE and CRIU needs CAP_SYS_ADMIN')}`);
      out.say(`  ${out.note('`replicate check` shows every requirement and why it is missing; `bash scripts/provision-criu.sh` builds CRIU 4.2+')}`);
      throw new DemoFailure(`prerequisites missing: ${report.problems.join('; ')}`, EXIT.platform, true);
    }
    out.heading('Setting up');
    out.say(`  ${out.ok(`prerequisites   ${isRoot ? 'root' : 'capabilities ok'}, dirty tracking '${report.backend.name}', CRIU ${report.criu.version} (${report.criu.path})`)}`);

    // --- 2. temp dirs, key, service, standby, primary -------------------------------------
    this.tmp = mkdtempSync(join(tmpdir(), 'remus-demo-'));
    // Restore images go to a tmpfs: the fastest place to build and read them.
    this.shm = existsSync('/dev/shm') ? mkdtempSync('/dev/shm/remus-demo-') : join(this.tmp, 'restore');
    for (const d of ['logs', 'primary-tmp', 'run']) mkdirSync(join(this.tmp, d));
    const key = join(this.tmp, 'key');
    writeSecretFile(key);
    out.event('setup', { dir: this.tmp, restoreDir: this.shm, key });

    this.service = await this.#startService();
    this.signal.throwIfAborted();
    const svc = this.service;
    out.event('started', { what: 'service', pid: svc.pid, keeperPid: svc.target.keeper.pid, port: svc.port, logs: svc.logs },
      `  ${out.ok(`service         node examples/counter-service.mjs on 127.0.0.1:${svc.port}, pid ${out.paint('bold', String(svc.pid))}`)}`);

    const sb = await this.#startStandby(key, svc.port);
    const listening = sb.events.find((e) => e.event === 'listening')!;
    out.event('started', { what: 'standby', pid: sb.pid, address: listening.address, dir: listening.dir },
      `  ${out.ok(`standby         pid ${sb.pid}, listening on ${String(listening.address)}, watching the primary's heartbeats (every 50 ms)`)}`);

    // The client starts before protection does: its connection is part of the first base image.
    const driver = this.driver = new LoadDriver(svc.port);
    driver.start(o.rate);

    const pr = this.primary = new CliChild('primary', ['primary', '--pid', String(svc.pid), '--to', String(listening.address), '--secret-file', key, '--epoch', `${o.epochMs}ms`],
      { ...process.env, TMPDIR: join(this.tmp, 'primary-tmp'), REPLICATE_RUN_DIR: join(this.tmp, 'run') });
    out.event('started', { what: 'primary', pid: pr.pid, target: svc.pid, epochMs: o.epochMs });
    const synced = await pr.waitFor('synced', { from: 0, timeoutMs: 60_000, signal: this.signal });
    out.event('synced', { pages: synced.pages, syncMs: synced.ms },
      `  ${out.ok(`primary         pid ${pr.pid}, protects pid ${svc.pid} every ${o.epochMs} ms; initial sync: base image + ${Number(synced.pages)} pages in ${fmtMs(Number(synced.ms))}`)}`);

    // --- 3. live -------------------------------------------------------------------------
    await this.#live(pr, driver);

    // --- 4. the committed state, known exactly --------------------------------------------
    await driver.pause();
    if (driver.lastError) throw new DemoFailure(`the service stopped answering: ${driver.lastError.message}`);
    const pausedAt = Date.now();
    const committed = await driver.state();
    this.signal.throwIfAborted();
    if (committed.total !== driver.total) throw new DemoFailure(`the service says total=${committed.total} but answered ${driver.total} last`);
    out.heading(`Client paused at total=${committed.total}; waiting for an epoch captured after the pause to commit...`);
    // A commit's capture time is its event's time minus its lag. The second such commit is
    // of a capture that began after the first one ended, so surely after the pause.
    let after = 0;
    const fresh = await pr.waitFor('commit', {
      from: pr.events.length, timeoutMs: 20 * o.epochMs + 10_000, signal: this.signal,
      pred: (e) => Date.parse(String(e.time)) - Number(e.lagMs) > pausedAt + 1 && ++after >= 2,
    });
    this.#checkNoFalseSuspicion();
    const committedEpoch = Number(fresh.epoch);
    out.event('committed-state', { epoch: committedEpoch, state: committed },
      `  ${out.ok(`epoch ${committedEpoch} is committed on the standby with ${out.paint('bold', `total=${committed.total}`)} (${KEYS.map((k) => `${k} ${committed.counters[k] ?? 0}`).join(', ')})`)}`);

    // --- 5. kill the primary side ------------------------------------------------------
    this.signal.throwIfAborted();
    out.heading('Killing the primary side with SIGKILL');
    const sbMark = sb.events.length;
    const t0 = performance.now();
    killQuietly(pr.pid, 'SIGKILL');
    await pr.exited;
    out.event('killed', { what: 'primary', pid: pr.pid, atMs: 0 }, `  ${out.kill(`t=0       primary agent (pid ${pr.pid}) killed: nothing more reaches the standby`)}`);
    // The service is still up: what it is told now exists nowhere else.
    for (let i = 0; i < o.lostIncrements; i++) await driver.increment();
    const lost = driver.total - committed.total;
    out.event('lost-increments', { count: lost, total: driver.total, atMs: performance.now() - t0 },
      `  ${out.note(`t=${fmtMs(performance.now() - t0).padEnd(8)}the service took ${lost} more increments (total=${driver.total}): after the last commit, so they will be lost`)}`);
    driver.close();
    const tService = performance.now();
    killQuietly(svc.pid, 'SIGKILL');
    await svc.target.exited;
    out.event('killed', { what: 'service', pid: svc.pid, atMs: tService - t0 }, `  ${out.kill(`t=${fmtMs(tService - t0).padEnd(8)}service (pid ${svc.pid}) killed`)}`);

    // --- 6. the standby promotes ---------------------------------------------------------
    out.heading(`The standby (pid ${sb.pid}) takes over`);
    const promoted = await sb.waitFor('promoted', { from: sbMark, timeoutMs: 60_000, signal: this.signal });
    const tPromoted = performance.now();
    if (typeof promoted.pid === 'number') this.restoredPid = promoted.pid;
    const t = promoted.timings as { detectionMs: number; buildMs: number; restoreMs: number; healthMs: number; totalMs: number };
    const errors = (promoted.errors as string[] | undefined) ?? [];
    out.event('promoted', { ok: promoted.ok, outcome: promoted.outcome, pid: promoted.pid, epoch: promoted.epoch, attempts: promoted.attempts, lazy: !!promoted.lazy, timings: t, errors, sinceKillMs: tPromoted - t0, sinceServiceKillMs: tPromoted - tService });
    if (!promoted.ok) throw new DemoFailure(`the promotion failed (${String(promoted.outcome)}): ${errors.join('; ') || 'see the standby log'}${sb.stderr ? `\n${sb.stderrTail()}` : ''}`);
    const step = (ms: number, what: string, why: string) => out.say(`  ${out.note(`${what.padEnd(13)}${fmtMs(ms).padStart(7)}   ${why}`)}`);
    step(t.detectionMs, 'detection', 'silence since the primary\'s last sign of life, until the phi accrual detector gave up on it');
    step(t.buildMs, 'image', `epoch ${String(promoted.epoch)}: the base image with the committed registers, layout and pages (on tmpfs)`);
    step(t.restoreMs, 'criu restore', `same PID, same listening socket${promoted.lazy ? '; the memory streams in from the standby\'s store as it is touched (lazy pages)' : ''}${Number(promoted.attempts) > 1 ? ` (attempt ${String(promoted.attempts)})` : ''}`);
    step(t.healthMs, 'health check', `GET /state answers`);
    out.say(`  ${out.ok(`promoted: the service runs again as pid ${out.paint('bold', String(promoted.pid))}${promoted.pid === svc.pid ? ' (the same PID)' : ''}, ${fmtMs(tPromoted - tService)} after it was killed`)}`);

    // --- 7. the restored state ------------------------------------------------------------
    out.heading(`Asking the restored service: GET http://127.0.0.1:${svc.port}/state`);
    const restored = await httpJson('GET', `http://127.0.0.1:${svc.port}/state`, { timeoutMs: 5000 }) as unknown as ServiceState;
    const tAnswer = performance.now();
    const match = JSON.stringify(restored) === JSON.stringify(committed);
    out.event('restored-state', { pid: restored.pid, state: restored, expected: committed, match, epoch: promoted.epoch, lost, downMs: tAnswer - tService },
      `  ${JSON.stringify(restored)}`);
    if (!match) {
      out.say(`  ${out.bad(`expected ${JSON.stringify(committed)}`)}`);
      throw new DemoFailure(`the restored service has total=${restored.total}, not the committed state (total=${committed.total})`);
    }
    out.say(`  ${out.ok(`${out.paint('bold', `total=${restored.total}`)}: exactly the state of committed epoch ${String(promoted.epoch)}, counters and recent requests included`)}`);
    out.say(`  ${out.ok(`the ${lost} increments made after it are lost, as expected: replication is asynchronous, a failure loses the writes since the last committed epoch`)}`);
    out.say(`  ${out.ok(`service unavailable for ${fmtMs(tAnswer - tService)}: from its kill to the first answer of the restored copy`)}`);

    // A lazy restore streams the rest of the memory from the standby after the process
    // runs: only once that is over may the restored process stop (or the standby go).
    if (promoted.lazy) {
      const ms = await this.#lazyTransferDone(sb, tPromoted);
      if (!isOurs(svc.pid, MARKER)) throw new DemoFailure(`the restored process ${svc.pid} died during the lazy page transfer${sb.stderr ? `:\n${sb.stderrTail()}` : ''}`);
      out.event('lazy-transfer', { done: ms !== null, sincePromotedMs: ms },
        `  ${ms !== null ? out.ok(`every page in place ${fmtMs(ms)} after the promotion (streamed in the background by criu lazy-pages)`) : out.bad('the lazy page transfer did not finish within 30 s')}`);
    }

    if (o.keep) {
      this.keepRestored = true;
      out.event('kept', { pid: this.restoredPid, port: svc.port, dir: this.tmp },
        `\n${out.note(`--keep: the restored service keeps running: curl http://127.0.0.1:${svc.port}/state\n  stop it with: kill ${this.restoredPid}; its logs and the standby's directory are in ${this.tmp} (rm -rf it afterwards)`)}`);
    }
    return EXIT.ok;
  }

  /** Waits until the standby has no `criu lazy-pages` process left; ms since `since`, or null after 30 s. */
  async #lazyTransferDone(sb: CliChild, since: number): Promise<number | null> {
    for (const end = performance.now() + 30_000; performance.now() < end;) {
      if (!descendants(sb.pid).some((d) => /\blazy-pages\b/.test(d.cmdline))) return performance.now() - since;
      await sleep(20, this.signal);
    }
    return null;
  }

  #falseSuspicion: DemoEvent | undefined;

  /** Notes a standby that gives up on the primary before the demo killed it. */
  #watchFalseSuspicion(): void {
    this.standby?.on((e) => { if ((e.event === 'suspect' || e.event === 'promoting') && !this.#falseSuspicion) this.#falseSuspicion = e; });
  }

  #checkNoFalseSuspicion(): void {
    const e = this.#falseSuspicion;
    if (!e) return;
    throw new DemoFailure(`the standby declared the live primary dead (${e.event === 'suspect' ? `after ${fmtMs(Number(e.silentMs))} without a heartbeat` : String(e.reason)}): this machine is too busy for the demo's 50 ms heartbeats; try again when it is quieter`);
  }

  /** Starts the example service through the keeper; retried on a port taken meanwhile. */
  async #startService(): Promise<Service> {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const logs = join(this.tmp, 'logs');
      // Appended files: CRIU reopens them at restore without checking their size.
      const stdout = openSync(join(logs, 'counter-service.stdout.log'), 'a');
      const stderr = openSync(join(logs, 'counter-service.stderr.log'), 'a');
      let target: SpawnedTarget;
      try {
        target = await spawnTarget(process.execPath, [SERVICE_SCRIPT, String(port)], { stdio: ['ignore', stdout, stderr], cwd: '/' });
      } finally {
        closeSync(stdout);
        closeSync(stderr);
      }
      const service: Service = { pid: target.pid, port, target, logs };
      this.service = service; // cleaned up even if it never answers
      let exited = false;
      void target.exited.then(() => { exited = true; });
      for (let i = 0; !exited; i++) {
        try {
          await httpJson('GET', `http://127.0.0.1:${port}/state`, { timeoutMs: 500 });
          return service;
        } catch {
          if (i > 100) break;
          await sleep(20, this.signal);
        }
      }
      killQuietly(target.pid);
      await target.exited;
      const why = readFileSync(join(logs, 'counter-service.stderr.log'), 'utf8').trim().split('\n').slice(-3).join(' | ');
      if (attempt < 3 && /EADDRINUSE/.test(why)) continue;
      throw new DemoFailure(`the example service did not start: ${why || 'no answer on its port'}`);
    }
  }

  async #startStandby(key: string, servicePort: number): Promise<CliChild> {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const sb = new CliChild('standby', ['standby', '--listen', `127.0.0.1:${port}`, '--dir', join(this.tmp, 'standby'), '--secret-file', key,
        '--health', `http://127.0.0.1:${servicePort}/state`, '--health-timeout', '5s', '--restore-dir', this.shm], process.env);
      this.standby = sb;
      try {
        await sb.waitFor('listening', { from: 0, timeoutMs: 30_000, signal: this.signal });
        return sb;
      } catch (e) {
        await sb.stop('SIGKILL');
        if (attempt < 3 && /EADDRINUSE/.test(sb.stderr)) continue;
        throw e;
      }
    }
  }

  /** A line a second while the client runs: what the primary commits, and the service's state. */
  async #live(pr: CliChild, driver: LoadDriver): Promise<void> {
    const { out, o } = this;
    out.heading(`Replicating while a client increments counters (${o.rate}/s) for ${(o.loadMs / 1000).toFixed(0)} s`);
    const cols = (c: string[]) => `  ${c[0]!.padStart(6)}  ${c[1]!.padEnd(10)}  ${c[2]!.padStart(6)}  ${c[3]!.padStart(9)}  ${c[4]!.padEnd(21)}  ${c[5]}`;
    out.say(out.paint('dim', cols(['time', 'committed', 'lag', 'pause p50', 'sent per epoch', 'service state'])));
    let window: DemoEvent[] = [];
    const off = pr.on((e) => { if (e.event === 'commit') window.push(e); });
    this.#watchFalseSuspicion();
    try {
      const started = performance.now();
      for (let second = 1; performance.now() - started < o.loadMs - 100; second++) {
        await Promise.race([sleep(Math.max(0, started + second * 1000 - performance.now()), this.signal), pr.exited]);
        this.#checkNoFalseSuspicion();
        if (!pr.alive) throw new DemoFailure(pr.describeExit());
        if (this.standby && !this.standby.alive) throw new DemoFailure(this.standby.describeExit());
        if (driver.lastError) throw new DemoFailure(`the service stopped answering: ${driver.lastError.message}`);
        const w = window;
        window = [];
        const last = w.at(-1);
        const mean = (f: (e: DemoEvent) => number) => w.reduce((s, e) => s + f(e), 0) / (w.length || 1);
        const pause = last ? Number((last.pauseMs as { p50: number }).p50) : 0;
        const row = {
          second, commits: w.length, epoch: last ? Number(last.epoch) : null, lagMs: mean((e) => Number(e.lagMs)), pauseP50Ms: pause,
          pagesPerEpoch: mean((e) => Number(e.pages)), bytesPerEpoch: mean((e) => Number(e.bytes)), total: driver.total, counters: { ...driver.counters },
        };
        const human = last
          ? cols([`${second} s`, `epoch ${row.epoch}`, fmtMs(row.lagMs), `${pause.toFixed(2)} ms`, `${Math.round(row.pagesPerEpoch)} pages, ${formatBytes(row.bytesPerEpoch)}`, stateLine(row)])
          : cols([`${second} s`, out.paint('yellow', 'none'.padEnd(10)), '', '', '', stateLine(row)]);
        out.event('progress', row, human);
      }
    } finally {
      off();
    }
  }

  async #cleanup(): Promise<void> {
    if (this.#cleaned) return;
    const { out } = this;
    const killed: number[] = [];
    const stopped: number[] = [];
    const removed: string[] = [];
    const left: number[] = [];
    this.driver?.close();
    const svc = this.service;
    // The restored process first, while the standby (its subreaper) is there to reap it.
    if (this.restoredPid !== null && !this.keepRestored && isOurs(this.restoredPid, MARKER)) {
      killQuietly(this.restoredPid);
      killed.push(this.restoredPid);
      await waitGone(this.restoredPid, 3000);
    }
    // The standby: SIGTERM lets a promotion in progress finish, then it exits. What it
    // started (criu, a lazy-pages daemon) and left behind is stopped by PID afterwards.
    if (this.standby) {
      const spawned = this.standby.alive ? descendants(this.standby.pid).filter((d) => !(this.keepRestored && d.pid === this.restoredPid)) : [];
      if (this.standby.alive) stopped.push(this.standby.pid);
      // A promotion in progress may take a while to finish; otherwise a standby has no reason to linger.
      const promoting = this.standby.events.some((e) => e.event === 'promoting') && !this.standby.events.some((e) => e.event === 'promoted');
      await this.standby.stop('SIGTERM', promoting ? 20_000 : 5000);
      for (const d of spawned) {
        if (d.pid === svc?.pid || !d.cmdline || cmdlineOf(d.pid) !== d.cmdline) continue; // the service is below; gone or reused
        killQuietly(d.pid);
        killed.push(d.pid);
        if (!(await waitGone(d.pid, 5000))) left.push(d.pid);
      }
    }
    if (this.primary?.alive) {
      await this.primary.stop('SIGKILL');
      killed.push(this.primary.pid);
    }
    // The service: the original (its keeper reaps it), or a copy restored while we stopped.
    if (svc && !(this.keepRestored && svc.pid === this.restoredPid) && isOurs(svc.pid, MARKER)) {
      killQuietly(svc.pid);
      if (!killed.includes(svc.pid)) killed.push(svc.pid);
      if (!(await waitGone(svc.pid, 5000))) left.push(svc.pid);
    }
    if (svc && svc.target.keeper.exitCode === null && svc.target.keeper.signalCode === null) {
      svc.target.keeper.kill('SIGKILL');
      await svc.target.exited;
    }
    if (this.keepRestored && this.restoredPid !== null) left.push(this.restoredPid);
    for (const d of [this.shm, this.keepRestored ? '' : this.tmp]) {
      if (!d || !existsSync(d)) continue;
      rmSync(d, { recursive: true, force: true });
      removed.push(d);
    }
    this.#cleaned = true;
    if (process.env.REPLICATE_DEMO_DEBUG) for (const c of [this.standby, this.primary]) if (c?.stderr) process.stderr.write(`--- replicate ${c.name} (pid ${c.pid}) stderr:\n${c.stderr}\n`);
    const did = [
      killed.length ? `killed ${killed.join(', ')}` : '', stopped.length ? `stopped the standby (${stopped.join(', ')})` : '',
      removed.length ? `removed ${removed.join(', ')}` : '', left.length ? `left running: ${left.join(', ')}` : '',
    ].filter(Boolean);
    out.event('cleanup', { killed, stopped, removed, leftRunning: left }, did.length ? `\n${out.paint('dim', `Cleaned up: ${did.join('; ')}`)}` : undefined);
  }

  /** The process is exiting without the cleanup having run (a crash): stop what we can, synchronously. */
  #emergencyCleanup(): void {
    if (this.#cleaned) return;
    for (const c of [this.standby, this.primary]) if (c?.alive) killQuietly(c.pid);
    const svc = this.service;
    if (svc && !this.keepRestored && isOurs(svc.pid, MARKER)) killQuietly(svc.pid);
    if (svc && svc.target.keeper.exitCode === null) killQuietly(svc.target.keeper.pid!);
    for (const d of [this.shm, this.tmp]) if (d) rmSync(d, { recursive: true, force: true });
  }
}
