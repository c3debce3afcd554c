// The replication link: frames, validation, TLS with a pre-shared key or certificates, the
// loopback rule for plain TCP, hostile peers, heartbeats and backpressure. Real TCP on
// 127.0.0.1, port 0.
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ReplicateError } from '../src/errors.js';
import type { EndMsg, EpochState, Message, PagesMsg } from '../src/protocol/messages.js';
import { applyStateDelta, stateDelta } from '../src/protocol/state-delta.js';
import { validateMessage } from '../src/transport/message-schema.js';
import { FrameError, TransportError } from '../src/transport/errors.js';
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, encodeFrameParts, FrameDecoder } from '../src/transport/frame-codec.js';
import { connect, listen, parseHostPort, type Link, type LinkCloseInfo, type ListeningServer, type RejectedInfo } from '../src/transport/link.js';
import {
  generateSecret, isLoopback, readSecretFile, writeSecretFile, type SecurityOptions,
} from '../src/transport/security.js';
import { Cleanup, hasOpenssl, makePki, nextClose, rawConnect, sleep, socketClosed, waitFor, type Pki } from './helpers/transport.js';

const cleanup = new Cleanup();
afterEach(async () => { await cleanup.run(); });

const PSK: SecurityOptions = { kind: 'psk', key: randomBytes(32) };
const OTHER_PSK: SecurityOptions = { kind: 'psk', key: randomBytes(32) };
const INSECURE: SecurityOptions = { kind: 'insecure' };
const PSK_MISMATCH = "the peer's pre-shared key does not match ours (check --secret-file on both hosts)";

// --- sample messages --------------------------------------------------------------------------

/** `n` pages at consecutive addresses with recognisable content. */
function pagesMsg(n: number, epoch = 3): PagesMsg {
  const addrs = Buffer.alloc(n * 8);
  for (let i = 0; i < n; i++) addrs.writeBigUInt64LE(0x7f00_0000_0000n + BigInt(i) * 4096n, i * 8);
  const zeros = Buffer.alloc(16);
  zeros.writeBigUInt64LE(0x5555_0000_0000n, 0);
  zeros.writeBigUInt64LE(0x5555_0000_1000n, 8);
  return { t: 'pages', epoch, codec: 'raw', addrs, zeros, rawBytes: n * 4096, data: randomBytes(n * 4096) };
}

function endMsg(): EndMsg {
  return {
    t: 'end', epoch: 3, pages: 2048, capturedAt: 1_760_000_000_123.5,
    state: {
      pid: 4242,
      threads: [
        { tid: 4242, gpregs: randomBytes(216), xsave: randomBytes(2696), sigmask: 0xffff_ffff_ffff_ffffn, restart: 'restart', rseq: { addr: 0x7f00_0000_1000n, size: 32 } },
        { tid: 4243, gpregs: randomBytes(216), xsave: randomBytes(2696), sigmask: 0n, restart: 'none', rseq: { addr: 0x7f00_0000_1000n, size: 32 } },
      ],
      vmas: [
        { start: 0x5555_0000_0000n, end: 0x5555_0002_1000n, perms: 'rw-p', offset: 0n, dev: '00:00', inode: 0, path: '[heap]' },
        { start: 0x7f00_0000_0000n, end: 0x7f00_0010_0000n, perms: 'r-xp', offset: 0x2000n, dev: '253:1', inode: 1_234_567, path: '/usr/lib/libc.so.6' },
        { start: 0xffff_ffff_ff60_0000n, end: 0xffff_ffff_ff60_1000n, perms: '--xp', offset: 0n, dev: '00:00', inode: 0, path: '[vsyscall]' },
      ],
      brk: 0x5555_0002_1000n,
      clocks: { monotonicNs: 123_456_789_012n, boottimeNs: 223_456_789_012n, realtimeNs: 1_760_000_000_123_456_789n },
      fds: [
        { fd: 0, target: '/dev/null', pos: 0n, flags: 0o100000, size: -1, kind: '' },
        { fd: 3, target: '/var/log/app.log', pos: 123_456n, flags: 0o102001, size: 123_456, kind: '' },
        { fd: 4, target: 'socket:[98765]', pos: 0n, flags: 0o4002, size: -1, kind: 'tcp' },
      ],
      children: [],
      base: 'b1-1760000000',
    },
  };
}

/** One message of every type (hb and bye included). */
function everyMessage(): Message[] {
  return [
    { t: 'hello', proto: 1, role: 'primary', lineage: 'lin-0f3a', generation: 2, pid: 4242, host: 'primary-1', agent: 'remus-replicate/0.1.0' },
    { t: 'welcome', proto: 1, lineage: null, generation: 0, committedEpoch: 0 },
    { t: 'welcome', proto: 1, lineage: 'lin-0f3a', generation: 2, committedEpoch: 17 },
    { t: 'welcome', proto: 1, lineage: 'lin-0f3a', generation: 2, committedEpoch: 17, session: '9f2c0d' },
    { t: 'hello', proto: 1, role: 'primary', lineage: 'lin-0f3a', generation: 2, pid: 4242, host: 'primary-1', agent: 'remus-replicate/0.1.0', channel: 'beats', session: '9f2c0d' },
    { t: 'hello', proto: 1, role: 'primary', lineage: 'lin-0f3a', generation: 2, pid: 4242, host: 'primary-1', agent: 'remus-replicate/0.1.0', channel: 'beats', session: '9f2c0d', beatsMs: 500 },
    { t: 'refuse', code: 'STALE_GENERATION', reason: 'generation 1 is older than 2' },
    { t: 'begin', epoch: 3, base: 0, full: true },
    { t: 'begin', epoch: 9, base: 8, full: false },
    { t: 'image', base: 'b1-1760000000', name: 'core-4242.img', offset: 0, data: randomBytes(3000), last: false },
    { t: 'image', base: 'b1-1760000000', name: 'pages-1.img', offset: 1 << 20, data: Buffer.alloc(0), last: true },
    pagesMsg(4),
    { t: 'pages', epoch: 3, codec: 'lz4', addrs: Buffer.alloc(8), zeros: Buffer.alloc(0), rawBytes: 4096, data: Buffer.from([0x1f, 0, 1, 0, 0xff, 0xff]) },
    endMsg(),
    { t: 'ack', epoch: 3, committedAt: 1_760_000_000_456 },
    { t: 'hb', sentAt: 1_760_000_000_000.25, echo: 0 },
    { t: 'hb', sentAt: 1_760_000_000_050.5, echo: 1_760_000_000_049.75, status: 'running' },
    { t: 'hb', sentAt: 1_760_000_000_400.5, echo: 0, skipped: 6 },
    { t: 'bye', reason: 'primary stopping' },
    { t: 'bye', reason: 'target-exited', exitCode: 137 },
  ];
}

// --- hand-made frames, for what encodeFrame refuses to produce ----------------------------------

const rawPackr = new Packr({ useRecords: false });

