// Replication end to end on loopback: a real target, the real tracker, TLS with a
// pre-shared key, a standby committing to a real directory.
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../src/primary/primary.js';
import { Standby } from '../src/standby/standby.js';
import { TransportError } from '../src/transport/errors.js';
import { connect } from '../src/transport/link.js';
import { PROTOCOL_VERSION, type Message } from '../src/protocol/messages.js';
import { readdirSync, readFileSync } from 'node:fs';
import { HEARTBEAT_NICENESS } from '../src/primary/beats-channel.js';
import { CliProcess } from './helpers/cli-process.js';
import { freePort } from './helpers/ports.js';
import { FaultyProxy } from './helpers/proxy.js';
import { compareWithTarget, makeKey, tempDir, until } from './helpers/replication.js';
import { Target, killAll } from './helpers/target.js';

const cleanups: Array<() => Promise<void> | void> = [];
const later = (f: () => Promise<void> | void) => cleanups.push(f);

afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await Promise.resolve(f()).catch((e: Error) => console.error('cleanup:', e.message));
  await killAll();
});

async function setup(opts: { pages?: number; threads?: number; epochMs?: number; viaProxy?: boolean; highWaterBytes?: number; checkpointBytes?: number } = {}) {
  const dir = tempDir('repl');
  later(() => dir.remove());
  const { security } = makeKey(dir.path);
  const standby = await Standby.start({
    host: '127.0.0.1', port: 0, dir: `${dir.path}/standby`, security, fsync: true,
    ...(opts.checkpointBytes !== undefined ? { checkpointBytes: opts.checkpointBytes } : {}),
  });
  later(() => standby.stop());
  const proxy = opts.viaProxy ? await FaultyProxy.start(standby.port) : undefined;
  if (proxy) later(() => proxy.close());
  const t = await Target.spawn({ pages: opts.pages ?? 1024, threads: opts.threads ?? 2 });
  later(() => t.kill());
  const primary = await Primary.start({
    pid: t.pid, host: '127.0.0.1', port: proxy?.port ?? standby.port, security, epochMs: opts.epochMs ?? 50,
    reconnectMinMs: 50, reconnectMaxMs: 200, highWaterBytes: opts.highWaterBytes,
    // The test drives the target over a socketpair, which CRIU cannot dump: memory only
    // here; failover (with base images) is tested in test/2x.
    baseImage: false,
  });
  later(() => primary.stop());
  const errors: Error[] = [];
  primary.on('error', (e: Error) => errors.push(e));
  return { dir, security, standby, proxy, t, primary, errors };
}

/** Stops the writers, then waits until the standby commits an epoch captured after that. */
async function quiesce(t: Target, primary: Primary): Promise<void> {
  await t.ok('stop');
  const after = primary.stats().capturedEpoch + 1;
  await until(() => primary.committedEpoch > after, 15_000, `a commit after epoch ${after}`);
}

