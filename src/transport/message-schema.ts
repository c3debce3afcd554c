// Runtime validation of every message type in src/protocol/messages.ts.
//
// A frame's body comes from the network: its CRC only proves it was not damaged, not that
// its sender is sane. Everything is checked here, field by field, so the layers above can
// trust the TypeScript types. The result is a fresh object holding only the known fields,
// with the numeric types normalised (a 64-bit integer may arrive as a number or a bigint
// depending on the encoder; `bigint` fields are always bigint and `number` fields always
// number after this).
import type {
  AckMsg, BeginMsg, ByeMsg, EndMsg, EpochState, FdWire, HeartbeatMsg, HelloMsg, ImageMsg, Message, MessageType, PagesMsg,
  RefuseMsg, ThreadStateWire, VmaWire, WelcomeMsg,
} from '../protocol/messages.js';
import { FrameError } from './errors.js';

const PAGE_SIZE = 4096;

/** Bounds on what one message may carry. */
export const MESSAGE_LIMITS = {
  /** Pages with content in one `pages` message (256 MiB once decoded): senders split larger batches. */
  maxPagesPerMessage: 65_536,
  /** All-zero pages listed in one `pages` message. */
  maxZeroPagesPerMessage: 1 << 20,
  maxThreads: 1 << 20,
  maxVmas: 1 << 20,
  /** PID_MAX_LIMIT on 64-bit Linux. */
  maxPid: 4_194_304,
  /** struct user_regs_struct: 27 × u64. */
  gpregsBytes: 27 * 8,
  /** Legacy area (512) + XSAVE header (64); the largest areas today (AMX) are about 11 KiB. */
  minXsaveBytes: 576,
  maxXsaveBytes: 65_536,
  maxPathChars: 8192,
  maxReasonChars: 4096,
  maxShortChars: 256,
  maxFds: 1 << 20,
  /** Bytes of an image file in one `image` message. */
  maxImageChunk: 16 << 20,
} as const;

const MAX_U64 = (1n << 64n) - 1n;
const MESSAGE_TYPES: readonly MessageType[] = ['hello', 'welcome', 'refuse', 'begin', 'image', 'pages', 'end', 'ack', 'hb', 'bye'];

/** Validates an untrusted value as a Message; throws FrameError 'unknown-type' or 'schema'. */
export function validateMessage(value: unknown): Message {
  const head = object(value, 'message');
  const t = head.t;
  if (typeof t !== 'string') fail('message.t', 'expected the message type as a string', t);
  if (!(MESSAGE_TYPES as readonly string[]).includes(t)) {
    throw new FrameError('unknown-type', `unknown message type ${JSON.stringify(t.slice(0, 40))}`);
  }
  switch (t as MessageType) {
    case 'hello': return hello(value);
    case 'welcome': return welcome(value);
    case 'refuse': return refuse(value);
    case 'begin': return begin(value);
    case 'image': return image(value);
    case 'pages': return pages(value);
    case 'end': return end(value);
    case 'ack': return ack(value);
    case 'hb': return heartbeat(value);
    case 'bye': return bye(value);
  }
}

function hello(v: unknown): HelloMsg {
  const o = fields(v, 'hello', ['t', 'proto', 'role', 'lineage', 'generation', 'pid', 'host', 'agent', 'channel', 'session', 'beatsMs']);
  const msg: HelloMsg = {
    t: 'hello',
    proto: count(o.proto, 'hello.proto'),
    role: oneOf(o.role, 'hello.role', ['primary'] as const),
    lineage: text(o.lineage, 'hello.lineage', MESSAGE_LIMITS.maxShortChars, 1),
    generation: count(o.generation, 'hello.generation'),
    pid: pid(o.pid, 'hello.pid'),
    host: text(o.host, 'hello.host', MESSAGE_LIMITS.maxShortChars),
    agent: text(o.agent, 'hello.agent', MESSAGE_LIMITS.maxShortChars),
  };
  if (o.channel !== undefined) msg.channel = oneOf(o.channel, 'hello.channel', ['beats'] as const);
  if (o.session !== undefined) msg.session = text(o.session, 'hello.session', MESSAGE_LIMITS.maxShortChars, 1);
  if (msg.channel && !msg.session) fail('hello.session', "is required with channel 'beats'", o.session);
  if (o.beatsMs !== undefined) {
    msg.beatsMs = count(o.beatsMs, 'hello.beatsMs', 600_000);
    if (msg.beatsMs < 1) fail('hello.beatsMs', 'must be at least 1 ms', o.beatsMs);
    if (!msg.channel) fail('hello.beatsMs', "is only for channel 'beats'", o.beatsMs);
  }
  return msg;
}

