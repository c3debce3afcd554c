import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { ReplicateError } from '../errors.js';
import { keeperPath } from '../native/binding.js';

export interface SpawnedTarget {
  /** PID of the command itself (what to replicate). */
  pid: number;
  /** The keeper process between this process and the command. */
  keeper: ChildProcess;
  /** Resolves with the command's exit code (128 + signal when killed). */
  exited: Promise<number>;
}

/**
 * Starts `command` so that it can be tracked from this process: through the keeper, so
 * that this (Node) process is not its parent (libuv's child reaping would steal ptrace
 * stops), as a session leader (CRIU then needs no --shell-job), and reaped when it ends.
 */
export async function spawnTarget(command: string, args: string[], options: { stdio?: StdioOptions; cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<SpawnedTarget> {
  if (!existsSync(keeperPath)) throw new ReplicateError('SYSTEM_ERROR', `keeper binary missing at ${keeperPath}: run 'npm install'`);
  const keeper = spawn(keeperPath, ['--', command, ...args], { stdio: options.stdio ?? 'ignore', cwd: options.cwd, env: options.env });
  const exited = new Promise<number>((resolve) => keeper.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
  const keeperPid = keeper.pid;
  if (keeperPid === undefined) throw new ReplicateError('SYSTEM_ERROR', `cannot start ${command}`);
  // The command is the keeper's only child.
  for (let i = 0; i < 500; i++) {
    let children = '';
    try { children = readFileSync(`/proc/${keeperPid}/task/${keeperPid}/children`, 'utf8').trim(); } catch { /* keeper gone */ }
    if (children) return { pid: Number(children.split(/\s+/)[0]), keeper, exited };
    if (keeper.exitCode !== null) throw new ReplicateError('TARGET_GONE', `${command} exited at once (code ${keeper.exitCode})`);
    await sleep(2);
  }
  keeper.kill('SIGKILL');
  throw new ReplicateError('TIMEOUT', `${command} did not start within 1 s`);
}
