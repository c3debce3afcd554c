// Bad targets get a clear, typed error; nothing is left stopped.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { ReplicateError, Tracker } from '../src/index.js';
import { killAll, Target } from './helpers/target.js';

afterEach(async () => { await killAll(); });

it('a PID that does not exist', async () => {
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  let pid = max - 1;
  while (pid > 1) {
    try { process.kill(pid, 0); pid--; } catch { break; }
  }
  const err = await Tracker.attach(pid).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ReplicateError);
  expect(err).toMatchObject({ code: 'TARGET_GONE', pid });
  expect((err as Error).message).toMatch(/no process with PID/);
  // The stack is the caller's, not the addon's.
  expect((err as Error).stack).toMatch(/05-bad-input/);
});

it('PID 1', async () => {
  await expect(Tracker.attach(1)).rejects.toMatchObject({ code: 'INVALID_TARGET', message: expect.stringMatching(/PID 1 \(init\)/) });
});

it("the agent's own PID", async () => {
  await expect(Tracker.attach(process.pid)).rejects.toMatchObject({ code: 'INVALID_TARGET', message: expect.stringMatching(/agent's own process/) });
});

it('a kernel thread', async () => {
  await expect(Tracker.attach(2)).rejects.toMatchObject({ code: 'INVALID_TARGET', message: expect.stringMatching(/kernel thread/) });
});

it('a zombie', async () => {
  // `sh -c 'sleep 0 & exec sleep 30'`: the exec'd sleep never reaps its child.
  const parent = spawn('sh', ['-c', 'sleep 0 & exec sleep 30'], { stdio: 'ignore' });
  try {
    let zombie = 0;
    for (let i = 0; i < 200 && !zombie; i++) {
      await new Promise((r) => setTimeout(r, 10));
      const kids = readFileSync(`/proc/${parent.pid}/task/${parent.pid}/children`, 'utf8').trim();
      if (kids && readFileSync(`/proc/${kids}/stat`, 'utf8').split(') ')[1]!.startsWith('Z')) zombie = Number(kids);
    }
    expect(zombie).toBeGreaterThan(0);
    await expect(Tracker.attach(zombie)).rejects.toMatchObject({ code: 'INVALID_TARGET', message: expect.stringMatching(/zombie/) });
  } finally {
    parent.kill('SIGKILL');
    await new Promise((r) => parent.once('exit', r));
  }
});

it('a thread ID instead of a process ID', async () => {
  const t = await Target.spawn({ threads: 2 });
  await t.ok('rand 5 1');
  const tids = (await import('node:fs')).readdirSync(`/proc/${t.pid}/task`).map(Number).filter((x) => x !== t.pid);
  expect(tids.length).toBeGreaterThan(0);
  await expect(Tracker.attach(tids[0]!)).rejects.toMatchObject({ code: 'INVALID_TARGET', message: expect.stringMatching(/is a thread of process/) });
  await t.ok('stop');
});

it('a child of the agent itself (libuv would steal its ptrace stops)', async () => {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    await expect(Tracker.attach(child.pid!)).rejects.toMatchObject({ code: 'INVALID_TARGET', message: expect.stringMatching(/spawnTarget/) });
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
  }
});

it('bad options', async () => {
  await expect(Tracker.attach(-3)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  const t = await Target.spawn();
  await expect(Tracker.attach(t.pid, { backend: 'magic' as never })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  await expect(Tracker.attach(t.pid, { freezeTimeoutMs: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
});

it('a closed tracker refuses work; close is idempotent; the target was left running', async () => {
  const t = await Target.spawn();
  const tracker = await Tracker.attach(t.pid);
  await tracker.close();
  await tracker.close();
  await expect(tracker.epoch()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: 'tracker is closed' });
  expect(readFileSync(`/proc/${t.pid}/status`, 'utf8')).toMatch(/State:\s+S/);
  await t.ok('w 3');
});
