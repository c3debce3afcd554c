// The image builder on real processes and real CRIU: a base dump, a later epoch captured by
// the Tracker, the target killed, an image built from base + epoch, `criu restore`, and the
// restored process checked (memory, registers, invariant, counter, clocks, file offsets).
//
// The target is test/targets/counter (3 threads, a memory invariant that a torn snapshot
// breaks, commands over TCP). Targets and restored processes are never our children: the
// target runs under the keeper, and `criu restore` (not detached) runs under the keeper too,
// so the restored process is criu's child and is reaped when killed.
import { execFile } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, statSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { criuDump } from '../src/criu/criu-runner.js';
import { locateCriu } from '../src/criu/locate.js';
import { buildEpochImage, ImageBuildError, pagesFromRanges, parseImage, serializeImage, Message, type PageEntry } from '../src/criu/image/index.js';
import { encodeVarint, lenField, readVarint, varintField } from '../src/criu/image/protobuf.js';
import { readCpuidXsaveLayout, vendorXsaveLayout } from '../src/criu/image/xsave.js';
import { toCaptured } from '../src/primary/epoch-loop.js';
import type { CapturedEpoch } from '../src/primary/epoch-queue.js';
import { spawnTarget, type SpawnedTarget } from '../src/spawn/spawn-target.js';
import { Tracker } from '../src/tracker/tracker.js';
import { targetPath } from './helpers/build-targets.js';

const run = promisify(execFile);
const PAGE = 4096n;
const HAS_AVX = /^flags\s*:.*\bavx\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));

let criu = '';
let work = '';
let shm = '';
const pidsToKill = new Set<number>();
const keepers = new Set<SpawnedTarget>();
const trackers = new Set<Tracker>();

beforeAll(async () => {
  criu = (await locateCriu()).path;
  work = await mkdtemp(join(tmpdir(), 'rr-image-'));
  // Images to restore go to a tmpfs, as in production.
  shm = await mkdtemp(existsSync('/dev/shm') ? '/dev/shm/rr-image-' : join(tmpdir(), 'rr-image-out-'));
});

