// Starting and stopping the processes a benchmark needs: redis-server (through the
// keeper, so that it is not our child and can be traced), the replicate CLI (a standby
// and a primary, each its own process as on two hosts) and load generators.
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnTarget, type SpawnedTarget } from '../../src/spawn/spawn-target.js';

export { CliProcess } from '../../test/helpers/cli-process.js';

export async function startRedis(port: number): Promise<SpawnedTarget> {
  const t = await spawnTarget('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1'], { stdio: 'ignore' });
  for (let i = 0; i < 200; i++) {
    if (await redisPing(port)) return t;
    await sleep(25);
  }
  throw new Error(`redis-server on port ${port} did not answer`);
}

export async function redisPing(port: number): Promise<boolean> {
  const out = await run('redis-cli', ['-p', String(port), 'ping']).catch(() => '');
  return out.trim() === 'PONG';
}

export async function stopTarget(t: SpawnedTarget): Promise<void> {
  try { process.kill(t.pid, 'SIGKILL'); } catch { /* gone */ }
  await t.exited;
}

/** Runs a command to completion; resolves with stdout, rejects with stderr on failure. */
export function run(cmd: string, args: string[], options: { timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = ''; let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    const timer = options.timeoutMs ? setTimeout(() => p.kill('SIGKILL'), options.timeoutMs) : undefined;
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out); else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`));
    });
  });
}