/** A frame around any body value, with a correct CRC unless told otherwise. */
function handFrame(body: unknown, options: { crc?: number } = {}): Buffer {
  const packed = rawPackr.pack(body);
  const header = Buffer.alloc(8);
  header.writeUInt32BE(packed.length, 0);
  header.writeUInt32BE(options.crc ?? crc32(packed), 4);
  return Buffer.concat([header, packed]);
}

function crc32(b: Buffer): number {
  // Same as zlib.crc32; written out so the test does not just trust the code under test.
  let c = ~0;
  for (const byte of b) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function decodeAll(frames: Buffer[], chunkSize = Infinity): Message[] {
  const d = new FrameDecoder();
  const all = Buffer.concat(frames);
  const out: Message[] = [];
  for (let i = 0; i < all.length; i += Math.min(chunkSize, all.length)) out.push(...d.push(all.subarray(i, i + chunkSize)));
  return out;
}

function frameError(run: () => unknown): FrameError {
  try {
    run();
  } catch (e) {
    expect(e).toBeInstanceOf(FrameError);
    return e as FrameError;
  }
  throw new Error('expected a FrameError');
}

// --- servers and links ------------------------------------------------------------------------

interface TestServer {
  server: ListeningServer;
  port: number;
  links: Link[];
  received: Map<Link, Message[]>;
  closes: Map<Link, LinkCloseInfo>;
  rejected: RejectedInfo[];
  nextLink(): Promise<Link>;
}

async function startServer(security: SecurityOptions, options: { heartbeatMs?: number; maxFrameBytes?: number; handshakeTimeoutMs?: number } = {}): Promise<TestServer> {
  const links: Link[] = [];
  const received = new Map<Link, Message[]>();
  const closes = new Map<Link, LinkCloseInfo>();
  const rejected: RejectedInfo[] = [];
  const waiting: ((l: Link) => void)[] = [];
  const server = cleanup.server(await listen({ host: '127.0.0.1', port: 0, security, ...options, onRejected: (r) => rejected.push(r) }, (link) => {
    links.push(link);
    received.set(link, []);
    link.on('message', (m) => received.get(link)!.push(m));
    link.on('close', (info) => closes.set(link, info));
    waiting.shift()?.(link);
  }));
  let taken = 0;
  return {
    server, port: server.port, links, received, closes, rejected,
    nextLink: () => {
      const ready = links[taken];
      taken++;
      return ready ? Promise.resolve(ready) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

async function connected(security: SecurityOptions, options: { heartbeatMs?: number } = {}): Promise<{ ts: TestServer; client: Link; serverLink: Link }> {
  const ts = await startServer(security, options);
  const client = cleanup.link(await connect({ host: '127.0.0.1', port: ts.port, security, timeoutMs: 5000, ...options }));
  const serverLink = await ts.nextLink();
  return { ts, client, serverLink };
}

/** A fresh, valid client gets a message through: the server is still fine. */
async function expectServerStillServes(ts: TestServer, security: SecurityOptions): Promise<void> {
  const client = cleanup.link(await connect({ host: '127.0.0.1', port: ts.port, security, timeoutMs: 5000 }));
  await client.send({ t: 'ack', epoch: 99, committedAt: 1 });
  await waitFor(() => [...ts.received.values()].some((ms) => ms.some((m) => m.t === 'ack' && m.epoch === 99)), 5000, 'the fresh client\'s ack');
}

function messagesOf(ts: TestServer, link: Link): Message[] {
  return ts.received.get(link) ?? [];
}

// ==============================================================================================

describe('frame codec', () => {
  it('round-trips every message type, in one chunk and byte by byte', () => {
    const msgs = everyMessage();
    const frames = msgs.map((m, i) => encodeFrame(m, i + 1));
    expect(decodeAll(frames)).toEqual(msgs);
    expect(decodeAll(frames, 1)).toEqual(msgs);
    expect(decodeAll(frames, 7)).toEqual(msgs);
  });

  it('keeps bigints as bigints (full u64 range, small values too) and Buffers as Buffers', () => {
    const [decoded] = decodeAll([encodeFrame(endMsg(), 1)]) as [EndMsg];
    const t0 = decoded.state.threads[0]!;
    expect(t0.sigmask).toBe(0xffff_ffff_ffff_ffffn);
    expect(decoded.state.threads[1]!.sigmask).toBe(0n);
    expect(typeof decoded.state.vmas[0]!.offset).toBe('bigint');
    expect(decoded.state.vmas[2]!.start).toBe(0xffff_ffff_ff60_0000n);
    expect(decoded.state.clocks.realtimeNs).toBe(1_760_000_000_123_456_789n);
    expect(Buffer.isBuffer(t0.gpregs)).toBe(true);
    expect(Buffer.isBuffer(t0.xsave)).toBe(true);
    expect(typeof decoded.state.vmas[1]!.inode).toBe('number');
  });

  it('turns small integers in bigint fields into bigints (other encoders send them as plain ints)', () => {
    const end = endMsg();
    const loose = { ...end, state: { ...end.state, brk: 4096, clocks: { monotonicNs: 1, boottimeNs: 2, realtimeNs: 3 }, threads: [{ ...end.state.threads[0]!, sigmask: 5 }] } };
    const [decoded] = decodeAll([handFrame([1, 1, loose])]) as [EndMsg];
    expect(decoded.state.brk).toBe(4096n);
    expect(decoded.state.clocks).toEqual({ monotonicNs: 1n, boottimeNs: 2n, realtimeNs: 3n });
    expect(decoded.state.threads[0]!.sigmask).toBe(5n);
  });

  it('sends large page data without copying it, in the same bytes as one frame', () => {
    for (const pages of [1, 15, 16, 17, 2048]) {
      const msg = pagesMsg(pages);
      const parts = encodeFrameParts(msg, 1);
      const whole = encodeFrame(msg, 1);
      expect(Buffer.concat(parts).equals(whole)).toBe(true);
      // 16 pages and more: the data is the caller's buffer itself, after a small prefix.
      expect(parts.length).toBe(pages * 4096 >= 65_536 ? 2 : 1);
      if (parts.length === 2) expect(parts[1]).toBe(msg.data);
      const [got] = decodeAll(parts) as [PagesMsg];
      expect(got.data.equals(msg.data)).toBe(true);
    }
    const big = pagesMsg(64);
    expect(() => encodeFrameParts(big, 1, 200_000)).toThrow(/above the limit of 200000/);
  });

  it('decodes an 8 MiB pages frame fed in 64 KiB chunks, joining it once', () => {
    const msg = pagesMsg(2048);
    const frame = encodeFrame(msg, 1);
    const d = new FrameDecoder();
    const out: Message[] = [];
    for (let i = 0; i < frame.length; i += 65_536) {
      out.push(...d.push(frame.subarray(i, i + 65_536)));
      expect(d.bufferedBytes).toBeLessThanOrEqual(frame.length);
    }
    expect(out).toHaveLength(1);
    const got = out[0] as PagesMsg;
    expect(got.data.equals(msg.data)).toBe(true);
    expect(got.addrs.equals(msg.addrs)).toBe(true);
    expect(d.bufferedBytes).toBe(0);
  });

  it('refuses an announced length above the limit from the header alone', () => {
    const d = new FrameDecoder({ maxFrameBytes: 1024 });
    const header = Buffer.from([0xff, 0xff, 0xff, 0xff]);
    const e = frameError(() => d.push(header));
    expect(e.reason).toBe('too-large');
    expect(e.message).toMatch(/4294967295 bytes, above the limit of 1024/);
    expect(frameError(() => new FrameDecoder().push(Buffer.from([0x04, 0, 0, 1, 0, 0, 0, 0]))).reason).toBe('too-large');
    expect(DEFAULT_MAX_FRAME_BYTES).toBe(64 * 1024 * 1024);
  });

  it('says so when the "length" is really a TLS record', () => {
    const e = frameError(() => new FrameDecoder().push(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])));
    expect(e.reason).toBe('too-large');
    expect(e.message).toMatch(/look like TLS/);
  });

  it('refuses a bad checksum', () => {
    const frame = encodeFrame({ t: 'ack', epoch: 1, committedAt: 2 }, 1);
    frame[frame.length - 1]! ^= 0x01;
    expect(frameError(() => new FrameDecoder().push(frame)).reason).toBe('checksum');
  });

  it('refuses replayed, skipped and reordered frames', () => {
    const a = encodeFrame({ t: 'ack', epoch: 1, committedAt: 2 }, 1);
    const b = encodeFrame({ t: 'ack', epoch: 2, committedAt: 2 }, 2);
    const d = new FrameDecoder();
    expect(d.push(a)).toHaveLength(1);
    const replay = frameError(() => d.push(a));
    expect(replay.reason).toBe('sequence');
    expect(replay.message).toMatch(/frame number 1 arrived where 2 was expected: a replayed/);
    expect(frameError(() => new FrameDecoder().push(b)).message).toMatch(/dropped or reordered/);
    expect(frameError(() => new FrameDecoder().push(Buffer.concat([b, a]))).reason).toBe('sequence');
  });

  it('refuses a protocol version it does not speak', () => {
    const e = frameError(() => new FrameDecoder().push(handFrame([2, 1, { t: 'ack', epoch: 1, committedAt: 2 }])));
    expect(e.reason).toBe('version');
    expect(e.message).toMatch(/version 2; we speak version 1/);
  });

  it('refuses malformed bodies', () => {
    const cases: Buffer[] = [
      (() => { const body = Buffer.from([0xc1, 0xc1, 0xc1]); return Buffer.concat([u32be(3), u32be(crc32(body)), body]); })(), // 0xc1: never used
      handFrame({ t: 'ack' }), // not an array
      handFrame([1, 1]),
      handFrame([1, 1, { t: 'ack', epoch: 1, committedAt: 2 }, 'extra']),
      handFrame([1, 'one', { t: 'ack', epoch: 1, committedAt: 2 }]),
      Buffer.concat([u32be(0), u32be(0)]), // an empty body
      (() => { // trailing bytes after the value
        const body = Buffer.concat([rawPackr.pack([1, 1, { t: 'ack', epoch: 1, committedAt: 2 }]), Buffer.from([0x00])]);
        return Buffer.concat([u32be(body.length), u32be(crc32(body)), body]);
      })(),
    ];
    for (const frame of cases) expect(frameError(() => new FrameDecoder().push(frame)).reason).toBe('malformed');
  });

  it('refuses unknown message types', () => {
    const e = frameError(() => new FrameDecoder().push(handFrame([1, 1, { t: 'rm-rf', path: '/' }])));
    expect(e.reason).toBe('unknown-type');
    expect(e.message).toMatch(/unknown message type "rm-rf"/);
  });

  it('validates every field of every message type', () => {
    const hello = everyMessage()[0]!;
    const pages = pagesMsg(2);
    const end = endMsg();
    const thread = end.state.threads[0]!;
    const vma = end.state.vmas[0]!;
    const withState = (s: Partial<EndMsg['state']>) => ({ ...end, state: { ...end.state, ...s } });
    const bad: [unknown, RegExp][] = [
      [{ ...hello, pid: -1 }, /hello.pid/],
      [{ ...hello, pid: 1.5 }, /hello.pid/],
      [{ ...hello, generation: Number.NaN }, /hello.generation/],
      [{ ...hello, role: 'standby' }, /hello.role: expected one of primary/],
      [{ ...hello, lineage: 'x'.repeat(300) }, /hello.lineage: expected 1 to 256 characters/],
      [{ ...hello, host: 7 }, /hello.host: expected a string/],
      [{ ...hello, agent: undefined }, /hello.agent/],
      [{ ...hello, extra: 1 }, /hello.extra: unexpected field/],
      [{ t: 'welcome', proto: 1, lineage: 5, generation: 0, committedEpoch: 0 }, /welcome.lineage/],
      [{ t: 'welcome', proto: 1, lineage: null, generation: 0, committedEpoch: -3 }, /welcome.committedEpoch/],
      [{ t: 'refuse', code: '', reason: 'x' }, /refuse.code/],
      [{ t: 'refuse', code: 'X', reason: 'x'.repeat(5000) }, /refuse.reason/],
      [{ t: 'begin', epoch: 3, base: 0, full: 'yes' }, /begin.full: expected true or false/],
      [{ t: 'begin', epoch: 3, base: 2, full: true }, /begin.base: must be 0 in a full batch/],
      [{ t: 'begin', epoch: 3, base: 5, full: false }, /begin.base/],
      [{ t: 'image', base: 'b1', name: '../etc/passwd', offset: 0, data: Buffer.alloc(1), last: true }, /image.name/],
      [{ t: 'image', base: 'b1', name: '..', offset: 0, data: Buffer.alloc(1), last: true }, /image.name/],
      [{ t: 'image', base: 'b/1', name: 'x.img', offset: 0, data: Buffer.alloc(1), last: true }, /image.base/],
      [{ t: 'image', base: 'b1', name: 'x.img', offset: -1, data: Buffer.alloc(1), last: true }, /image.offset/],
      [withState({ fds: [{ fd: -1, target: 'x', pos: 0n, flags: 0, size: -1, kind: '' }] }), /end.state.fds\[0\].fd/],
      [withState({ base: 7 as unknown as string }), /end.state.base/],
      [{ ...pages, codec: 'gzip' }, /pages.codec/],
      [{ ...pages, addrs: pages.addrs.subarray(0, 12) }, /pages.addrs: expected a multiple of 8 bytes/],
      [{ ...pages, addrs: [1, 2] }, /pages.addrs: expected a Buffer/],
      [{ ...pages, zeros: Buffer.alloc(7) }, /pages.zeros: expected a multiple of 8/],
      [{ ...pages, zeros: Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]) }, /pages.zeros\[0\]: 0x1 is not page-aligned/],
      [{ ...pages, rawBytes: 4096 }, /pages.rawBytes: must be 4096 × 2 addresses = 8192/],
      [{ ...pages, data: pages.data.subarray(1) }, /pages.data: must hold rawBytes/],
      [{ ...pages, data: 'bytes' }, /pages.data: expected a Buffer/],
      [{ ...pages, codec: 'lz4', data: Buffer.alloc(9000) }, /pages.data: is not a plausible LZ4 block/],
      [{ ...end, capturedAt: -1 }, /end.capturedAt/],
      [{ ...end, pages: '2048' }, /end.pages/],
      [withState({ pid: 0 }), /end.state.pid: expected a positive/],
      [withState({ brk: -1n }), /end.state.brk: expected an unsigned 64-bit/],
      [withState({ brk: 'x' as unknown as bigint }), /end.state.brk/],
      [withState({ threads: {} as unknown as [] }), /end.state.threads: expected an array/],
      [withState({ threads: [{ ...thread, gpregs: Buffer.alloc(200) }] }), /threads\[0\].gpregs: expected 216 bytes/],
      [withState({ threads: [{ ...thread, xsave: Buffer.alloc(16) }] }), /threads\[0\].xsave: expected 576 to 65536 bytes/],
      [withState({ threads: [{ ...thread, restart: 'maybe' as 'none' }] }), /threads\[0\].restart/],
      [withState({ threads: [{ ...thread, sigmask: 1.5 as unknown as bigint }] }), /threads\[0\].sigmask/],
      [withState({ threads: [{ ...thread, pendingSignal: 0 } as typeof thread] }), /threads\[0\].pendingSignal: unexpected field/],
      [withState({ vmas: [{ ...vma, perms: 'rwx' }] }), /vmas\[0\].perms/],
      [withState({ vmas: [{ ...vma, dev: '../etc' }] }), /vmas\[0\].dev/],
      [withState({ vmas: [{ ...vma, inode: -1 }] }), /vmas\[0\].inode/],
      [withState({ vmas: [{ ...vma, path: 'p'.repeat(9000) }] }), /vmas\[0\].path/],
      [withState({ vmas: [{ ...vma, start: vma.end }] }), /vmas\[0\]: must span whole pages/],
      [withState({ clocks: { monotonicNs: 1n, boottimeNs: 2n } as EndMsg['state']['clocks'] }), /clocks.realtimeNs/],
      [{ t: 'ack', epoch: '7', committedAt: 1 }, /ack.epoch/],
      [{ t: 'ack', epoch: 7, committedAt: Number.POSITIVE_INFINITY }, /ack.committedAt/],
      [{ t: 'hb', sentAt: 1, echo: 0, status: 42 }, /hb.status/],
      [{ t: 'hb', sentAt: 1 }, /hb.echo/],
      [{ t: 'hb', sentAt: 1, echo: 0, skipped: -1 }, /hb.skipped/],
      [{ t: 'bye' }, /bye.reason/],
      [{ t: 'hello', proto: 1, role: 'primary', lineage: 'l', generation: 1, pid: 2, host: 'h', agent: 'a', channel: 'beats' }, /hello.session: is required with channel 'beats'/],
      [{ t: 'hello', proto: 1, role: 'primary', lineage: 'l', generation: 1, pid: 2, host: 'h', agent: 'a', channel: 'data', session: 's' }, /hello.channel/],
      [{ t: 'hello', proto: 1, role: 'primary', lineage: 'l', generation: 1, pid: 2, host: 'h', agent: 'a', beatsMs: 250 }, /hello.beatsMs: is only for channel 'beats'/],
      [{ t: 'hello', proto: 1, role: 'primary', lineage: 'l', generation: 1, pid: 2, host: 'h', agent: 'a', channel: 'beats', session: 's', beatsMs: 0 }, /hello.beatsMs: must be at least 1 ms/],
      [{ t: 'hello', proto: 1, role: 'primary', lineage: 'l', generation: 1, pid: 2, host: 'h', agent: 'a', channel: 'beats', session: 's', beatsMs: 1e9 }, /hello.beatsMs/],
      [{ t: 'welcome', proto: 1, lineage: null, generation: 0, committedEpoch: 0, session: 7 }, /welcome.session/],
      [null, /message: expected an object/],
      [[1, 2], /message: expected an object/],
    ];
    for (const [msg, why] of bad) {
      const e = frameError(() => new FrameDecoder().push(handFrame([1, 1, msg])));
      expect(e.reason, `${why}`).toBe('schema');
      expect(e.message).toMatch(why);
      // The sender refuses the same message before it leaves.
      expect(() => encodeFrame(msg as Message, 1)).toThrow(why);
    }
    // What MessagePack cannot even carry is refused by the sender too.
    expect(() => encodeFrame(withState({ brk: 1n << 64n }), 1)).toThrow(/end.state.brk: expected an unsigned 64-bit/);
    class AckLike { t = 'ack'; epoch = 1; committedAt = 1; }
    expect(() => encodeFrame(new AckLike() as Message, 1)).toThrow(/message: expected a plain object/);
  });

  it('is unusable after an error', () => {
    const d = new FrameDecoder();
    const first = frameError(() => d.push(handFrame([1, 1, { t: 'nope' }])));
    expect(frameError(() => d.push(encodeFrame({ t: 'ack', epoch: 1, committedAt: 1 }, 1)))).toBe(first);
  });

  it('encodeFrame refuses frames above the limit and bad sequence numbers', () => {
    expect(frameError(() => encodeFrame(pagesMsg(4), 1, 4096)).reason).toBe('too-large');
    expect(() => encodeFrame({ t: 'bye', reason: '' }, 0)).toThrow(ReplicateError);
  });
});

