// Failover end to end: a real target, a primary agent process (`replicate --pid`), a
// standby (the library, so that the test can see when each epoch was captured), real CRIU.
// The primary side is killed with SIGKILL; the standby must detect it, restore the last
// committed epoch and the restored process must hold together.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { PromotionResult } from '../src/failover/promoter.js';
import { createLogger, type LogLevel } from '../src/log/logger.js';
import { native } from '../src/native/binding.js';
import { Primary } from '../src/primary/primary.js';
import { spawnTarget } from '../src/spawn/spawn-target.js';
import { Standby, type StandbyOptions } from '../src/standby/standby.js';
import { cli } from './helpers/cli.js';
import { CliProcess } from './helpers/cli-process.js';
import { freePorts } from './helpers/ports.js';
import { field, query, startCounter, waitGone, type CounterTarget } from './helpers/counter.js';
import { makeKey, tempDir, until } from './helpers/replication.js';

const cleanups: Array<() => Promise<void> | void> = [];
const later = (f: () => Promise<void> | void) => cleanups.push(f);
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await Promise.resolve(f()).catch((e: Error) => console.error('cleanup:', e.message));
});

/** Kills a process the standby restored (we are its subreaper) and reaps it. */
async function killRestored(pid: number): Promise<void> {
  killPid(pid);
  for (let i = 0; i < 500; i++) {
    const st = native().reapChild(pid);
    if (st || !existsSync(`/proc/${pid}`)) return;
    await sleep(10);
  }
}

