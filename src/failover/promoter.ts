// Promotion: bring the protected process back on this host, in the state of the last
// committed epoch.
//
//   fence (--fence-cmd must succeed) -> generation + 1 (durable: a stale primary is refused)
//   -> build the image (base + committed registers, layout, pages, files, clocks; on tmpfs)
//   -> criu restore -d (this process is the subreaper of what it restores)
//   -> health check; a failed restore or check is retried (3 attempts in all), then
//      --fallback-cmd cold-starts the service and the failure is reported loudly.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { criuRestore, RestoreError } from '../criu/criu-runner.js';
import { buildEpochImage } from '../criu/image/index.js';
import { silentLogger, type Logger } from '../log/logger.js';
import { native } from '../native/binding.js';
import { BASE_META, type BaseMeta } from '../primary/base-image.js';
import type { EpochState } from '../protocol/messages.js';
import { baseDir } from '../standby/base-images.js';
import type { EpochStore } from '../standby/epoch-store.js';
import { describeHealthCheck, waitHealthy, type HealthCheck } from './health-check.js';
import { runHook } from './hooks.js';
import { LazyRestorer, type LazyRestore } from './lazy-restore.js';

export interface PromotionOptions {
  criu: string;
  /** Where images are built: a tmpfs is fastest. Default /dev/shm when it exists. */
  restoreRoot?: string;
  health?: HealthCheck;
  healthTimeoutMs?: number;
  fenceCmd?: string;
  fallbackCmd?: string;
  onPromote?: string;
  onRoleChange?: string;
  /** Restore attempts before the fallback. Default 3. */
  attempts?: number;
  /** Established TCP connections come back closed. Default true. */
  tcpClose?: boolean;
  /** Refuse to restore when a regular file's size differs from the epoch's (CRIU's check). Default false. */
  strictFileSizes?: boolean;
  /**
   * Restore with lazy pages served from the store (the process runs before its memory is
   * all in place: restore time does not grow with memory size). Default true; an attempt
   * that fails lazily is retried eagerly.
   */
  lazy?: boolean;
  /** Called if a lazy transfer fails after the promotion succeeded (the process was killed). */
  onLazyFailure?: (why: string) => void;
  /** Called with the transfer's end when a restore is lazy: the store must stay open until then. */
  onLazyTransfer?: (done: Promise<unknown>) => void;
  /** Checked before each attempt: true stops retrying (the standby is stopping). */
  cancelled?: () => boolean;
  /** A lazy restore prepared ahead for this base (see LazyRestorer), taken if it is ready. */
  warm?: () => LazyRestorer | undefined;
  logger?: Logger;
}

export interface PromotionTimings {
  /** From the last sign of life of the primary to the decision (0 for a manual promotion). */
  detectionMs: number;
  fenceMs: number;
  /** Everything else before the image: raising the generation (an fsync), reading the base's note. */
  prepareMs: number;
  /** Starting `criu lazy-pages` (lazy restores). */
  daemonMs: number;
  /**
   * Waiting for the process's PIDs to be free on this host (a dying primary on the same
   * host, as in tests and benchmarks: the kernel frees a large process's memory first).
   */
  pidWaitMs: number;
  /**
   * Before the promotion proper: the standby finishing the batch it was applying (and,
   * with applyReceived, the epochs it had received and not yet applied).
   */
  drainMs?: number;
  /** Before the promotion proper: waiting for a lazy restore being prepared ahead (the base had just changed). */
  warmWaitMs?: number;
  buildMs: number;
  restoreMs: number;
  healthMs: number;
  totalMs: number;
}

export interface PromotionResult {
  ok: boolean;
  /** 'restored': the epoch runs; 'fallback': --fallback-cmd ran instead; 'fenced-out': the fence failed, nothing was done; 'failed'. */
  outcome: 'restored' | 'fallback' | 'fenced-out' | 'failed';
  /** The restore used lazy pages (memory streamed in after the process started). */
  lazy: boolean;
  pid: number | null;
  epoch: number;
  lineage: string;
  generation: number;
  attempts: number;
  timings: PromotionTimings;
  errors: string[];
  imageDir?: string;
}

export function defaultRestoreRoot(dir: string): string {
  return existsSync('/dev/shm') ? '/dev/shm/remus-replicate' : join(dir, 'restore');
}

/**
 * Removes the image and warm-restore directories of standbys that died without cleaning up
 * (SIGKILL, a crash): their names carry the standby's PID (`img-LINEAGE-EPOCH-PID-ATTEMPT`,
 * with `-lazy` for a daemon's own; `warm-BASE-PID`), and on tmpfs they hold memory. Those of
 * live processes are kept. Returns the names removed.
 */
