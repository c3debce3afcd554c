import { mkdtempSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSecretFile } from '../src/transport/security.js';
import { autocannon, cleanup, freePort, redisBenchmark, startCli, startHttpServer, startRedis } from './lib/processes.js';
const kind = process.argv[2] ?? 'http'; const epoch = process.argv[3] ?? '1000';
const work = mkdtempSync('/tmp/probe-'); const key = join(work, 'key'); writeSecretFile(key, { force: true });
const port = await freePort(); const sport = await freePort();
const t = kind === 'http' ? await startHttpServer(port) : await startRedis(port);
const cpu = (pid: number) => { try { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' '); return (Number(f[11]) + Number(f[12])) / 100; } catch { return NaN; } };
try {
  let sb, pr;
  if (epoch !== 'none') {
    sb = startCli(['standby', '--listen', `127.0.0.1:${sport}`, '--dir', join(work, 'sb'), '--secret-file', key, '--no-auto-promote'], 'sb');
    await sb.next('listening');
    pr = startCli(['--pid', String(t.pid), '--to', `127.0.0.1:${sport}`, '--epoch', `${epoch}ms`, '--secret-file', key], 'pr');
    await pr.next('synced', 60000);
  }
  const pids = { target: t.pid, primary: pr?.child.pid ?? 0, standby: sb?.child.pid ?? 0 };
  const c0 = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpu(p)]));
  const t0 = performance.now();
  const r = kind === 'http' ? await autocannon(`http://127.0.0.1:${port}/`, 6, 20) : await redisBenchmark(port, 'set', 100000);
  const s = (performance.now() - t0) / 1000;
  const c1 = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, ((cpu(p) - c0[k]!) / s).toFixed(2)]));
  console.log(kind, epoch, Math.round(r.rps), 'req/s p99', r.p99Ms, 'max', r.maxMs, 'cpu cores:', c1);
  if (pr) { const cs = pr.events.filter((e) => e.event === 'commit'); console.log('commits', cs.length, 'last', JSON.stringify(cs.at(-1))); }
  if (pr) { const { readStatus } = await import('../src/status/status.js'); const st = await readStatus({ pid: t.pid }); console.log('rebases', st.rebases, 'syncs', st.syncs); } await pr?.stop(); await sb?.stop();
} finally { await t.stop(); await cleanup.runAll(() => {}); }