function u32be(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

// ==============================================================================================

/** The one message of a single frame, decoded. */
function decodeFrameOne(frame: Buffer): EndMsg {
  const [m] = new FrameDecoder().push(frame);
  return m as EndMsg;
}

describe('state deltas (end.same)', () => {
  const base = endMsg().state;
  const copy = (s: EpochState): EpochState => decodeFrameOne(encodeFrame({ ...endMsg(), state: s }, 1)).state;

  it('an unchanged state travels as pid, brk, clocks and base; the standby rebuilds it whole', () => {
    const next = { ...copy(base), clocks: { ...base.clocks, realtimeNs: base.clocks.realtimeNs + 100_000_000n } };
    const d = stateDelta(base, next);
    expect(d.same).toEqual({ vmas: true, fds: true, children: true, threads: [4242, 4243] });
    expect(d.state.threads).toEqual([]);
    expect(d.state.vmas).toEqual([]);
    const wire = decodeFrameOne(encodeFrame({ ...endMsg(), state: d.state, same: d.same }, 1));
    expect(wire.same).toEqual(d.same);
    const whole = applyStateDelta(base, wire.state, wire.same);
    expect({ ...whole, threads: [...whole.threads].sort((a, b) => a.tid - b.tid) }).toEqual(next);
    expect(encodeFrame({ ...endMsg(), state: d.state, same: d.same }, 1).length).toBeLessThan(encodeFrame({ ...endMsg(), state: next }, 1).length / 5);
  });

  it('changed parts travel: a thread that ran, a new thread, a thread gone, a new mapping, a new descriptor', () => {
    const next = copy(base);
    next.threads[0] = { ...next.threads[0]!, gpregs: randomBytes(216) };
    next.threads.push({ ...next.threads[1]!, tid: 4250 });
    next.threads.splice(1, 1); // 4243 exited
    next.vmas.push({ start: 0x6000_0000_0000n, end: 0x6000_0000_1000n, perms: 'rw-p', offset: 0n, dev: '00:00', inode: 0, path: '' });
    next.fds.push({ fd: 9, target: 'pipe:[1]', pos: 0n, flags: 0, size: -1, kind: '' });
    const d = stateDelta(base, next);
    expect(d.same).toEqual({ children: true });
    expect(d.state.threads.map((t) => t.tid)).toEqual([4242, 4250]);
    expect(applyStateDelta(base, d.state, d.same)).toEqual(next);
    // Only the blocked thread's registers are reused.
    const one = copy(base);
    one.threads[1] = { ...one.threads[1]!, xsave: randomBytes(2696) };
    expect(stateDelta(base, one).same?.threads).toEqual([4242]);
    expect(stateDelta(undefined, next)).toEqual({ state: next });
    expect(stateDelta({ ...base, pid: 1 }, next)).toEqual({ state: next });
  });

  it('a delta the previous state cannot fill is refused, saying why', () => {
    const d = stateDelta(base, copy(base));
    expect(() => applyStateDelta(null, d.state, d.same)).toThrow(/no previous state is committed here/);
    expect(() => applyStateDelta({ ...base, pid: 7 }, d.state, d.same)).toThrow(/pid 7/);
    expect(() => applyStateDelta({ ...base, threads: base.threads.slice(0, 1) }, d.state, d.same)).toThrow(/thread 4243, which the committed state does not have/);
    expect(applyStateDelta(null, base, undefined)).toBe(base);
  });

  it('end.same is checked: true or absent, its lists empty on the wire, no thread twice', () => {
    const m = endMsg();
    const bad: Array<[unknown, RegExp]> = [
      [{ ...m, same: { vmas: 1 } }, /end.same.vmas: must be true/],
      [{ ...m, same: { vmas: true } }, /end.same.vmas: is set but end.state.vmas is not empty/],
      [{ ...m, same: { threads: [4242] } }, /end.same.threads: names thread 4242 twice/],
      [{ ...m, state: { ...m.state, threads: [] }, same: { threads: [5, 5] } }, /names thread 5 twice/],
      [{ ...m, same: { other: true } }, /end.same.other: unexpected field/],
    ];
    for (const [msg, re] of bad) expect(() => validateMessage(msg)).toThrow(re);
  });
});

describe('secret files', () => {
  let dir: string;
  beforeEach(() => { dir = cleanup.dir(mkdtempSync(join(tmpdir(), 'remus-psk-'))); });

  it('generates 32 random bytes in the documented format', () => {
    const text = generateSecret();
    expect(text).toMatch(/^remus-psk-v1 [A-Za-z0-9+/]{43}=\n$/);
    expect(Buffer.from(text.split(' ')[1]!, 'base64')).toHaveLength(32);
    expect(generateSecret()).not.toBe(text);
  });

  it('writes with mode 0600, refuses to overwrite unless forced, and reads back', () => {
    const path = join(dir, 'secret');
    writeSecretFile(path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const key = readSecretFile(path);
    expect(key).toHaveLength(32);
    expect(() => writeSecretFile(path)).toThrow(/already exists: refusing to overwrite/);
    expect(readSecretFile(path).equals(key)).toBe(true);
    chmodSync(path, 0o644);
    writeSecretFile(path, { force: true });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readSecretFile(path).equals(key)).toBe(false);
  });

  it('explains what is wrong with a file', () => {
    const missing = join(dir, 'missing');
    expect(() => readSecretFile(missing)).toThrow(/does not exist/);
    const open = join(dir, 'open');
    writeFileSync(open, generateSecret(), { mode: 0o644 });
    chmodSync(open, 0o644);
    const e = (() => { try { readSecretFile(open); } catch (err) { return err as ReplicateError; } throw new Error('no error'); })();
    expect(e).toBeInstanceOf(ReplicateError);
    expect(e.message).toContain(`chmod 600 ${open}`);
    const garbage = join(dir, 'garbage');
    writeFileSync(garbage, 'hunter2\n', { mode: 0o600 });
    expect(() => readSecretFile(garbage)).toThrow(/is not a remus-replicate secret/);
    const short = join(dir, 'short');
    writeFileSync(short, `remus-psk-v1 ${randomBytes(16).toString('base64')}\n`, { mode: 0o600 });
    expect(() => readSecretFile(short)).toThrow(/is not a remus-replicate secret/);
    expect(() => readSecretFile(dir)).toThrow(/not a regular file/);
    expect(readFileSync(open, 'utf8')).toMatch(/^remus-psk-v1 /);
  });
});

describe('addresses', () => {
  it('parses host:port and [ipv6]:port', () => {
    expect(parseHostPort('standby:7070')).toEqual({ host: 'standby', port: 7070 });
    expect(parseHostPort('[::1]:7070')).toEqual({ host: '::1', port: 7070 });
    expect(parseHostPort('10.0.0.2:1')).toEqual({ host: '10.0.0.2', port: 1 });
    expect(parseHostPort('standby.example.com', { defaultPort: 7070 })).toEqual({ host: 'standby.example.com', port: 7070 });
    expect(parseHostPort('0.0.0.0:0', { allowPortZero: true })).toEqual({ host: '0.0.0.0', port: 0 });
  });

  it('explains bad addresses', () => {
    const bad: [string, RegExp][] = [
      ['', /empty/], ['standby', /port is missing/], ['standby:', /port is missing/], ['standby:http', /not a number/],
      ['standby:70000', /out of range/], ['standby:0', /out of range/], [':7070', /host is missing/],
      ['::1:7070', /IPv6 address in brackets/], ['[standby]:7070', /not an IPv6 address/], ['stand by:7070', /not a host name/],
    ];
    for (const [text, why] of bad) {
      expect(() => parseHostPort(text), text).toThrow(why);
      expect(() => parseHostPort(text)).toThrow(ReplicateError);
    }
  });

  it('knows loopback addresses', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', 'localhost']) expect(isLoopback(h), h).toBe(true);
    for (const h of ['10.1.2.3', '0.0.0.0', '::', '192.168.1.1', 'standby', '::ffff:10.0.0.1', '128.0.0.1']) expect(isLoopback(h), h).toBe(false);
  });
});

