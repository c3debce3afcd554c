// Baseline: periodic CRIU dumps, the recipe the CRIU and docker-checkpoint guides give for
// keeping a copy of a running process: every epoch `criu dump --leave-running` of the
// target into a fresh directory, which is then shipped (a tar stream into another
// directory, the bytes counted on the way, as `tar c | ssh standby tar x` would carry
// them). A dump starts every epoch, or as soon as the previous dump and shipment ended
// when they take longer than an epoch.
//
// Pause per checkpoint: CRIU's own account in the image's `stats-dump` (DumpStatsEntry:
// freezing_time 1, frozen_time 2, memdump_time 3, memwrite_time 4, pages_scanned 5,
// pages_written 7; µs): frozen_time runs from the moment every thread is stopped to the
// moment they run again, the time the target does not run. Without soft-dirty in this
// kernel CRIU cannot do incremental dumps (`--track-mem`, pre-dump), so each dump is full:
// that is what the recipe does here.
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cleanup } from '../lib/processes.js';

export interface DumpRecord {
  /** performance.now() when the dump started. */
  startAt: number;
  ok: boolean;
  error?: string;
  /** criu dump, wall clock. */
  dumpMs: number;
  /** From stats-dump: threads stopped (the target's pause), and the time to stop them. */
  frozenMs: number;
  freezingMs: number;
  memdumpMs: number;
  memwriteMs: number;
  pagesWritten: number;
  /** Size of the image directory and of the tar stream shipped. */
  imageBytes: number;
  shippedBytes: number;
  shipMs: number;
}

/** Reads varint fields of the DumpStatsEntry inside `stats-dump` (StatsEntry { dump = 1 }). */
export function parseStatsDump(buf: Buffer): Record<number, number> {
  // u32 magic 0x55105940 ("stats" images have no second magic in CRIU 4: the file is
  // magic, then u32 length + StatsEntry). Tolerate both layouts: skip leading magics.
  let off = 0;
  const magics = new Set([0x54564319, 0x55105940, 0x57093306]);
  while (off + 4 <= buf.length && magics.has(buf.readUInt32LE(off))) off += 4;
  const len = buf.readUInt32LE(off); off += 4;
  const msg = buf.subarray(off, off + len);
  const varint = (b: Buffer, o: { i: number }) => {
    let v = 0; let mul = 1;
    for (;;) { const x = b[o.i++]!; v += (x & 0x7f) * mul; if (!(x & 0x80)) return v; mul *= 128; }
  };
  const fields = (b: Buffer): Array<[number, number, Buffer | number]> => {
    const out: Array<[number, number, Buffer | number]> = [];
    const o = { i: 0 };
    while (o.i < b.length) {
      const key = varint(b, o);
      const field = Math.floor(key / 8); const wire = key & 7;
      if (wire === 0) out.push([field, wire, varint(b, o)]);
      else if (wire === 2) { const n = varint(b, o); out.push([field, wire, b.subarray(o.i, o.i + n)]); o.i += n; }
      else if (wire === 1) { o.i += 8; } else if (wire === 5) { o.i += 4; } else throw new Error(`stats-dump: wire type ${wire}`);
    }
    return out;
  };
  const dump = fields(msg).find(([f, w]) => f === 1 && w === 2)?.[2];
  if (!(dump instanceof Buffer)) throw new Error('stats-dump: no dump entry');
  const r: Record<number, number> = {};
  for (const [f, w, v] of fields(dump)) if (w === 0) r[f] = v as number;
  return r;
}

function dirBytes(dir: string): number {
  let n = 0;
  for (const f of readdirSync(dir)) { const st = statSync(join(dir, f)); if (st.isFile()) n += st.size; }
  return n;
}

function runCriu(criu: string, args: string[], timeoutMs: number): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(criu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const off = cleanup.child(p, 'criu dump');
    let stderr = '';
    p.stderr!.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code) => { clearTimeout(t); off(); resolve({ code: code ?? 1, stderr }); });
    p.on('error', (e) => { clearTimeout(t); off(); resolve({ code: 1, stderr: e.message }); });
  });
}

