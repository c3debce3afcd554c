// The `demo` command (registered by src/cli/main.ts).
import { type Command, InvalidArgumentError, Option } from 'commander';
import { parseDurationIn } from '../util/duration.js';
import { runDemo } from './demo.js';

export function addDemoCommand(program: Command): void {
  program.command('demo')
    .description('see it work: protect a small service, SIGKILL its primary side, watch the standby restore it with its state (root and CRIU 4.2+; ~10 s)')
    .addOption(new Option('--epoch <d>', 'epoch length, 10ms to 1s').argParser((v: string) => {
      try { return parseDurationIn(v, '--epoch', 10, 1000); } catch (e) { throw new InvalidArgumentError((e as Error).message); }
    }).default(100, '100ms'))
    .option('--json', 'print events as JSON lines on stdout')
    .option('--keep', 'leave the restored service running at the end (prints how to stop it)')
    .action(async (o: { epoch: number; json?: boolean; keep?: boolean }) => {
      process.exitCode = await runDemo({ epochMs: o.epoch, json: !!o.json, keep: !!o.keep });
    });
}