export function pruneStaleRestoreDirs(root: string): string[] {
  let names: string[];
  try { names = readdirSync(root); } catch { return []; }
  const removed: string[] = [];
  for (const n of names) {
    const m = /^img-[^-]+-\d+-(\d+)-\d+(?:-lazy)?$/.exec(n) ?? /^warm-.+-(\d+)$/.exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || pidAlive(pid)) continue;
    try { rmSync(join(root, n), { recursive: true, force: true }); removed.push(n); } catch { /* next time */ }
  }
  return removed;
}

/**
 * Descriptors of the epoch the restored process lacks (connections accepted after the base
 * image): closed sockets go at those numbers, then the process is resumed (SIGCONT). It is
 * never left stopped, even if placing them fails.
 */
async function placeMissingDescriptors(pid: number, state: EpochState, log: Logger): Promise<void> {
  try {
    const have = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
    const missing = state.fds.filter((f) => !have.has(f.fd)).map((f) => f.fd);
    if (missing.length) {
      const placed = await native().placeholderSockets(pid, missing);
      log.info({ fds: missing, placed }, 'closed sockets put where connections made after the base image were');
    }
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'could not place sockets for descriptors the image lacks; the program may see EBADF on them');
  } finally {
    try { process.kill(pid, 'SIGCONT'); } catch { /* gone */ }
  }
}

/** A few words on a process for error messages: alive and in which state, or gone. */
function describeProcess(pid: number): string {
  try {
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    const state = /State:\s*(.*)/.exec(st)?.[1] ?? '?';
    const wchan = readFileSync(`/proc/${pid}/wchan`, 'utf8').trim();
    return `${pid} is alive (${state}${wchan && wchan !== '0' ? `, waiting in ${wchan}` : ''})`;
  } catch {
    return `${pid} is gone (it exited or crashed after the restore)`;
  }
}

/** Failed attempts keep their image for diagnosis; a success removes the older ones of this process. */
async function pruneOldImages(root: string, keep: string): Promise<void> {
  const mine = `-${process.pid}-`;
  for (const n of await readdir(root).catch(() => [] as string[])) {
    const p = join(root, n);
    if (p !== keep && n.startsWith('img-') && n.includes(mine)) await rm(p, { recursive: true, force: true }).catch(() => undefined);
  }
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** SIGKILLs and reaps those of `pids` that are children of this process (leftovers of a failed restore). */
function endOurLeftovers(pids: number[]): void {
  for (const pid of pids) {
    let ppid = -1;
    try { ppid = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? -1); } catch { continue; }
    if (ppid !== process.pid) continue;
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    native().reapChild(pid);
  }
}

/** Threads of the committed state whose PIDs are still taken on this host (restore needs them free). */
function takenPids(state: EpochState): number[] {
  return state.threads.map((t) => t.tid).filter((tid) => existsSync(`/proc/${tid}`));
}

