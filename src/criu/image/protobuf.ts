// A minimal protobuf wire-format reader/writer, made for editing CRIU images in place.
//
// A message is parsed into the ordered list of its fields, each kept with the exact bytes
// it was read from (key included). Serialising writes those bytes back unchanged, so a
// message that is parsed and written again is identical byte for byte, whatever it holds:
// fields this code knows nothing about, non-minimal varints, packed or unpacked repeated
// fields, unknown wire encodings of known fields. Only the fields a caller sets are
// re-encoded (minimally), and they stay where they were in the field order.
//
//   key = varint(field_number << 3 | wire_type)
//   wire type 0  VARINT  value: 1..10 bytes, 7 bits each, low group first, MSB = "more"
//   wire type 1  I64     value: 8 bytes little-endian
//   wire type 2  LEN     varint length, then that many bytes (string, bytes, submessage, packed)
//   wire type 5  I32     value: 4 bytes little-endian
//   (3 and 4, the deprecated groups, are refused.)
//
// No schema: callers say which field number and which encoding they mean. CRIU's images
// are proto2, where a `required` field is written even when it is zero; the setters here
// always write the field they are given (there is no "default value means absent").

export const WireType = { Varint: 0, I64: 1, Len: 2, I32: 5 } as const;
export type WireType = (typeof WireType)[keyof typeof WireType];

export class ProtobufError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtobufError';
  }
}

export interface Field {
  /** Field number. */
  readonly no: number;
  readonly wt: WireType;
  /** The field exactly as it is (or will be) serialised: key and value. */
  readonly raw: Buffer;
  /** The value's bytes: a varint's bytes, 8 or 4 fixed bytes, or a LEN field's content. */
  readonly value: Buffer;
}

// ---------------------------------------------------------------------------------------
// Varints

/** Reads a varint at `pos`: [value, next position]. Throws on a truncated or > 10-byte varint. */
export function readVarint(buf: Buffer, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new ProtobufError(`truncated varint at byte ${pos}`);
    const b = buf[pos++]!;
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [BigInt.asUintN(64, result), pos];
    shift += 7n;
  }
  throw new ProtobufError(`varint longer than 10 bytes at byte ${pos - 10}`);
}

/** Fast path for small varints (keys, lengths): a JS number, exact up to 2^53. */
function readSmallVarint(buf: Buffer, pos: number): [number, number] {
  let result = 0;
  let mul = 1;
  for (let i = 0; i < 8; i++) {
    if (pos >= buf.length) throw new ProtobufError(`truncated varint at byte ${pos}`);
    const b = buf[pos++]!;
    result += (b & 0x7f) * mul;
    if ((b & 0x80) === 0) return [result, pos];
    mul *= 128;
  }
  const [v, next] = readVarint(buf, pos - 8);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtobufError(`length or key too large at byte ${pos - 8}`);
  return [Number(v), next];
}

/** Minimal encoding of an unsigned 64-bit value (negative numbers: two's complement, 10 bytes). */
export function encodeVarint(value: bigint | number): Buffer {
  let v = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Buffer.from(out);
}

export function zigzagEncode(v: bigint): bigint {
  return BigInt.asUintN(64, (v << 1n) ^ (v < 0n ? -1n : 0n));
}

export function zigzagDecode(v: bigint): bigint {
  return (v >> 1n) ^ -(v & 1n);
}

function key(no: number, wt: WireType): Buffer {
  if (!Number.isInteger(no) || no < 1 || no > 0x1fffffff) throw new ProtobufError(`bad field number ${no}`);
  return encodeVarint(BigInt(no) * 8n + BigInt(wt));
}

// ---------------------------------------------------------------------------------------
// Field constructors

export function varintField(no: number, value: bigint | number): Field {
  const value_ = encodeVarint(value);
  return { no, wt: WireType.Varint, raw: Buffer.concat([key(no, WireType.Varint), value_]), value: value_ };
}

export function lenField(no: number, content: Buffer): Field {
  const k = key(no, WireType.Len);
  const len = encodeVarint(content.length);
  const raw = Buffer.concat([k, len, content]);
  return { no, wt: WireType.Len, raw, value: raw.subarray(k.length + len.length) };
}

export function fixed64Field(no: number, value: bigint): Field {
  const v = Buffer.alloc(8);
  v.writeBigUInt64LE(BigInt.asUintN(64, value));
  return { no, wt: WireType.I64, raw: Buffer.concat([key(no, WireType.I64), v]), value: v };
}

export function fixed32Field(no: number, value: number): Field {
  const v = Buffer.alloc(4);
  v.writeUInt32LE(value >>> 0);
  return { no, wt: WireType.I32, raw: Buffer.concat([key(no, WireType.I32), v]), value: v };
}

/** Decodes a field's value as an unsigned integer (varint or fixed). */
export function fieldUint(f: Field): bigint {
  switch (f.wt) {
    case WireType.Varint: return readVarint(f.value, 0)[0];
    case WireType.I64: return f.value.readBigUInt64LE(0);
    case WireType.I32: return BigInt(f.value.readUInt32LE(0));
    default: throw new ProtobufError(`field ${f.no} is length-delimited, not a number`);
  }
}

// ---------------------------------------------------------------------------------------
// Parsing