function killPid(pid: number | null | undefined): void {
  if (!pid) return;
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

/** A standby in this process with fast detection; kills whatever it restores at cleanup. */
async function startStandby(dir: string, security: StandbyOptions['security'], extra: Partial<StandbyOptions> = {}) {
  const sb = await Standby.start({
    host: '127.0.0.1', port: 0, dir: join(dir, 'standby'), security, heartbeatMs: 50,
    detector: { kind: 'phi', heartbeatMs: 50, threshold: 8 }, ...extra,
    // REMUS_TEST_LOG=debug shows the standby's log on stderr.
    logger: process.env.REMUS_TEST_LOG ? createLogger(process.env.REMUS_TEST_LOG as LogLevel) : undefined,
  });
  const commits: Array<{ epoch: number; at: number }> = [];
  sb.on('commit', (c: { epoch: number }) => commits.push({ epoch: c.epoch, at: Date.now() }));
  later(async () => {
    const p = sb.stats().promotion;
    if (p?.pid) await killRestored(p.pid);
    await sb.stop();
  });
  return { sb, commits };
}

function startPrimaryCli(pid: number, port: number, keyFile: string, extra: string[] = []): CliProcess {
  const pr = new CliProcess(['--pid', String(pid), '--to', `127.0.0.1:${port}`, '--secret-file', keyFile, '--epoch', '50ms', ...extra]);
  later(() => pr.stop('SIGKILL'));
  return pr;
}

/**
 * A counter (256 pages) protected through the CLI, synchronised: a `--no-auto-promote`
 * standby (more flags from `standbyArgs`) and a primary.
 */
async function manualPromotionSetup(standbyArgs: (dir: string, c: CounterTarget) => string[] = () => []) {
  const dir = tempDir('fo'); later(() => dir.remove());
  const { file } = makeKey(dir.path);
  const c = await startCounter(dir.path, 'c', ['--pages', '256']);
  later(() => c.kill());
  const standbyDir = join(dir.path, 'standby');
  const restoreDir = join(dir.path, 'restore');
  const [port] = await freePorts(1) as [number];
  const sb = new CliProcess(['standby', '--listen', `127.0.0.1:${port}`, '--dir', standbyDir, '--secret-file', file, '--no-auto-promote',
    '--restore-dir', restoreDir, ...standbyArgs(dir.path, c)]);
  later(() => sb.stop('SIGKILL'));
  await sb.next('listening', 15_000);
  const pr = startPrimaryCli(c.pid, port, file);
  await pr.next('synced', 30_000);
  return { dir, c, standbyDir, restoreDir, sb, pr };
}

/** Waits until the standby has committed an epoch captured after `t` (wall clock). */
async function committedAfter(sb: Standby, t: number): Promise<void> {
  await until(() => sb.stats().committedCapturedAt > t, 20_000, 'a commit of an epoch captured after the writes');
}

async function promoted(sb: Standby, ms = 30_000): Promise<PromotionResult> {
  const done = sb.stats().promotion;
  if (done) return done;
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no promotion within ${ms} ms`)), ms);
    sb.once('promoted', (r: PromotionResult) => { clearTimeout(t); resolve(r); });
  });
}

/** Reads the counter every few ms; remembers when each reply arrived. */
function sampleCounter(port: number): { samples: Array<{ at: number; counter: bigint }>; stop(): void } {
  const samples: Array<{ at: number; counter: bigint }> = [];
  let on = true;
  void (async () => {
    while (on) {
      try { samples.push({ counter: field(await query(port, 'get', 1000), 'counter'), at: Date.now() }); } catch { /* killed */ }
      await sleep(5);
    }
  })();
  return { samples, stop: () => { on = false; } };
}

describe('failover', () => {
  for (const round of [1, 2, 3]) {
    it(`C target with an invariant, killed at a random moment (round ${round}): the standby promotes and the state holds`, async () => {
      const dir = tempDir('fo'); later(() => dir.remove());
      const { file, security } = makeKey(dir.path);
      const c = await startCounter(dir.path, 'c', ['--pages', '2048', '--writers', String(1 + round)]);
      later(() => c.kill());
      const { sb } = await startStandby(dir.path, security, { promotion: { health: { kind: 'tcp', host: '127.0.0.1', port: c.port } } });
      const pr = startPrimaryCli(c.pid, sb.port, file);
      await pr.next('synced', 30_000);
      await until(() => sb.stats().committedEpoch >= 1, 20_000, 'the first commit');
      const sampler = sampleCounter(c.port);
      await sleep(300 + Math.random() * 1500);
      killPid(Number(pr.child.pid));
      await c.kill();
      sampler.stop();
      const r = await promoted(sb);
      expect(r.outcome, r.errors.join('\n')).toBe('restored');
      expect(r.pid).toBe(c.pid); // same PID
      const capturedAt = sb.stats().committedCapturedAt;
      const before = sampler.samples.filter((s) => s.at <= capturedAt).map((s) => s.counter);
      const floor = before.length ? before.reduce((a, b) => (a > b ? a : b)) : 0n;
      const ask = (cmd: string) => query(c.port, cmd);
      const g1 = await ask('get');
      expect(await ask('check')).toMatch(/^ok /);
      expect(field(g1, 'counter')).toBeGreaterThanOrEqual(floor);
      expect(field(g1, 'ymm_bad')).toBe(0n);
      // It runs on: ticks and the counter advance.
      await sleep(200);
      const g2 = await ask('get');
      expect(field(g2, 'ticks')).toBeGreaterThan(field(g1, 'ticks'));
      expect(field(g2, 'counter')).toBeGreaterThan(field(g1, 'counter'));
      expect(await ask('check')).toMatch(/^ok /);
      const t = r.timings;
      expect(t.detectionMs).toBeGreaterThan(0);
      expect(t.buildMs).toBeGreaterThan(0);
      expect(t.restoreMs).toBeGreaterThan(0);
      const st = sb.stats();
      expect(st.role).toBe('primary');
      expect(st.promotion?.pid).toBe(c.pid);
    });
  }

  it('more writers, a file appended to, a file written at offsets, memory mapped and unmapped continuously', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const data = join(dir.path, 'data.bin');
    writeFileSync(data, '');
    const c = await startCounter(dir.path, 'c', ['--pages', '1024', '--writers', '4', '--data', data]);
    later(() => c.kill());
    const { sb, commits } = await startStandby(dir.path, security, { promotion: { health: { kind: 'tcp', host: '127.0.0.1', port: c.port } } });
    const pr = startPrimaryCli(c.pid, sb.port, file);
    await pr.next('synced', 30_000);
    const log = join(dir.path, 'app.log');
    expect(await query(c.port, `logopen ${log}`)).toMatch(/^ok/); // a new descriptor: a re-base follows
    let churn = true;
    let lastPos = 0n;
    const churner = (async () => {
      for (let i = 0; churn; i++) {
        await query(c.port, 'mmap 8');
        if (i % 2) await query(c.port, `munmap-mid ${i - 1}`);
        lastPos = field(await query(c.port, 'logwrite'), 'pos');
        await query(c.port, 'data 4096');
        await sleep(20);
      }
    })();
    await until(() => commits.length >= 10, 20_000, 'ten commits under churn');
    churn = false;
    await churner;
    // Writers parked: an epoch captured after this holds the final state exactly.
    expect(await query(c.port, 'pause')).toMatch(/^ok/);
    await committedAfter(sb, Date.now());
    const g = await query(c.port, 'get');
    const size = readFileSync(data).length;
    killPid(Number(pr.child.pid));
    await c.kill();
    const r = await promoted(sb);
    expect(r.outcome, r.errors.join('\n')).toBe('restored');
    expect(await query(c.port, 'check')).toMatch(/^ok /);
    const restored = await query(c.port, 'get');
    expect(field(restored, 'counter')).toBe(field(g, 'counter'));
    expect(field(restored, 'paused')).toBe(1n);
    expect(await query(c.port, 'resume')).toMatch(/^ok/);
    // The appended log goes on where it was: the next entry lands after the last one.
    const next = field(await query(c.port, 'logwrite'), 'pos');
    expect(next).toBeGreaterThan(lastPos);
    expect(readFileSync(log, 'utf8').split('\n').filter(Boolean).every((l) => l === 'entry')).toBe(true);
    expect(size).toBeGreaterThan(0);
    expect(pr.events.some((e) => e.event === 'link')).toBe(true);
  });

  it('a Node.js HTTP server keeping state in a Map serves the last committed state', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const script = join(dir.path, 'server.mjs');
    writeFileSync(script, `
      import { createServer } from 'node:http';
      const state = new Map();
      createServer((req, res) => {
        const u = new URL(req.url, 'http://x');
        if (u.pathname === '/set') state.set(u.searchParams.get('k'), u.searchParams.get('v'));
        res.end(JSON.stringify(Object.fromEntries(state)));
      }).listen(${port}, '127.0.0.1');
      setInterval(() => {}, 1000);
    `);
    const out = join(dir.path, 'server.out');
    writeFileSync(out, '');
    const fd = (await import('node:fs')).openSync(out, 'a');
    const t = await spawnTarget(process.execPath, [script], { stdio: ['ignore', fd, fd] });
    later(async () => { killPid(t.pid); await t.exited; });
    const get = async (path: string) => (await fetch(`http://127.0.0.1:${port}${path}`, { headers: { connection: 'close' } })).json() as Promise<Record<string, string>>;
    await until(async () => !!(await get('/').catch(() => null)), 10_000, 'the server to listen');
    const { sb } = await startStandby(dir.path, security, { promotion: { health: { kind: 'http', url: `http://127.0.0.1:${port}/` } } });
    const pr = startPrimaryCli(t.pid, sb.port, file);
    await pr.next('synced', 60_000);
    for (let i = 0; i < 50; i++) await get(`/set?k=key${i}&v=${i * i}`);
    await committedAfter(sb, Date.now());
    const expected = await get('/');
    killPid(Number(pr.child.pid));
    killPid(t.pid);
    await t.exited;
    await waitGone(t.pid);
    const r = await promoted(sb, 60_000);
    expect(r.outcome, r.errors.join('\n')).toBe('restored');
    expect(await get('/')).toEqual(expected);
    expect(Object.keys(expected)).toHaveLength(50);
  });

  it('redis-server with keys written by redis-benchmark serves the last committed state', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const t = await spawnTarget('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    later(async () => { killPid(t.pid); await t.exited; });
    const cli = async (...args: string[]) => {
      const { execFile } = await import('node:child_process');
      return new Promise<string>((resolve, reject) => execFile(args[0] === 'bench' ? 'redis-benchmark' : 'redis-cli', ['-p', String(port), ...(args[0] === 'bench' ? args.slice(1) : args)], (e, so) => (e ? reject(e) : resolve(String(so).trim()))));
    };
    await until(async () => (await cli('ping').catch(() => '')) === 'PONG', 10_000, 'redis');
    const { sb } = await startStandby(dir.path, security, { promotion: { health: { kind: 'cmd', command: `redis-cli -p ${port} ping | grep -q PONG` } } });
    const pr = startPrimaryCli(t.pid, sb.port, file);
    await pr.next('synced', 60_000);
    await cli('bench', '-t', 'set', '-n', '20000', '-r', '5000', '-c', '20', '-q');
    await committedAfter(sb, Date.now());
    const size = await cli('dbsize');
    const sample = await cli('randomkey');
    const value = await cli('get', sample);
    killPid(Number(pr.child.pid));
    killPid(t.pid);
    await t.exited;
    await waitGone(t.pid);
    const r = await promoted(sb, 60_000);
    expect(r.outcome, r.errors.join('\n')).toBe('restored');
    expect(await cli('dbsize')).toBe(size);
    expect(Number(size)).toBeGreaterThan(3000);
    expect(await cli('get', sample)).toBe(value);
  });

  it('runProgram (how criu restore is started, without fork): exit code, stderr to a file, signals, timeout, a missing program', async () => {
    const dir = tempDir('run-program');
    later(() => dir.remove());
    const err = join(dir.path, 'err');
    expect(await native().runProgram('/bin/sh', ['-c', 'echo oops >&2; exit 3'], { stderrFile: err })).toMatchObject({ code: 3, signal: 0, timedOut: false });
    expect(readFileSync(err, 'utf8')).toBe('oops\n');
    // The child gets default signal dispositions and no blocked signals (Node ignores SIGPIPE).
    expect(await native().runProgram('/bin/sh', ['-c', 'kill -TERM $$'])).toMatchObject({ code: -1, signal: 15, timedOut: false });
    const slow = await native().runProgram('/bin/sleep', ['30'], { timeoutMs: 200 });
    expect(slow).toMatchObject({ code: -1, signal: 9, timedOut: true });
    expect(slow.ms).toBeLessThan(10_000);
    await expect(native().runProgram(join(dir.path, 'no-such-program'), [])).rejects.toThrow(/cannot start .*no-such-program: No such file/);
  });

  it('a standby starting removes the restore directories of standbys that died, not those of live ones', async () => {
    const dir = tempDir('stale-restore');
    later(() => dir.remove());
    const { security } = makeKey(dir.path);
    const root = join(dir.path, 'restore-root');
    const dead = spawnSync('true').pid!; // exited and reaped: its PID names no process now
    const alive = process.ppid;
    const names = [
      `img-0a1b2c3d-7-${dead}-1`, `img-0a1b2c3d-7-${dead}-2-lazy`, `warm-g1-mwt6u72l-1-${dead}`,
      `img-0a1b2c3d-7-${alive}-1`, `warm-g1-mwt6u72l-1-${alive}`, 'unrelated',
    ];
    for (const n of names) { mkdirSync(join(root, n), { recursive: true }); writeFileSync(join(root, n, 'core-1.img'), 'x'); }
    await startStandby(dir.path, security, { promotion: { restoreRoot: root } });
    expect(readdirSync(root).sort()).toEqual([`img-0a1b2c3d-7-${alive}-1`, 'unrelated', `warm-g1-mwt6u72l-1-${alive}`].sort());
  });

  it('a restore that fails because the PIDs are still taken is retried, and succeeds once they are free', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const c = await startCounter(dir.path, 'c', ['--pages', '256']);
    later(() => c.kill());
    const { sb } = await startStandby(dir.path, security, { promotion: { attempts: 3 } });
    const pr = startPrimaryCli(c.pid, sb.port, file);
    await pr.next('synced', 30_000);
    await sleep(300);
    killPid(Number(pr.child.pid)); // the agent dies, the target lives on: its PID is taken
    const attempt = new Promise<void>((resolve) => sb.once('promoting', () => resolve()));
    await attempt;
    await sleep(1300); // the first attempt gives up after ~1 s of waiting for the PIDs
    await c.kill();
    const r = await promoted(sb);
    expect(r.outcome, r.errors.join('\n')).toBe('restored');
    expect(r.attempts).toBeGreaterThanOrEqual(2);
    expect(r.errors[0]).toMatch(/still in use/);
    expect(await query(c.port, 'check')).toMatch(/^ok /);
  });

  it('a failing --fence-cmd prevents the promotion', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const c = await startCounter(dir.path, 'c', ['--pages', '256']);
    later(() => c.kill());
    const marker = join(dir.path, 'fence-ran');
    const { sb, commits } = await startStandby(dir.path, security, { promotion: { fenceCmd: `echo "$REPLICATE_EPOCH" > ${marker}; echo cannot reach the power switch >&2; exit 3` } });
    const pr = startPrimaryCli(c.pid, sb.port, file);
    await pr.next('synced', 30_000);
    await until(() => commits.length >= 2, 10_000, 'commits');
    killPid(Number(pr.child.pid));
    await c.kill();
    const r = await promoted(sb);
    expect(r.outcome).toBe('fenced-out');
    expect(r.errors.join(' ')).toMatch(/fence-cmd failed \(exit 3\).*power switch/);
    expect(Number(readFileSync(marker, 'utf8'))).toBe(r.epoch);
    await sleep(300);
    expect(() => process.kill(c.pid, 0)).toThrow(); // nothing was restored
    expect(sb.stats().role).toBe('standby');
  });

  it('a stale primary coming back is refused (and fences itself)', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const c = await startCounter(dir.path, 'c', ['--pages', '256']);
    later(() => c.kill());
    const { sb, commits } = await startStandby(dir.path, security);
    const pr = startPrimaryCli(c.pid, sb.port, file);
    await pr.next('synced', 30_000);
    await until(() => commits.length >= 2, 10_000, 'commits');
    killPid(Number(pr.child.pid));
    await c.kill();
    const r = await promoted(sb);
    expect(r.outcome, r.errors.join('\n')).toBe('restored');
    expect(r.generation).toBe(2);
    // An old primary, generation 1, protecting another copy of the service, comes back.
    const old = await startCounter(dir.path, 'old', ['--pages', '64']);
    later(() => old.kill());
    const stale = await Primary.start({ pid: old.pid, host: '127.0.0.1', port: sb.port, security, epochMs: 50, selfFenceAfterMs: 60_000 });
    later(() => stale.stop());
    const fenced = new Promise<{ reason: string }>((resolve) => stale.once('fenced', resolve));
    const f = await fenced;
    expect(f.reason).toMatch(/stale|promoted|newer/i);
    await old.proc.exited; // the stale copy was stopped
    expect(sb.stats().role).toBe('primary');
  });

  it('the target exits on a healthy primary: the standby is told and does not promote', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const c = await startCounter(dir.path, 'c', ['--pages', '256']);
    later(() => c.kill());
    const { sb } = await startStandby(dir.path, security);
    const pr = startPrimaryCli(c.pid, sb.port, file);
    await pr.next('synced', 30_000);
    await c.kill(); // the process dies; its agent is fine
    await pr.next('stopped', 10_000).catch(() => undefined);
    await sleep(1000); // several detection windows
    expect(sb.stats().promotion).toBeNull();
    expect(sb.stats().role).toBe('standby');
  });

  it('a process with children is refused with a clear message, not replicated by half', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { security } = makeKey(dir.path);
    const { sb } = await startStandby(dir.path, security);
    const t = await spawnTarget('/bin/sh', ['-c', 'sleep 600 & wait'], { stdio: 'ignore' });
    later(async () => {
      for (const child of readFileSync(`/proc/${t.pid}/task/${t.pid}/children`, 'utf8').split(/\s+/).filter(Boolean)) killPid(Number(child));
      killPid(t.pid);
      await t.exited;
    });
    await until(() => readFileSync(`/proc/${t.pid}/task/${t.pid}/children`, 'utf8').trim() !== '', 5000, 'the child');
    const p = await Primary.start({ pid: t.pid, host: '127.0.0.1', port: sb.port, security, epochMs: 50 });
    later(() => p.stop());
    const err = await new Promise<Error>((resolve) => p.once('error', resolve));
    expect(err.message).toMatch(/child processes .* not supported/);
    expect(sb.stats().committedEpoch).toBe(0);
  });

  it('connections accepted after the base image: no new base for them, and the restored server gets closed sockets in their place', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const script = join(dir.path, 'server.mjs');
    writeFileSync(script, `
      import { createServer } from 'node:http';
      let hits = 0;
      const s = createServer((req, res) => { hits++; res.end(String(hits)); });
      s.keepAliveTimeout = 600000;
      s.listen(${port}, '127.0.0.1');
    `);
    const t = await spawnTarget(process.execPath, [script], { stdio: 'ignore' });
    later(async () => { killPid(t.pid); await t.exited; });
    await until(async () => !!(await fetch(`http://127.0.0.1:${port}/`).catch(() => null)), 10_000, 'the server to listen');
    const { sb } = await startStandby(dir.path, security, { promotion: { health: { kind: 'tcp', host: '127.0.0.1', port } } });
    const pr = startPrimaryCli(t.pid, sb.port, file);
    await pr.next('synced', 60_000);
    // Five clients connect after the base image and stay connected.
    const { connect } = await import('node:net');
    const sockets = await Promise.all(Array.from({ length: 5 }, () => new Promise<import('node:net').Socket>((resolve) => {
      const c = connect(port, '127.0.0.1', () => { c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'); c.once('data', () => resolve(c)); });
      c.on('error', () => undefined);
    })));
    later(() => { for (const c of sockets) c.destroy(); });
    await committedAfter(sb, Date.now());
    await sleep(300);
    expect(pr.events.filter((e) => e.event === 'rebase')).toHaveLength(0);
    killPid(Number(pr.child.pid));
    killPid(t.pid);
    await t.exited;
    await waitGone(t.pid);
    const r = await promoted(sb, 60_000);
    expect(r.outcome, r.errors.join('\n')).toBe('restored');
    // The restored server has sockets at those numbers (libuv would abort on EBADF) and keeps serving.
    const { readdirSync } = await import('node:fs');
    expect(readdirSync(`/proc/${t.pid}/fd`).length).toBeGreaterThanOrEqual(5);
    for (let i = 0; i < 3; i++) expect(Number(await (await fetch(`http://127.0.0.1:${port}/`, { headers: { connection: 'close' } })).text())).toBeGreaterThan(5);
    expect(existsSync(`/proc/${t.pid}`)).toBe(true);
  });

  it('--no-auto-promote waits; `replicate promote --dir` restores, runs --on-promote with the epoch and PID', async () => {
    const { dir, c, standbyDir, sb, pr } = await manualPromotionSetup((d, counter) => [
      '--health', `tcp:${counter.port}`, '--on-promote', `echo "$REPLICATE_ROLE $REPLICATE_EPOCH $REPLICATE_PID" > ${join(d, 'hook.out')}`]);
    const hook = join(dir.path, 'hook.out');
    await sb.next('commit', 10_000);
    killPid(Number(pr.child.pid));
    await c.kill();
    await sb.next('suspect', 10_000);
    await sleep(500);
    expect(sb.events.some((e) => e.event === 'promoting')).toBe(false); // it waits for the operator
    const r = await cli(['promote', '--dir', standbyDir, '--json'], 120_000);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(out).toMatchObject({ event: 'promoted', outcome: 'restored', pid: c.pid });
    later(async () => { await sb.stop('SIGTERM'); await killRestored(c.pid); });
    expect(await query(c.port, 'check')).toMatch(/^ok /);
    await until(() => existsSync(hook) && readFileSync(hook, 'utf8').trim() !== '', 5000, 'the --on-promote hook');
    expect(readFileSync(hook, 'utf8').trim()).toBe(`primary ${out.epoch} ${c.pid}`);
  });

  it('a standby that died: `replicate promote --dir` opens its store, replays the journal and restores its last epoch', async () => {
    const { c, standbyDir, restoreDir, sb, pr } = await manualPromotionSetup();
    for (let i = 0; i < 3; i++) await sb.next('commit', 10_000);
    // Writers parked: the counter stays at C, and the epochs from now on all hold C.
    expect(await query(c.port, 'pause')).toMatch(/^ok/);
    const counter = /counter=(\d+)/.exec(await query(c.port, 'get'))![1];
    const atPause = Number((sb.last('commit') as { epoch: number }).epoch);
    for (let e = 0; e < 3;) if (Number((await sb.next('commit', 10_000)).epoch) > atPause) e++;
    await sb.stop('SIGKILL');
    killPid(Number(pr.child.pid));
    await c.kill();
    // Everything after the full synchronisation is in the journal only.
    expect(readdirSync(standbyDir).filter((n) => n.endsWith('.rrj'))).toHaveLength(1);
    const st = JSON.parse((await cli(['status', '--dir', standbyDir, '--json'])).stdout) as { running: boolean; committedEpoch: number };
    expect(st.running).toBe(false);
    expect(st.committedEpoch).toBeGreaterThan(atPause + 1);
    const r = await cli(['promote', '--dir', standbyDir, '--restore-dir', restoreDir, '--json'], 120_000);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(out).toMatchObject({ event: 'promoted', outcome: 'restored', pid: c.pid, epoch: st.committedEpoch });
    later(() => killRestored(c.pid));
    expect(await query(c.port, 'get')).toContain(`counter=${counter} `);
    expect(await query(c.port, 'check')).toMatch(/^ok /);
  });

  it('--self-fence-after: a primary that loses its standby stops its target', async () => {
    const dir = tempDir('fo'); later(() => dir.remove());
    const { security } = makeKey(dir.path);
    const c = await startCounter(dir.path, 'c', ['--pages', '64']);
    later(() => c.kill());
    const sb = await Standby.start({ host: '127.0.0.1', port: 0, dir: join(dir.path, 'standby'), security, autoPromote: false });
    later(() => sb.stop());
    const p = await Primary.start({ pid: c.pid, host: '127.0.0.1', port: sb.port, security, epochMs: 50, selfFenceAfterMs: 400, reconnectMinMs: 50 });
    later(() => p.stop());
    await new Promise((resolve) => p.once('synced', resolve));
    const fenced = new Promise<{ reason: string }>((resolve) => p.once('fenced', resolve));
    await sb.stop(); // the standby is gone: past 400 ms the primary must assume it promoted
    const f = await fenced;
    expect(f.reason).toMatch(/unreachable/);
    await c.proc.exited;
    expect(existsSync(`/proc/${c.pid}`)).toBe(false);
  });
});
