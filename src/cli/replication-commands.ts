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
    .option('--heartbeat <d>', 'heartbeat interval on the link', duration('--heartbeat', 5, 60_000), 50)
    .option('--metrics <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics')
    .addOption(new Option('--log-level <level>', 'structured log (JSON lines on stderr) threshold').choices([...LOG_LEVELS]).default('info'))
    .option('--json', 'print events as JSON lines on stdout');
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
    if (this.json) {
      process.stdout.write(`${JSON.stringify({ event: type, time: new Date().toISOString(), ...data }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
      return;
    }
    if (!human) return;
    const now = Date.now();
    if (throttleMs && now - this.#lastHuman < throttleMs) return;
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
  primary.on('commit', (c: CommitInfo) => {
    const st = primary.stats();
    out.event('commit', { ...c, pauseMs: st.pauseMs, compressionRatio: st.compressionRatio },
      `epoch ${c.epoch} committed · lag ${c.lagMs} ms · pause p50 ${st.pauseMs.p50.toFixed(2)} ms p99 ${st.pauseMs.p99.toFixed(2)} ms · ${Math.round(st.pagesPerEpoch)} pages, ${formatBytes(st.bytesPerEpoch)}/epoch · ratio ${st.compressionRatio.toFixed(1)}x`,
      process.stdout.isTTY ? 1000 : 10_000);
  });
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
  withLinkOptions(program.command('primary', { isDefault: true })
    .description('protect a running process: replicate it to a standby every epoch (the default command)')
    .option('--pid <pid>', 'process to protect', pidArg)
    .requiredOption('--to <host:port>', 'the standby\'s address')
    .option('--epoch <d>', 'epoch length, 10ms to 1h (e.g. 25ms, 1s, 10min)', duration('--epoch', 10, 3_600_000), 100)
    .addOption(new Option('--backend <name>', 'dirty-tracking backend').choices(['auto', 'uffd-wp', 'soft-dirty', 'hash']).default('auto'))
    .option('--high-water <size>', 'captured bytes queued before epochs coalesce (e.g. 256MiB)', size('--high-water'), 256 * 2 ** 20))
    .action(async (o: PrimaryCliOptions) => {
      if (!o.pid) throw new ReplicateError('INVALID_ARGUMENT', 'missing --pid (or use `replicate run ... -- CMD` to start and protect a command)');
      process.exitCode = await protect(o.pid, o);
    });

  withLinkOptions(program.command('run')
    .description('start CMD in its own session, output to files, and protect it')
    .requiredOption('--to <host:port>', 'the standby\'s address')
    .option('--epoch <d>', 'epoch length, 10ms to 1h', duration('--epoch', 10, 3_600_000), 100)
    .addOption(new Option('--backend <name>', 'dirty-tracking backend').choices(['auto', 'uffd-wp', 'soft-dirty', 'hash']).default('auto'))
    .option('--high-water <size>', 'captured bytes queued before epochs coalesce', size('--high-water'), 256 * 2 ** 20)
    .option('--output <dir>', 'where CMD\'s stdout and stderr go (NAME.stdout.log, NAME.stderr.log; appended)', '.')
    .argument('<cmd...>', 'the command and its arguments (after --)'))
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

  withLinkOptions(program.command('standby')
    .description('keep the last committed epoch of a primary on disk, ready for promotion')
    .requiredOption('--listen <host:port>', 'address to listen on')
    .requiredOption('--dir <dir>', 'where the committed epoch is kept')
    .option('--no-fsync', 'do not fsync commits (faster, not durable: only for tmpfs or tests)'))
    .action(async (o: CommonOptions & { listen: string; dir: string; fsync: boolean }) => {
      const { host, port } = parseHostPort(o.listen);
      const sec = security(o, host);
      const log = createLogger(o.logLevel, { agent: 'standby' });
      const metrics = new ReplicationMetrics('standby');
      const out = new Printer(!!o.json);
      const s = await Standby.start({ host, port, dir: resolve(o.dir), security: sec, heartbeatMs: o.heartbeat, fsync: o.fsync, logger: log, metrics });
      const metricsServer = await startMetrics(o.metrics, metrics, log);
      out.event('listening', { address: s.address, dir: s.dir, committedEpoch: s.stats().committedEpoch }, `standby listening on ${s.address}, dir ${s.dir}`);
      s.on('commit', (c: { epoch: number; pages: number; bytes: number }) =>
        out.event('commit', c, `epoch ${c.epoch} committed · ${c.pages} pages · ${formatBytes(c.bytes)}`, process.stdout.isTTY ? 1000 : 10_000));
      s.on('peer', (p: { state: string; peer: { host: string; pid: number } | null; reason?: string }) =>
        out.event('peer', p, `primary ${p.state}${p.peer ? ` (${p.peer.host}, target pid ${p.peer.pid})` : ''}${p.reason ? `: ${p.reason}` : ''}`));
      s.on('rejected', (r: { remote: string; reason: string }) => out.event('rejected', r, `rejected ${r.remote}: ${r.reason}`));
      await untilSignal(new Promise(() => undefined));
      await s.stop();
      metricsServer?.close();
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