afterEach(async () => {
  for (const t of trackers) await t.close().catch(() => undefined);
  trackers.clear();
  for (const pid of pidsToKill) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  pidsToKill.clear();
  await Promise.all([...keepers].map((k) => Promise.race([k.exited, sleep(10_000)])));
  keepers.clear();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
  if (shm) await rm(shm, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------
// Helpers

interface Counter {
  pid: number;
  port: number;
  counterAddr: bigint;
  region: bigint;
  pages: number;
  proc: SpawnedTarget;
}

/** Starts a counter; unless `own`, it is killed after the test (else the caller kills it). */
async function startCounter(name: string, args: string[], own = false): Promise<Counter> {
  const status = join(work, `${name}.status`);
  const proc = await spawnTarget(targetPath('counter'), ['--status', status, ...args]);
  if (!own) {
    keepers.add(proc);
    pidsToKill.add(proc.pid);
  }
  for (let i = 0; !existsSync(status); i++) {
    if (i > 1000) throw new Error('counter did not start');
    await sleep(5);
  }
  const kv = Object.fromEntries(readFileSync(status, 'utf8').trim().split(' ').map((s) => s.split('=') as [string, string]));
  expect(Number(kv.pid)).toBe(proc.pid);
  return { pid: proc.pid, port: Number(kv.port), counterAddr: BigInt(kv.counter!), region: BigInt(kv.region!), pages: Number(kv.pages), proc };
}

/** Runs a Node.js script as a target (killed after the test) and waits for it to write `ready`. */
async function startNodeTarget(script: string, ready: string): Promise<SpawnedTarget> {
  const proc = await spawnTarget(process.execPath, [script]);
  keepers.add(proc);
  pidsToKill.add(proc.pid);
  for (let i = 0; !existsSync(ready); i++) {
    if (i > 2000) throw new Error(`${script} did not start (no ${ready})`);
    await sleep(5);
  }
  return proc;
}

function query(port: number, cmd: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no answer to '${cmd}' on port ${port}`)); }, timeoutMs);
    s.on('connect', () => s.write(`${cmd}\n`));
    s.on('data', (d) => { out += d.toString(); });
    s.on('end', () => { clearTimeout(timer); resolve(out.trim()); });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

function field(reply: string, name: string): bigint {
  const m = new RegExp(`\\b${name}=(\\d+)`).exec(reply);
  if (!m) throw new Error(`no ${name}= in '${reply}'`);
  return BigInt(m[1]!);
}

async function logTail(path: string): Promise<string> {
  try { return (await readFile(path, 'utf8')).split('\n').slice(-15).join('\n'); } catch { return '(no log)'; }
}

async function dumpBase(pid: number, dir: string, extra: string[] = []): Promise<void> {
  await mkdir(dir, { recursive: true });
  try {
    await run(criu, ['dump', '--leave-running', '-t', String(pid), '-D', dir, '-o', 'dump.log', '-v4', ...extra], { timeout: 60_000 });
  } catch (e) {
    throw new Error(`criu dump failed: ${(e as Error).message}\n${await logTail(join(dir, 'dump.log'))}`);
  }
}

/** Captures a full epoch while the process runs, as the primary would. */
async function capture(tracker: Tracker): Promise<CapturedEpoch> {
  return toCaptured(await tracker.epoch({ full: true }), tracker.pid);
}

async function killAndWait(c: Counter): Promise<void> {
  process.kill(c.pid, 'SIGKILL');
  await c.proc.exited;
  pidsToKill.delete(c.pid);
  for (let i = 0; existsSync(`/proc/${c.pid}`); i++) {
    if (i > 2000) throw new Error(`/proc/${c.pid} still there`);
    await sleep(5);
  }
}

/** `criu restore` under the keeper; resolves once the restore is complete. */
async function restore(dir: string, pid: number, extra: string[] = []): Promise<SpawnedTarget> {
  const proc = await spawnTarget(criu, ['restore', '-D', dir, '-o', 'restore.log', '-v4', ...extra]);
  keepers.add(proc);
  pidsToKill.add(pid);
  const log = join(dir, 'restore.log');
  let exited: number | undefined;
  void proc.exited.then((code) => { exited = code; });
  for (let i = 0; ; i++) {
    const text = existsSync(log) ? readFileSync(log, 'utf8') : '';
    if (text.includes('Restore finished successfully')) return proc;
    if (exited !== undefined || i > 3000) throw new Error(`criu restore failed (exit ${exited ?? 'none yet'}):\n${await logTail(log)}`);
    await sleep(5);
  }
}

function readMem(pid: number, addr: bigint, len: number): Buffer {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, addr);
    return b;
  } finally {
    closeSync(fd);
  }
}

function u64At(c: CapturedEpoch, addr: bigint): bigint {
  const page = addr & ~(PAGE - 1n);
  for (const p of pagesFromRanges(c.ranges, c.pages)) if (p.addr === page) return p.data!.readBigUInt64LE(Number(addr - page));
  throw new Error(`0x${addr.toString(16)} is not in the epoch`);
}

/** The descriptor of the target that has `path` open. */
function fdOf(pid: number, path: string): number {
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try { if (readlinkSync(`/proc/${pid}/fd/${fd}`) === path) return Number(fd); } catch { /* closed meanwhile */ }
  }
  throw new Error(`${pid} has no descriptor for ${path}`);
}

function fileState(pid: number, path: string): { fd: number; pos: bigint; size: bigint } {
  const fd = fdOf(pid, path);
  const pos = BigInt(/^pos:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]!);
  return { fd, pos, size: BigInt(statSync(path).size) };
}

/** Every page of the epoch compared with the (stopped) restored process's memory. */
function compareMemory(pid: number, c: CapturedEpoch): { pages: number; differing: bigint[] } {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  const b = Buffer.alloc(4096);
  const differing: bigint[] = [];
  let pages = 0;
  try {
    for (const p of pagesFromRanges(c.ranges, c.pages)) {
      readSync(fd, b, 0, 4096, p.addr);
      pages++;
      if (!b.equals(p.data!)) differing.push(p.addr);
    }
  } finally {
    closeSync(fd);
  }
  return { pages, differing };
}

async function expectBuildError(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e, 'the build should have failed').toBeInstanceOf(ImageBuildError);
  expect((e as ImageBuildError).code).toBe(code);
  expect((e as Error).message).toMatch(message);
}

/** Checks the running restored counter: invariant, progress, clocks. */
async function checkRunning(port: number, c: CapturedEpoch, fromCounter: bigint): Promise<void> {
  expect(await query(port, 'check')).toMatch(/^ok checked=\d+/);
  const a = await query(port, 'get');
  // The main thread's poll(2) that the epoch interrupted held a value in ymm8 (both halves):
  // it came back intact, from the epoch's XSAVE area and not the base's.
  expect(field(a, 'ymm_bad')).toBe(0n);
  expect(field(a, 'paused')).toBe(0n);
  await sleep(300);
  const b = await query(port, 'get');
  // It runs on: the writers write, the 10 ms ticker ticks (a clock that went backwards would
  // stall it for as long as it went back).
  expect(field(b, 'counter')).toBeGreaterThan(field(a, 'counter'));
  expect(field(a, 'counter')).toBeGreaterThanOrEqual(fromCounter);
  expect(field(b, 'ticks') - field(a, 'ticks')).toBeGreaterThanOrEqual(10n);
  if (HAS_AVX) expect(field(b, 'ymm_checks')).toBeGreaterThan(field(a, 'ymm_checks'));
  expect(field(b, 'ymm_bad')).toBe(0n);
  const slept = field(await query(port, 'sleep 50'), 'slept_ns');
  expect(slept).toBeGreaterThanOrEqual(45_000_000n);
  expect(slept).toBeLessThan(1_000_000_000n);
  // CLOCK_MONOTONIC continues from the epoch's, not the base's.
  const mono = field(await query(port, 'clocks'), 'mono');
  const sinceCapture = BigInt(Date.now() - c.capturedAt) * 1_000_000n;
  expect(mono).toBeGreaterThan(c.state.clocks.monotonicNs);
  expect(mono - c.state.clocks.monotonicNs).toBeLessThan(sinceCapture + 2_000_000_000n);
  expect(await query(port, 'check')).toMatch(/^ok checked=\d+/);
}

// ---------------------------------------------------------------------------------------

describe('buildEpochImage + criu restore', () => {
  it('restores a later epoch of a running 3-thread process: same memory, registers, counter and clocks', async () => {
    const dataPath = join(work, 'a.data');
    const c = await startCounter('a', ['--pages', '4096', '--writers', '2', '--file', join(work, 'a.map'), '--data', dataPath]);
    const tracker = await Tracker.attach(c.pid);
    trackers.add(tracker);
    await sleep(100);
    await dumpBase(c.pid, join(work, 'a-base'));
    const baseCounter = field(await query(c.port, 'get'), 'counter');
    await query(c.port, 'fwrite 4');
    await query(c.port, 'data 5000'); // the data file grows: its size in files.img must follow
    await sleep(400);
    const epoch = await capture(tracker); // writers running: a snapshot in mid-flight
    const files = [fileState(c.pid, dataPath)];
    await tracker.close();
    trackers.delete(tracker);
    const epochCounter = u64At(epoch, c.counterAddr);
    expect(epochCounter).toBeGreaterThan(baseCounter + 1000n);
    expect(epoch.state.threads).toHaveLength(3);
    await killAndWait(c);

    const out = join(shm, 'a');
    const r = await buildEpochImage({ baseDir: join(work, 'a-base'), outDir: out, state: epoch.state, pages: pagesFromRanges(epoch.ranges, epoch.pages), files });
    expect(r.threads).toEqual(epoch.state.threads.map((t) => t.tid).sort((x, y) => x - y));
    expect(r.pages.fromSource + r.pages.zeroOmitted).toBe(epoch.pages.length / 4096);
    expect(r.pages.outside).toBe(0);
    expect(r.files.patched).toBeGreaterThanOrEqual(1); // the data file (and /dev/null's entries)
    expect(r.files.skipped).toEqual([]);
    for (const k of ['copyMs', 'coresMs', 'mmMs', 'pagesMs', 'filesMs', 'timensMs', 'totalMs'] as const) expect(r.timings[k]).toBeGreaterThanOrEqual(0);

    await restore(out, c.pid, ['--leave-stopped']);
    // Stopped right after restore: the memory is the epoch's, page for page, except the
    // kernel's per-thread rseq areas (cpu_id, mm_cid: rewritten when a thread is scheduled).
    const mem = compareMemory(c.pid, epoch);
    expect(mem.pages).toBe(epoch.pages.length / 4096);
    expect(mem.differing.length).toBeLessThanOrEqual(epoch.state.threads.length);
    const arrayEnd = c.region + BigInt(c.pages) * PAGE;
    expect(mem.differing.filter((a) => a >= c.region && a < arrayEnd)).toEqual([]);
    expect(readMem(c.pid, c.counterAddr, 8).readBigUInt64LE(0)).toBe(epochCounter);
    // Registers: exactly the captured ones (orig_ax reads -1 after the restorer's sigreturn).
    const check = await Tracker.attach(c.pid);
    trackers.add(check);
    const now = await check.epoch({ pages: false, layout: false });
    await check.close();
    trackers.delete(check);
    expect(now.threads.map((t) => t.tid).sort((x, y) => x - y)).toEqual(r.threads);
    for (const t of now.threads) {
      const was = epoch.state.threads.find((x) => x.tid === t.tid)!;
      expect(was, `thread ${t.tid}`).toBeDefined();
      for (let i = 0; i < 27; i++) if (i !== 15) expect(t.gpregs.readBigUInt64LE(i * 8), `thread ${t.tid} register #${i}`).toBe(was.gpregs.readBigUInt64LE(i * 8));
      expect(t.xsave.equals(was.xsave), `thread ${t.tid} XSAVE`).toBe(true);
      expect(t.sigmask).toBe(was.sigmask);
    }
    process.kill(c.pid, 'SIGCONT');
    await checkRunning(c.port, epoch, epochCounter);
    // The data file's offset is the epoch's: the next write lands after it.
    expect(field(await query(c.port, 'data 1'), 'pos')).toBe(files[0]!.pos + 1n);
  });

  it('restores an epoch whose layout changed since the base (splits, new mappings, brk, a new file mapping)', async () => {
    const dataPath = join(work, 'b.data');
    const c = await startCounter('b', ['--pages', '2048', '--file', join(work, 'b.map'), '--file-pages', '48', '--data', dataPath, '--file2', join(work, 'b.map2')]);
    const tracker = await Tracker.attach(c.pid);
    trackers.add(tracker);
    await sleep(100);
    await dumpBase(c.pid, join(work, 'b-base'));
    const baseMaps = readFileSync(`/proc/${c.pid}/maps`, 'utf8');
    expect(await query(c.port, 'mmap 300')).toMatch(/^ok id=0/);
    expect(await query(c.port, 'munmap-mid 0')).toMatch(/^ok/); // the new mapping splits
    expect(await query(c.port, 'brk 2097152')).toMatch(/^ok/);  // the heap grows 2 MiB
    expect(await query(c.port, 'fwrite 5')).toMatch(/^ok wrote=5/); // private file pages written
    expect(await query(c.port, 'funmap-mid')).toMatch(/^ok/);   // the file mapping splits
    expect(await query(c.port, 'map2')).toMatch(/^ok/);         // a file the base never mapped
    await query(c.port, 'data 10000');
    // Descriptors: the data file is closed and a log opened since the base; the builder
    // reconciles the epoch's descriptor table (state.fds) with the base's.
    const dataFd = fdOf(c.pid, dataPath);
    expect(await query(c.port, 'closedata')).toBe('ok');
    const logPath = join(work, 'b.log');
    const logFd = Number(field(await query(c.port, `logopen ${logPath}`), 'fd'));
    const logPos = field(await query(c.port, 'logwrite'), 'pos');
    await sleep(300);
    const paused = field(await query(c.port, 'pause'), 'counter');
    const epoch = await capture(tracker);
    const epochMaps = readFileSync(`/proc/${c.pid}/maps`, 'utf8');
    expect(epochMaps).not.toBe(baseMaps);
    await tracker.close();
    trackers.delete(tracker);
    expect(u64At(epoch, c.counterAddr)).toBe(paused);
    await killAndWait(c);

    // This time the page source is a lookup by address.
    const byAddr = new Map<bigint, Buffer>();
    for (const p of pagesFromRanges(epoch.ranges, epoch.pages)) byAddr.set(p.addr, p.data!);
    const out = join(shm, 'b');
    const r = await buildEpochImage({ baseDir: join(work, 'b-base'), outDir: out, state: epoch.state, pages: (a) => byAddr.get(a) });
    expect(r.vmas).toBeGreaterThan(0);
    expect(r.files.added).toBe(2); // files.img learnt b.map2 (a mapping) and b.log (a descriptor)
    expect(r.files.closedFds).toEqual([dataFd]);
    expect(r.files.addedFds).toEqual([logFd]);
    expect(r.files.missing).toEqual([]);

    await restore(out, c.pid);
    const after = await query(c.port, 'get');
    expect(field(after, 'counter')).toBe(paused); // the epoch's counter, not the base's
    expect(field(after, 'paused')).toBe(1n);
    expect(await query(c.port, 'check')).toMatch(/^ok/);
    // The restored layout is the epoch's (CRIU merges [vvar] and [vvar_vclock] into one
    // VMA and maps them itself: compare the rest).
    // Adjacent VMAs with the same permissions are coalesced first: the kernel merges on
    // restore what uffd-wp registration kept apart (the heap and its brk growth).
    const layout = (maps: string): string[] => {
      const out: Array<[bigint, bigint, string]> = [];
      for (const l of maps.trim().split('\n')) {
        if (/\[(vvar|vvar_vclock|vdso|vsyscall)\]/.test(l)) continue;
        const [range, perms] = l.split(/\s+/) as [string, string];
        const [s, e] = range.split('-').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
        const last = out[out.length - 1];
        if (last && last[1] === s && last[2] === perms) last[1] = e;
        else out.push([s, e, perms]);
      }
      return out.map(([s, e, p]) => `${s.toString(16)}-${e.toString(16)} ${p}`);
    };
    expect(layout(readFileSync(`/proc/${c.pid}/maps`, 'utf8'))).toEqual(layout(epochMaps));
    expect(await query(c.port, 'resume')).toBe('ok');
    await checkRunning(c.port, epoch, paused);
    expect(readlinkSync(`/proc/${c.pid}/fd/${logFd}`)).toBe(logPath);
    expect(existsSync(`/proc/${c.pid}/fd/${dataFd}`)).toBe(false);
    expect(field(await query(c.port, 'logwrite'), 'pos')).toBe(logPos + 6n);
  });

  it('restores an epoch after a connection the base holds was closed (its socket entry goes too)', async () => {
    const c = await startCounter('k', ['--pages', '64']);
    const tracker = await Tracker.attach(c.pid);
    trackers.add(tracker);
    // A client connects and says nothing yet: the counter holds the accepted connection
    // (it waits up to 2 s for the command) while the base is dumped.
    const sockets = (): number[] => readdirSync(`/proc/${c.pid}/fd`).map(Number).filter((fd) => /^socket:/.test(readlinkSync(`/proc/${c.pid}/fd/${fd}`)));
    const before = sockets();
    const client = net.connect(c.port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
    await sleep(50);
    const connFd = sockets().find((fd) => !before.includes(fd));
    expect(connFd, 'the accepted connection').toBeDefined();
    await dumpBase(c.pid, join(work, 'k-base'), ['--tcp-established']);
    const reply = new Promise<string>((resolve) => { let b = ''; client.on('data', (d) => { b += d; }).on('close', () => resolve(b)); });
    client.end('get\n');
    expect(await reply).toMatch(/^counter=/); // answered and closed: the epoch no longer has that descriptor
    const paused = field(await query(c.port, 'pause'), 'counter');
    const epoch = await capture(tracker);
    await tracker.close();
    trackers.delete(tracker);
    await killAndWait(c);

    const out = join(shm, 'k');
    const byAddr = new Map<bigint, Buffer>();
    for (const p of pagesFromRanges(epoch.ranges, epoch.pages)) byAddr.set(p.addr, p.data!);
    const r = await buildEpochImage({ baseDir: join(work, 'k-base'), outDir: out, state: epoch.state, pages: (a) => byAddr.get(a) });
    expect(r.files.closedFds).toEqual([connFd]);
    expect(r.files.removedSockets).toBe(1);
    // Left in files.img, that socket counted as a user of the listening port, and criu
    // restore waited for it to be opened, for ever.
    const socketEntries = parseImage(await readFile(join(out, 'files.img'))).entries.map((e) => Message.parse(e)).filter((m) => m.getUint(1) === 4n);
    expect(socketEntries.length).toBe(1); // the listening socket
    await restore(out, c.pid, ['--tcp-close']);
    expect(field(await query(c.port, 'get'), 'counter')).toBe(paused);
    expect(await query(c.port, 'check')).toMatch(/^ok/);
  });
});

