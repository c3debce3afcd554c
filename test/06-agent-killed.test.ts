// The agent dies by SIGKILL while the target is frozen: the kernel detaches ptrace
// tracees of a dead tracer, so the target runs on; its userfaultfd goes away with the
// agent too, so its memory is no longer write-protected.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, expect, it } from 'vitest';
import { killAll, Target } from './helpers/target.js';

afterEach(async () => { await killAll(); });

const state = (pid: number) => /State:\s+(\S)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1];

it('SIGKILL of the agent in the middle of a freeze leaves the target running', async () => {
  // 64 MiB, all populated: every full epoch freezes the target for tens of ms.
  const t = await Target.spawn({ pages: 16384, threads: 3 });
  await t.ok('rand 60 1');
  const agentPath = fileURLToPath(new URL('./fixtures/agent.mjs', import.meta.url));
  const agent = spawn(process.execPath, [agentPath, String(t.pid)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const agentExit = new Promise((r) => agent.once('exit', r));
  try {
    await new Promise<void>((resolve, reject) => {
      agent.stdout!.once('data', () => resolve());
      agent.once('exit', (c) => reject(new Error(`agent exited early (${c})`)));
    });
    // Wait until the target is caught in a tracing stop, then kill the agent right there.
    let caught = false;
    for (let i = 0; i < 20000 && !caught; i++) {
      if (state(t.pid) === 't') {
        agent.kill('SIGKILL');
        caught = true;
      }
    }
    expect(caught).toBe(true);
    await agentExit;
    const gone = await Promise.race([t.exited, new Promise((r) => setTimeout(() => r(null), 300))]);
    if (gone) throw new Error(`the target died after the agent was killed: ${JSON.stringify(gone)}`);
    // Running again (not 't'), and making progress: the random writers keep writing.
    let running = false;
    for (let i = 0; i < 100 && !running; i++) {
      running = state(t.pid) !== 't';
      if (!running) await new Promise((r) => setTimeout(r, 10));
    }
    expect(running).toBe(true);
    const sum1 = await t.ok('sum');
    await new Promise((r) => setTimeout(r, 50));
    const sum2 = await t.ok('sum');
    expect(sum2).not.toBe(sum1);
    expect(Number(await t.ok('stop'))).toBeGreaterThan(0);
    // No userfaultfd left in the target's fd table, no write-protect left behind.
    expect(readFileSync(`/proc/${t.pid}/smaps`, 'utf8')).not.toMatch(/VmFlags:.*\buw\b/);
  } finally {
    if (agent.exitCode === null && agent.signalCode === null) agent.kill('SIGKILL');
    await agentExit;
  }
});