/** tar -c of `from` piped into tar -x in `to`; resolves with the bytes of the stream. */
function ship(from: string, to: string): Promise<number> {
  mkdirSync(to, { recursive: true });
  return new Promise((resolve, reject) => {
    const c = spawn('tar', ['-C', from, '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const x = spawn('tar', ['-C', to, '-xf', '-'], { stdio: ['pipe', 'ignore', 'ignore'] });
    const offC = cleanup.child(c, 'tar -c'); const offX = cleanup.child(x, 'tar -x');
    let bytes = 0;
    c.stdout!.on('data', (d: Buffer) => { bytes += d.length; });
    c.stdout!.pipe(x.stdin!);
    let pending = 2; let failed = '';
    const done = (what: string) => (code: number | null) => {
      if (code !== 0) failed ||= `${what} exited ${code}`;
      if (--pending === 0) { offC(); offX(); if (failed) reject(new Error(failed)); else resolve(bytes); }
    };
    c.on('close', done('tar -c'));
    x.on('close', done('tar -x'));
  });
}

export interface DumpOptions {
  criu: string; pid: number; epochMs: number; work: string;
  /** CRIU's --network-lock for the established connections it dumps (iptables, nftables, skip). Default nftables. */
  networkLock?: string;
  extraArgs?: string[];
}

/** Dumps `pid` every `epochMs` and ships each dump until stopped. */
export class PeriodicDumps {
  readonly records: DumpRecord[] = [];
  #stopping = false;
  #loop?: Promise<void>;
  #n = 0;
  readonly #o: DumpOptions;
  #first?: () => void;
  /** Resolves once the first dump has been shipped (or failed). */
  readonly firstDone: Promise<void>;

  constructor(o: DumpOptions) {
    this.#o = o;
    this.firstDone = new Promise((r) => { this.#first = r; });
    mkdirSync(o.work, { recursive: true });
  }

  start(): this {
    this.#loop = this.#run();
    return this;
  }

  async #run(): Promise<void> {
    let prev: { dump: string; shipped: string } | undefined;
    while (!this.#stopping) {
      const start = performance.now();
      const n = ++this.#n;
      const dump = join(this.#o.work, `dump-${n}`);
      const shipped = join(this.#o.work, `standby-${n}`);
      mkdirSync(dump, { recursive: true });
      const rec: DumpRecord = { startAt: start, ok: false, dumpMs: 0, frozenMs: 0, freezingMs: 0, memdumpMs: 0, memwriteMs: 0, pagesWritten: 0, imageBytes: 0, shippedBytes: 0, shipMs: 0 };
      // The project's own dump flags (src/criu/criu-runner.ts): established connections
      // dumped (the clients of a service), left running.
      const args = ['dump', '-t', String(this.#o.pid), '-D', dump, '-o', 'dump.log', '-v1', '--leave-running', '--tcp-established', '--skip-in-flight', '--ext-unix-sk', '--file-locks', '--network-lock', this.#o.networkLock ?? 'nftables', ...(this.#o.extraArgs ?? [])];
      const r = await runCriu(this.#o.criu, args, 120_000);
      rec.dumpMs = performance.now() - start;
      if (r.code === 0) {
        try {
          const s = parseStatsDump(readFileSync(join(dump, 'stats-dump')));
          rec.freezingMs = (s[1] ?? 0) / 1000; rec.frozenMs = (s[2] ?? 0) / 1000; rec.memdumpMs = (s[3] ?? 0) / 1000; rec.memwriteMs = (s[4] ?? 0) / 1000; rec.pagesWritten = s[7] ?? 0;
          rec.imageBytes = dirBytes(dump);
          const s0 = performance.now();
          rec.shippedBytes = await ship(dump, shipped);
          rec.shipMs = performance.now() - s0;
          rec.ok = true;
        } catch (e) { rec.error = (e as Error).message; }
      } else {
        let log = '';
        try { log = readFileSync(join(dump, 'dump.log'), 'utf8'); } catch { /* none */ }
        rec.error = (log.split('\n').filter((l) => /Error/.test(l) && !/RLIMIT_NOFILE/.test(l)).slice(-2).join(' | ') || r.stderr.trim()).slice(0, 300) || `exit ${r.code}`;
      }
      this.records.push(rec);
      // Keep only the last shipped copy (what a standby would restore from).
      if (prev) { rmSync(prev.dump, { recursive: true, force: true }); rmSync(prev.shipped, { recursive: true, force: true }); }
      prev = { dump, shipped };
      this.#first?.(); this.#first = undefined;
      const wait = this.#o.epochMs - (performance.now() - start);
      if (wait > 0 && !this.#stopping) await sleep(wait);
    }
  }

  async stop(): Promise<DumpRecord[]> {
    this.#stopping = true;
    await this.#loop;
    rmSync(this.#o.work, { recursive: true, force: true });
    return this.records;
  }
}
