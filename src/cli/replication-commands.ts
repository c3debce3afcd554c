// The replication commands: primary (the default command), run, standby, status, keygen.
import { Command, InvalidArgumentError, Option } from 'commander';
import { openSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import cliProgress from 'cli-progress';
import { ReplicateError } from '../errors.js';
import { createLogger, LOG_LEVELS, type Logger, type LogLevel } from '../log/logger.js';
import { ReplicationMetrics, serveMetrics } from '../metrics/metrics.js';
import { Primary, type CommitInfo, type SyncProgress } from '../primary/primary.js';
import { spawnTarget } from '../spawn/spawn-target.js';
import { locateCriu } from '../criu/locate.js';
import type { DetectorOptions } from '../failover/failure-detector.js';
import { parseHealthCheck } from '../failover/health-check.js';
import { promote, type PromotionOptions, type PromotionResult } from '../failover/promoter.js';
import { EpochStore } from '../standby/epoch-store.js';
import { Standby } from '../standby/standby.js';
import { primaryStatusPath, writeStatusFile } from '../status/status-file.js';
import { formatStatus, readStatus } from '../status/status.js';
import { parseHostPort } from '../transport/link.js';
import { readSecretFile, writeSecretFile, generateSecret, type SecurityOptions } from '../transport/security.js';
import { parseDurationIn } from '../util/duration.js';
import { formatBytes, parseSize } from '../util/size.js';

interface CommonOptions {
  secretFile?: string; cert?: string; key?: string; ca?: string; insecure?: boolean;
  logLevel: LogLevel; json?: boolean; metrics?: string; heartbeat: number;
}

interface PrimaryCliOptions extends CommonOptions {
  pid?: number; to: string; epoch: number; backend: 'auto'; highWater: number;
  baseImage: boolean; criu?: string; selfFenceAfter?: number; heartbeatChannel: boolean;
}

function duration(what: string, min: number, max: number) {
  return (v: string) => {
    try { return parseDurationIn(v, what, min, max); } catch (e) { throw new InvalidArgumentError((e as Error).message); }
  };
}

function size(what: string) {
  return (v: string) => {
    try { return parseSize(v, what); } catch (e) { throw new InvalidArgumentError((e as Error).message); }
  };
}

function pidArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive integer PID');
  return n;
}

/** Options every command that opens a replication link takes. */
function withLinkOptions(cmd: Command): Command {
  return cmd
    .option('--secret-file <file>', 'pre-shared key file (made by `replicate keygen`): TLS 1.3 with this key')
    .option('--cert <file>', 'TLS certificate (PEM), instead of a pre-shared key; needs --key and --ca')
    .option('--key <file>', 'private key of --cert (PEM)')
    .option('--ca <file>', 'CA certificate (PEM) the peer\'s certificate must be signed by')
    .option('--insecure', 'plain TCP without authentication or encryption (loopback addresses only)')
    .addOption(new Option('--heartbeat <d>', 'heartbeat interval on the link').argParser(duration('--heartbeat', 5, 60_000)).default(50, '50ms'))
    .option('--metrics <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics')
    .addOption(new Option('--log-level <level>', 'structured log (JSON lines on stderr) threshold').choices([...LOG_LEVELS]).default('info'))
    .option('--json', 'print events as JSON lines on stdout');
}

/** Options of the commands that protect a process (primary, run). */
function withPrimaryOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--to <host:port>', 'the standby\'s address')
    .addOption(new Option('--epoch <d>', 'epoch length, 10ms to 1h (e.g. 25ms, 1s, 10min)').argParser(duration('--epoch', 10, 3_600_000)).default(100, '100ms'))
    .addOption(new Option('--backend <name>', 'dirty-tracking backend').choices(['auto', 'uffd-wp', 'soft-dirty', 'hash']).default('auto'))
    .addOption(new Option('--high-water <size>', 'captured bytes queued before epochs coalesce').argParser(size('--high-water')).default(256 * 2 ** 20, '256MiB'))
    .option('--no-base-image', 'do not take CRIU base images: memory is replicated but the standby cannot restore it')
    .option('--no-heartbeat-channel', 'send heartbeats on the data connection only (by default a second connection carries them, so that queued data never delays them)')
    .option('--criu <path>', 'CRIU binary (default: REPLICATE_CRIU, the project\'s build, PATH)')
    .addOption(new Option('--self-fence-after <d>', 'stop the target when the standby has been unreachable this long (the standby may have promoted)').argParser(duration('--self-fence-after', 10, 86_400_000)));
}