describe('buildEpochImage + criu restore: an epoll server', () => {
  it('restores a Node.js server after a client it had at the base disconnected (epoll forgets it too)', async () => {
    // Node.js waits in epoll: the base's eventpoll entry lists the client's descriptor;
    // CRIU would re-add it at restore and fail (EBADF) on a descriptor the epoch no longer has.
    const statusFile = join(work, 'ep.status');
    const script = join(work, 'ep-server.cjs');
    await writeFile(script, `
      const net = require('node:net');
      const fs = require('node:fs');
      let served = 0;
      const srv = net.createServer((c) => c.on('data', () => { served++; c.write('served=' + served + '\\n'); }));
      srv.listen(0, '127.0.0.1', () => fs.writeFileSync(${JSON.stringify(statusFile)}, String(srv.address().port)));
    `);
    const proc = await startNodeTarget(script, statusFile);
    const port = Number(readFileSync(statusFile, 'utf8'));
    const ask = (sock: net.Socket): Promise<string> => new Promise((resolve) => { sock.once('data', (d) => resolve(d.toString().trim())); sock.write('x\n'); });
    const tracker = await Tracker.attach(proc.pid);
    trackers.add(tracker);
    const held = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => held.once('connect', resolve).once('error', reject));
    expect(await ask(held)).toBe('served=1');
    await dumpBase(proc.pid, join(work, 'ep-base'), ['--tcp-established']);
    held.destroy();
    const other = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => other.once('connect', resolve));
    expect(await ask(other)).toBe('served=2');
    other.destroy();
    await sleep(200); // the server has closed both descriptors
    const epoch = await capture(tracker);
    await tracker.close();
    trackers.delete(tracker);
    process.kill(proc.pid, 'SIGKILL');
    await proc.exited;
    for (let i = 0; existsSync(`/proc/${proc.pid}`); i++) {
      if (i > 2000) throw new Error(`/proc/${proc.pid} still there`);
      await sleep(5);
    }

    const out = join(shm, 'ep');
    const byAddr = new Map<bigint, Buffer>();
    for (const p of pagesFromRanges(epoch.ranges, epoch.pages)) byAddr.set(p.addr, p.data!);
    const r = await buildEpochImage({ baseDir: join(work, 'ep-base'), outDir: out, state: epoch.state, pages: (a) => byAddr.get(a) });
    expect(r.files.closedFds.length).toBeGreaterThanOrEqual(1);
    expect(r.files.epollTargetsRemoved).toBeGreaterThanOrEqual(1); // the held client's descriptor
    await restore(out, proc.pid, ['--tcp-close']);
    const again = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => again.once('connect', resolve).once('error', reject));
    expect(await ask(again)).toBe('served=3'); // the epoch's count, and it serves
    again.destroy();
  });
});