describe('replication', () => {
  // The second time with checkpoints every few epochs (and compactions): the pages reach the
  // segments by way of memory and the journal.
  for (const [how, checkpointBytes] of [['', undefined], [', checkpointing every few epochs', 256 << 10]] as const) it(`after N epochs the standby has committed the target's memory, page for page${how}`, async () => {
    const { dir, standby, t, primary, errors } = await setup({ pages: 2048, threads: 3, ...(checkpointBytes ? { checkpointBytes } : {}) });
    await until(() => primary.committedEpoch >= 1, 15_000, 'the initial synchronisation');
    const journalAtSync = readdirSync(`${dir.path}/standby`).filter((n) => n.endsWith('.rrj'));
    await t.ok('rand 30 2'); // 3 threads writing 2 % of the pages per burst, continuously
    const start = primary.committedEpoch;
    await until(() => primary.committedEpoch >= start + 20, 20_000, '20 more commits');
    await quiesce(t, primary);
    await primary.stop();
    await until(() => standby.stats().link === 'listening', 5000, 'the standby to finish the session');
    process.kill(t.pid, 'SIGSTOP');
    try {
      const cmp = await compareWithTarget(standby.store, t.pid);
      expect(cmp.mismatches.join('\n')).toBe('');
      expect(cmp.compared).toBeGreaterThan(2048);
    } finally {
      process.kill(t.pid, 'SIGCONT');
    }
    expect(errors).toEqual([]);
    // The last batch in flight may commit after the primary stopped listening for acks.
    expect(standby.stats().committedEpoch).toBeGreaterThanOrEqual(primary.committedEpoch);
    // Each checkpoint starts a new journal.
    if (checkpointBytes) expect(readdirSync(`${dir.path}/standby`).filter((n) => n.endsWith('.rrj'))).not.toEqual(journalAtSync);
  });

  it('the connection cut in the middle of a batch: the standby keeps the previous epoch, then resynchronises', async () => {
    const { standby, t, primary, proxy } = await setup({ pages: 4096, threads: 1, viaProxy: true, epochMs: 200 });
    await until(() => primary.committedEpoch >= 2, 15_000, 'two commits');
    await t.ok('stop');
    const before = primary.committedEpoch;
    await until(() => primary.committedEpoch > before + 1, 10_000, 'a quiet commit');
    const committed = standby.stats().committedEpoch;
    // The next batch is large (every page rewritten: ~80 KiB delta-encoded); cut 16 KiB
    // into it. (Quiet epochs in between send a few hundred bytes: their state is a delta.)
    proxy!.cutAfter(16 * 1024);
    await t.ok('wr 0 4096');
    await until(() => primary.stats().reconnects >= 1, 10_000, 'the primary to reconnect');
    // The cut batch was never committed: whatever the standby has is a whole epoch.
    const after = standby.stats().committedEpoch;
    expect(after === committed || after > committed).toBe(true);
    await until(() => primary.state === 'streaming' && primary.committedEpoch > committed, 20_000, 'a commit after the resynchronisation');
    await quiesce(t, primary);
    await primary.stop();
    await until(() => standby.stats().link === 'listening', 5000, 'the standby to finish the session');
    process.kill(t.pid, 'SIGSTOP');
    try {
      expect((await compareWithTarget(standby.store, t.pid)).mismatches.join('\n')).toBe('');
    } finally {
      process.kill(t.pid, 'SIGCONT');
    }
    expect(primary.stats().syncs).toBeGreaterThanOrEqual(2);
  });

  it('a throttled link: epochs coalesce, the queue stays under its high-water mark, the standby catches up', async () => {
    const highWaterBytes = 4 * 2 ** 20;
    const { t, primary, proxy } = await setup({ pages: 4096, threads: 2, viaProxy: true, epochMs: 25, highWaterBytes });
    await until(() => primary.committedEpoch >= 1, 15_000, 'the initial synchronisation');
    proxy!.rate = 96 * 1024; // ~0.1 MB/s: far below what the writers dirty, even delta-encoded
    await t.ok('rand 30 5'); // 16 MiB region, 5 % per burst: ~0.8 MiB per burst, continuously
    let maxPending = 0;
    const sampler = setInterval(() => { maxPending = Math.max(maxPending, primary.stats().queue.pendingBytes); }, 5);
    later(() => clearInterval(sampler));
    await new Promise((r) => setTimeout(r, 3000));
    const slow = primary.stats();
    expect(slow.queue.skippedCaptures).toBeGreaterThan(0);
    expect(slow.lagMs).toBeGreaterThan(250); // ten epochs behind at least
    // One capture can land on top of a queue just under the mark: at most the whole region more.
    expect(maxPending).toBeLessThan(highWaterBytes + 4096 * 4096);
    const committedSlow = primary.committedEpoch;
    proxy!.rate = 0;
    await t.ok('stop');
    await until(() => primary.stats().lagEpochs <= 2 && primary.committedEpoch > committedSlow, 20_000, 'the standby to catch up');
    expect(primary.stats().queue.coalescedEpochs + primary.stats().queue.skippedCaptures).toBeGreaterThan(0);
  });

  it('standby killed and restarted: it keeps its committed epoch and the primary reconnects', async () => {
    const { dir, security, standby, t, primary } = await setup({ pages: 512 });
    await until(() => primary.committedEpoch >= 3, 15_000, 'three commits');
    await t.ok('stop');
    const port = standby.port;
    await standby.stop();
    const kept = standby.stats().committedEpoch;
    await until(() => primary.state === 'disconnected' || primary.state === 'connecting', 5000, 'the primary to notice');
    const again = await Standby.start({ host: '127.0.0.1', port, dir: `${dir.path}/standby`, security });
    later(() => again.stop());
    expect(again.stats().committedEpoch).toBe(kept);
    await until(() => again.stats().committedEpoch > kept, 20_000, 'a commit on the restarted standby');
    expect(primary.stats().reconnects).toBeGreaterThanOrEqual(1);
  });

  it('a peer with the wrong key is refused in the handshake and changes nothing', async () => {
    const { dir, standby, primary } = await setup({ pages: 256 });
    await until(() => primary.committedEpoch >= 2, 15_000, 'two commits');
    const { security: wrong } = makeKey(dir.path, 'other-key');
    const err = await connect({ host: '127.0.0.1', port: standby.port, security: wrong, timeoutMs: 5000 }).then(
      (l) => { void l.close(); return null; }, (e: Error) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect((err as TransportError).code).toBe('AUTH_FAILED');
    expect(err!.message).toMatch(/pre-shared key/);
    await until(() => standby.stats().rejectedConnections >= 1, 5000, 'the standby to log the rejection');
    const before = primary.committedEpoch;
    await until(() => primary.committedEpoch > before + 2, 10_000, 'commits to go on');
  });

  it('heartbeats on a channel of their own; one naming another session is refused and changes nothing', async () => {
    const { security, standby, primary } = await setup({ pages: 256 });
    await until(() => primary.committedEpoch >= 2, 15_000, 'two commits');
    await until(() => standby.stats().heartbeatChannel, 5000, 'the heartbeat channel');
    const rejectedBefore = standby.stats().rejectedConnections;
    const link = await connect({ host: '127.0.0.1', port: standby.port, security, timeoutMs: 5000 });
    const answer = new Promise<Message>((resolve) => link.on('message', (m: Message) => { if (m.t !== 'hb') resolve(m); }));
    await link.send({ t: 'hello', proto: PROTOCOL_VERSION, role: 'primary', lineage: primary.lineage, generation: primary.generation, pid: primary.pid, host: 'elsewhere', agent: 'test', channel: 'beats', session: 'not-the-session' });
    const m = await answer;
    expect(m.t).toBe('refuse');
    expect(m.t === 'refuse' && m.code).toBe('NO_SESSION');
    await link.close();
    await until(() => standby.stats().rejectedConnections > rejectedBefore, 5000, 'the standby to log the refusal');
    // The primary's own channel and the replication carry on.
    expect(standby.stats().heartbeatChannel).toBe(true);
    const before = primary.committedEpoch;
    await until(() => primary.committedEpoch > before + 2, 10_000, 'commits to go on');
  });

  it('a primary that stops while its data connection is behind is not taken for dead: its goodbye comes first on the heartbeat channel', async () => {
    const { standby, proxy, t, primary } = await setup({ pages: 1024, viaProxy: true });
    await until(() => primary.committedEpoch >= 2 && standby.stats().heartbeatChannel, 15_000, 'two commits and the heartbeat channel');
    const suspected: unknown[] = [];
    standby.on('suspect', (e: unknown) => suspected.push(e));
    // A slow link: the data connection falls behind by seconds, the heartbeats (small) do not.
    proxy!.rate = 4000;
    await t.ok('rand 30 100');
    await until(() => primary.stats().lagMs > 1000, 10_000, 'a backlog on the data connection');
    await primary.stop();
    // The data connection's goodbye would come seconds later, behind the backlog (here it
    // never comes: the proxy drops what it holds when the primary closes); the heartbeats
    // stop now. Without a goodbye on their channel, their silence looked like death.
    await new Promise((r) => setTimeout(r, 1500));
    expect(suspected).toEqual([]);
    expect(standby.stats().role).toBe('standby');
  });

  it('the standby answers on the heartbeat channel as often as the hello asked (beatsMs), not at its own rate', async () => {
    const dir = tempDir('repl-beatsms');
    later(() => dir.remove());
    const { security } = makeKey(dir.path);
    const standby = await Standby.start({ host: '127.0.0.1', port: 0, dir: `${dir.path}/standby`, security, heartbeatMs: 20 });
    later(() => standby.stop());
    const hello = { t: 'hello' as const, proto: PROTOCOL_VERSION, role: 'primary' as const, lineage: 'lin-beatsms', generation: 1, pid: 4242, host: 'h', agent: 'test' };
    const data = await connect({ host: '127.0.0.1', port: standby.port, security, timeoutMs: 5000 });
    later(() => data.close());
    const welcome = new Promise<Message>((resolve) => data.on('message', (m: Message) => { if (m.t !== 'hb') resolve(m); }));
    await data.send(hello);
    const w = await welcome;
    expect(w.t).toBe('welcome');
    const session = w.t === 'welcome' ? w.session : undefined;
    expect(session).toBeTruthy();
    const countBeats = async (beatsMs: number | undefined): Promise<number> => {
      const beats = await connect({ host: '127.0.0.1', port: standby.port, security, heartbeatMs: 20, timeoutMs: 5000 });
      try {
        const answer = new Promise<Message>((resolve) => beats.on('message', (m: Message) => { if (m.t !== 'hb') resolve(m); }));
        await beats.send({ ...hello, channel: 'beats', session, ...(beatsMs === undefined ? {} : { beatsMs }) });
        expect((await answer).t).toBe('welcome');
        let n = 0;
        beats.on('heartbeat', () => { n++; });
        await new Promise((r) => setTimeout(r, 1000));
        return n;
      } finally {
        await beats.close();
      }
    };
    // Asked for one every 250 ms: about 4 in a second. Not asked: the standby's 20 ms, about 50.
    const asked = await countBeats(250);
    const own = await countBeats(undefined);
    expect(asked).toBeGreaterThanOrEqual(2);
    expect(asked).toBeLessThanOrEqual(7);
    expect(own).toBeGreaterThan(20);
  });

  it('heartbeats come from a thread of their own: a primary whose event loop stalls is not suspected', async () => {
    // The standby in its own process (this one is about to stall), without auto-promotion:
    // a suspicion shows as its 'suspect' event.
    const dir = tempDir('repl-beats');
    later(() => dir.remove());
    const { file, security } = makeKey(dir.path);
    const port = await freePort();
    const sb = new CliProcess(['standby', '--listen', `127.0.0.1:${port}`, '--dir', `${dir.path}/standby`, '--secret-file', file, '--no-auto-promote']);
    later(() => sb.stop());
    await sb.next('listening', 30_000);
    const t = await Target.spawn({ pages: 256, threads: 1 });
    later(() => t.kill());
    const primary = await Primary.start({ pid: t.pid, host: '127.0.0.1', port, security, epochMs: 50, baseImage: false });
    later(() => primary.stop());
    await until(() => primary.committedEpoch >= 3, 15_000, 'three commits');
    await until(() => primary.stats().heartbeatChannel, 5000, 'the heartbeat channel');
    // That thread runs at a higher priority, not the process (this process is the primary;
    // the heartbeat threads of the tests before may still be closing).
    const nice = (t: string | number) => Number(readFileSync(`/proc/self/task/${t}/stat`, 'utf8').split(') ')[1]!.split(' ')[16]);
    expect(readdirSync('/proc/self/task').map(nice)).toContain(HEARTBEAT_NICENESS);
    expect(nice(process.pid)).not.toBe(HEARTBEAT_NICENESS);
    // Four times the detection time the standby announced (about 150 ms) with this
    // thread blocked: no timer, no socket write on it.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 600);
    const before = primary.committedEpoch;
    await until(() => primary.committedEpoch > before + 2, 10_000, 'commits to go on');
    expect(sb.last('suspect')).toBeUndefined();
  });

  it('a primary with the wrong key fails at once with a clear error (no endless retries)', async () => {
    const { dir, standby } = await setup({ pages: 256 });
    const { security: wrong } = makeKey(dir.path, 'other-key');
    const t2 = await Target.spawn({ pages: 64 });
    later(() => t2.kill());
    const p2 = await Primary.start({ pid: t2.pid, host: '127.0.0.1', port: standby.port, security: wrong, epochMs: 50, baseImage: false });
    later(() => p2.stop());
    const err = await new Promise<Error>((resolve) => p2.once('error', resolve));
    expect(err.message).toMatch(/pre-shared key does not match/);
    await until(() => p2.state === 'stopped', 5000, 'the primary to stop');
    expect(p2.stats().reconnects).toBe(0);
  });
});
