// The primary's heartbeat channel, run on a thread of its own (see beats-channel.ts for why).
// It connects, says hello with the data session's id, and then lets the Link send its
// heartbeats until told to stop or until the data session ends; a dropped channel is
// reopened at once. It reports to the main thread by messages (open, refused, log lines) and
// by one shared number: when it last heard the standby (Date.now()).
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import type { HelloMsg, Message } from '../protocol/messages.js';
import { connect, type Link } from '../transport/link.js';
import type { BeatsToMain, BeatsWorkerData } from './beats-channel.js';

const data = workerData as BeatsWorkerData;
const heard = new Float64Array(data.heard);
const security = data.security.kind === 'psk' ? { kind: 'psk' as const, key: Buffer.from(data.security.key) } : data.security;
let stopping = false;
let current: Link | undefined;
/** The goodbye in flight: resolves once the standby closed its end (it has read it). */
let closing: Promise<void> = Promise.resolve();
const wake = new AbortController();

const post = (m: BeatsToMain): void => parentPort!.postMessage(m);

// This thread alone at a higher priority (nice -10): on a host whose cores are all busy
// (the target, our capture and encoding, an initial sync) its timer fired up to 100 ms
// late, the standby's detector learnt that jitter and took twice as long to detect a dead
// primary. It sends 20 small frames a second, so it cannot crowd anything out.
// /proc/thread-self names this thread's id, which setpriority(2) takes on Linux.
try {
  const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
  if (tid !== process.pid) setPriority(tid, data.niceness);
} catch (e) {
  post({ t: 'log', level: 'debug', msg: 'heartbeat thread keeps the default priority', fields: { err: (e as Error).message } });
}

parentPort!.on('message', (m: { t: 'stop'; reason: string }) => {
  if (m.t !== 'stop') return;
  stopping = true;
  if (current) closing = current.close(m.reason);
  wake.abort();
});

async function openOnce(): Promise<'refused' | string> {
  let beats: Link | undefined;
  try {
    beats = await connect({ host: data.host, port: data.port, security, heartbeatMs: data.heartbeatMs, timeoutMs: 2000 });
    current = beats;
    if (stopping) { beats.close('session ended'); return 'stopped'; }
    const link = beats;
    const closed = new Promise<string>((r) => link.once('close', (c: { reason: string }) => r(c.reason)));
    const answer = new Promise<Message>((resolve) => link.on('message', (m: Message) => { if (m.t !== 'hb') resolve(m); }));
    link.on('heartbeat', () => { heard[0] = Date.now(); });
    await link.send(data.hello as HelloMsg);
    const m = await Promise.race([answer, closed.then((why) => ({ t: 'closed' as const, why })), sleep(5000, undefined, { ref: false }).then(() => ({ t: 'timeout' as const }))]);
    if (m.t === 'refuse') { post({ t: 'refused', code: m.code, reason: m.reason }); link.close('refused'); return 'refused'; }
    if (m.t !== 'welcome') throw new Error(m.t === 'closed' ? `closed: ${m.why}` : m.t === 'timeout' ? 'no answer in 5 s' : `unexpected ${m.t}`);
    heard[0] = Date.now();
    post({ t: 'open' });
    const why = await closed;
    post({ t: 'lost' });
    return why;
  } catch (e) {
    beats?.close('failed');
    throw e;
  } finally {
    current = undefined;
  }
}

async function run(): Promise<void> {
  let delay = 10;
  while (!stopping) {
    try {
      const why = await openOnce();
      if (why === 'refused') return;
      if (!stopping) post({ t: 'log', level: 'warn', msg: 'heartbeat channel lost; reopening', fields: { reason: why } });
      delay = 10;
    } catch (e) {
      if (!stopping) post({ t: 'log', level: 'debug', msg: 'cannot open a heartbeat channel; retrying', fields: { err: (e as Error).message } });
    }
    await sleep(delay, undefined, { signal: wake.signal }).catch(() => undefined);
    delay = Math.min(1000, delay * 2);
  }
}

// 'ended' only once the goodbye was read: the primary closes its data connection after
// this, and the standby must have heard 'primary stopping' here first (see Primary.stop).
void run().finally(async () => { await closing; post({ t: 'ended' }); parentPort!.close(); });
