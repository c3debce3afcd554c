// Lazy (userfaultfd post-copy) restore with pages served by our own page server
// (src/criu/lazy): the protocol against a fake daemon, then end to end with real CRIU.
//
// End to end: test/targets/lazytarget (a pattern in N MiB of anonymous memory and a 256 KiB
// heap buffer, a writer thread rewriting random words, commands over TCP) is dumped with
// `criu dump`, which kills it; the image is rewritten so that every page CRIU may restore
// lazily is a LAZY-only pagemap entry (its data only in the renamed old pages file, which
// our page server reads); then `criu lazy-pages --page-server` and `criu restore
// --lazy-pages`. The restored process must answer, verify every word of its memory, keep
// running, and every lazy page must have gone through our server exactly once.
//
// Processes: the target and `criu restore` run under the keeper (the restored process is
// criu's child); the lazy-pages daemon is our child. All are killed by PID after each test.
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { locateCriu } from '../src/criu/locate.js';
import {
  HEADER_SIZE, LazyPageServer, PAGE_SIZE, PE_LAZY, PE_PRESENT, PsCmd, RunsPageSource, bufferRun, decodeHeader, encodeHeader,
  fileRun, lazifyImage, lazyRestoreArgs, lookupPageSource, startLazyPagesDaemon, type LazyPageSource, type LazyPagesDaemon,
} from '../src/criu/lazy/index.js';
import { Magic, Message, readImage } from '../src/criu/image/index.js';
import { spawnTarget, type SpawnedTarget } from '../src/spawn/spawn-target.js';
import { targetPath } from './helpers/build-targets.js';

const run = promisify(execFile);
const PAGE = BigInt(PAGE_SIZE);

let criu = '';
let work = '';
const pidsToKill = new Set<number>();
const keepers = new Set<SpawnedTarget>();
const daemons = new Set<LazyPagesDaemon>();
const servers = new Set<LazyPageServer>();
const fds = new Set<number>();
const sockets = new Set<net.Socket>();

beforeAll(async () => {
  criu = (await locateCriu()).path;
  // Images on a tmpfs, as a standby would keep them.
  work = await mkdtemp(existsSync('/dev/shm') ? '/dev/shm/rr-lazy-' : join(tmpdir(), 'rr-lazy-'));
});

afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  for (const pid of pidsToKill) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  pidsToKill.clear();
  await Promise.all([...daemons].map((d) => d.stop()));
  daemons.clear();
  await Promise.all([...servers].map((s) => s.close()));
  servers.clear();
  await Promise.all([...keepers].map((k) => Promise.race([k.exited, sleep(10_000)])));
  keepers.clear();
  for (const fd of fds) { try { closeSync(fd); } catch { /* closed */ } }
  fds.clear();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------
// A fake lazy-pages daemon: a client speaking the daemon's side of the protocol.

interface Answer { header: ReturnType<typeof decodeHeader>; data: Buffer }

