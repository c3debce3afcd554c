// The replication CLI as users run it: a `replicate standby` process and a primary
// process (`replicate run -- redis-server`, `replicate --pid`), status, metrics, keys,
// a standby killed with SIGKILL and restarted, garbage on the standby's port.
import { connect as tcpConnect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { freePorts } from './helpers/ports.js';
import { CliProcess } from './helpers/cli-process.js';
import { tempDir, until } from './helpers/replication.js';
import { killAll, Target } from './helpers/target.js';
import { readCommittedInfo } from '../src/standby/epoch-store.js';

const cleanups: Array<() => Promise<void> | void> = [];
const later = (f: () => Promise<void> | void) => cleanups.push(f);
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await Promise.resolve(f()).catch((e: Error) => console.error('cleanup:', e.message));
  await killAll();
});


function procStart(args: string[]): CliProcess {
  const p = new CliProcess(args);
  later(() => p.stop('SIGKILL'));
  return p;
}

describe('replicate CLI', () => {
  it('keygen writes a 0600 key; links without security are refused with a clear message', async () => {
    const dir = tempDir('cli'); later(() => dir.remove());
    const k = await cli(['keygen', '--out', `${dir.path}/key`]);
    expect(k.code, k.stderr).toBe(0);
    expect(statSync(`${dir.path}/key`).mode & 0o777).toBe(0o600);
    expect((await cli(['keygen', '--out', `${dir.path}/key`])).code).not.toBe(0); // no silent overwrite
    const none = await cli(['standby', '--listen', '127.0.0.1:7', '--dir', `${dir.path}/s`]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--secret-file/);
    const far = await cli(['--pid', String(process.pid), '--to', '10.1.2.3:7070', '--insecure']);
    expect(far.code).not.toBe(0);
    expect(far.stderr).toMatch(/loopback/);
  });

  it('standby + `replicate run -- redis-server`: commits, status, metrics; standby SIGKILLed and restarted', async () => {
    const dir = tempDir('cli'); later(() => dir.remove());
    expect((await cli(['keygen', '--out', `${dir.path}/key`])).code).toBe(0);
    const [port, metricsPort, redisPort, primaryMetricsPort] = await freePorts(4) as [number, number, number, number];
    const standbyDir = `${dir.path}/standby`;
    // Restore directories under the test's own (this standby is SIGKILLed below).
    const restoreDir = `${dir.path}/restore`;
    const sb = procStart(['standby', '--listen', `127.0.0.1:${port}`, '--dir', standbyDir, '--secret-file', `${dir.path}/key`, '--metrics', `127.0.0.1:${metricsPort}`, '--restore-dir', restoreDir]);
    await sb.next('listening', 15_000);
    const pr = procStart(['run', '--to', `127.0.0.1:${port}`, '--secret-file', `${dir.path}/key`, '--epoch', '50ms', '--output', dir.path,
      '--metrics', `127.0.0.1:${primaryMetricsPort}`, '--',
      'redis-server', '--port', String(redisPort), '--save', '', '--appendonly', 'no', '--bind', '127.0.0.1']);
    const started = await pr.next('started', 15_000);
    const redisPid = Number(started.pid);
    later(() => { try { process.kill(redisPid, 'SIGKILL'); } catch { /* gone */ } });
    await pr.next('synced', 30_000);
    await pr.next('commit', 10_000);

    let s: Record<string, unknown> = {};
    await until(async () => {
      const st = await cli(['status', '--dir', standbyDir, '--json']);
      expect(st.code, st.stderr).toBe(0);
      s = JSON.parse(st.stdout);
      return Number(s.committedEpoch) >= 1;
    }, 5000, 'status to show a committed epoch');
    expect(s).toMatchObject({ role: 'standby', running: true, link: 'connected' });
    expect(typeof s.lagMs).toBe('number');
    const store = s.store as Record<string, number>;
    expect(Object.keys(store).sort()).toEqual(['bytesOnDisk', 'journalBytes', 'memoryPages', 'segments']);
    expect(store.segments).toBeGreaterThanOrEqual(1);
    expect(store.bytesOnDisk).toBeGreaterThan(0);

    let p: Record<string, any> = {};
    await until(async () => {
      const pst = await cli(['status', '--pid', String(redisPid), '--json']);
      expect(pst.code, pst.stderr).toBe(0);
      p = JSON.parse(pst.stdout);
      return p.link === 'streaming' && p.committedEpoch >= 1;
    }, 5000, 'the primary status to show streaming');
    expect(p).toMatchObject({ role: 'primary', running: true, link: 'streaming' });
    for (const k of ['committedEpoch', 'lagMs', 'bytesPerEpoch', 'compressionRatio']) expect(typeof p[k]).toBe('number');
    expect(p.pauseMs.p50).toBeGreaterThan(0);
    expect(p.pauseMs.p99).toBeGreaterThanOrEqual(p.pauseMs.p50);

    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    for (const name of ['replicate_committed_epoch', 'replicate_received_bytes_total', 'replicate_role{role="standby"} 1', 'process_cpu_seconds_total'])
      expect(metrics).toContain(name);

    // SIGKILL the standby while it is receiving, restart it on the same dir.
    const killedAt = JSON.parse((await cli(['status', '--dir', standbyDir, '--json'])).stdout).committedEpoch as number;
    await sb.stop('SIGKILL');
    const info = await readCommittedInfo(standbyDir);
    expect(info).not.toBeNull();
    expect(info!.epoch).toBeGreaterThanOrEqual(killedAt);
    const down = JSON.parse((await cli(['status', '--dir', standbyDir, '--json'])).stdout);
    expect(down.running).toBe(false);
    expect(down.committedEpoch).toBe(info!.epoch);
    await pr.next('standby-lost', 10_000);
    const sb2 = procStart(['standby', '--listen', `127.0.0.1:${port}`, '--dir', standbyDir, '--secret-file', `${dir.path}/key`, '--restore-dir', restoreDir]);
    const l2 = await sb2.next('listening', 15_000);
    expect(l2.committedEpoch).toBe(info!.epoch);
    await pr.next('synced', 30_000); // the primary resynchronises from a full state
    const c = await sb2.next('commit', 15_000);
    expect(Number(c.epoch)).toBeGreaterThan(info!.epoch);
    // The primary's own metrics name what the issue asks for.
    const pm = await (await fetch(`http://127.0.0.1:${primaryMetricsPort}/metrics`)).text();
    for (const name of ['replicate_epoch_pause_seconds_bucket', 'replicate_dirty_pages_total', 'replicate_sent_bytes_total', 'replicate_lag_seconds',
      'replicate_committed_epoch', 'replicate_role{role="primary"} 1', 'process_cpu_seconds_total'])
      expect(pm).toContain(name);
    expect(Number(/replicate_sent_bytes_total (\d+)/.exec(pm)?.[1])).toBeGreaterThan(0);
    await pr.stop('SIGTERM');
    expect(pr.last('stopped')).toBeDefined();
    try { process.kill(redisPid, 0); } catch { throw new Error('stopping the agent must leave the target running'); }
  });

  it('garbage on the standby\'s port: that connection is dropped, replication goes on', async () => {
    const dir = tempDir('cli'); later(() => dir.remove());
    expect((await cli(['keygen', '--out', `${dir.path}/key`])).code).toBe(0);
    const [port] = await freePorts(1) as [number];
    const sb = procStart(['standby', '--listen', `127.0.0.1:${port}`, '--dir', `${dir.path}/standby`, '--secret-file', `${dir.path}/key`, '--restore-dir', `${dir.path}/restore`]);
    await sb.next('listening', 15_000);
    const t = await Target.spawn({ pages: 256 });
    const pr = procStart(['--pid', String(t.pid), '--to', `127.0.0.1:${port}`, '--secret-file', `${dir.path}/key`, '--epoch', '50ms', '--no-base-image']);
    await pr.next('synced', 30_000);
    for (const junk of [randomBytes(4096), Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 0, 0])]) {
      await new Promise<void>((resolve) => {
        const s = tcpConnect(port, '127.0.0.1', () => s.end(junk));
        s.on('error', () => resolve());
        s.on('close', () => resolve());
        s.resume();
      });
    }
    await until(() => sb.events.filter((e) => e.event === 'rejected').length >= 3, 10_000, 'three rejections');
    const before = sb.last('commit');
    await sb.next('commit', 10_000);
    await t.ok('w 1 2 3');
    const after = await sb.next('commit', 10_000);
    expect(Number(after.epoch)).toBeGreaterThan(Number(before?.epoch ?? 0));
    expect(sb.events.some((e) => e.event === 'peer' && e.state === 'disconnected')).toBe(false);
  });
});
