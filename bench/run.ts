// The benchmark harness: `npm run bench [-- --only NAME] [--quick]`.
import { runCodecBench } from './codec/codec.js';
import { runRedisBench } from './replication/redis.js';
import { runPauseBench } from './tracker/pause.js';

const SCENARIOS: Record<string, (o: { quick: boolean; log: (s: string) => void }) => Promise<void>> = {
  'tracker-pause': runPauseBench,
  'replication-redis': async (o) => { await runRedisBench(o); },
  codec: runCodecBench,
};

const args = process.argv.slice(2);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const quick = args.includes('--quick');
if (only && !SCENARIOS[only]) {
  console.error(`unknown scenario '${only}'; known: ${Object.keys(SCENARIOS).join(', ')}`);
  process.exit(2);
}
const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);
for (const [name, run] of Object.entries(SCENARIOS)) {
  if (only && name !== only) continue;
  log(`scenario ${name}${quick ? ' (quick)' : ''}`);
  await run({ quick, log });
}