class FakeDaemon {
  readonly sock: net.Socket;
  #buf = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  closed = false;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sockets.add(sock);
    sock.on('data', (d: Buffer) => { this.#buf = Buffer.concat([this.#buf, d]); this.#wake(); });
    sock.on('close', () => { this.closed = true; this.#wake(); });
    sock.on('error', () => undefined);
  }

  static connect(port: number): Promise<FakeDaemon> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new FakeDaemon(s)));
      s.once('error', reject);
    });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  async #take(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.#buf.length} of ${n} bytes`);
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return Buffer.from(out);
  }

  send(cmd: number, nrPages: bigint, vaddr: bigint, dstId: bigint, flags = 0): void {
    this.sock.write(encodeHeader({ cmd, flags, nrPages, vaddr, dstId }));
  }

  async answer(): Promise<Answer> {
    const header = decodeHeader(await this.#take(HEADER_SIZE));
    return { header, data: await this.#take(Number(header.nrPages) * PAGE_SIZE) };
  }

  async status(): Promise<number> {
    return (await this.#take(4)).readInt32LE(0);
  }

  async closedByPeer(): Promise<boolean> {
    for (let i = 0; i < 200 && !this.closed; i++) await sleep(10);
    return this.closed;
  }
}

/** A page whose every byte says where it is: byte i of page at A is (A/4096 + i) & 255, never all zero. */
function pageAt(addr: bigint): Buffer {
  const b = Buffer.alloc(PAGE_SIZE);
  const base = Number((addr / PAGE) & 0xffn);
  for (let i = 0; i < PAGE_SIZE; i++) b[i] = (base + i) & 0xff || 1;
  return b;
}

describe('LazyPageServer: the protocol', () => {
  it('uses the 32-byte header of struct page_server_iov (u32 cmd|flags<<16, pad, u64 nr_pages, vaddr, dst_id; host order)', () => {
    const b = encodeHeader({ cmd: PsCmd.ADD_F, flags: PE_PRESENT, nrPages: 3n, vaddr: 0x7f0000001000n, dstId: 1234n });
    expect(b.length).toBe(32);
    expect(b.readUInt32LE(0)).toBe(0x40006);
    expect(b.readUInt32LE(4)).toBe(0);
    expect(b.readBigUInt64LE(8)).toBe(3n);
    expect(b.readBigUInt64LE(16)).toBe(0x7f0000001000n);
    expect(b.readBigUInt64LE(24)).toBe(1234n);
    expect(decodeHeader(b)).toEqual({ cmd: PsCmd.ADD_F, flags: PE_PRESENT, nrPages: 3n, vaddr: 0x7f0000001000n, dstId: 1234n });
  });

  it('answers pipelined GETs in order, per process, with zeros where the source has nothing, and CLOSE with status 0', async () => {
    const A = 0x7f0000000000n;
    // pid 100: pages A+0..A+3 and A+8; pid 200: one page at A.
    const runs = new Map([
      [100, [bufferRun(A, Buffer.concat([0, 1, 2, 3].map((i) => pageAt(A + BigInt(i) * PAGE)))), bufferRun(A + 8n * PAGE, pageAt(A + 8n * PAGE))]],
      [200, [bufferRun(A, Buffer.alloc(PAGE_SIZE, 0xee))]],
    ]);
    const server = await LazyPageServer.listen({ source: new RunsPageSource(runs), chunkPages: 2 });
    servers.add(server);
    const d = await FakeDaemon.connect(server.port);
    // Three requests at once, as the daemon does with a background request in flight and faults.
    d.send(PsCmd.GET, 10n, A, 100n);
    d.send(PsCmd.GET, 1n, A + 8n * PAGE, 100n);
    d.send(PsCmd.GET, 1n, A, 200n);
    const a1 = await d.answer();
    expect(a1.header).toEqual({ cmd: PsCmd.ADD_F, flags: PE_PRESENT, nrPages: 10n, vaddr: A, dstId: 100n });
    for (let i = 0; i < 10; i++) {
      const page = a1.data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
      const addr = A + BigInt(i) * PAGE;
      if (i <= 3 || i === 8) expect(page.equals(pageAt(addr)), `page ${i}`).toBe(true);
      else expect(page.equals(Buffer.alloc(PAGE_SIZE)), `page ${i} is zeros`).toBe(true);
    }
    const a2 = await d.answer();
    expect(a2.header).toEqual({ cmd: PsCmd.ADD_F, flags: PE_PRESENT, nrPages: 1n, vaddr: A + 8n * PAGE, dstId: 100n });
    expect(a2.data.equals(pageAt(A + 8n * PAGE))).toBe(true);
    const a3 = await d.answer();
    expect(a3.header.dstId).toBe(200n);
    expect(a3.data.equals(Buffer.alloc(PAGE_SIZE, 0xee))).toBe(true);
    d.send(PsCmd.CLOSE, 0n, 0n, 0n);
    expect(await d.status()).toBe(0);
    await server.finished;
    expect(server.stats).toMatchObject({ connections: 1, requests: 3, singlePageRequests: 2, pagesServed: 12, largestRequest: 10, closes: 1, errors: 0 });
  });

  it('serves a per-page lookup (a page store) and an async source', async () => {
    const A = 0x10000000n;
    const store = new Map<bigint, Buffer>([[A + PAGE, pageAt(A + PAGE)]]);
    const lookup = lookupPageSource((addr) => store.get(addr) ?? null);
    const asyncSource: LazyPageSource = { read: async (addr, n, pid) => { await sleep(5); return lookup.read(addr, n, pid); } };
    for (const source of [lookup, asyncSource]) {
      const server = await LazyPageServer.listen({ source });
      servers.add(server);
      const d = await FakeDaemon.connect(server.port);
      d.send(PsCmd.GET, 2n, A, 1n);
      d.send(PsCmd.GET, 1n, A + PAGE, 1n);
      const a = await d.answer();
      expect(a.data.subarray(0, PAGE_SIZE).equals(Buffer.alloc(PAGE_SIZE))).toBe(true);
      expect(a.data.subarray(PAGE_SIZE).equals(pageAt(A + PAGE))).toBe(true);
      expect((await d.answer()).data.equals(pageAt(A + PAGE))).toBe(true);
      d.send(PsCmd.FORCE_CLOSE, 0n, 0n, 0n); // what the daemon sends on a --ps-socket
      expect(await d.status()).toBe(0);
      await server.finished;
    }
  });

  it('drops the connection on what a lazy page server cannot answer, and says so', async () => {
    const cases: Array<[string, (d: FakeDaemon) => void, RegExp]> = [
      ['zero pages', (d) => d.send(PsCmd.GET, 0n, 0x1000n, 1n), /PS_IOV_GET of 0 pages/],
      ['a huge request', (d) => d.send(PsCmd.GET, 1n << 40n, 0x1000n, 1n), /PS_IOV_GET of \d+ pages/],
      ['an unaligned address', (d) => d.send(PsCmd.GET, 1n, 0x1234n, 1n), /unaligned/],
      ['pages sent to us (a dumping CRIU)', (d) => d.send(PsCmd.OPEN2, 0n, 0n, 1n), /unexpected command PS_IOV_OPEN2/],
      ['an unknown command', (d) => d.send(0x77, 0n, 0n, 1n), /unexpected command 0x77/],
    ];
    for (const [what, send, message] of cases) {
      const errors: string[] = [];
      const server = await LazyPageServer.listen({ source: new RunsPageSource([]), onError: (e) => errors.push(e.message) });
      servers.add(server);
      const d = await FakeDaemon.connect(server.port);
      send(d);
      expect(await d.closedByPeer(), what).toBe(true);
      await expect(server.finished, what).rejects.toThrow(message);
      expect(errors, what).toHaveLength(1);
      expect(server.stats.errors, what).toBe(1);
    }
    // A source that fails, lies about the size, or does not know the process (pid 1 asked).
    for (const source of [
      { read: (): Buffer => { throw new Error('store unavailable'); } },
      { read: (): Buffer => Buffer.alloc(100) },
      new RunsPageSource(new Map([[5, [bufferRun(0x1000n, pageAt(0x1000n))]]])),
    ] satisfies LazyPageSource[]) {
      const server = await LazyPageServer.listen({ source });
      servers.add(server);
      const d = await FakeDaemon.connect(server.port);
      d.send(PsCmd.GET, 1n, 0x1000n, 1n);
      expect(await d.closedByPeer()).toBe(true);
      await expect(server.finished).rejects.toThrow(/store unavailable|source gave 100 bytes|no pages for process 1/);
    }
    // A daemon that goes away without CLOSE.
    const server = await LazyPageServer.listen({ source: new RunsPageSource([]) });
    servers.add(server);
    const d = await FakeDaemon.connect(server.port);
    d.sock.destroy();
    await expect(server.finished).rejects.toThrow(/hung up without PS_IOV_CLOSE/);
  });
});

// ---------------------------------------------------------------------------------------
// End to end with CRIU

interface Target { pid: number; port: number; pages: number; proc: SpawnedTarget }

async function startTarget(name: string, mib: number, writerUs: number): Promise<Target> {
  const status = join(work, `${name}.status`);
  const proc = await spawnTarget(targetPath('lazytarget'), ['--status', status, '--mib', String(mib), '--writer-us', String(writerUs)]);
  keepers.add(proc);
  pidsToKill.add(proc.pid);
  let gone = false;
  void proc.exited.then(() => { gone = true; });
  for (let i = 0; !existsSync(status); i++) {
    if (i > 3000 || gone) throw new Error('lazytarget did not start');
    await sleep(5);
  }
  const kv = Object.fromEntries(readFileSync(status, 'utf8').trim().split(' ').map((s) => s.split('=') as [string, string]));
  expect(Number(kv.pid)).toBe(proc.pid);
  return { pid: proc.pid, port: Number(kv.port), pages: Number(kv.pages), proc };
}

function query(port: number, cmd: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    sockets.add(s);
    let out = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no answer to '${cmd}' on port ${port}`)); }, timeoutMs);
    s.on('connect', () => s.write(`${cmd}\n`));
    s.on('data', (d) => { out += d.toString(); });
    s.on('end', () => { clearTimeout(timer); sockets.delete(s); resolve(out.trim()); });
    s.on('error', (e) => { clearTimeout(timer); sockets.delete(s); reject(e); });
  });
}

function num(reply: string, name: string): number {
  const m = new RegExp(`\\b${name}=(\\d+)`).exec(reply);
  if (!m) throw new Error(`no ${name}= in '${reply}'`);
  return Number(m[1]);
}

/** `p`, or an error after `ms` (the timer is cleared either way). */
async function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(message)), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

async function logTail(path: string, lines = 15): Promise<string> {
  try { return (await readFile(path, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n'); } catch { return '(no log)'; }
}

/** `criu dump` (which kills the target); returns once its PID is free again. */
async function dumpAndWaitGone(t: Target, dir: string): Promise<number> {
  await mkdir(dir, { recursive: true });
  const t0 = performance.now();
  try {
    await run(criu, ['dump', '-t', String(t.pid), '-D', dir, '-o', 'dump.log', '-v2'], { timeout: 120_000 });
  } catch (e) {
    throw new Error(`criu dump failed: ${(e as Error).message}\n${await logTail(join(dir, 'dump.log'))}`);
  }
  const ms = performance.now() - t0;
  await t.proc.exited;
  pidsToKill.delete(t.pid);
  for (let i = 0; existsSync(`/proc/${t.pid}`); i++) {
    if (i > 2000) throw new Error(`/proc/${t.pid} still there`);
    await sleep(5);
  }
  return ms;
}

interface LazyRun {
  server: LazyPageServer;
  daemon: LazyPagesDaemon;
  restore: SpawnedTarget;
  /** Where the image is restored from. */
  imagesDir: string;
  lazyPages: number;
  eagerPages: number;
  /** ms from starting `criu lazy-pages` to its status byte. */
  daemonReadyMs: number;
  /** ms from starting `criu restore` to the restored process's first answer. */
  firstAnswerMs: number;
  /** performance.now() when `criu restore` was started. */
  t0: number;
}

interface LazyRestoreOptions {
  /** Wraps the page source (to make it fail). */
  source?: (s: LazyPageSource) => LazyPageSource;
  /**
   * Start the daemon on `dir` holding only inventory.img and pstree.img, and move the rest of
   * the image in afterwards (as a standby would, to start it while it builds the image).
   */
  prestart?: boolean;
}

/** Lazify the image, start our server and the daemon, run `criu restore --lazy-pages`, wait for the first answer. */
async function lazyRestore(t: Target, dir: string, transport: 'tcp' | 'socketpair', o: LazyRestoreOptions = {}): Promise<LazyRun> {
  const [proc] = await lazifyImage(dir);
  expect(proc!.pid).toBe(t.pid);
  // The pagemap now has LAZY-only entries (no data) and PRESENT ones; pages-1.img holds only the latter.
  const pm = await readImage(join(dir, `pagemap-${t.pid}.img`), Magic.PAGEMAP);
  let lazyInPagemap = 0;
  let presentInPagemap = 0;
  for (const e of pm.entries.slice(1)) {
    const m = Message.parse(e);
    const flags = Number(m.getUint(4));
    expect([PE_LAZY, PE_PRESENT]).toContain(flags);
    if (flags === PE_LAZY) lazyInPagemap += Number(m.getUint(5));
    else presentInPagemap += Number(m.getUint(5));
  }
  expect(lazyInPagemap).toBe(proc!.lazyPages);
  expect(presentInPagemap).toBe(proc!.eagerPages);
  expect(readFileSync(join(dir, `pages-${proc!.pagesId}.img`)).length).toBe(proc!.eagerPages * PAGE_SIZE);
  expect(proc!.lazyPages).toBeGreaterThanOrEqual(t.pages + 64); // the region and the heap buffer at least

  const fd = openSync(proc!.sourcePages, 'r');
  fds.add(fd);
  const runs = new RunsPageSource(new Map([[proc!.pid, proc!.runs.map((r) => fileRun(fd, r.vaddr, r.pages, r.offset))]]));
  const server = await LazyPageServer.listen({ source: o.source ? o.source(runs) : runs });
  servers.add(server);
  let imagesDir = dir;
  if (o.prestart) {
    imagesDir = `${dir}.restore`;
    await mkdir(imagesDir);
    for (const f of ['inventory.img', 'pstree.img']) await rename(join(dir, f), join(imagesDir, f));
  }
  const tD = performance.now();
  const daemon = await startLazyPagesDaemon({ criu, imagesDir, transport, port: server.port });
  daemons.add(daemon);
  if (daemon.stream) server.serve(daemon.stream);
  const daemonReadyMs = performance.now() - tD;
  if (o.prestart) {
    await sleep(100); // the daemon waits, as it would while the image is being built
    for (const f of await readdir(dir)) if (f.endsWith('.img') || f.endsWith('.lazy-source')) await rename(join(dir, f), join(imagesDir, f));
  }
  const t0 = performance.now();
  const restore = await spawnTarget(criu, lazyRestoreArgs(imagesDir, ['-o', 'restore.log', '-v3']));
  keepers.add(restore);
  pidsToKill.add(t.pid);
  let exited: number | undefined;
  void restore.exited.then((c) => { exited = c; });
  // The restored process runs once it answers on its (restored) listening socket.
  for (;;) {
    try {
      await query(t.port, 'get', 2000);
      break;
    } catch {
      if (exited !== undefined || performance.now() - t0 > 20_000)
        throw new Error(`the restored process does not answer (criu restore exit ${exited ?? 'none'}):\n${await logTail(join(imagesDir, 'restore.log'))}\n--- lazy-pages:\n${await daemon.logTail()}`);
      await sleep(1);
    }
  }
  const firstAnswerMs = performance.now() - t0;
  return { server, daemon, restore, imagesDir, lazyPages: proc!.lazyPages, eagerPages: proc!.eagerPages, daemonReadyMs, firstAnswerMs, t0 };
}

/** The restore log's own time at "Restore finished successfully" (ms since criu started). */
function restoreFinishedAt(dir: string): number | undefined {
  const m = /^\((\d+\.\d+)\) Restore finished successfully/m.exec(readFileSync(join(dir, 'restore.log'), 'utf8'));
  return m ? Number(m[1]) * 1000 : undefined;
}

async function checkComplete(t: Target, r: LazyRun, label: string): Promise<void> {
  await withTimeout(r.server.finished, 120_000, 'the daemon did not finish within 120 s');
  const stats = r.server.stats;
  const code = await withTimeout(r.daemon.exited, 10_000, 'the daemon did not exit');
  expect(code, await r.daemon.logTail()).toBe(0);
  // Every lazy page went through our server, once.
  expect(stats.pagesServed).toBe(r.lazyPages);
  expect(stats.errors).toBe(0);
  expect(stats.closes).toBe(1);
  expect(stats.singlePageRequests).toBeGreaterThan(0); // faults (before the background transfer starts)
  // Every word right, and it runs on.
  const v = await query(t.port, 'verify', 30_000);
  expect(v).toMatch(/^ok /);
  expect(num(v, 'pages')).toBe(t.pages);
  const a = await query(t.port, 'get');
  await sleep(200);
  const b = await query(t.port, 'get');
  expect(num(b, 'ticks')).toBeGreaterThan(num(a, 'ticks'));
  const allServedMs = stats.lastAnswerAt! - r.t0;
  console.log(`[lazy ${label}] daemon ready ${r.daemonReadyMs.toFixed(0)} ms; restore: answers after ${r.firstAnswerMs.toFixed(0)} ms ` +
    `(criu's log: resumed at ${restoreFinishedAt(r.imagesDir)?.toFixed(0) ?? '?'} ms); every page served after ${allServedMs.toFixed(0)} ms ` +
    `(PS_IOV_CLOSE after ${(stats.closedAt! - r.t0).toFixed(0)} ms); ${stats.pagesServed} lazy pages + ${r.eagerPages} eager, ` +
    `${stats.requests} requests (${stats.singlePageRequests} of one page), largest ${stats.largestRequest} pages`);
}

describe('criu restore --lazy-pages with pages from our page server', () => {
  it('restores 64 MiB over TCP: the process answers at once, every page right, all served once, it runs on', async () => {
    const t = await startTarget('tcp64', 64, 200);
    await sleep(50);
    expect(await query(t.port, 'verify')).toMatch(/^ok /);
    const dir = join(work, 'tcp64');
    await dumpAndWaitGone(t, dir);
    const r = await lazyRestore(t, dir, 'tcp');
    await checkComplete(t, r, '64 MiB, tcp, writer');
  });

  it('restores 64 MiB over a socket pair (--ps-socket 4): no TCP port at all', async () => {
    const t = await startTarget('sp64', 64, 200);
    await sleep(50);
    const dir = join(work, 'sp64');
    await dumpAndWaitGone(t, dir);
    const r = await lazyRestore(t, dir, 'socketpair');
    await checkComplete(t, r, '64 MiB, socketpair, writer');
  });

  it('works with the daemon started before the image is complete (only inventory.img and pstree.img there)', async () => {
    const t = await startTarget('pre64', 64, 200);
    await sleep(50);
    const dir = join(work, 'pre64');
    await dumpAndWaitGone(t, dir);
    const r = await lazyRestore(t, dir, 'tcp', { prestart: true });
    await checkComplete(t, r, '64 MiB, tcp, daemon started early');
  });

  it('restores 1 GiB over TCP (measurement)', async () => {
    const t = await startTarget('tcp1g', 1024, 0);
    await sleep(50);
    const dir = join(work, 'tcp1g');
    const dumpMs = await dumpAndWaitGone(t, dir);
    console.log(`[lazy 1 GiB] criu dump took ${dumpMs.toFixed(0)} ms`);
    const r = await lazyRestore(t, dir, 'tcp');
    await checkComplete(t, r, '1 GiB, tcp, quiet');
    await rm(r.imagesDir, { recursive: true, force: true });
  }, 180_000);

  it('a page server that fails mid-way: the daemon exits non-zero and the process sees zeros, so it must be killed', async () => {
    const t = await startTarget('fail', 64, 200);
    await sleep(50);
    const dir = join(work, 'fail');
    await dumpAndWaitGone(t, dir);
    // A slow store (10 ms an answer, so that little is transferred before it breaks) that
    // breaks once the restored process has answered (its first pages are in by then).
    let broken = false;
    const r = await lazyRestore(t, dir, 'tcp', {
      source: (s) => ({
        read: async (addr, n, pid) => {
          await sleep(10);
          if (broken) throw new Error('the store went away');
          return s.read(addr, n, pid);
        },
      }),
    });
    await query(t.port, 'get');
    broken = true;
    await expect(r.server.finished).rejects.toThrow(/the store went away/);
    expect(await withTimeout(r.daemon.exited, 10_000, 'the daemon did not exit')).not.toBe(0);
    expect(await r.daemon.logTail(30)).toMatch(/Error reading data from page server|Remote side closed connection/);
    // The userfaultfd went with the daemon: missing pages now fault in as zeros. Nothing
    // in the process notices, only its data is wrong.
    expect(await query(t.port, 'verify', 30_000)).toMatch(/^bad region page=\d+ word=\d+ got=0x0 /);
  });
});