function welcome(v: unknown): WelcomeMsg {
  const o = fields(v, 'welcome', ['t', 'proto', 'lineage', 'generation', 'committedEpoch', 'session']);
  const msg: WelcomeMsg = {
    t: 'welcome',
    proto: count(o.proto, 'welcome.proto'),
    lineage: o.lineage === null ? null : text(o.lineage, 'welcome.lineage', MESSAGE_LIMITS.maxShortChars, 1),
    generation: count(o.generation, 'welcome.generation'),
    committedEpoch: count(o.committedEpoch, 'welcome.committedEpoch'),
  };
  if (o.session !== undefined) msg.session = text(o.session, 'welcome.session', MESSAGE_LIMITS.maxShortChars, 1);
  return msg;
}

function refuse(v: unknown): RefuseMsg {
  const o = fields(v, 'refuse', ['t', 'code', 'reason']);
  return {
    t: 'refuse',
    code: text(o.code, 'refuse.code', MESSAGE_LIMITS.maxShortChars, 1),
    reason: text(o.reason, 'refuse.reason', MESSAGE_LIMITS.maxReasonChars),
  };
}

function begin(v: unknown): BeginMsg {
  const o = fields(v, 'begin', ['t', 'epoch', 'base', 'full']);
  const msg: BeginMsg = {
    t: 'begin',
    epoch: count(o.epoch, 'begin.epoch'),
    base: count(o.base, 'begin.base'),
    full: bool(o.full, 'begin.full'),
  };
  if (msg.full && msg.base !== 0) fail('begin.base', 'must be 0 in a full batch', msg.base);
  if (msg.base > msg.epoch) fail('begin.base', `must not be above the epoch (${msg.epoch})`, msg.base);
  return msg;
}

function pages(v: unknown): PagesMsg {
  const o = fields(v, 'pages', ['t', 'epoch', 'codec', 'addrs', 'zeros', 'rawBytes', 'data']);
  const msg: PagesMsg = {
    t: 'pages',
    epoch: count(o.epoch, 'pages.epoch'),
    codec: oneOf(o.codec, 'pages.codec', ['lz4', 'raw', 'delta'] as const),
    addrs: pageAddresses(o.addrs, 'pages.addrs', MESSAGE_LIMITS.maxPagesPerMessage),
    zeros: pageAddresses(o.zeros, 'pages.zeros', MESSAGE_LIMITS.maxZeroPagesPerMessage),
    rawBytes: count(o.rawBytes, 'pages.rawBytes'),
    data: bytes(o.data, 'pages.data'),
  };
  if (msg.codec === 'delta') {
    // The page-delta batch carries its own addresses (docs/wire-format.md); its decoder
    // checks the rest, including rawBytes against the pages it holds.
    if (msg.addrs.length || msg.zeros.length) fail('pages.addrs', "must be empty with codec 'delta' (the batch holds the addresses)", msg.addrs);
    if (msg.rawBytes % PAGE_SIZE !== 0 || msg.rawBytes / PAGE_SIZE > MESSAGE_LIMITS.maxPagesPerMessage) fail('pages.rawBytes', 'must be a whole number of pages, at most the per-message limit', msg.rawBytes);
    if (msg.data.length === 0) fail('pages.data', "must hold a page-delta batch with codec 'delta'", msg.data);
    return msg;
  }
  const expected = (msg.addrs.length / 8) * PAGE_SIZE;
  if (msg.rawBytes !== expected) fail('pages.rawBytes', `must be 4096 × ${msg.addrs.length / 8} addresses = ${expected}`, msg.rawBytes);
  if (msg.codec === 'raw' && msg.data.length !== msg.rawBytes) {
    fail('pages.data', `must hold rawBytes (${msg.rawBytes}) bytes with codec 'raw'`, msg.data);
  }
  if (msg.codec === 'lz4') {
    const bound = msg.rawBytes + Math.floor(msg.rawBytes / 255) + 16; // LZ4_COMPRESSBOUND
    if (msg.rawBytes === 0 ? msg.data.length !== 0 : msg.data.length === 0 || msg.data.length > bound) {
      fail('pages.data', `is not a plausible LZ4 block for ${msg.rawBytes} bytes (at most ${bound})`, msg.data);
    }
  }
  return msg;
}

