import { Command, InvalidArgumentError, Option } from 'commander';
import { check, formatCheck } from '../check/check.js';
import { formatDirtyRate, measureDirtyRate } from '../dirty-rate/dirty-rate.js';
import { ReplicateError } from '../errors.js';
import { addReplicationCommands } from './replication-commands.js';
import { addDemoCommand } from '../demo/command.js';
import { parseDurationIn } from '../util/duration.js';

/**
 * Exit codes (stable):
 *   0  success
 *   1  the command ran and failed (e.g. `check` found replication cannot work)
 *   2  bad usage or options
 *   3  the target process is gone or cannot be traced (TARGET_GONE, INVALID_TARGET, PERMISSION_DENIED)
 *   4  the kernel or CRIU lacks something needed (BACKEND_UNAVAILABLE, CRIU_UNAVAILABLE)
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, target: 3, platform: 4 } as const;

function pidArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive integer PID');
  return n;
}

function durationArg(what: string, min: number, max: number) {
  return (v: string) => {
    try { return parseDurationIn(v, what, min, max); } catch (e) { throw new InvalidArgumentError((e as Error).message); }
  };
}

function exitCodeFor(e: unknown): number {
  if (!(e instanceof ReplicateError)) return EXIT.failed;
  switch (e.code) {
    case 'TARGET_GONE': case 'INVALID_TARGET': case 'PERMISSION_DENIED': return EXIT.target;
    case 'BACKEND_UNAVAILABLE': case 'CRIU_UNAVAILABLE': return EXIT.platform;
    case 'INVALID_ARGUMENT': return EXIT.usage;
    default: return EXIT.failed;
  }
}

export function buildProgram(): Command {
  const program = new Command('replicate')
    .description('Keep a hot standby of a running Linux process (Remus for processes)')
    .showHelpAfterError()
    .configureOutput({ outputError: (s, write) => write(s) })
    .exitOverride(); // inherited by the subcommands below: main() maps errors to exit codes

  program.command('check')
    .description('probe the kernel, permissions and CRIU; say which dirty-tracking backend would be used')
    .option('--json', 'print the report as JSON')
    .option('--criu <path>', 'CRIU binary to check (default: REPLICATE_CRIU, the project build, PATH)')
    .action(async (o: { json?: boolean; criu?: string }) => {
      const report = await check({ criu: o.criu });
      process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatCheck(report)}\n`);
      process.exitCode = report.ok ? EXIT.ok : EXIT.failed;
    });

  program.command('dirty-rate')
    .description('measure how fast a process writes memory: pages per epoch and per second, working set, pause')
    .requiredOption('--pid <pid>', 'process to measure', pidArg)
    .option('--duration <d>', 'how long to measure (e.g. 5s, 1min)', durationArg('--duration', 10, 3_600_000), 5000)
    .option('--epoch <d>', 'epoch length (10ms to 1h)', durationArg('--epoch', 10, 3_600_000), 100)
    .addOption(new Option('--backend <name>', 'dirty-tracking backend').choices(['auto', 'uffd-wp', 'soft-dirty', 'hash']).default('auto'))
    .option('--json', 'print the report as JSON')
    .action(async (o: { pid: number; duration: number; epoch: number; backend: 'auto'; json?: boolean }) => {
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        const report = await measureDirtyRate({
          pid: o.pid, durationMs: o.duration, epochMs: o.epoch, backend: o.backend, signal: ac.signal,
          onEpoch: o.json || !process.stderr.isTTY ? undefined : (e) => process.stderr.write(`\repoch ${e.seq}: ${e.pages} pages, pause ${e.pauseMs.toFixed(2)} ms   `),
        });
        if (!o.json && process.stderr.isTTY) process.stderr.write('\n');
        process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatDirtyRate(report)}\n`);
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    });
  addReplicationCommands(program);
  addDemoCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    const err = e as { code?: string; exitCode?: number };
    if (typeof err.code === 'string' && err.code.startsWith('commander.')) {
      process.exitCode = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' ? EXIT.ok : EXIT.usage;
      return;
    }
    const code = exitCodeFor(e);
    process.stderr.write(`replicate: ${(e as Error).message}${e instanceof ReplicateError ? ` [${e.code}]` : ''}\n`);
    process.exitCode = code;
  }
}