// ==============================================================================================

describe('links over TLS with a pre-shared key', () => {
  it('carries every message type both ways, bigints and Buffers intact', async () => {
    const { ts, client, serverLink } = await connected(PSK);
    const got: Message[] = [];
    client.on('message', (m) => got.push(m));
    const msgs = everyMessage().filter((m) => m.t !== 'hb' && m.t !== 'bye'); // those two are the link's own
    for (const m of msgs) await client.send(m);
    for (const m of msgs) await serverLink.send(m);
    await waitFor(() => messagesOf(ts, serverLink).length === msgs.length && got.length === msgs.length, 5000, 'all messages');
    expect(messagesOf(ts, serverLink)).toEqual(msgs);
    expect(got).toEqual(msgs);
  });

  it('carries an 8 MiB pages message intact', async () => {
    const { ts, client, serverLink } = await connected(PSK);
    const big = pagesMsg(2048);
    expect(big.data.length).toBe(8 * 1024 * 1024);
    await client.send(big);
    await client.send(endMsg());
    await waitFor(() => messagesOf(ts, serverLink).length === 2, 10_000, 'the pages');
    const [pages, end] = messagesOf(ts, serverLink) as [PagesMsg, EndMsg];
    expect(pages.data.equals(big.data)).toBe(true);
    expect(pages.addrs.equals(big.addrs)).toBe(true);
    expect(pages.zeros.equals(big.zeros)).toBe(true);
    expect(pages.rawBytes).toBe(big.rawBytes);
    expect(end.t).toBe('end'); // and in order, after the pages
    expect(end.state.threads[0]!.sigmask).toBe(0xffff_ffff_ffff_ffffn);
  });

  it('refuses a wrong key on both sides with a clear message, delivering nothing', async () => {
    const ts = await startServer(PSK);
    const err = await connect({ host: '127.0.0.1', port: ts.port, security: OTHER_PSK, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err).toMatchObject({ code: 'AUTH_FAILED', message: expect.stringContaining(PSK_MISMATCH) });
    await waitFor(() => ts.rejected.length === 1, 5000, 'the server to report the rejection');
    expect(ts.rejected[0]!.reason).toBe(PSK_MISMATCH);
    expect(ts.rejected[0]!.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(ts.links).toHaveLength(0);
    await expectServerStillServes(ts, PSK);
  });

  it('a client in insecure mode does not get through', async () => {
    const ts = await startServer(PSK);
    const err = await connect({ host: '127.0.0.1', port: ts.port, security: INSECURE, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect((err as Error).message).toMatch(/does it expect TLS/);
    await waitFor(() => ts.rejected.length === 1);
    expect(ts.rejected[0]!.reason).toMatch(/does not speak TLS 1.3/);
    expect(ts.links).toHaveLength(0);
  });

  it('a TLS client meets an insecure server: both sides say what is wrong', async () => {
    const ts = await startServer(INSECURE);
    const err = await connect({ host: '127.0.0.1', port: ts.port, security: PSK, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'PROTOCOL', message: expect.stringMatching(/does not speak TLS 1.3: is it set up for insecure/) });
    await waitFor(() => ts.closes.size === 1);
    const info = [...ts.closes.values()][0]!;
    expect(info.error).toBeInstanceOf(FrameError);
    expect(info.reason).toMatch(/look like TLS/);
  });

  it('garbage instead of a ClientHello, and a client that says nothing, are rejected; the server keeps serving', async () => {
    const ts = await startServer(PSK, { handshakeTimeoutMs: 300 });
    const garbage = cleanup.socket(await rawConnect(ts.port, INSECURE));
    garbage.write(randomBytes(2000));
    const silent = cleanup.socket(await rawConnect(ts.port, INSECURE));
    await waitFor(() => ts.rejected.length === 2, 5000, 'two rejections');
    // The garbage fails at once, or (if it happens to announce a long record) times out too.
    const reasons = ts.rejected.map((r) => r.reason);
    expect(reasons).toContain('the TLS handshake did not finish in time');
    for (const r of reasons) expect(r).toMatch(/does not speak TLS|TLS handshake failed|closed the connection|did not finish in time/);
    await socketClosed(garbage);
    await socketClosed(silent);
    expect(ts.links).toHaveLength(0);
    await expectServerStillServes(ts, PSK);
  });
});

describe('links with certificates', () => {
  let pki: Pki;
  beforeAll(() => {
    if (!hasOpenssl()) throw new Error('the openssl command is needed to make test certificates: apt-get install -y openssl');
    pki = makePki();
  });
  afterAll(() => { if (pki) rmSync(pki.dir, { recursive: true, force: true }); });

  it('mutual TLS succeeds with certificates from the shared CA', async () => {
    const ts = await startServer({ kind: 'cert', ...pki.server });
    const client = cleanup.link(await connect({ host: '127.0.0.1', port: ts.port, security: { kind: 'cert', ...pki.client }, timeoutMs: 5000 }));
    const serverLink = await ts.nextLink();
    const got: Message[] = [];
    client.on('message', (m) => got.push(m));
    await client.send({ t: 'ack', epoch: 2, committedAt: 1 });
    await serverLink.send({ t: 'ack', epoch: 3, committedAt: 1 });
    await waitFor(() => messagesOf(ts, serverLink).length === 1 && got.length === 1);
    expect(got).toEqual([{ t: 'ack', epoch: 3, committedAt: 1 }]);
    expect(messagesOf(ts, serverLink)).toEqual([{ t: 'ack', epoch: 2, committedAt: 1 }]);
    expect(ts.rejected).toEqual([]);
  });

  it('refuses a client certificate from another CA, on both sides, delivering nothing', async () => {
    const ts = await startServer({ kind: 'cert', ...pki.server });
    const err = await connect({ host: '127.0.0.1', port: ts.port, security: { kind: 'cert', ...pki.rogueClient }, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'AUTH_FAILED', message: expect.stringMatching(/did not accept our credentials/) });
    await waitFor(() => ts.rejected.length === 1);
    expect(ts.rejected[0]!.reason).toMatch(/certificate is not signed by our CA/);
    expect(ts.links).toHaveLength(0);
    await expectServerStillServes(ts, { kind: 'cert', ...pki.client });
  });

  it('a client that trusts another CA refuses the server', async () => {
    const ts = await startServer({ kind: 'cert', ...pki.server });
    const err = await connect({ host: '127.0.0.1', port: ts.port, security: { kind: 'cert', ...pki.distrustfulClient }, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'AUTH_FAILED', message: expect.stringMatching(/not signed by our CA/) });
    expect(ts.links).toHaveLength(0);
  });

  it('missing certificate files are a clear error before listening', async () => {
    const err = await listen({ host: '127.0.0.1', port: 0, security: { kind: 'cert', ...pki.server, key: '/nonexistent/key.pem' } }, () => undefined).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/cannot read the private key \/nonexistent\/key.pem: no such file/) });
  });
});

describe('insecure plain TCP', () => {
  it('is refused for a non-loopback address before connecting or listening', async () => {
    // A connection attempt to 10.1.2.3 would hang until the timeout: the refusal comes first.
    const err = await connect({ host: '10.1.2.3', port: 7070, security: INSECURE, timeoutMs: 60_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err).toMatchObject({ code: 'INSECURE_NOT_LOOPBACK', message: expect.stringMatching(/refusing to connect to 10\.1\.2\.3 without encryption.*only allowed on loopback/) });
    await expect(listen({ host: '0.0.0.0', port: 0, security: INSECURE }, () => undefined)).rejects.toMatchObject({ code: 'INSECURE_NOT_LOOPBACK' });
  });

  it('is accepted on loopback', async () => {
    const { ts, client, serverLink } = await connected(INSECURE);
    await client.send(pagesMsg(16));
    await waitFor(() => messagesOf(ts, serverLink).length === 1);
    expect((messagesOf(ts, serverLink)[0] as PagesMsg).rawBytes).toBe(16 * 4096);
    const viaName = cleanup.link(await connect({ host: 'localhost', port: ts.port, security: INSECURE, timeoutMs: 5000 }).catch(async (e: unknown) => {
      // 'localhost' may resolve to ::1 first, where this IPv4 server does not listen.
      if (e instanceof TransportError && e.code === 'REFUSED') return connect({ host: '127.0.0.1', port: ts.port, security: INSECURE });
      throw e;
    }));
    expect(viaName.closed).toBe(false);
  });
});

// ==============================================================================================

describe.each([
  ['insecure', INSECURE],
  ['pre-shared key', PSK],
] as const)('hostile input on a server (%s)', (_mode, security) => {
  const ack = (epoch: number): Message => ({ t: 'ack', epoch, committedAt: 1 });

  /** Writes `bytes` on a fresh raw connection; returns the server side's close. */
  async function attack(ts: TestServer, bytes: Buffer | Buffer[], then: 'wait' | 'end' = 'wait'): Promise<{ info: LinkCloseInfo; delivered: Message[]; socket: Socket }> {
    const socket = cleanup.socket(await rawConnect(ts.port, security));
    const link = await ts.nextLink();
    for (const b of Array.isArray(bytes) ? bytes : [bytes]) socket.write(b);
    if (then === 'end') socket.end();
    const info = await nextClose(link);
    return { info, delivered: messagesOf(ts, link), socket };
  }

  function expectRefused(info: LinkCloseInfo, reason: string): void {
    expect(info.by).toBe('error');
    expect(info.error).toBeInstanceOf(FrameError);
    expect((info.error as FrameError).reason).toBe(reason);
    expect(info.reason).toContain(`protocol error (${reason})`);
  }

  it('random bytes', async () => {
    const ts = await startServer(security);
    for (let i = 0; i < 5; i++) {
      // Refused as a bad frame, or (if they announce a plausible length) at the end of the stream.
      const { info, delivered } = await attack(ts, randomBytes(4096), 'end');
      if (info.by === 'error') expect(info.error).toBeInstanceOf(FrameError);
      else expect(info.reason).toBe('the peer closed the connection without a bye');
      expect(delivered).toEqual([]);
    }
    await expectServerStillServes(ts, security);
  });

  it('a truncated frame, then the connection closes', async () => {
    const ts = await startServer(security);
    const frame = encodeFrame(pagesMsg(8), 1);
    const { info, delivered } = await attack(ts, frame.subarray(0, frame.length / 2), 'end');
    expect(info).toMatchObject({ by: 'peer', reason: 'the peer closed the connection without a bye' });
    expect(delivered).toEqual([]);
    await expectServerStillServes(ts, security);
  });

  it('an absurd length (0xFFFFFFFF) is refused from the header, without buffering', async () => {
    const ts = await startServer(security);
    const before = process.memoryUsage().arrayBuffers;
    // Only the header is sent: the refusal cannot come from having read the body.
    const { info, socket } = await attack(ts, Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    expectRefused(info, 'too-large');
    expect(info.reason).toMatch(/announces 4294967295 bytes/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 * 1024 * 1024);
    await socketClosed(socket);
    await expectServerStillServes(ts, security);
  });

  it('a bad CRC', async () => {
    const ts = await startServer(security);
    const frame = encodeFrame(ack(1), 1);
    frame[5]! ^= 0x40;
    const { info, delivered } = await attack(ts, frame);
    expectRefused(info, 'checksum');
    expect(delivered).toEqual([]);
    await expectServerStillServes(ts, security);
  });

  it('a replayed frame', async () => {
    const ts = await startServer(security);
    const frame = encodeFrame(ack(1), 1);
    const { info, delivered } = await attack(ts, [frame, frame]);
    expectRefused(info, 'sequence');
    expect(delivered).toEqual([ack(1)]); // once, not twice
    await expectServerStillServes(ts, security);
  });

  it('reordered frames', async () => {
    const ts = await startServer(security);
    const { info, delivered } = await attack(ts, [encodeFrame(ack(2), 2), encodeFrame(ack(1), 1)]);
    expectRefused(info, 'sequence');
    expect(delivered).toEqual([]);
    await expectServerStillServes(ts, security);
  });

  it('a wrong protocol version', async () => {
    const ts = await startServer(security);
    const { info } = await attack(ts, handFrame([7, 1, ack(1)]));
    expectRefused(info, 'version');
    await expectServerStillServes(ts, security);
  });

  it('a valid frame with an unknown message type', async () => {
    const ts = await startServer(security);
    const { info, delivered } = await attack(ts, handFrame([1, 1, { t: 'shell', cmd: 'id' }]));
    expectRefused(info, 'unknown-type');
    expect(delivered).toEqual([]);
    await expectServerStillServes(ts, security);
  });

  it('a valid frame with fields of the wrong type', async () => {
    const ts = await startServer(security);
    const { info, delivered } = await attack(ts, handFrame([1, 1, { t: 'pages', epoch: 1, codec: 'raw', addrs: 'x', zeros: [], rawBytes: 1e12, data: null }]));
    expectRefused(info, 'schema');
    expect(info.reason).toMatch(/pages.addrs: expected a Buffer/);
    expect(delivered).toEqual([]);
    await expectServerStillServes(ts, security);
  });
});

// ==============================================================================================

describe('heartbeats and liveness', () => {
  it('measure the round-trip time, carry the status, and move lastHeardAt', async () => {
    const { client, serverLink } = await connected(PSK, { heartbeatMs: 20 });
    const statuses: (string | undefined)[] = [];
    serverLink.on('heartbeat', (hb) => statuses.push(hb.status));
    client.status = 'running';
    const heardAt = serverLink.lastHeardAt;
    await waitFor(() => client.rttMs !== undefined && serverLink.rttMs !== undefined && statuses.includes('running'), 5000, 'rtt on both sides');
    await sleep(100);
    expect(client.rttMs).toBeGreaterThan(0);
    expect(client.rttMs).toBeLessThan(1000);
    expect(serverLink.rttMs).toBeGreaterThan(0);
    expect(serverLink.lastHeardAt).toBeGreaterThan(heardAt);
    expect(serverLink.silentMs).toBeLessThan(1000);
  });

  it('a peer that goes silent is visible through lastHeardAt staying old', async () => {
    const ts = await startServer(PSK, { heartbeatMs: 20 });
    const mute = cleanup.socket(await rawConnect(ts.port, PSK));
    const link = await ts.nextLink();
    const heard = new Promise((resolve) => link.once('heartbeat', resolve));
    mute.write(encodeFrame({ t: 'hb', sentAt: Date.now(), echo: 0 }, 1));
    await heard;
    const heardAt = link.lastHeardAt;
    await sleep(300);
    expect(link.lastHeardAt).toBe(heardAt);
    expect(link.silentMs).toBeGreaterThanOrEqual(250);
    expect(link.closed).toBe(false); // deciding the peer is dead is the owner's call
    // Any bytes count, even part of a frame: a heartbeat can be stuck behind megabytes of pages.
    mute.write(encodeFrame(pagesMsg(1), 2).subarray(0, 100));
    await waitFor(() => link.lastHeardAt > heardAt, 2000, 'bytes to count');
    expect(messagesOf(ts, link)).toEqual([]);
  });

  it('a paused reader stops hearing, and hears again after resume', async () => {
    const { client } = await connected(INSECURE, { heartbeatMs: 10 });
    await waitFor(() => client.rttMs !== undefined);
    client.pause();
    await sleep(50); // what was already read is accounted for
    const heardAt = client.lastHeardAt;
    await sleep(200);
    expect(client.lastHeardAt).toBe(heardAt);
    client.resume();
    await waitFor(() => client.lastHeardAt > heardAt, 2000, 'heartbeats after resume');
  });
});

describe('backpressure, close and failures', () => {
  it('send() stalls while the reader does not read, then completes', async () => {
    const { ts, client, serverLink } = await connected(PSK);
    serverLink.pause();
    const frameBytes = 1024 * 1024;
    const total = 160; // well above what the kernel buffers on loopback (~40 MiB here)
    const msg = pagesMsg(frameBytes / 4096);
    let sent = 0;
    let maxQueued = 0;
    const pump = (async () => {
      while (sent < total) {
        await client.send(msg);
        sent++;
        maxQueued = Math.max(maxQueued, client.queuedBytes);
      }
    })();
    await sleep(500);
    const stalledAt = sent;
    await sleep(300);
    expect(sent).toBe(stalledAt);
    expect(stalledAt).toBeLessThan(total);
    expect(client.queuedBytes).toBeLessThan(2 * frameBytes + 64 * 1024); // one frame (plus a heartbeat), not everything
    serverLink.resume();
    await pump;
    await waitFor(() => messagesOf(ts, serverLink).length === total, 30_000, 'every frame');
    expect(maxQueued).toBeLessThan(2 * frameBytes + 64 * 1024);
  });

  it('keeps messages that arrive before anyone listens', async () => {
    const ts = await startServer(PSK);
    ts.server.on('link', (link) => { void link.send({ t: 'welcome', proto: 1, lineage: null, generation: 0, committedEpoch: 0 }); });
    const client = cleanup.link(await connect({ host: '127.0.0.1', port: ts.port, security: PSK, timeoutMs: 5000 }));
    await sleep(100); // the welcome has arrived by now, with nobody listening
    const got = await new Promise<Message>((resolve) => client.once('message', resolve));
    expect(got).toMatchObject({ t: 'welcome', committedEpoch: 0 });
  });

  it('close() says bye with the reason; send() afterwards rejects; no timer keeps running', async () => {
    const intervals = vi.spyOn(globalThis, 'setInterval');
    const cleared = vi.spyOn(globalThis, 'clearInterval');
    try {
      const { ts, client, serverLink } = await connected(PSK, { heartbeatMs: 10 });
      const closeInfo = nextClose(client);
      await client.close('primary stopping');
      expect(await closeInfo).toMatchObject({ by: 'local', reason: 'primary stopping' });
      await waitFor(() => ts.closes.has(serverLink));
      expect(ts.closes.get(serverLink)).toMatchObject({ by: 'peer', reason: 'the peer closed the link: primary stopping' });
      await expect(client.send({ t: 'ack', epoch: 1, committedAt: 1 })).rejects.toMatchObject({ code: 'CLOSED' });
      await expect(serverLink.send({ t: 'ack', epoch: 1, committedAt: 1 })).rejects.toMatchObject({ code: 'CLOSED' });
      expect(await client.close('again')).toBeUndefined(); // idempotent, never rejects
      const made = intervals.mock.results.map((r) => r.value as unknown);
      expect(made).toHaveLength(2); // one heartbeat timer per link
      const gone = new Set(cleared.mock.calls.map((c) => c[0] as unknown));
      for (const timer of made) expect(gone.has(timer)).toBe(true);
    } finally {
      intervals.mockRestore();
      cleared.mockRestore();
    }
  });

  it('close() on a link whose peer vanished still resolves', async () => {
    const { ts, client, serverLink } = await connected(PSK, { heartbeatMs: 10 });
    await ts.server.close();
    await nextClose(client);
    expect(await serverLink.close('late')).toBeUndefined();
    expect(await client.close('late')).toBeUndefined();
  });

  it('server.close() closes the open links with a bye', async () => {
    const { ts, client } = await connected(PSK);
    const info = nextClose(client);
    await ts.server.close();
    expect(await info).toMatchObject({ by: 'peer', reason: 'the peer closed the link: the server is shutting down' });
    expect(ts.server.links.size).toBe(0);
  });

  it('a message listener that throws ends that link, not the process', async () => {
    const { client, serverLink } = await connected(INSECURE);
    serverLink.removeAllListeners('message');
    serverLink.on('message', () => { throw new Error('handler bug'); });
    await client.send({ t: 'ack', epoch: 1, committedAt: 1 });
    const info = await nextClose(serverLink);
    expect(info).toMatchObject({ by: 'error', reason: expect.stringMatching(/a 'message' listener failed on 'ack': handler bug/) });
  });

  it('connect: refused, timed out, bad options', async () => {
    const probe = createTcpServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const freePort = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    await expect(connect({ host: '127.0.0.1', port: freePort, security: PSK })).rejects.toMatchObject({ code: 'REFUSED', message: expect.stringMatching(/refused the connection/) });

    // A server that accepts and never answers: neither a TLS handshake nor a first frame comes.
    const silent: TcpServer = createTcpServer((s) => { cleanup.socket(s); });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const port = (silent.address() as { port: number }).port;
      for (const security of [PSK, INSECURE]) {
        await expect(connect({ host: '127.0.0.1', port, security, timeoutMs: 200 })).rejects.toMatchObject({ code: 'TIMEOUT', message: expect.stringMatching(/within 200 ms/) });
      }
    } finally {
      await cleanup.run();
      await new Promise<void>((r) => silent.close(() => r()));
    }

    await expect(connect({ host: '127.0.0.1', port: 0, security: PSK })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(connect({ host: '127.0.0.1', port: 1, security: { kind: 'psk', key: Buffer.alloc(3) } })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(connect({ host: '127.0.0.1', port: 1, security: INSECURE, heartbeatMs: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('listen: an address in use is a clear error', async () => {
    const ts = await startServer(PSK);
    await expect(listen({ host: '127.0.0.1', port: ts.port, security: PSK }, () => undefined)).rejects.toMatchObject({ message: expect.stringMatching(/already in use/) });
  });
});