function end(v: unknown): EndMsg {
  const o = fields(v, 'end', ['t', 'epoch', 'pages', 'capturedAt', 'state', 'same']);
  const msg: EndMsg = {
    t: 'end',
    epoch: count(o.epoch, 'end.epoch'),
    pages: count(o.pages, 'end.pages'),
    capturedAt: timestamp(o.capturedAt, 'end.capturedAt'),
    state: epochState(o.state, 'end.state'),
  };
  if (o.same !== undefined) msg.same = stateSame(o.same, msg.state);
  return msg;
}

/** end.same: each part named is left out of the state (an empty list on the wire). */
function stateSame(v: unknown, state: EpochState): NonNullable<EndMsg['same']> {
  const o = fields(v, 'end.same', ['vmas', 'fds', 'children', 'threads']);
  const same: NonNullable<EndMsg['same']> = {};
  for (const k of ['vmas', 'fds', 'children'] as const) {
    if (o[k] === undefined) continue;
    if (o[k] !== true) fail(`end.same.${k}`, 'must be true when present', o[k]);
    if (state[k].length !== 0) fail(`end.same.${k}`, `is set but end.state.${k} is not empty`, state[k].length);
    same[k] = true;
  }
  if (o.threads !== undefined) {
    const tids = list(o.threads, 'end.same.threads', MESSAGE_LIMITS.maxThreads).map((t, i) => pid(t, `end.same.threads[${i}]`));
    const sent = new Set(state.threads.map((t) => t.tid));
    const seen = new Set<number>();
    for (const tid of tids) {
      if (seen.has(tid) || sent.has(tid)) fail('end.same.threads', `names thread ${tid} twice`, tid);
      seen.add(tid);
    }
    if (tids.length + state.threads.length > MESSAGE_LIMITS.maxThreads) fail('end.same.threads', `more than ${MESSAGE_LIMITS.maxThreads} threads in all`, tids.length);
    same.threads = tids;
  }
  return same;
}

function epochState(v: unknown, path: string): EpochState {
  const o = fields(v, path, ['pid', 'threads', 'vmas', 'brk', 'clocks', 'fds', 'children', 'base']);
  const clocks = fields(o.clocks, `${path}.clocks`, ['monotonicNs', 'boottimeNs', 'realtimeNs']);
  return {
    pid: pid(o.pid, `${path}.pid`),
    threads: list(o.threads, `${path}.threads`, MESSAGE_LIMITS.maxThreads).map((t, i) => threadState(t, `${path}.threads[${i}]`)),
    vmas: list(o.vmas, `${path}.vmas`, MESSAGE_LIMITS.maxVmas).map((m, i) => vma(m, `${path}.vmas[${i}]`)),
    brk: u64(o.brk, `${path}.brk`),
    clocks: {
      monotonicNs: u64(clocks.monotonicNs, `${path}.clocks.monotonicNs`),
      boottimeNs: u64(clocks.boottimeNs, `${path}.clocks.boottimeNs`),
      realtimeNs: u64(clocks.realtimeNs, `${path}.clocks.realtimeNs`),
    },
    fds: list(o.fds, `${path}.fds`, MESSAGE_LIMITS.maxFds).map((f, i) => fdState(f, `${path}.fds[${i}]`)),
    children: list(o.children, `${path}.children`, MESSAGE_LIMITS.maxThreads).map((c, i) => pid(c, `${path}.children[${i}]`)),
    base: text(o.base, `${path}.base`, MESSAGE_LIMITS.maxShortChars),
  };
}

function fdState(v: unknown, path: string): FdWire {
  const o = fields(v, path, ['fd', 'target', 'pos', 'flags', 'size', 'kind']);
  const size = o.size;
  if (size !== -1) count(size, `${path}.size`);
  return {
    fd: count(o.fd, `${path}.fd`, 1 << 30),
    target: text(o.target, `${path}.target`, MESSAGE_LIMITS.maxPathChars),
    pos: u64(o.pos, `${path}.pos`),
    flags: count(o.flags, `${path}.flags`, 0xffff_ffff),
    size: size as number,
    kind: pattern(o.kind, `${path}.kind`, /^[a-z-]{0,16}$/, "like 'tcp-listen' or ''"),
  };
}

