// The frame: how one message travels on the byte stream of a link.
//
//    0                   4                   8                          8 + length
//   +-------------------+-------------------+--------------------------+
//   | length  (u32, BE) | crc32   (u32, BE) | body   (length bytes)    |
//   +-------------------+-------------------+--------------------------+
//
//   length  size of the body in bytes, at most maxFrameBytes (default 64 MiB)
//   crc32   CRC-32 (zlib's, as zlib.crc32 computes it) of the body
//   body    MessagePack array [version, seq, message]:
//             version  PROTOCOL_VERSION (1)
//             seq      1, 2, 3... per connection and direction, no gaps
//             message  a map, one of the messages of src/protocol/messages.ts
//
// Integers of bigint fields travel as MessagePack int64/uint64, Buffers as bin.
//
// The receiver refuses, and the stream is dead afterwards: a length above its limit (as
// soon as the length is read, before buffering the body), a bad CRC, a body that is not
// exactly one MessagePack value, a version it does not speak, a seq that is not the next
// one (a replayed, dropped or reordered frame), an unknown message type, and a message
// whose fields are not what messages.ts says (see message-schema.ts). TLS already protects
// the stream's integrity and order; the CRC and seq catch the same faults on plain TCP and
// bugs in either end, and cost little next to the encryption.
import { crc32 } from 'node:zlib';
import { Packr, RESERVE_START_SPACE } from 'msgpackr';
import { ReplicateError } from '../errors.js';
import { PROTOCOL_VERSION, type Message } from '../protocol/messages.js';
import { FrameError } from './errors.js';
import { validateMessage } from './message-schema.js';

export { FrameError, type FrameErrorReason } from './errors.js';

export const FRAME_HEADER_BYTES = 8;
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024;
/** What the u32 length field can express. */
const LENGTH_FIELD_MAX = 0xffff_ffff;

// Plain MessagePack, nothing stateful: no records or shared structures (both ends would
// have to agree on them), maps as plain objects, 64-bit integers as bigint.
const packr = new Packr({
  useRecords: false,
  moreTypes: false,
  structuredClone: false,
  bundleStrings: false,
  mapsAsObjects: true,
  int64AsType: 'bigint',
  largeBigIntToFloat: false,
});

export function checkMaxFrameBytes(value: number | undefined): number {
  const max = value ?? DEFAULT_MAX_FRAME_BYTES;
  if (!Number.isSafeInteger(max) || max < 64 || max > LENGTH_FIELD_MAX) {
    throw new ReplicateError('INVALID_ARGUMENT', `maxFrameBytes must be an integer between 64 and ${LENGTH_FIELD_MAX}, got ${String(value)}`);
  }
  return max;
}

/**
 * Encodes `msg` as the frame numbered `seq`. Throws FrameError 'schema' or 'unknown-type'
 * if the message is not valid (the peer would refuse it), 'too-large' if the frame is
 * above `maxFrameBytes`.
 */
