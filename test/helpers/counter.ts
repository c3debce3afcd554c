// Drives test/targets/counter (see its header): a multi-threaded target whose memory holds
// an invariant a torn snapshot would break, queried over TCP on loopback (no stdio pipes,
// so that CRIU can dump it and a restored copy can be queried the same way).
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnTarget, type SpawnedTarget } from '../../src/spawn/spawn-target.js';
import { targetPath } from './build-targets.js';

export interface CounterTarget {
  pid: number;
  port: number;
  proc: SpawnedTarget;
  /** SIGKILL and wait until /proc/PID is gone (the keeper reaps it). */
  kill(): Promise<void>;
}

export async function startCounter(dir: string, name: string, args: string[] = []): Promise<CounterTarget> {
  const status = join(dir, `${name}.status`);
  const proc = await spawnTarget(targetPath('counter'), ['--status', status, ...args]);
  for (let i = 0; !existsSync(status); i++) {
    if (i > 500) throw new Error(`counter ${name} wrote no status file`);
    await sleep(10);
  }
  const kv = Object.fromEntries(readFileSync(status, 'utf8').trim().split(' ').map((s) => s.split('=') as [string, string]));
  const pid = Number(kv.pid);
  return {
    pid, port: Number(kv.port), proc,
    kill: async () => {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      await proc.exited;
      await waitGone(pid);
    },
  };
}

export async function waitGone(pid: number, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; existsSync(`/proc/${pid}`);) {
    if (Date.now() > end) throw new Error(`process ${pid} still exists after ${ms} ms`);
    await sleep(10);
  }
}

/** One command, one line back. */
export function query(port: number, cmd: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let buf = '';
    const t = setTimeout(() => { s.destroy(); reject(new Error(`counter on port ${port}: no answer to '${cmd}' within ${timeoutMs} ms`)); }, timeoutMs);
    s.on('connect', () => s.write(`${cmd}\n`));
    s.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) { clearTimeout(t); s.destroy(); resolve(buf.slice(0, nl)); }
    });
    s.on('error', (e) => { clearTimeout(t); reject(e); });
  });
}

export function field(reply: string, name: string): bigint {
  const m = new RegExp(`(?:^| )${name}=(\\S+)`).exec(reply);
  if (!m) throw new Error(`no ${name}= in '${reply}'`);
  return BigInt(m[1]!);
}