function image(v: unknown): ImageMsg {
  const o = fields(v, 'image', ['t', 'base', 'name', 'offset', 'data', 'last']);
  const name = pattern(o.name, 'image.name', /^[A-Za-z0-9._-]{1,128}$/, 'a file name without slashes');
  if (name === '.' || name === '..') fail('image.name', 'must be a file name');
  return {
    t: 'image', base: pattern(o.base, 'image.base', /^[A-Za-z0-9._-]{1,64}$/, 'an id like "b1-1795420000"'), name,
    offset: count(o.offset, 'image.offset'), data: bytes(o.data, 'image.data', 0, MESSAGE_LIMITS.maxImageChunk), last: bool(o.last, 'image.last'),
  };
}

function threadState(v: unknown, path: string): ThreadStateWire {
  const o = fields(v, path, ['tid', 'gpregs', 'xsave', 'sigmask', 'restart', 'rseq']);
  const rseq = fields(o.rseq, `${path}.rseq`, ['addr', 'size']);
  return {
    tid: pid(o.tid, `${path}.tid`),
    gpregs: bytes(o.gpregs, `${path}.gpregs`, MESSAGE_LIMITS.gpregsBytes, MESSAGE_LIMITS.gpregsBytes),
    xsave: bytes(o.xsave, `${path}.xsave`, MESSAGE_LIMITS.minXsaveBytes, MESSAGE_LIMITS.maxXsaveBytes),
    sigmask: u64(o.sigmask, `${path}.sigmask`),
    restart: oneOf(o.restart, `${path}.restart`, ['none', 'restart', 'interrupted'] as const),
    rseq: { addr: u64(rseq.addr, `${path}.rseq.addr`), size: count(rseq.size, `${path}.rseq.size`, 4096) },
  };
}

function vma(v: unknown, path: string): VmaWire {
  const o = fields(v, path, ['start', 'end', 'perms', 'offset', 'dev', 'inode', 'path']);
  const m: VmaWire = {
    start: u64(o.start, `${path}.start`),
    end: u64(o.end, `${path}.end`),
    perms: pattern(o.perms, `${path}.perms`, /^[r-][w-][x-][ps]$/, 'like "rw-p"'),
    offset: u64(o.offset, `${path}.offset`),
    dev: pattern(o.dev, `${path}.dev`, /^[0-9a-f]{1,8}:[0-9a-f]{1,8}$/i, 'like "253:1"'),
    inode: count(o.inode, `${path}.inode`),
    path: text(o.path, `${path}.path`, MESSAGE_LIMITS.maxPathChars),
  };
  if (m.start % BigInt(PAGE_SIZE) !== 0n || m.end % BigInt(PAGE_SIZE) !== 0n || m.start >= m.end) {
    fail(path, `must span whole pages with start < end (got 0x${m.start.toString(16)}-0x${m.end.toString(16)})`);
  }
  return m;
}

function ack(v: unknown): AckMsg {
  const o = fields(v, 'ack', ['t', 'epoch', 'committedAt']);
  return { t: 'ack', epoch: count(o.epoch, 'ack.epoch'), committedAt: timestamp(o.committedAt, 'ack.committedAt') };
}

function heartbeat(v: unknown): HeartbeatMsg {
  const o = fields(v, 'hb', ['t', 'sentAt', 'echo', 'status', 'skipped']);
  const msg: HeartbeatMsg = { t: 'hb', sentAt: timestamp(o.sentAt, 'hb.sentAt'), echo: timestamp(o.echo, 'hb.echo') };
  if (o.status !== undefined) msg.status = text(o.status, 'hb.status', MESSAGE_LIMITS.maxShortChars);
  if (o.skipped !== undefined) msg.skipped = count(o.skipped, 'hb.skipped');
  return msg;
}

function bye(v: unknown): ByeMsg {
  const o = fields(v, 'bye', ['t', 'reason', 'exitCode']);
  const msg: ByeMsg = { t: 'bye', reason: text(o.reason, 'bye.reason', MESSAGE_LIMITS.maxReasonChars) };
  if (o.exitCode !== undefined) msg.exitCode = count(o.exitCode, 'bye.exitCode', 1 << 16);
  return msg;
}

// --- field checkers -------------------------------------------------------------------------

type Fields = Record<string, unknown>;

function fail(path: string, problem: string, ...value: [unknown?]): never {
  const got = value.length > 0 ? ` (got ${describe(value[0])})` : '';
  throw new FrameError('schema', `${path}: ${problem}${got}`);
}

