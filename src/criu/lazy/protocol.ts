// The wire format of CRIU's page server as the lazy-pages daemon uses it (CRIU 4.x).
// See docs/lazy-pages.md for the whole exchange.
//
// Every message starts with the same 32-byte header, in the host's byte order (the daemon
// sends a C struct as it is in memory; x86-64 is little-endian), naturally aligned:
//
//   offset  0  u32  cmd       low 16 bits: the command; high 16 bits: flags (PE_* of a pagemap)
//   offset  4  u32  (padding, ignored)
//   offset  8  u64  nr_pages  4096-byte pages
//   offset 16  u64  vaddr     the address at dump time (the image's address, not today's)
//   offset 24  u64  dst_id    which image: for PS_IOV_GET, the process's PID (its pagemap id)
//
// The lazy-pages daemon sends only PS_IOV_GET (and PS_IOV_CLOSE, or PS_IOV_FORCE_CLOSE when it
// was given the socket with --ps-socket, at the end). A GET is answered by a header
// PS_IOV_ADD_F with flags PE_PRESENT, the same vaddr and dst_id and nr_pages <= the request's
// (never 0), followed by nr_pages * 4096 bytes of data. CLOSE is answered by an i32 status (0).
import { endianness } from 'node:os';

export const PAGE_SIZE = 4096;
export const HEADER_SIZE = 32;

/** Commands (low 16 bits of cmd). Only GET and the two CLOSEs reach a lazy page server. */
export const PsCmd = {
  ADD: 1,
  HOLE: 2,
  OPEN: 3,
  OPEN2: 4,
  PARENT: 5,
  ADD_F: 6,
  GET: 7,
  CLOSE: 0x1023,
  FORCE_CLOSE: 0x1024,
} as const;

/** Pagemap entry flags (images/pagemap.proto, criu/include/pagemap.h). */
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

const CMD_BITS = 16;
const CMD_MASK = (1 << CMD_BITS) - 1;

export interface PsHeader {
  /** The command (low 16 bits). */
  cmd: number;
  /** The flags (high 16 bits). */
  flags: number;
  nrPages: bigint;
  vaddr: bigint;
  dstId: bigint;
}

const LE = endianness() === 'LE';

export function encodeCmd(cmd: number, flags = 0): number {
  return ((flags << CMD_BITS) | (cmd & CMD_MASK)) >>> 0;
}

export function decodeHeader(buf: Buffer, offset = 0): PsHeader {
  const raw = LE ? buf.readUInt32LE(offset) : buf.readUInt32BE(offset);
  const u64 = (at: number): bigint => (LE ? buf.readBigUInt64LE(offset + at) : buf.readBigUInt64BE(offset + at));
  return { cmd: raw & CMD_MASK, flags: raw >>> CMD_BITS, nrPages: u64(8), vaddr: u64(16), dstId: u64(24) };
}

export function encodeHeader(h: PsHeader, out: Buffer = Buffer.alloc(HEADER_SIZE), offset = 0): Buffer {
  const cmd = encodeCmd(h.cmd, h.flags);
  if (LE) {
    out.writeUInt32LE(cmd, offset);
    out.writeUInt32LE(0, offset + 4);
    out.writeBigUInt64LE(BigInt.asUintN(64, h.nrPages), offset + 8);
    out.writeBigUInt64LE(BigInt.asUintN(64, h.vaddr), offset + 16);
    out.writeBigUInt64LE(BigInt.asUintN(64, h.dstId), offset + 24);
  } else {
    out.writeUInt32BE(cmd, offset);
    out.writeUInt32BE(0, offset + 4);
    out.writeBigUInt64BE(BigInt.asUintN(64, h.nrPages), offset + 8);
    out.writeBigUInt64BE(BigInt.asUintN(64, h.vaddr), offset + 16);
    out.writeBigUInt64BE(BigInt.asUintN(64, h.dstId), offset + 24);
  }
  return out;
}

/** The i32 status that answers PS_IOV_CLOSE / PS_IOV_FORCE_CLOSE. */
export function encodeStatus(status: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeInt32LE(status, 0);
  else b.writeInt32BE(status, 0);
  return b;
}

export function cmdName(cmd: number): string {
  for (const [k, v] of Object.entries(PsCmd)) if (v === cmd) return `PS_IOV_${k}`;
  return `0x${cmd.toString(16)}`;
}
