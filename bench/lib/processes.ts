// Starting and stopping the processes a benchmark needs: targets (through the keeper, so
// that they are not our children and can be traced: redis-server, the Node.js HTTP
// server), the replicate CLI (a standby and a primary, each its own process as on two
// hosts), load generators (redis-benchmark, autocannon) and plain helpers. Everything is
// registered with the run's clean-up, so that a failure or Ctrl-C ends it by PID.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnTarget, type SpawnedTarget } from '../../src/spawn/spawn-target.js';
import { packageRoot } from '../../src/util/paths.js';
import { CliProcess } from '../../test/helpers/cli-process.js';
import { Cleanup } from './harness.js';
import { freePort } from '../../test/helpers/ports.js';

export { freePort };

export { CliProcess };

/** The run's clean-up: everything started here is registered with it. */
export const cleanup = new Cleanup();

export interface Target extends SpawnedTarget { what: string; stop(): Promise<void> }

/** Starts a target through the keeper; `stop()` SIGKILLs it and waits until it is reaped. */
export async function startTarget(what: string, cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<Target> {
  const t = await spawnTarget(cmd, args, { stdio: 'ignore', env: options.env });
  const offPid = cleanup.pid(t.pid, what);
  const offKeeper = cleanup.child(t.keeper, `${what} keeper`);
  return {
    ...t, what,
    stop: async () => {
      try { process.kill(t.pid, 'SIGKILL'); } catch { /* gone */ }
      await Promise.race([t.exited, sleep(10_000)]);
      await waitGone(t.pid, 10_000).catch(() => undefined);
      offPid(); offKeeper();
    },
  };
}

export async function startRedis(port: number, extra: string[] = []): Promise<Target> {
  const t = await startTarget(`redis-server :${port}`, 'redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1', ...extra]);
  await waitFor(() => redisPing(port), 10_000, `redis-server on port ${port} did not answer`);
  return t;
}

export const HTTP_SERVER = join(packageRoot, 'bench', 'targets', 'http-server.mjs');

export async function startHttpServer(port: number, items = 20_000): Promise<Target> {
  const t = await startTarget(`node http-server :${port}`, process.execPath, [HTTP_SERVER, '--port', String(port), '--items', String(items)]);
  await waitFor(() => tcpOpen(port), 15_000, `the Node.js HTTP server on port ${port} did not listen`);
  return t;
}

/** A replicate CLI process (see test/helpers/cli-process.ts), registered for clean-up. */
export function startCli(args: string[], what: string): CliProcess {
  const p = new CliProcess(args);
  cleanup.child(p.child, what);
  return p;
}

/** A plain child process (not a replication target), registered for clean-up. */
export function startChild(what: string, cmd: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const c = spawn(cmd, args, { stdio: 'ignore', ...options });
  cleanup.child(c, what);
  return c;
}

export async function stopChild(c: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((r) => c.once('exit', r));
  c.kill(signal);
  await Promise.race([exited, sleep(10_000).then(() => c.kill('SIGKILL'))]);
}

export async function waitFor(probe: () => Promise<boolean> | boolean, timeoutMs: number, message: string, everyMs = 20): Promise<void> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    if (await probe()) return;
    if (performance.now() > end) throw new Error(message);
    await sleep(everyMs);
  }
}

export async function waitGone(pid: number, ms = 10_000): Promise<void> {
  await waitFor(() => !existsSync(`/proc/${pid}`), ms, `process ${pid} still exists after ${ms} ms`, 10);
}

export function tcpOpen(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, host);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}


/** A port p such that p and p + 1 are free (a service and its replication link). */
export async function freePortPair(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const p = await freePort();
    if (p < 65000 && !(await tcpOpen(p + 1))) return p;
  }
  throw new Error('no free port pair');
}

export async function redisPing(port: number): Promise<boolean> {
  const out = await run('redis-cli', ['-p', String(port), 'ping'], { timeoutMs: 2000 }).catch(() => '');
  return out.trim() === 'PONG';
}

/** Runs a command to completion; resolves with stdout, rejects with stderr on failure. */
export function run(cmd: string, args: string[], options: { timeoutMs?: number; cwd?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: options.cwd });
    const off = cleanup.child(p, cmd);
    let out = ''; let err = '';
    p.stdout!.on('data', (d) => { out += d; });
    p.stderr!.on('data', (d) => { err += d; if (err.length > 100_000) err = err.slice(-50_000); });
    const timer = options.timeoutMs ? setTimeout(() => p.kill('SIGKILL'), options.timeoutMs) : undefined;
    p.on('error', (e) => { off(); reject(e); });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      off();
      if (code === 0) resolve(out); else reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal}: ${err.trim().slice(-2000)}`));
    });
  });
}

export interface LoadResult { rps: number; p50Ms: number; p99Ms: number; maxMs?: number; ms: number }

/** redis-benchmark with 50 clients over 100 000 keys; throughput and latency percentiles from its CSV. */
export async function redisBenchmark(port: number, test: 'set' | 'get', requests: number, clients = 50): Promise<LoadResult> {
  const t0 = performance.now();
  const csv = await run('redis-benchmark', ['-p', String(port), '-t', test, '-c', String(clients), '-r', '100000', '-n', String(requests), '--csv'], { timeoutMs: 600_000 });
  const ms = performance.now() - t0;
  const line = csv.trim().split('\n').find((l) => l.startsWith(`"${test.toUpperCase()}"`));
  if (!line) throw new Error(`redis-benchmark printed no ${test.toUpperCase()} line: ${csv}`);
  // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  const f = line.split(',').map((x) => x.replace(/"/g, ''));
  return { rps: Number(f[1]), p50Ms: Number(f[4]), p99Ms: Number(f[6]), maxMs: Number(f[7]), ms };
}

export const AUTOCANNON = join(packageRoot, 'node_modules', 'autocannon', 'autocannon.js');

/** autocannon (its CLI, a process of its own) against `url` for `seconds`. */
export async function autocannon(url: string, seconds: number, connections = 20): Promise<LoadResult & { errors: number; requests: number }> {
  const t0 = performance.now();
  const out = await run(process.execPath, [AUTOCANNON, '-c', String(connections), '-d', String(seconds), '--json', url], { timeoutMs: (seconds + 60) * 1000 });
  const ms = performance.now() - t0;
  const j = JSON.parse(out) as { requests: { average: number; total: number }; latency: { p50: number; p99: number; max: number }; errors: number; timeouts: number; non2xx: number; duration: number };
  return { rps: j.requests.total / j.duration, p50Ms: j.latency.p50, p99Ms: j.latency.p99, maxMs: j.latency.max, ms, errors: j.errors + j.timeouts + j.non2xx, requests: j.requests.total };
}