interface PromotionCliOptions {
  health?: string; healthTimeout: number; fenceCmd?: string; fallbackCmd?: string; onPromote?: string; onRoleChange?: string;
  restoreDir?: string; tcpClose: boolean; criu?: string;
}

/** Options that say how to promote (standby, promote). */
function withPromotionOptions(cmd: Command): Command {
  return cmd
    .option('--health <check>', 'the promotion counts once this passes: tcp:PORT, tcp:HOST:PORT, http://..., cmd:COMMAND')
    .addOption(new Option('--health-timeout <d>', 'how long the health check may take').argParser(duration('--health-timeout', 10, 3_600_000)).default(10_000, '10s'))
    .option('--fence-cmd <cmd>', 'run before restoring; must exit 0 or there is no promotion (e.g. power off the old primary)')
    .option('--fallback-cmd <cmd>', 'cold-start the service when restoring fails 3 times')
    .option('--on-promote <cmd>', 'run after a successful promotion (env: REPLICATE_ROLE, REPLICATE_EPOCH, REPLICATE_PID...)')
    .option('--on-role-change <cmd>', 'run at every role change (env: REPLICATE_ROLE, REPLICATE_EPOCH, REPLICATE_PID...)')
    .option('--restore-dir <dir>', 'where images are built for restore (default /dev/shm/remus-replicate: tmpfs is fastest)')
    .option('--no-tcp-close', 'restore established TCP connections instead of closing them (needs the same addresses)')
    .option('--criu <path>', 'CRIU binary (default: REPLICATE_CRIU, the project\'s build, PATH)');
}

function promotionOptions(o: PromotionCliOptions): Omit<PromotionOptions, 'criu'> & { criu?: string } {
  return {
    health: o.health ? parseHealthCheck(o.health) : undefined, healthTimeoutMs: o.healthTimeout, fenceCmd: o.fenceCmd, fallbackCmd: o.fallbackCmd,
    onPromote: o.onPromote, onRoleChange: o.onRoleChange, restoreRoot: o.restoreDir, tcpClose: o.tcpClose, criu: o.criu,
  };
}

function formatPromotion(r: PromotionResult): string {
  const t = r.timings;
  const head = r.outcome === 'restored' ? `PROMOTED: epoch ${r.epoch} restored as pid ${r.pid} (generation ${r.generation})`
    : r.outcome === 'fallback' ? `PROMOTION FAILED after ${r.attempts} attempts: --fallback-cmd cold-started the service (its replicated state is lost)`
      : r.outcome === 'fenced-out' ? 'NOT PROMOTED: --fence-cmd failed, the old primary may still run'
        : `PROMOTION FAILED: ${r.errors.at(-1) ?? 'unknown error'}`;
  const times = `detection ${Math.round(t.detectionMs)} ms, image ${Math.round(t.buildMs)} ms, restore ${Math.round(t.restoreMs)} ms, health ${Math.round(t.healthMs)} ms, total ${Math.round(t.totalMs)} ms`;
  return `${head}\n  ${times}${r.errors.length && r.outcome !== 'restored' ? `\n  ${r.errors.join('\n  ')}` : ''}`;
}