/** What a value is, briefly and without dumping it (it may be megabytes). */
function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'nothing';
  if (Buffer.isBuffer(v)) return `a Buffer of ${v.length} bytes`;
  if (Array.isArray(v)) return `an array of ${v.length}`;
  switch (typeof v) {
    case 'string': return v.length > 40 ? `a string of ${v.length} characters` : JSON.stringify(v);
    case 'number': case 'boolean': return String(v);
    case 'bigint': return `${v}n`;
    case 'object': return `a ${Object.getPrototypeOf(v)?.constructor?.name ?? 'null-prototype object'}`;
    default: return typeof v;
  }
}

function object(v: unknown, path: string): Fields {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || ArrayBuffer.isView(v)) fail(path, 'expected an object', v);
  const proto: unknown = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) fail(path, 'expected a plain object', v);
  return v as Fields;
}

/** An object with exactly these fields (absent optional fields read as undefined). */
function fields(v: unknown, path: string, known: readonly string[]): Fields {
  const o = object(v, path);
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) fail(`${path}.${key.slice(0, 40)}`, 'unexpected field');
  }
  return o;
}

/** A count, epoch, pid...: a non-negative safe integer (a bigint in range is converted). */
function count(v: unknown, path: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = typeof v === 'bigint' && v >= 0n && v <= BigInt(max) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > max) {
    fail(path, `expected an integer between 0 and ${max}`, v);
  }
  return n;
}

function pid(v: unknown, path: string): number {
  const n = count(v, path, MESSAGE_LIMITS.maxPid);
  if (n === 0) fail(path, 'expected a positive process or thread ID', v);
  return n;
}

/** Wall-clock milliseconds: finite, non-negative, fractions allowed. */
function timestamp(v: unknown, path: string): number {
  const n = typeof v === 'bigint' && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) fail(path, 'expected a non-negative time in milliseconds', v);
  return n;
}

/** An unsigned 64-bit value (an address, a mask, nanoseconds): always a bigint afterwards. */
function u64(v: unknown, path: string): bigint {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v !== 'bigint' || v < 0n || v > MAX_U64) fail(path, 'expected an unsigned 64-bit integer (bigint)', v);
  return v;
}

function bool(v: unknown, path: string): boolean {
  if (typeof v !== 'boolean') fail(path, 'expected true or false', v);
  return v;
}

function text(v: unknown, path: string, maxChars: number, minChars = 0): string {
  if (typeof v !== 'string') fail(path, 'expected a string', v);
  if (v.length > maxChars || v.length < minChars) fail(path, `expected ${minChars} to ${maxChars} characters`, v);
  return v;
}

function pattern(v: unknown, path: string, re: RegExp, like: string): string {
  const s = text(v, path, 32);
  if (!re.test(s)) fail(path, `expected a value ${like}`, s);
  return s;
}

function oneOf<const T extends string>(v: unknown, path: string, values: readonly T[]): T {
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) fail(path, `expected one of ${values.join(', ')}`, v);
  return v as T;
}

function bytes(v: unknown, path: string, min = 0, max = Number.MAX_SAFE_INTEGER): Buffer {
  if (!Buffer.isBuffer(v)) fail(path, 'expected a Buffer', v);
  if (v.length < min || v.length > max) fail(path, min === max ? `expected ${min} bytes` : `expected ${min} to ${max} bytes`, v);
  return v;
}

function list(v: unknown, path: string, max: number): unknown[] {
  if (!Array.isArray(v)) fail(path, 'expected an array', v);
  if (v.length > max) fail(path, `expected at most ${max} entries`, v);
  return v;
}

/** u64 little-endian page addresses: whole entries, page-aligned, at most `maxPages`. */
function pageAddresses(v: unknown, path: string, maxPages: number): Buffer {
  const b = bytes(v, path);
  if (b.length % 8 !== 0) fail(path, 'expected a multiple of 8 bytes (u64 addresses)', b);
  if (b.length / 8 > maxPages) fail(path, `expected at most ${maxPages} addresses`, b);
  for (let i = 0; i < b.length; i += 8) {
    // Little-endian: the low 12 bits are the first byte and the low nibble of the second.
    if (b[i] !== 0 || (b[i + 1]! & 0x0f) !== 0) fail(`${path}[${i / 8}]`, `0x${b.readBigUInt64LE(i).toString(16)} is not page-aligned`);
  }
  return b;
}