export async function promote(store: EpochStore, dir: string, o: PromotionOptions, detectionMs = 0): Promise<PromotionResult> {
  const log = (o.logger ?? silentLogger).child({ phase: 'promotion' });
  const t0 = performance.now();
  // Debug marks: where a promotion's time goes, including what no timing names.
  const mark = (step: string): void => { log.debug({ atMs: Math.round((performance.now() - t0) * 10) / 10 }, step); };
  const c = store.committed;
  const errors: string[] = [];
  const timings: PromotionTimings = { detectionMs, fenceMs: 0, prepareMs: 0, daemonMs: 0, pidWaitMs: 0, buildMs: 0, restoreMs: 0, healthMs: 0, totalMs: 0 };
  let lazyUsed = false;
  const result = (r: Omit<PromotionResult, 'timings' | 'errors' | 'lazy'>): PromotionResult => {
    timings.totalMs = detectionMs + (performance.now() - t0);
    return { ...r, lazy: lazyUsed, timings, errors };
  };
  if (!c) {
    errors.push('nothing to promote: no epoch has been committed yet');
    return result({ ok: false, outcome: 'failed', pid: null, epoch: 0, lineage: '', generation: 0, attempts: 0 });
  }
  const hookEnv = { epoch: c.epoch, lineage: c.lineage, dir };

  // Fence: the old primary must be out of the way before its process comes back here.
  if (o.fenceCmd) {
    const f = await runHook(o.fenceCmd, { ...hookEnv, role: 'promoting', generation: c.generation }, 60_000);
    timings.fenceMs = f.ms;
    if (f.code !== 0) {
      errors.push(`--fence-cmd failed (exit ${f.code}${f.timedOut ? ', timed out' : ''}): ${f.output.slice(0, 500)}`);
      log.error({ code: f.code, output: f.output }, 'fencing failed: NOT promoting (the old primary may still be running)');
      return result({ ok: false, outcome: 'fenced-out', pid: null, epoch: c.epoch, lineage: c.lineage, generation: c.generation, attempts: 0 });
    }
  }
  const tPrep = performance.now();
  const generation = c.generation + 1;
  // Durable before anything is restored (a stale primary is refused from then on), but
  // written while the image is built.
  const generationSet = store.setGeneration(generation);
  generationSet.catch(() => undefined);
  if (o.onRoleChange) void runHook(o.onRoleChange, { ...hookEnv, role: 'promoting', generation });

  const base = c.state.base ? baseDir(dir, c.state.base) : '';
  let meta: BaseMeta | undefined;
  // Synchronous (small files, tmpfs): the thread pool may be busy with the store's I/O.
  if (base) {
    try { meta = JSON.parse(readFileSync(join(base, BASE_META), 'utf8')) as BaseMeta; } catch { meta = {} as BaseMeta; }
  }
  const root = o.restoreRoot ?? defaultRestoreRoot(dir);
  mkdirSync(root, { recursive: true, mode: 0o700 });
  try { native().setChildSubreaper(); } catch (e) { log.warn({ err: (e as Error).message }, 'cannot become a subreaper: the restored process will be re-parented to init'); }

  timings.prepareMs = performance.now() - tPrep;
  mark('prepared');
  const attempts = o.attempts ?? 3;
  let lazyFailed = false;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (o.cancelled?.()) { errors.push(`attempt ${attempt}: not started: the standby is stopping`); break; }
    let lazyDone: Promise<unknown> | undefined;
    let imageDir = join(root, `img-${c.lineage.slice(0, 8)}-${c.epoch}-${process.pid}-${attempt}`);
    let pid: number | null = null;
    try {
      if (!base) throw new Error('the committed epoch has no base image (the primary ran without base images): it cannot be restored');
      // The original PIDs must be free: wait a little for a dying primary on this host.
      const tw = performance.now();
      // A failed restore can leave its tasks behind as our children (we are a subreaper),
      // running or zombies, holding the very PIDs a retry needs: end and reap those.
      if (attempt > 1) endOurLeftovers(takenPids(c.state));
      for (let i = 0; i < 250 && takenPids(c.state).length > 0; i++) await sleep(4);
      timings.pidWaitMs += performance.now() - tw;
      const taken = takenPids(c.state);
      if (taken.length) throw new RestoreError(`PIDs ${taken.join(', ')} of the process are still in use on this host`, true);
      mark('pids free');
      const tb = performance.now();
      // Lazy: anonymous memory is listed, not written (the page server reads the store at
      // restore); after a lazy failure, later attempts restore eagerly. A restorer prepared
      // ahead already has its daemon listening in its directory: the image goes there.
      lazyUsed = o.lazy !== false && !lazyFailed;
      let restorer: LazyRestorer | undefined;
      if (lazyUsed) {
        const w = o.warm?.();
        restorer = w && w.ready && w.baseId === c.state.base ? w : undefined;
        if (restorer) imageDir = restorer.dir;
        else await rm(imageDir, { recursive: true, force: true });
      } else {
        await rm(imageDir, { recursive: true, force: true });
      }
      const tRuns = performance.now();
      const runs = lazyUsed ? store.pageRuns() : undefined;
      log.debug({ ms: Math.round(performance.now() - tRuns), runs: runs ? runs.length / 2 : 0 }, 'page runs listed');
      const built = await buildEpochImage({
        baseDir: base, outDir: imageDir, state: c.state, dropFileSizes: !o.strictFileSizes, prepared: !!restorer, baseFiles: restorer?.baseFiles,
        ...(runs ? { lazy: { runs, lookup: (a: bigint) => store.readPageSync(a) } } : { pages: store.pages() }),
      });
      timings.buildMs = performance.now() - tb;
      mark('image built');
      for (const n of built.notes) log.info({ note: n }, 'image');
      log.debug({ timings: built.timings, pages: built.pages }, 'image built');
      if (lazyUsed) {
        let lr: LazyRestore;
        try {
          if (!restorer) {
            // Not prepared ahead: start the daemon now, in a directory of its own, and move the image there.
            const td = performance.now();
            const fresh = await LazyRestorer.prepare({ criu: o.criu, dir: `${imageDir}-lazy`, baseDir: base, baseId: c.state.base, store, pid: c.state.pid });
            for (const n of await readdir(imageDir)) if (!existsSync(join(fresh.dir, n))) await rename(join(imageDir, n), join(fresh.dir, n));
            await rm(imageDir, { recursive: true, force: true });
            imageDir = fresh.dir;
            restorer = fresh;
            timings.daemonMs = performance.now() - td;
          }
          mark('restoring');
          lr = await restorer.restore({
            shellJob: meta?.shellJob, tcpClose: o.tcpClose, leaveStopped: true,
            onFailure: (why: string) => { log.error({ why }, 'LAZY PAGE TRANSFER FAILED: the restored process was killed'); o.onLazyFailure?.(why); },
          });
        } catch (e) {
          lazyFailed = true;
          await restorer?.close();
          throw e;
        }
        timings.restoreMs = lr.restoreMs;
        pid = lr.pid;
        lazyDone = lr.done;
        o.onLazyTransfer?.(lr.done);
        void lr.done.then((d) => {
          log[d.ok ? 'info' : 'error']({ pages: d.pagesServed, ms: Math.round(d.ms), error: d.error }, d.ok ? 'every page is in place' : 'lazy transfer failed');
        });
      } else {
        const r = await criuRestore({ criu: o.criu, dir: imageDir, tcpClose: o.tcpClose, shellJob: meta?.shellJob, leaveStopped: true });
        timings.restoreMs = r.ms;
        pid = r.pid;
      }
      // Restored stopped. The generation was written while the image was built and CRIU
      // restored: it must be durable before the process runs (from then on a stale primary
      // is refused even by a standby restarted after a crash); what is left of its fsync
      // counts as preparation (on a disk busy with the store's writes it can take longer
      // than the build and the restore).
      mark('restored');
      const tg = performance.now();
      await generationSet;
      timings.prepareMs += performance.now() - tg;
      mark('generation durable');
      // Put closed sockets where connections made after the base were, then let it run.
      const tr = performance.now();
      await placeMissingDescriptors(pid, c.state, log);
      timings.restoreMs += performance.now() - tr;
      log.info({ pid, epoch: c.epoch, lazy: lazyUsed, buildMs: Math.round(timings.buildMs), restoreMs: Math.round(timings.restoreMs) }, 'restored');
      if (o.health) {
        timings.healthMs = await waitHealthy(o.health, o.healthTimeoutMs ?? 10_000).catch((e: Error) => {
          throw new Error(`${e.message}; the restored process ${describeProcess(pid!)}; image kept in ${imageDir}`);
        });
        log.info({ check: describeHealthCheck(o.health), ms: Math.round(timings.healthMs) }, 'health check passed');
      }
      mark('healthy');
      // Clean-up need not delay the promotion's result.
      const keep = imageDir;
      void (async () => {
        if (!lazyDone) await rm(keep, { recursive: true, force: true }).catch(() => undefined);
        await pruneOldImages(root, keep);
      })();
      mark('done');
      const done = result({ ok: true, outcome: 'restored', pid, epoch: c.epoch, lineage: c.lineage, generation, attempts: attempt });
      if (o.onPromote) void runHook(o.onPromote, { ...hookEnv, role: 'primary', pid, generation });
      if (o.onRoleChange) void runHook(o.onRoleChange, { ...hookEnv, role: 'primary', pid, generation });
      return done;
    } catch (e) {
      const msg = (e as Error).message;
      errors.push(`attempt ${attempt}: ${msg}`);
      log.error({ attempt, err: msg }, 'promotion attempt failed');
      if (lazyDone) lazyFailed = true;
      if (pid !== null && pidAlive(pid)) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
        for (let i = 0; i < 100 && pidAlive(pid); i++) { native().reapChild(pid); await sleep(10); }
      }
      if (e instanceof RestoreError && e.pidTaken) await sleep(200 * attempt);
      else await sleep(50 * attempt);
    }
  }
  if (o.cancelled?.()) {
    log.error({ errors }, 'promotion abandoned: the standby is stopping');
    return result({ ok: false, outcome: 'failed', pid: null, epoch: c.epoch, lineage: c.lineage, generation, attempts });
  }
  // Cold start instead, and say so loudly.
  if (o.fallbackCmd) {
    log.error({ errors }, `restore failed ${attempts} times: running --fallback-cmd (the service starts WITHOUT the replicated state)`);
    const f = await runHook(o.fallbackCmd, { ...hookEnv, role: 'failed', generation }, 120_000);
    if (f.code !== 0) errors.push(`--fallback-cmd failed (exit ${f.code}): ${f.output.slice(0, 500)}`);
    if (o.onRoleChange) void runHook(o.onRoleChange, { ...hookEnv, role: 'failed', generation });
    return result({ ok: f.code === 0, outcome: 'fallback', pid: null, epoch: c.epoch, lineage: c.lineage, generation, attempts });
  }
  log.error({ errors }, `restore failed ${attempts} times and there is no --fallback-cmd: the service is DOWN`);
  if (o.onRoleChange) void runHook(o.onRoleChange, { ...hookEnv, role: 'failed', generation });
  return result({ ok: false, outcome: 'failed', pid: null, epoch: c.epoch, lineage: c.lineage, generation, attempts });
}