function numberArg(what: string, min: number, max: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${what} must be a number between ${min} and ${max}`);
    return n;
  };
}

function security(o: CommonOptions, address: string): SecurityOptions {
  const chosen = [o.secretFile ? 'psk' : '', o.cert || o.key || o.ca ? 'cert' : '', o.insecure ? 'insecure' : ''].filter(Boolean);
  if (chosen.length === 0)
    throw new ReplicateError('INVALID_ARGUMENT', 'the link must be secured: pass --secret-file FILE (make one with `replicate keygen --out FILE` and copy it to both hosts), or --cert/--key/--ca; --insecure is for loopback tests only');
  if (chosen.length > 1) throw new ReplicateError('INVALID_ARGUMENT', `choose one of --secret-file, --cert/--key/--ca, --insecure (got ${chosen.join(' and ')})`);
  if (o.secretFile) return { kind: 'psk', key: readSecretFile(o.secretFile) };
  if (o.cert || o.key || o.ca) {
    if (!o.cert || !o.key || !o.ca) throw new ReplicateError('INVALID_ARGUMENT', '--cert, --key and --ca go together');
    return { kind: 'cert', cert: o.cert, key: o.key, ca: o.ca };
  }
  void address; // loopback is checked where the socket is made
  return { kind: 'insecure' };
}

/** JSON lines on stdout (--json) or short human lines. */
class Printer {
  readonly json: boolean;
  #lastHuman = 0;
  constructor(json: boolean) { this.json = json; }
  event(type: string, data: object, human?: string, throttleMs = 0): void {
    this.lazyEvent(type, throttleMs, () => ({ data, human }));
  }

  /** event() for a line that costs something to build: `build` runs only if it is printed. */
  lazyEvent(type: string, throttleMs: number, build: () => { data: object; human?: string }): void {
    if (this.json) {
      const { data } = build();
      process.stdout.write(`${JSON.stringify({ event: type, time: new Date().toISOString(), ...data }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
      return;
    }
    const now = Date.now();
    if (throttleMs && now - this.#lastHuman < throttleMs) return;
    const { human } = build();
    if (!human) return;
    this.#lastHuman = now;
    process.stdout.write(`${human}\n`);
  }
}

async function startMetrics(spec: string | undefined, metrics: ReplicationMetrics, log: Logger): Promise<{ close(): void } | undefined> {
  if (!spec) return undefined;
  const { host, port } = parseHostPort(spec);
  const server = await serveMetrics(metrics.registry, host, port);
  log.info({ url: server.url }, 'metrics served');
  return server;
}

/** Runs until SIGINT/SIGTERM or `done` settles. */
async function untilSignal(done: Promise<unknown>): Promise<'signal' | 'done'> {
  let onSignal: () => void = () => undefined;
  const sig = new Promise<'signal'>((resolve) => { onSignal = () => resolve('signal'); });
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await Promise.race([sig, done.then(() => 'done' as const, () => 'done' as const)]);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Protects `pid` until a signal, the target's exit, or a fatal error. Returns the exit code. */
async function protect(pid: number, o: PrimaryCliOptions, extra: { targetExited?: Promise<number> } = {}): Promise<number> {
  const { host, port } = parseHostPort(o.to);
  const sec = security(o, host);
  const log = createLogger(o.logLevel, { agent: 'primary' });
  const metrics = new ReplicationMetrics('primary');
  const out = new Printer(!!o.json);
  const primary = await Primary.start({
    pid, host, port, security: sec, epochMs: o.epoch, backend: o.backend, highWaterBytes: o.highWater, heartbeatMs: o.heartbeat, logger: log, metrics,
    baseImage: o.baseImage, criu: o.criu, selfFenceAfterMs: o.selfFenceAfter, heartbeatChannel: o.heartbeatChannel,
  });
  const metricsServer = await startMetrics(o.metrics, metrics, log);
  const statusPath = primaryStatusPath(pid);
  const writeStatus = (running = true) => writeStatusFile(statusPath, { ...primary.stats(), agentPid: process.pid, running, updatedAt: Date.now() }).catch(() => undefined);
  const statusTimer = setInterval(() => void writeStatus(), 1000);
  await writeStatus();
  let bar: cliProgress.SingleBar | undefined;
  primary.on('sync-progress', (p: SyncProgress) => {
    if (out.json || !process.stderr.isTTY) return;
    if (!bar) {
      bar = new cliProgress.SingleBar({ format: 'initial sync [{bar}] {percentage}% | {value}/{total} pages | {sent}', stream: process.stderr, hideCursor: true }, cliProgress.Presets.shades_classic);
      bar.start(p.totalPages, 0, { sent: '' });
    }
    bar.update(Math.min(p.sentPages, p.totalPages), { sent: formatBytes(p.bytes) });
  });
  primary.on('synced', (s: { epoch: number; pages: number; ms: number }) => {
    bar?.stop(); bar = undefined;
    out.event('synced', s, `initial sync: ${s.pages} pages in ${Math.round(s.ms)} ms (epoch ${s.epoch})`);
  });
  primary.on('commit', (c: CommitInfo) => out.lazyEvent('commit', process.stdout.isTTY ? 1000 : 10_000, () => {
    const st = primary.stats();
    return {
      data: { ...c, pauseMs: st.pauseMs, compressionRatio: st.compressionRatio },
      human: `epoch ${c.epoch} committed · lag ${c.lagMs} ms · pause p50 ${st.pauseMs.p50.toFixed(2)} ms p99 ${st.pauseMs.p99.toFixed(2)} ms · ${Math.round(st.pagesPerEpoch)} pages, ${formatBytes(st.bytesPerEpoch)}/epoch · ratio ${st.compressionRatio.toFixed(1)}x`,
    };
  }));
  primary.on('link', () => void writeStatus());
  primary.on('link', (state: string) => out.event('link', { state }, state === 'streaming' || state === 'disconnected' ? `link: ${state}` : undefined));
  primary.on('standby-lost', (x: { reason: string; retryInMs: number }) => out.event('standby-lost', x, `standby lost (${x.reason}); the target keeps running; retrying in ${Math.round(x.retryInMs)} ms, then a full resynchronisation`));
  let code = 0;
  const ended = new Promise<void>((resolve) => {
    primary.once('target-exit', () => { code = 3; resolve(); });
    primary.once('error', (e: Error) => {
      out.event('error', { message: e.message }, `error: ${e.message}`);
      code = 1;
      resolve();
    });
  });
  const targetDone = extra.targetExited?.then((c) => { code = c; });
  const why = await untilSignal(Promise.race([ended, ...(targetDone ? [targetDone] : [])]));
  clearInterval(statusTimer);
  await primary.stop();
  bar?.stop();
  await writeStatus(false);
  metricsServer?.close();
  out.event('stopped', { reason: why }, why === 'signal' ? 'stopped; the target keeps running' : undefined);
  return code;
}

export function addReplicationCommands(program: Command): void {
  withPrimaryOptions(withLinkOptions(program.command('primary', { isDefault: true })
    .description('protect a running process: replicate it to a standby every epoch (the default command)')
    .option('--pid <pid>', 'process to protect', pidArg)))
    .action(async (o: PrimaryCliOptions) => {
      if (!o.pid) throw new ReplicateError('INVALID_ARGUMENT', 'missing --pid (or use `replicate run ... -- CMD` to start and protect a command)');
      process.exitCode = await protect(o.pid, o);
    });

  withPrimaryOptions(withLinkOptions(program.command('run')
    .description('start CMD in its own session, output to files, and protect it')
    .option('--output <dir>', 'where CMD\'s stdout and stderr go (NAME.stdout.log, NAME.stderr.log; appended)', '.')
    .argument('<cmd...>', 'the command and its arguments (after --)')))
    .action(async (cmd: string[], o: PrimaryCliOptions & { output: string }) => {
      const name = basename(cmd[0]!);
      const dir = resolve(o.output);
      // Files opened for appending: CRIU reopens them at restore without a size check.
      const stdout = openSync(join(dir, `${name}.stdout.log`), 'a');
      const stderr = openSync(join(dir, `${name}.stderr.log`), 'a');
      const target = await spawnTarget(cmd[0]!, cmd.slice(1), { stdio: ['ignore', stdout, stderr] });
      const out = new Printer(!!o.json);
      out.event('started', { pid: target.pid, command: cmd, output: dir }, `started ${cmd.join(' ')} as pid ${target.pid} (output in ${dir}/${name}.std{out,err}.log)`);
      process.exitCode = await protect(target.pid, o, { targetExited: target.exited });
    });

  withPromotionOptions(withLinkOptions(program.command('standby')
    .description('keep the last committed epoch of a primary on disk, ready for promotion')
    .requiredOption('--listen <host:port>', 'address to listen on')
    .requiredOption('--dir <dir>', 'where the committed epoch is kept')
    .option('--no-fsync', 'do not fsync commits (faster, not durable: only for tmpfs or tests)')
    .addOption(new Option('--checkpoint-memory <size>', 'decoded pages held in memory before a checkpoint writes them to disk (less: less memory, more disk writes)')
      .argParser(size('--checkpoint-memory')).default(64 * 2 ** 20, '64MiB'))
    .addOption(new Option('--detector <kind>', 'failure detector: phi accrual or a fixed timeout').choices(['phi', 'timeout']).default('phi'))
    .addOption(new Option('--phi-threshold <phi>', 'phi at which the primary is considered dead').argParser(numberArg('--phi-threshold', 0.5, 50)).default(8))
    .addOption(new Option('--acceptable-pause <d>', 'silence tolerated on top of the usual heartbeat gap (phi)').argParser(duration('--acceptable-pause', 0, 600_000)))
    .addOption(new Option('--timeout <d>', 'silence after which the primary is considered dead (--detector timeout)').argParser(duration('--timeout', 5, 600_000)).default(250, '250ms'))
    .option('--no-auto-promote', 'do not promote by itself; wait for `replicate promote --dir DIR`')
    .option('--promote-on-target-exit', 'promote also when the primary reports that the process itself exited')
    .option('--apply-received', 'at promotion, first commit the epochs received but not yet applied (less loss, slower failover)')))
    .action(async (o: CommonOptions & PromotionCliOptions & {
      listen: string; dir: string; fsync: boolean; checkpointMemory: number; detector: 'phi' | 'timeout'; phiThreshold: number; acceptablePause?: number; timeout: number;
      autoPromote: boolean; promoteOnTargetExit?: boolean; applyReceived?: boolean;
    }) => {
      const { host, port } = parseHostPort(o.listen);
      const sec = security(o, host);
      const log = createLogger(o.logLevel, { agent: 'standby' });
      const metrics = new ReplicationMetrics('standby');
      const out = new Printer(!!o.json);
      const detector: DetectorOptions = o.detector === 'timeout' ? { kind: 'timeout', timeoutMs: o.timeout }
        : { kind: 'phi', heartbeatMs: o.heartbeat, threshold: o.phiThreshold, acceptablePauseMs: o.acceptablePause };
      const s = await Standby.start({
        host, port, dir: resolve(o.dir), security: sec, heartbeatMs: o.heartbeat, fsync: o.fsync, checkpointBytes: o.checkpointMemory, logger: log, metrics,
        detector, autoPromote: o.autoPromote, promoteOnTargetExit: !!o.promoteOnTargetExit, applyReceived: !!o.applyReceived, promotion: promotionOptions(o),
      });
      const metricsServer = await startMetrics(o.metrics, metrics, log);
      const st = s.stats();
      out.event('listening', { address: s.address, dir: s.dir, committedEpoch: st.committedEpoch, detector: st.detector, expectedDetectionMs: st.expectedDetectionMs },
        `standby listening on ${s.address}, dir ${s.dir}\nfailure detector: ${st.detector}: a primary that stops is declared dead after about ${Math.round(st.expectedDetectionMs)} ms of silence${o.autoPromote ? '' : ' (auto-promotion off)'}`);
      s.on('commit', (c: { epoch: number; pages: number; bytes: number }) =>
        out.event('commit', c, `epoch ${c.epoch} committed · ${c.pages} pages · ${formatBytes(c.bytes)}`, process.stdout.isTTY ? 1000 : 10_000));
      s.on('peer', (p: { state: string; peer: { host: string; pid: number } | null; reason?: string }) =>
        out.event('peer', p, `primary ${p.state}${p.peer ? ` (${p.peer.host}, target pid ${p.peer.pid})` : ''}${p.reason ? `: ${p.reason}` : ''}`));
      s.on('rejected', (r: { remote: string; reason: string }) => out.event('rejected', r, `rejected ${r.remote}: ${r.reason}`));
      s.on('suspect', (x: { silentMs: number }) => out.event('suspect', x, `primary considered dead after ${Math.round(x.silentMs)} ms of silence`));
      s.on('promoting', (x: { reason: string }) => out.event('promoting', x, `promoting: ${x.reason}`));
      s.on('promoted', (r: PromotionResult) => out.event('promoted', r, formatPromotion(r)));
      s.on('restored-exit', (x: { pid: number; code: number; signal: number }) => out.event('restored-exit', x, `the restored process ${x.pid} exited (${x.signal ? `signal ${x.signal}` : `code ${x.code}`})`));
      // `replicate promote --dir DIR` asks a running standby with SIGUSR2.
      const onUsr2 = () => { void s.promote('manual (replicate promote)'); };
      process.on('SIGUSR2', onUsr2);
      await untilSignal(new Promise(() => undefined));
      process.off('SIGUSR2', onUsr2);
      await s.stop();
      metricsServer?.close();
    });

  withPromotionOptions(program.command('promote')
    .description('restore the last committed epoch on this host now (manual failover)')
    .requiredOption('--dir <dir>', 'the standby\'s directory')
    .option('--json', 'print the outcome as JSON')
    .addOption(new Option('--log-level <level>', 'log threshold').choices([...LOG_LEVELS]).default('warn'))
    .addOption(new Option('--wait <d>', 'how long to wait for a running standby to finish').argParser(duration('--wait', 1000, 3_600_000)).default(120_000, '2min')))
    .action(async (o: PromotionCliOptions & { dir: string; json?: boolean; logLevel: LogLevel; wait: number }) => {
      const dir = resolve(o.dir);
      const out = new Printer(!!o.json);
      const running = await readStatus({ dir });
      let r: PromotionResult;
      if (running.running) {
        // A standby serves this directory: it holds the store; ask it.
        process.kill(Number(running.pid), 'SIGUSR2');
        const deadline = Date.now() + o.wait;
        let st = running;
        for (;;) {
          await new Promise((res) => setTimeout(res, 100));
          st = await readStatus({ dir });
          const p = st.promotion as (PromotionResult & { at: number }) | null;
          if (p && st.role !== 'promoting' && p.at >= Date.now() - o.wait) { r = p; break; }
          if (Date.now() > deadline) throw new ReplicateError('TIMEOUT', `the standby (pid ${String(running.pid)}) did not finish promoting within ${o.wait} ms; see its log and \`replicate status --dir ${o.dir}\``);
        }
      } else {
        const criu = await locateCriu(o.criu);
        const store = await EpochStore.open(dir);
        try {
          r = await promote(store, dir, { ...promotionOptions(o), criu: criu.path, logger: createLogger(o.logLevel, { agent: 'promote' }) });
        } finally {
          await store.close();
        }
      }
      out.event('promoted', r, formatPromotion(r));
      process.exitCode = r.ok ? 0 : 1;
    });

  program.command('status')
    .description('show a standby (--dir) or a primary agent (--pid of the protected process)')
    .option('--dir <dir>', 'a standby\'s directory')
    .option('--pid <pid>', 'the protected process of a primary agent on this host', pidArg)
    .option('--json', 'print as JSON')
    .action(async (o: { dir?: string; pid?: number; json?: boolean }) => {
      if (!o.dir === !o.pid) throw new ReplicateError('INVALID_ARGUMENT', 'give exactly one of --dir DIR (a standby) or --pid PID (a primary)');
      const st = await readStatus(o.dir ? { dir: resolve(o.dir) } : { pid: o.pid! });
      process.stdout.write(o.json ? `${JSON.stringify(st, null, 2)}\n` : `${formatStatus(st)}\n`);
      process.exitCode = st.running ? 0 : 1;
    });

  program.command('keygen')
    .description('make a pre-shared key for --secret-file (copy the same file to both hosts)')
    .option('--out <file>', 'write the key to FILE (mode 0600) instead of stdout')
    .option('--force', 'overwrite FILE if it exists')
    .action((o: { out?: string; force?: boolean }) => {
      if (o.out) {
        writeSecretFile(o.out, { force: !!o.force });
        process.stderr.write(`wrote ${o.out} (mode 0600); copy it to the other host and pass --secret-file ${o.out} on both\n`);
      } else {
        process.stdout.write(generateSecret());
      }
    });
}