export function encodeFrame(msg: Message, seq: number, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Buffer {
  checkSeq(seq);
  validateMessage(msg);
  // Packed after 8 reserved bytes, so the header goes in front without copying the body.
  const frame = packr.pack([PROTOCOL_VERSION, seq, msg], RESERVE_START_SPACE | FRAME_HEADER_BYTES);
  const bodyLength = frame.length - FRAME_HEADER_BYTES;
  checkSize(msg, bodyLength, maxFrameBytes);
  frame.writeUInt32BE(bodyLength, 0);
  frame.writeUInt32BE(crc32(frame.subarray(FRAME_HEADER_BYTES)), 4);
  return frame;
}

function checkSeq(seq: number): void {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new ReplicateError('INVALID_ARGUMENT', `seq must be a positive integer, got ${String(seq)}`);
}

function checkSize(msg: Message, bodyLength: number, maxFrameBytes: number): void {
  if (bodyLength > maxFrameBytes) throw new FrameError('too-large', `a '${msg.t}' frame of ${bodyLength} bytes is above the limit of ${maxFrameBytes} bytes`);
}

/** Page data of at least this many bytes leaves without being copied into the frame. */
const ZERO_COPY_BYTES = 64 * 1024;
const EMPTY = Buffer.alloc(0);

/**
 * The same bytes as encodeFrame, as a list of buffers to write in order: a `pages` message
 * with a large `data` comes out as [everything before data, data itself]. Packing megabytes
 * of pages into a msgpack buffer cost a copy per epoch and, worse, a new ArrayBuffer whose
 * size V8 counts as external memory: every ~64 MiB of those forced a full garbage
 * collection on the primary. The caller must not change `data` until the socket took it.
 */
export function encodeFrameParts(msg: Message, seq: number, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Buffer[] {
  if (msg.t !== 'pages' || msg.data.length < ZERO_COPY_BYTES) return [encodeFrame(msg, seq, maxFrameBytes)];
  checkSeq(seq);
  validateMessage(msg);
  const { data } = msg;
  // `data` last, and empty: its msgpack form is then the two final bytes (bin8, length 0),
  // which a bin32 header for the real data replaces.
  const head = packr.pack(
    [PROTOCOL_VERSION, seq, { t: msg.t, epoch: msg.epoch, codec: msg.codec, addrs: msg.addrs, zeros: msg.zeros, rawBytes: msg.rawBytes, data: EMPTY }],
    RESERVE_START_SPACE | FRAME_HEADER_BYTES,
  );
  const keep = head.length - 2;
  if (head[keep] !== 0xc4 || head[keep + 1] !== 0) throw new Error('encodeFrameParts: msgpack did not end the message with an empty bin');
  const first = Buffer.allocUnsafe(keep + 5);
  head.copy(first, 0, 0, keep);
  first[keep] = 0xc6;
  first.writeUInt32BE(data.length, keep + 1);
  const bodyLength = first.length - FRAME_HEADER_BYTES + data.length;
  checkSize(msg, bodyLength, maxFrameBytes);
  first.writeUInt32BE(bodyLength, 0);
  first.writeUInt32BE(crc32(data, crc32(first.subarray(FRAME_HEADER_BYTES))), 4);
  return [first, data];
}

export interface FrameDecoderOptions {
  /** Largest body accepted; a longer frame is refused before it is buffered. Default 64 MiB. */
  maxFrameBytes?: number;
}

/**
 * Turns a byte stream into messages. Chunks are kept as they come and joined once per frame,
 * so a large frame costs one copy whatever the chunk size. After an error the decoder is
 * dead: every later push throws the same error.
 */
export class FrameDecoder {
  private readonly maxFrameBytes: number;
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  /** Body length and CRC of the frame being received; -1: waiting for a header. */
  private bodyLength = -1;
  private bodyCrc = 0;
  private expectedSeq = 1;
  private failure: FrameError | null = null;

  constructor(options: FrameDecoderOptions = {}) {
    this.maxFrameBytes = checkMaxFrameBytes(options.maxFrameBytes);
  }

  /** Bytes received but not yet decoded (at most one frame plus one chunk). */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Frames decoded so far. */
  get framesDecoded(): number {
    return this.expectedSeq - 1;
  }

  /** Adds bytes from the stream; returns the messages completed by them, in order. */
  push(chunk: Buffer): Message[] {
    this.write(chunk);
    const messages: Message[] = [];
    for (let msg = this.read(); msg; msg = this.read()) messages.push(msg);
    return messages;
  }

  /** Adds bytes from the stream without decoding anything yet. */
  write(chunk: Buffer): void {
    if (this.failure) throw this.failure;
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /**
   * The next complete message, or null until more bytes arrive. Frames before a bad one are
   * returned normally; the bad one throws.
   */
  read(): Message | null {
    if (this.failure) throw this.failure;
    try {
      return this.next();
    } catch (e) {
      this.failure = e instanceof FrameError ? e : new FrameError('malformed', `cannot decode a frame: ${String(e)}`, { cause: e });
      this.chunks.length = 0;
      this.buffered = 0;
      throw this.failure;
    }
  }

  private next(): Message | null {
    if (this.bodyLength < 0) {
      if (this.buffered < 4) return null;
      const length = this.peekUInt32(0);
      if (length > this.maxFrameBytes) throw this.tooLarge(length);
      if (this.buffered < FRAME_HEADER_BYTES) return null;
      const header = this.take(FRAME_HEADER_BYTES);
      this.bodyLength = length;
      this.bodyCrc = header.readUInt32BE(4);
    }
    if (this.buffered < this.bodyLength) return null;
    const body = this.take(this.bodyLength);
    this.bodyLength = -1;
    const seq = this.expectedSeq;
    if (crc32(body) !== this.bodyCrc) throw new FrameError('checksum', `frame ${seq}: the body's CRC-32 does not match its header (corrupted in transit?)`);
    const msg = this.decodeBody(body, seq);
    this.expectedSeq++;
    return msg;
  }

  private decodeBody(body: Buffer, expectedSeq: number): Message {
    let value: unknown;
    let end = -1;
    try {
      // unpackMultiple stops after the first value and says where it ended; plain unpack
      // would JSON-stringify the whole value (megabytes) to complain about trailing bytes.
      packr.unpackMultiple(body, (v: unknown, _start?: number, stop?: number) => {
        value = v;
        end = stop ?? -1;
        return false;
      });
    } catch (e) {
      throw new FrameError('malformed', `frame ${expectedSeq}: the body is not valid MessagePack (${(e as Error).message.slice(0, 200)})`, { cause: e });
    }
    if (end !== body.length) throw new FrameError('malformed', `frame ${expectedSeq}: ${body.length - end} bytes after the MessagePack value`);
    if (!Array.isArray(value)) throw new FrameError('malformed', `frame ${expectedSeq}: the body is not a [version, seq, message] array`);
    const [version, seq, message] = value as unknown[];
    if (version !== PROTOCOL_VERSION) {
      throw typeof version === 'number'
        ? new FrameError('version', `the peer speaks protocol version ${version}; we speak version ${PROTOCOL_VERSION}`)
        : new FrameError('malformed', `frame ${expectedSeq}: the body does not start with a protocol version`);
    }
    if (value.length !== 3) throw new FrameError('malformed', `frame ${expectedSeq}: the body is not a [version, seq, message] array`);
    if (seq !== expectedSeq) throw sequenceError(seq, expectedSeq);
    return validateMessage(message);
  }

  private tooLarge(length: number): FrameError {
    // A TLS record (handshake 0x16 or alert 0x15, then version 0x03..) read as a length is
    // ~350 MiB: say what it really is.
    const first = this.peekBytes(2);
    const looksLikeTls = this.framesDecoded === 0 && first[0]! >= 0x14 && first[0]! <= 0x17 && first[1] === 0x03;
    const hint = looksLikeTls ? ' (these bytes look like TLS: the peer uses TLS and this end expects plain TCP)' : '';
    return new FrameError('too-large', `frame ${this.expectedSeq} announces ${length} bytes, above the limit of ${this.maxFrameBytes}${hint}`);
  }

  private peekUInt32(offset: number): number {
    return this.peekBytes(offset + 4).readUInt32BE(offset);
  }

  /** The first `n` buffered bytes (n is small), without consuming them. */
  private peekBytes(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first;
    return Buffer.concat(this.chunks, n);
  }

  /** Consumes the first `n` buffered bytes: a view when one chunk holds them, else one copy. */
  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    this.buffered -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let used = 0;
    while (filled < n) {
      const chunk = this.chunks[used]!;
      const k = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, k);
      filled += k;
      if (k === chunk.length) used++;
      else this.chunks[used] = chunk.subarray(k);
    }
    this.chunks.splice(0, used);
    return out;
  }
}

function sequenceError(seq: unknown, expected: number): FrameError {
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
    return new FrameError('malformed', `frame ${expected}: the sequence number is not a positive integer`);
  }
  const what = seq < expected ? 'a replayed or duplicated frame' : 'frames were dropped or reordered';
  return new FrameError('sequence', `frame number ${seq} arrived where ${expected} was expected: ${what}`);
}