/** Splits `buf` into its fields, each a view into `buf` (no copy). */
export function parseFields(buf: Buffer): Field[] {
  const out: Field[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    const [k, afterKey] = readSmallVarint(buf, pos);
    const no = Math.floor(k / 8);
    const wt = k % 8;
    if (no === 0) throw new ProtobufError(`field number 0 at byte ${start}`);
    pos = afterKey;
    let valueStart = pos;
    switch (wt) {
      case WireType.Varint:
        pos = readVarint(buf, pos)[1];
        break;
      case WireType.I64:
        pos += 8;
        break;
      case WireType.I32:
        pos += 4;
        break;
      case WireType.Len: {
        const [len, afterLen] = readSmallVarint(buf, pos);
        valueStart = afterLen;
        pos = afterLen + len;
        break;
      }
      default:
        throw new ProtobufError(`unsupported wire type ${wt} (field ${no}) at byte ${start}`);
    }
    if (pos > buf.length) throw new ProtobufError(`field ${no} runs past the end of the message (byte ${start}, ends at ${pos} of ${buf.length})`);
    out.push({ no, wt: wt as WireType, raw: buf.subarray(start, pos), value: buf.subarray(valueStart, pos) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Messages

type FieldValue = bigint | number;

/**
 * A message as an ordered list of fields. Getters return the last occurrence of a field
 * (protobuf's rule for a non-repeated field seen twice); setters replace every occurrence
 * by one, at the place of the first, or insert it before the first field with a higher
 * number when it is absent (the order protobuf encoders use).
 */
export class Message {
  fields: Field[];

  constructor(fields: Field[] = []) {
    this.fields = fields;
  }

  static parse(buf: Buffer): Message {
    return new Message(parseFields(buf));
  }

  serialize(): Buffer {
    return Buffer.concat(this.fields.map((f) => f.raw));
  }

  /** Length of serialize() without building it. */
  get byteLength(): number {
    let n = 0;
    for (const f of this.fields) n += f.raw.length;
    return n;
  }

  has(no: number): boolean {
    return this.fields.some((f) => f.no === no);
  }

  get(no: number): Field | undefined {
    for (let i = this.fields.length - 1; i >= 0; i--) if (this.fields[i]!.no === no) return this.fields[i];
    return undefined;
  }

  all(no: number): Field[] {
    return this.fields.filter((f) => f.no === no);
  }

  getUint(no: number): bigint | undefined {
    const f = this.get(no);
    return f ? fieldUint(f) : undefined;
  }

  /** Like getUint, but throws naming `what` when the field is missing. */
  requireUint(no: number, what: string): bigint {
    const v = this.getUint(no);
    if (v === undefined) throw new ProtobufError(`${what}: required field ${no} is missing`);
    return v;
  }

  getBytes(no: number): Buffer | undefined {
    const f = this.get(no);
    if (f && f.wt !== WireType.Len) throw new ProtobufError(`field ${no} is not length-delimited`);
    return f?.value;
  }

  getString(no: number): string | undefined {
    return this.getBytes(no)?.toString('utf8');
  }

  getMessage(no: number): Message | undefined {
    const b = this.getBytes(no);
    return b ? Message.parse(b) : undefined;
  }

  /** Every element of a repeated integer field, packed or not (unsigned varints). */
  getRepeatedVarint(no: number): bigint[] {
    const out: bigint[] = [];
    for (const f of this.all(no)) {
      if (f.wt === WireType.Len) {
        let pos = 0;
        while (pos < f.value.length) {
          const [v, next] = readVarint(f.value, pos);
          out.push(v);
          pos = next;
        }
      } else {
        out.push(fieldUint(f));
      }
    }
    return out;
  }

  /** Replaces every occurrence of field `no` by `replacement` (at the first one's place). */
  replace(no: number, replacement: Field[]): this {
    for (const f of replacement) if (f.no !== no) throw new ProtobufError(`replace(${no}) given a field ${f.no}`);
    const first = this.fields.findIndex((f) => f.no === no);
    const rest = this.fields.filter((f) => f.no !== no);
    let at: number;
    if (first >= 0) {
      // Fields before the first occurrence keep their indexes in `rest`.
      at = first;
    } else {
      at = rest.findIndex((f) => f.no > no);
      if (at < 0) at = rest.length;
    }
    rest.splice(at, 0, ...replacement);
    this.fields = rest;
    return this;
  }

  setUint(no: number, value: FieldValue): this {
    return this.replace(no, [varintField(no, value)]);
  }

  setBytes(no: number, content: Buffer): this {
    return this.replace(no, [lenField(no, content)]);
  }

  setMessage(no: number, msg: Message | Buffer): this {
    return this.setBytes(no, Buffer.isBuffer(msg) ? msg : msg.serialize());
  }

  /** A repeated unsigned varint field, unpacked (one key per element, as CRIU's images have it). */
  setRepeatedVarint(no: number, values: readonly FieldValue[]): this {
    return this.replace(no, values.map((v) => varintField(no, v)));
  }

  /** A repeated submessage field. */
  setRepeatedMessage(no: number, messages: ReadonlyArray<Message | Buffer>): this {
    return this.replace(no, messages.map((m) => lenField(no, Buffer.isBuffer(m) ? m : m.serialize())));
  }

  remove(no: number): this {
    return this.replace(no, []);
  }

  clone(): Message {
    return new Message([...this.fields]);
  }
}
