// Operator hooks: shell commands run at role changes (--on-promote, --on-role-change),
// before a restore (--fence-cmd) and instead of one that keeps failing (--fallback-cmd).
// They get what happened in the environment:
//   REPLICATE_ROLE       standby | promoting | primary | failed
//   REPLICATE_EPOCH      the committed epoch being restored
//   REPLICATE_PID        the restored PID (empty before the restore)
//   REPLICATE_LINEAGE    the replicated process's lineage id
//   REPLICATE_GENERATION the generation after promotion
//   REPLICATE_DIR        the standby's directory
import { spawn } from 'node:child_process';

export interface HookEnv {
  role: string;
  epoch?: number;
  pid?: number;
  lineage?: string;
  generation?: number;
  dir?: string;
}

export interface HookResult { code: number; output: string; ms: number; timedOut: boolean }

export function runHook(command: string, env: HookEnv, timeoutMs = 30_000): Promise<HookResult> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', ['-c', command], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        REPLICATE_ROLE: env.role,
        REPLICATE_EPOCH: env.epoch === undefined ? '' : String(env.epoch),
        REPLICATE_PID: env.pid === undefined ? '' : String(env.pid),
        REPLICATE_LINEAGE: env.lineage ?? '',
        REPLICATE_GENERATION: env.generation === undefined ? '' : String(env.generation),
        REPLICATE_DIR: env.dir ?? '',
      },
    });
    let output = '';
    const take = (d: Buffer) => { if (output.length < 4096) output += d.toString(); };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); resolve({ code: 127, output: e.message, ms: performance.now() - t0, timedOut }); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), output: output.trim(), ms: performance.now() - t0, timedOut });
    });
  });
}
