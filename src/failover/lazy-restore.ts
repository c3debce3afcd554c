// Restoring with lazy pages, served from the standby's store: the image lists anonymous
// memory as LAZY (no data), `criu restore --lazy-pages` starts the process after mapping
// its memory, and `criu lazy-pages` fetches the pages from our LazyPageServer, on faults
// first and in the background for the rest. Restore time no longer grows with memory size.
//
//   store (+ base pages) --LazyPageServer--TCP--> criu lazy-pages --uffd--> restored process
//
// The store must not change until every page is served (the standby accepts no primary
// after a promotion). If the daemon or the server fails before the end, the process would
// read zeros where its pages were: it is killed, and the caller falls back to an eager restore.
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { criuRestore } from '../criu/criu-runner.js';
import { Magic, readImage } from '../criu/image/index.js';
import { parseBasePagemap } from '../criu/image/pages.js';
import { LazyPageServer, lookupPageSource, startLazyPagesDaemon, type LazyPagesDaemon } from '../criu/lazy/index.js';
import type { EpochStore } from '../standby/epoch-store.js';

const PAGE = 4096n;

/** Reads pages of the base image by address (for pages the store does not have). */
class BasePages {
  readonly #fd: number;
  readonly #runs: Array<{ start: bigint; end: bigint; offset: number }>;

  private constructor(fd: number, runs: Array<{ start: bigint; end: bigint; offset: number }>) {
    this.#fd = fd;
    this.#runs = runs;
  }

  static async open(baseDir: string, pid: number): Promise<BasePages> {
    const img = await readImage(join(baseDir, `pagemap-${pid}.img`), Magic.PAGEMAP);
    const pm = parseBasePagemap(img.entries, `pagemap-${pid}.img`);
    const fd = openSync(join(baseDir, `pages-${pm.pagesId}.img`), 'r');
    return new BasePages(fd, pm.runs.map((r) => ({ start: r.vaddr, end: r.vaddr + BigInt(r.pages) * PAGE, offset: r.offset })));
  }

  read(addr: bigint): Buffer | undefined {
    let lo = 0;
    let hi = this.#runs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.#runs[mid]!;
      if (addr < r.start) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else {
        const out = Buffer.allocUnsafe(4096);
        readSync(this.#fd, out, 0, 4096, r.offset + Number(addr - r.start));
        return out;
      }
    }
    return undefined;
  }

  close(): void { closeSync(this.#fd); }
}

export interface LazyRestore {
  pid: number;
  restoreMs: number;
  daemonReadyMs: number;
  /** Settles once every page is served (ok) or the transfer failed (the process was killed). */
  done: Promise<{ ok: boolean; error?: string; pagesServed: number; ms: number }>;
  /** Stops the transfer machinery (after done, or to give up). */
  stop(): Promise<void>;
}

export async function restoreLazily(o: {
  criu: string; imageDir: string; baseDir: string; store: EpochStore; pid: number; shellJob?: boolean; tcpClose?: boolean;
  onFailure?: (why: string) => void;
}): Promise<LazyRestore> {
  const base = await BasePages.open(o.baseDir, o.pid);
  const server = await LazyPageServer.listen({
    // Newest content first: the store's page (null: it is zero), else the base's, else zeros.
    source: lookupPageSource((addr) => {
      const p = o.store.readPageSync(addr);
      return p === undefined ? base.read(addr) ?? null : p;
    }),
  });
  let daemon: LazyPagesDaemon | undefined;
  const t0 = performance.now();
  try {
    daemon = await startLazyPagesDaemon({ criu: o.criu, imagesDir: o.imageDir, port: server.port });
  } catch (e) {
    await server.close();
    base.close();
    throw e;
  }
  const daemonReadyMs = performance.now() - t0;
  let restored: { pid: number; ms: number };
  try {
    restored = await criuRestore({ criu: o.criu, dir: o.imageDir, lazyPages: true, shellJob: o.shellJob, tcpClose: o.tcpClose, timeoutMs: 30_000 });
  } catch (e) {
    const tail = await daemon.logTail(8);
    await daemon.stop();
    await server.close();
    base.close();
    throw new Error(`${(e as Error).message}; criu lazy-pages log: ${tail.replace(/\n/g, ' | ')}`, { cause: e });
  }
  const tTransfer = performance.now();
  const d = daemon;
  const stop = async () => {
    await d.stop();
    await server.close();
    base.close();
  };
  const done = (async () => {
    type Outcome = { ok: boolean; error?: string };
    const outcome: Outcome = await Promise.race([
      server.finished.then((): Outcome => ({ ok: true }), (e: Error): Outcome => ({ ok: false, error: `page server: ${e.message}` })),
      d.exited.then(async (code): Promise<Outcome> => (code === 0 ? { ok: true } : { ok: false, error: `criu lazy-pages exited ${code}: ${await d.logTail(5)}` })),
    ]);
    const stats = server.stats;
    if (!outcome.ok) {
      // Pages not yet served would read as zeros: the process must not run on.
      try { process.kill(restored.pid, 'SIGKILL'); } catch { /* gone */ }
      o.onFailure?.(outcome.error ?? 'lazy transfer failed');
    }
    // The daemon exits once it has transferred everything.
    await Promise.race([d.exited, new Promise((r) => setTimeout(r, 2000))]);
    await stop();
    return { ...outcome, pagesServed: stats.pagesServed, ms: performance.now() - tTransfer };
  })();
  return { pid: restored.pid, restoreMs: restored.ms, daemonReadyMs, done, stop };
}