describe('base image dumps', () => {
  it('a client on a unix stream socket makes the dump fail with what to do about it', async () => {
    const sock = join(work, 'u.sock');
    const ready = join(work, 'u.ready');
    const script = join(work, 'u-server.cjs');
    await writeFile(script, `
      const net = require('node:net');
      const fs = require('node:fs');
      net.createServer((c) => c.on('data', () => c.write('ok\\n'))).listen(${JSON.stringify(sock)}, () => fs.writeFileSync(${JSON.stringify(ready)}, 'up'));
    `);
    const proc = await startNodeTarget(script, ready);
    const client = net.connect(sock);
    try {
      await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
      await mkdir(join(work, 'u-base'), { recursive: true });
      const err = await criuDump({ criu, pid: proc.pid, dir: join(work, 'u-base') }).then(() => null, (e: unknown) => e as Error);
      expect(err?.message).toMatch(/half of stream unix connection/);
      expect(err?.message).toMatch(/disconnect that client \(or let it use TCP\)/);
      expect(readFileSync(`/proc/${proc.pid}/status`, 'utf8')).not.toMatch(/State:\s+T/); // left running
    } finally {
      client.destroy();
    }
  });
});

describe('buildEpochImage errors', () => {
  let c: Counter;
  let epoch: CapturedEpoch;
  let base = '';

  beforeAll(async () => {
    c = await startCounter('c', ['--pages', '256'], true);
    base = join(work, 'c-base');
    const tracker = await Tracker.attach(c.pid);
    try {
      await dumpBase(c.pid, base);
      await sleep(50);
      epoch = await capture(tracker);
    } finally {
      await tracker.close();
    }
  });

  afterAll(async () => {
    if (c) {
      try { process.kill(c.pid, 'SIGKILL'); } catch { /* gone */ }
      await c.proc.exited;
    }
  });

  const outDir = async (name: string): Promise<string> => {
    const d = join(shm, name);
    await rm(d, { recursive: true, force: true });
    return d;
  };

  it('reads and writes back every base image byte for byte', async () => {
    for (const n of readdirSync(base).filter((f) => f.endsWith('.img') && !f.startsWith('pages-'))) {
      const buf = await readFile(join(base, n));
      const img = parseImage(buf, n);
      expect(serializeImage(img).equals(buf), n).toBe(true);
      for (const e of img.entries) expect(Message.parse(e).serialize().equals(e), n).toBe(true);
    }
  });

  it('builds from the same base with pages left to the base (no page source)', async () => {
    const r = await buildEpochImage({ baseDir: base, outDir: await outDir('c-nopages'), state: epoch.state });
    expect(r.pages.fromSource).toBe(0);
    expect(r.pages.fromBase).toBeGreaterThan(0);
  });

  it('the three forms of page source (iterable, async iterable, lookup) give the same image', async () => {
    const outs = [await outDir('c-sync'), await outDir('c-async'), await outDir('c-lookup')];
    const byAddr = new Map<bigint, Buffer>();
    for (const p of pagesFromRanges(epoch.ranges, epoch.pages)) byAddr.set(p.addr, p.data!);
    async function* asyncPages(): AsyncGenerator<PageEntry> {
      for (const p of pagesFromRanges(epoch.ranges, epoch.pages)) yield p;
    }
    const results = [
      await buildEpochImage({ baseDir: base, outDir: outs[0]!, state: epoch.state, pages: pagesFromRanges(epoch.ranges, epoch.pages) }),
      await buildEpochImage({ baseDir: base, outDir: outs[1]!, state: epoch.state, pages: asyncPages() }),
      await buildEpochImage({ baseDir: base, outDir: outs[2]!, state: epoch.state, pages: (a) => byAddr.get(a) }),
    ];
    expect(results[1]!.pages).toEqual(results[0]!.pages);
    expect(results[2]!.pages).toEqual(results[0]!.pages);
    for (const n of readdirSync(outs[0]!)) {
      const want = await readFile(join(outs[0]!, n));
      for (const o of outs.slice(1)) expect((await readFile(join(o, n))).equals(want), `${n} in ${o}`).toBe(true);
    }
  });

  it('reconciles the descriptor table with the epoch\'s: closed, reused, new and impossible descriptors', async () => {
    const fds = epoch.state.fds;
    expect(fds.map((f) => f.fd)).toEqual(expect.arrayContaining([0, 1, 2]));
    const other = join(work, 'c.other');
    await writeFile(other, 'x'.repeat(123));
    const changed = [
      { ...fds.find((f) => f.fd === 0)!, target: other, size: 123, pos: 7n, flags: 0o2 }, // fd 0 reused for another file
      ...fds.filter((f) => f.fd !== 0 && f.fd !== 1),                                     // fd 1 closed
      { fd: 90, target: other, pos: 3n, flags: 0o2 | 0o2000000, size: 123, kind: '' },    // new, close-on-exec
      { fd: 91, target: 'socket:[1]', pos: 0n, flags: 2, size: -1, kind: 'tcp' },         // new, cannot be made
    ];
    const out = await outDir('c-fds');
    const r = await buildEpochImage({ baseDir: base, outDir: out, state: { ...epoch.state, fds: changed } });
    expect(r.files.closedFds.sort((a, b) => a - b)).toEqual([0, 1]);
    expect(r.files.addedFds.sort((a, b) => a - b)).toEqual([0, 90]);
    expect(r.files.missing).toEqual(['fd 91 (socket:[1])']);
    expect(r.notes.join('\n')).toMatch(/fd 91 \(socket:\[1\]\)/);
    // The images say so: fd 90 -> a new regular file at offset 3, size 123, FD_CLOEXEC.
    const fdinfoName = readdirSync(out).find((n) => /^fdinfo-\d+\.img$/.test(n))!;
    const rows = parseImage(await readFile(join(out, fdinfoName))).entries.map((e) => Message.parse(e));
    expect(rows.map((m) => Number(m.getUint(4)))).toEqual([...changed.map((f) => f.fd)].filter((fd) => fd !== 91).sort((a, b) => a - b));
    const row90 = rows.find((m) => m.getUint(4) === 90n)!;
    expect(row90.getUint(2)).toBe(1n);
    const file90 = parseImage(await readFile(join(out, 'files.img'))).entries.map((e) => Message.parse(e)).find((m) => m.getUint(2) === row90.getUint(1))!;
    const reg = file90.getMessage(3)!;
    expect([reg.getString(6), reg.getUint(3), reg.getUint(8), reg.getUint(2)]).toEqual([other, 3n, 123n, 2n]);
  });

  it('a missing base, or a missing file in it, is BASE_MISSING', async () => {
    await expectBuildError(buildEpochImage({ baseDir: join(work, 'nope'), outDir: await outDir('c1'), state: epoch.state }),
      'BASE_MISSING', /cannot read the base image directory .*nope/);
    const partial = join(work, 'c-partial');
    await cp(base, partial, { recursive: true });
    await unlink(join(partial, `mm-${c.pid}.img`));
    await expectBuildError(buildEpochImage({ baseDir: partial, outDir: await outDir('c2'), state: epoch.state }),
      'BASE_MISSING', new RegExp(`no mm-${c.pid}\\.img`));
    await unlink(join(partial, `core-${epoch.state.threads[1]!.tid}.img`));
    await expectBuildError(buildEpochImage({ baseDir: partial, outDir: await outDir('c3'), state: epoch.state }),
      'BASE_MISSING', new RegExp(`no core-${epoch.state.threads[1]!.tid}\\.img`));
  });

  it('a corrupt base image is BASE_INVALID', async () => {
    const bad = join(work, 'c-bad');
    await cp(base, bad, { recursive: true });
    await writeFile(join(bad, `mm-${c.pid}.img`), Buffer.from('not an image at all'));
    await expectBuildError(buildEpochImage({ baseDir: bad, outDir: await outDir('c4'), state: epoch.state }),
      'BASE_INVALID', /not a CRIU protobuf image/);
  });

  it('a thread set different from the base is REBASE_NEEDED', async () => {
    expect(await query(c.port, 'thread')).toBe('ok');
    const tracker = await Tracker.attach(c.pid);
    let later: CapturedEpoch;
    try {
      later = await capture(tracker);
    } finally {
      await tracker.close();
    }
    expect(later.state.threads).toHaveLength(epoch.state.threads.length + 1);
    await expectBuildError(buildEpochImage({ baseDir: base, outDir: await outDir('c5'), state: later.state, pages: pagesFromRanges(later.ranges, later.pages) }),
      'REBASE_NEEDED', /the thread set changed since the base image \(re-base needed\).*new: \d+/);
    const fewer = { ...epoch.state, threads: epoch.state.threads.slice(0, 1) };
    await expectBuildError(buildEpochImage({ baseDir: base, outDir: await outDir('c6'), state: fewer }),
      'REBASE_NEEDED', /the thread set changed since the base image \(re-base needed\).*gone: \d+/);
  });

  it('source pages outside every VMA are ignored and counted, or refused with strictPages', async () => {
    const stray: PageEntry = { addr: 0x1000n, data: Buffer.alloc(4096, 7) }; // below every mapping
    const withStray = (): Iterable<PageEntry> => [stray, ...pagesFromRanges(epoch.ranges, epoch.pages)];
    const r = await buildEpochImage({ baseDir: base, outDir: await outDir('c7'), state: epoch.state, pages: withStray() });
    expect(r.pages.outside).toBe(1);
    const strictOut = await outDir('c8');
    await expectBuildError(buildEpochImage({ baseDir: base, outDir: strictOut, state: epoch.state, pages: withStray(), strictPages: true }),
      'INVALID_PAGES', /page 0x1000 is outside every VMA/);
    expect(readdirSync(strictOut)).toEqual([]); // what the failed build wrote is gone
  });

  it('a malformed page source or state is refused with a clear message', async () => {
    const pages = [...pagesFromRanges(epoch.ranges, epoch.pages)];
    await expectBuildError(buildEpochImage({ baseDir: base, outDir: await outDir('c9'), state: epoch.state, pages: [...pages].reverse() }),
      'INVALID_PAGES', /strictly ascending/);
    await expectBuildError(buildEpochImage({ baseDir: base, outDir: await outDir('c10'), state: epoch.state, pages: [{ addr: pages[0]!.addr, data: Buffer.alloc(100) }] }),
      'INVALID_PAGES', /has 100 bytes, expected 4096/);
    await expectBuildError(buildEpochImage({ baseDir: base, outDir: await outDir('c11'), state: { ...epoch.state, pid: epoch.state.pid + 1 } }),
      'INVALID_STATE', /epoch is of PID \d+ but the base image is of PID \d+/);
    const full = await outDir('c12');
    await mkdir(full);
    await writeFile(join(full, 'x'), 'x');
    await expectBuildError(buildEpochImage({ baseDir: base, outDir: full, state: epoch.state }), 'OUTPUT', /is not empty/);
  });
});

