// Captures page corpora for the codec tests and benchmark from real processes with the
// project's Tracker: a redis-server under redis-benchmark SET load, and a Node.js process
// that keeps a Map of objects changing. Targets start through spawnTarget (the keeper), so
// that this process is not their parent. Epoch 0 is a full copy (every page with content);
// the next ones are the pages written since the previous epoch.
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnTarget, type SpawnedTarget } from '../../src/spawn/spawn-target.js';
import { Tracker } from '../../src/tracker/tracker.js';
import type { Corpus, CorpusEpoch } from './helpers.js';
import { freePort } from '../helpers/ports.js';

export interface CaptureOptions {
  /** Dirty epochs after the full copy. Default 8. */
  epochs?: number;
  /** Time between epochs. Default 100 ms. */
  epochMs?: number;
  /** Load before the full copy. Default 500 ms. */
  warmupMs?: number;
}


function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.on('error', () => resolve(''));
    p.on('close', () => resolve(out));
  });
}

async function kill(t: SpawnedTarget): Promise<void> {
  try { process.kill(t.pid, 'SIGKILL'); } catch { /* gone */ }
  await t.exited;
}

async function captureEpochs(pid: number, name: string, o: CaptureOptions): Promise<Corpus> {
  const tracker = await Tracker.attach(pid);
  const epochs: CorpusEpoch[] = [];
  try {
    for (let k = 0; k <= (o.epochs ?? 8); k++) {
      if (k > 0) await sleep(o.epochMs ?? 100);
      const e = await tracker.epoch({ full: k === 0, registers: false, files: false });
      const addrs = BigUint64Array.from(e.addresses());
      epochs.push({ addrs, pages: Buffer.from(e.pages), vmas: e.vmas.map((v) => ({ start: v.start, end: v.end })) });
      e.release();
    }
  } finally {
    await tracker.close();
  }
  return { name, epochs };
}

/** redis-server (no persistence) under `redis-benchmark -t set -r 100000` with 50 clients. */
export async function captureRedis(o: CaptureOptions = {}): Promise<Corpus> {
  const port = await freePort();
  const t = await spawnTarget('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1'], { stdio: 'ignore' });
  let load: ChildProcess | undefined;
  try {
    for (let i = 0; ; i++) {
      if ((await run('redis-cli', ['-p', String(port), 'ping'])).trim() === 'PONG') break;
      if (i > 200) throw new Error(`redis-server on port ${port} did not answer`);
      await sleep(25);
    }
    load = spawn('redis-benchmark', ['-p', String(port), '-t', 'set', '-n', '100000000', '-r', '100000', '-c', '50', '-q'], { stdio: 'ignore' });
    await sleep(o.warmupMs ?? 500);
    return await captureEpochs(t.pid, 'redis', o);
  } finally {
    load?.kill('SIGKILL');
    await kill(t);
  }
}

const NODE_SCRIPT = `
const m = new Map(); let i = 0; const counters = new Float64Array(4096);
setInterval(() => {
  for (let k = 0; k < 500; k++) {
    const key = 'user:' + (i % 20000);
    const v = m.get(key);
    if (v) { v.visits++; v.last = Date.now(); } else m.set(key, { id: i, name: 'name-' + i, visits: 1, last: Date.now(), tags: ['a', 'b'] });
    counters[i % 4096] += 1;
    i++;
  }
}, 2);
`;

/** A Node.js process updating a Map of 20 000 small objects (V8 heap: young and old generation). */
export async function captureNode(o: CaptureOptions = {}): Promise<Corpus> {
  const t = await spawnTarget(process.execPath, ['-e', NODE_SCRIPT], { stdio: 'ignore' });
  try {
    await sleep(o.warmupMs ?? 500);
    return await captureEpochs(t.pid, 'node', o);
  } finally {
    await kill(t);
  }
}
