// CRIU image files (CRIU 4.x, little-endian).
//
// A protobuf image (core-TID.img, mm-PID.img, pagemap-PID.img, files.img, timens-0.img ...):
//
//   offset 0          4             8          12              12+len
//   +-----------------+-------------+----------+---------------+----------+--------- ...
//   | IMG_COMMON      | type magic  | len (u32)| message       | len (u32)| message  ...
//   | 0x54564319      | e.g. CORE   |          | (len bytes of |          |
//   |                 | 0x55053847  |          |  protobuf)    |          |
//   +-----------------+-------------+----------+---------------+----------+--------- ...
//   \______ header (8 bytes) ______/ \____________ entry ____________/
//
// inventory.img is the exception: its header is its own magic alone (0x58313116, 4 bytes).
// Some images carry raw data after an entry (pipe data, TCP queues); nothing here edits
// those: whatever does not parse as whole entries is kept as `trailer`, byte for byte.
//
// pages-<id>.img has no header at all: the pages, 4096 bytes each, in the order of the
// PRESENT entries of the pagemap image that names it (pages_id in its head entry):
//
//   pagemap-PID.img:  [hdr][head {pages_id}][entry {vaddr, nr_pages, flags}] [entry ...] ...
//   pages-<id>.img:   [page of entry 0, page 1 ...][pages of entry 1 ...] ...   (PRESENT only)

import { readFile, writeFile } from 'node:fs/promises';

export const IMG_COMMON_MAGIC = 0x54564319;

export const Magic = {
  INVENTORY: 0x58313116,
  PSTREE: 0x50273030,
  FDINFO: 0x56213732,
  PAGEMAP: 0x56084025,
  CORE: 0x55053847,
  MM: 0x57492820,
  FILES: 0x56303138,
  TIMENS: 0x43114433,
  CPUINFO: 0x61404013,
  IDS: 0x54432030,
} as const;

export class ImageFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImageFormatError';
  }
}

export interface ImageFile {
  /** The magic after IMG_COMMON_MAGIC (or, for inventory.img, the only one). */
  magic: number;
  /** true for inventory.img's one-magic header. */
  singleMagic: boolean;
  /** The entries' protobuf bytes, in order. */
  entries: Buffer[];
  /** Bytes after the last whole entry (raw payloads), kept as they are. */
  trailer: Buffer;
}

/** Parses an image held in memory. `name` is for messages only. */
export function parseImage(buf: Buffer, name = 'image'): ImageFile {
  if (buf.length < 4) throw new ImageFormatError(`${name}: too short for an image header (${buf.length} bytes)`);
  const first = buf.readUInt32LE(0);
  let magic: number;
  let pos: number;
  let singleMagic = false;
  if (first === IMG_COMMON_MAGIC) {
    if (buf.length < 8) throw new ImageFormatError(`${name}: truncated header`);
    magic = buf.readUInt32LE(4);
    pos = 8;
  } else if (first === Magic.INVENTORY) {
    magic = first;
    singleMagic = true;
    pos = 4;
  } else {
    throw new ImageFormatError(`${name}: not a CRIU protobuf image (magic 0x${first.toString(16)})`);
  }
  const entries: Buffer[] = [];
  while (pos + 4 <= buf.length) {
    const len = buf.readUInt32LE(pos);
    if (pos + 4 + len > buf.length) break;
    entries.push(buf.subarray(pos + 4, pos + 4 + len));
    pos += 4 + len;
  }
  return { magic, singleMagic, entries, trailer: buf.subarray(pos) };
}

/** Serialises an image; parseImage + serializeImage gives back the same bytes. */
export function serializeImage(img: ImageFile): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(img.singleMagic ? 4 : 8);
  if (img.singleMagic) head.writeUInt32LE(img.magic >>> 0, 0);
  else {
    head.writeUInt32LE(IMG_COMMON_MAGIC, 0);
    head.writeUInt32LE(img.magic >>> 0, 4);
  }
  parts.push(head);
  for (const e of img.entries) {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(e.length, 0);
    parts.push(len, e);
  }
  parts.push(img.trailer);
  return Buffer.concat(parts);
}

/** Reads and parses `path`, checking its magic when `expect` is given. */
export async function readImage(path: string, expect?: number): Promise<ImageFile> {
  const img = parseImage(await readFile(path), path);
  if (expect !== undefined && img.magic !== expect)
    throw new ImageFormatError(`${path}: magic 0x${img.magic.toString(16)}, expected 0x${expect.toString(16)}`);
  return img;
}

export async function writeImage(path: string, img: ImageFile): Promise<void> {
  await writeFile(path, serializeImage(img));
}

/** A new image with header for `magic` and these entries. */
export function newImage(magic: number, entries: Buffer[]): ImageFile {
  return { magic, singleMagic: magic === Magic.INVENTORY, entries, trailer: Buffer.alloc(0) };
}