describe('protobuf wire format', () => {
  it('encodes and decodes varints, 64-bit and negative ones included', () => {
    for (const v of [0n, 1n, 127n, 128n, 300n, 2n ** 32n, 2n ** 63n, 2n ** 64n - 1n]) {
      const b = encodeVarint(v);
      expect(readVarint(b, 0)).toEqual([v, b.length]);
    }
    expect(encodeVarint(-1n).length).toBe(10); // int64 -1: ten bytes, two's complement
    expect(() => readVarint(Buffer.from([0x80, 0x80]), 0)).toThrow(/truncated varint/);
  });

  it('keeps every field it does not touch, in place, and writes zeros (proto2 required)', () => {
    // field 1 varint (non-minimal: 0x81 0x00 = 1), field 9 fixed64, field 2 bytes, field 5 fixed32, field 3 x2
    const raw = Buffer.concat([
      Buffer.from([0x08, 0x81, 0x00]),
      Buffer.from([0x49, 1, 2, 3, 4, 5, 6, 7, 8]),
      lenField(2, Buffer.from('abc')).raw,
      Buffer.from([0x2d, 9, 9, 9, 9]),
      varintField(3, 7).raw, varintField(3, 8).raw,
    ]);
    const m = Message.parse(raw);
    expect(m.serialize().equals(raw)).toBe(true);
    expect(m.getUint(1)).toBe(1n);
    expect(m.getRepeatedVarint(3)).toEqual([7n, 8n]);
    m.setUint(4, 0); // absent field 4: inserted before the first field with a higher number (9)
    m.setRepeatedVarint(3, [0n, 1n, 2n]);
    expect(m.fields.map((f) => f.no)).toEqual([1, 4, 9, 2, 5, 3, 3, 3]);
    expect(m.get(4)!.raw.equals(Buffer.from([0x20, 0x00]))).toBe(true);
    // The untouched fields are byte-identical (the non-minimal varint too).
    expect(m.fields[0]!.raw.equals(Buffer.from([0x08, 0x81, 0x00]))).toBe(true);
    expect(Message.parse(m.serialize()).getRepeatedVarint(3)).toEqual([0n, 1n, 2n]);
  });
});

describe('XSAVE layout', () => {
  it.skipIf(!existsSync('/dev/cpu/0/cpuid'))('the vendor table (the fallback) agrees with CPUID leaf 0xD on this CPU', () => {
    const cpuid = readCpuidXsaveLayout(0);
    const vendor = /^vendor_id\s*:\s*(\S+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))![1]!;
    let xcr0 = 3n; // x87 and SSE, plus every component CPUID reports
    for (const f of Object.keys(cpuid.components)) xcr0 |= 1n << BigInt(f);
    expect(vendorXsaveLayout(vendor, xcr0).components).toEqual(cpuid.components);
    expect(cpuid.components[2]).toEqual({ offset: 576, size: 256 }); // AVX: the same everywhere
  });
});
