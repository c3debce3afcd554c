// files.img (FileEntry: 1 type, 2 id, 3 reg: RegFileEntry) and fdinfo-<files_id>.img
// (FdinfoEntry: 1 id, 2 flags = FD_CLOEXEC or 0, 3 type, 4 fd): the process's descriptors.
//
//   fd 3 --fdinfo--> file id 7 --files.img--> FileEntry {1 type REG, 2 id 7,
//                                               3 reg {1 id, 2 flags, 3 pos, 5 fown, 6 name,
//                                                      8 size, 10 mode, 11 build_id ...}}
//
// CRIU reopens each regular file by name at restore, seeks to `pos`, and refuses it when
// its size differs from `size` ("has bad size"). It records no size for files open
// O_WRONLY|O_APPEND (logs), nor for what is not a regular file (/dev/null, a directory), so
// a size is only ever set where the base has one, or for a file added here that is neither.
// Mapped files (the executable, libraries) have entries too, without a descriptor.
//
// What an epoch can say about descriptors, applied in this order:
//   1. the epoch's own table (EpochState.fds, read while the target was frozen): the fd
//      table is reconciled with the base's: positions and sizes set; descriptors closed
//      since the base are dropped from fdinfo (a socket no descriptor refers to any more
//      leaves files.img too, and epoll instances forget them); regular files opened since
//      are added (a new FileEntry and FdinfoEntry); other new descriptors (sockets, pipes
//      ...) cannot be made from an epoch and are reported as missing;
//   2. `files` given to the builder (FileState[]): positions and sizes, on top; an fd the
//      image does not have is skipped (and reported).
import { existsSync } from 'node:fs';
import type { FdWire } from '../../protocol/messages.js';
import { ImageBuildError } from './errors.js';
import { lenField, Message, varintField } from './protobuf.js';

export const FD_TYPE_REG = 1n;
/** FileEntry type of an IPv4/IPv6 socket (CRIU's FD_TYPES: 1 REG, 2 PIPE, ... 4 INETSK). */
export const FD_TYPE_INETSK = 4n;
/** FileEntry type of an epoll instance (7 EVENTPOLL): field 9 epfd, its targets in field 4. */
export const FD_TYPE_EVENTPOLL = 7n;
const EPFD_FIELD = 9;
const EPFD_TFD = 4;     // EventpollFileEntry.tfd: repeated EventpollTfdEntry
const TFD_FD = 2;       // EventpollTfdEntry.tfd: the watched descriptor's number
const O_ACCMODE = 3;
const O_WRONLY = 1;
const O_APPEND = 0o2000;
const O_CLOEXEC = 0o2000000;
const FD_CLOEXEC = 1;

/**
 * What the primary reads for an open file (from /proc/PID/fdinfo/FD and fstat):
 *   { fd, pos, size? }  the descriptor's offset and, for a regular file, its size;
 *   { path, size }      the size of every entry of that file (for mapped files).
 */
export type FileState =
  | { fd: number; pos: bigint | number; size?: bigint | number }
  | { path: string; size: bigint | number };

function big(v: bigint | number, what: string): bigint {
  const b = BigInt(v);
  if (b < 0n) throw new ImageBuildError('INVALID_STATE', `${what} must not be negative, got ${b}`);
  return b;
}

function fown(): Buffer {
  return new Message([1, 2, 3, 4, 5].map((no) => varintField(no, 0))).serialize();
}

/**
 * The entries of files.img, parsed on demand and re-serialised only where changed; new
 * regular-file entries get ids above every id in use (ids are shared by all file types).
 */
export class FileTable {
  readonly #raw: Buffer[];
  readonly #msgs: Array<Message | undefined>;
  readonly #changed = new Set<number>();
  readonly #removed = new Set<number>();
  readonly #byId = new Map<bigint, number>();
  readonly #regByName = new Map<string, bigint>();
  #nextId = 1n;
  /** Entries added for new file mappings and descriptors. */
  added = 0;

  constructor(entries: readonly Buffer[]) {
    this.#raw = [...entries];
    this.#msgs = entries.map((e) => Message.parse(e));
    this.#msgs.forEach((m, i) => {
      const id = m!.getUint(2);
      if (id === undefined) return;
      this.#byId.set(id, i);
      if (id >= this.#nextId) this.#nextId = id + 1n;
      if (m!.getUint(1) !== FD_TYPE_REG) return;
      const name = m!.getMessage(3)?.getString(6);
      if (name !== undefined && !this.#regByName.has(name)) this.#regByName.set(name, id);
    });
  }

  #msg(id: bigint): Message | undefined {
    const i = this.#byId.get(id);
    return i === undefined ? undefined : this.#msgs[i];
  }

  typeOf(id: bigint): bigint | undefined {
    return this.#msg(id)?.getUint(1);
  }

  /** The path of regular-file entry `id` (what a file VMA's shmid refers to). */
  nameOf(id: bigint): string | undefined {
    const m = this.#msg(id);
    return m?.getUint(1) === FD_TYPE_REG ? m.getMessage(3)?.getString(6) : undefined;
  }

  hasSize(id: bigint): boolean {
    return this.#msg(id)?.getMessage(3)?.has(8) ?? false;
  }

  #add(path: string, flags: number, pos: bigint, size: bigint | undefined): bigint {
    const id = this.#nextId++;
    const reg = new Message([varintField(1, id), varintField(2, flags), varintField(3, pos), lenField(5, fown()), lenField(6, Buffer.from(path, 'utf8'))]);
    if (size !== undefined) reg.setUint(8, size);
    const m = new Message([varintField(1, FD_TYPE_REG), varintField(2, id), lenField(3, reg.serialize())]);
    this.#byId.set(id, this.#msgs.length);
    this.#msgs.push(m);
    this.#raw.push(m.serialize());
    this.added++;
    return id;
  }

  /**
   * The id of a regular-file entry for `path` (for a mapping: CRIU opens it with the VMA's
   * fdflags), added when the base has none. New entries carry no size: not validated.
   */
  idFor(path: string): bigint {
    const known = this.#regByName.get(path);
    if (known !== undefined) return known;
    const id = this.#add(path, 0, 0n, undefined);
    this.#regByName.set(path, id);
    return id;
  }

  /** A new open file description of `path` (a descriptor opened since the base). */
  addOpenFile(path: string, flags: number, pos: bigint, size: bigint | undefined): bigint {
    const checked = (flags & O_ACCMODE) === O_WRONLY && (flags & O_APPEND) !== 0 ? undefined : size;
    return this.#add(path, flags & ~O_CLOEXEC, pos, checked);
  }

  /** Sets a regular file's position and, where the entry records one, its size. */
  setPosSize(id: bigint, pos: bigint | undefined, size: bigint | undefined): void {
    const i = this.#byId.get(id)!;
    const m = this.#msgs[i]!;
    const reg = m.getMessage(3);
    if (!reg) return;
    if (pos !== undefined) reg.setUint(3, pos);
    if (size !== undefined && reg.has(8)) reg.setUint(8, size);
    m.setMessage(3, reg);
    this.#changed.add(i);
  }

  /**
   * Removes the entry `id`. For a socket no descriptor refers to any more: CRIU still
   * collects every socket entry, counts it among the users of its port, and a listening
   * socket on that port then waits at restore for it to be opened, for ever (an accepted
   * connection the target closed after the base made `criu restore` hang).
   */
  remove(id: bigint): void {
    const i = this.#byId.get(id);
    if (i === undefined) return;
    this.#byId.delete(id);
    this.#removed.add(i);
  }

  /**
   * Removes from every epoll instance the targets whose descriptor number is not in `keep`:
   * CRIU re-adds each target at restore (epoll_ctl ADD on that number) and fails the whole
   * restore with EBADF on one the process closed since the base. Returns how many went.
   */
  pruneEpollTargets(keep: ReadonlySet<number>): number {
    let n = 0;
    this.#msgs.forEach((m, i) => {
      if (!m || this.#removed.has(i) || m.getUint(1) !== FD_TYPE_EVENTPOLL) return;
      const ep = m.getMessage(EPFD_FIELD);
      if (!ep) return;
      const tfds = ep.all(EPFD_TFD);
      const kept = tfds.filter((f) => keep.has(Number(Message.parse(f.value).getUint(TFD_FD) ?? -1n)));
      if (kept.length === tfds.length) return;
      n += tfds.length - kept.length;
      m.setMessage(EPFD_FIELD, ep.setRepeatedMessage(EPFD_TFD, kept.map((f) => f.value)));
      this.#changed.add(i);
    });
    return n;
  }

  /** Entries of the base changed so far. */
  get changedCount(): number {
    return this.#changed.size;
  }

  /** Removes the size of every regular file (CRIU then does not validate sizes). */
  dropSizes(): number {
    let n = 0;
    this.#msgs.forEach((m, i) => {
      const reg = m!.getUint(1) === FD_TYPE_REG ? m!.getMessage(3) : undefined;
      if (!reg?.has(8)) return;
      m!.setMessage(3, reg.remove(8));
      this.#changed.add(i);
      n++;
    });
    return n;
  }

  /** Every entry, the unchanged ones byte for byte. */
  entries(): Buffer[] {
    const out: Buffer[] = [];
    this.#raw.forEach((r, i) => {
      if (!this.#removed.has(i)) out.push(this.#changed.has(i) ? this.#msgs[i]!.serialize() : r);
    });
    return out;
  }


  /** Regular-file ids named `path`. */
  regIdsNamed(path: string): bigint[] {
    const out: bigint[] = [];
    for (const [id, i] of this.#byId) {
      const m = this.#msgs[i]!;
      if (m.getUint(1) === FD_TYPE_REG && m.getMessage(3)?.getString(6) === path) out.push(id);
    }
    return out;
  }
}

interface FdinfoRow { fd: number; id: bigint; raw: Buffer }

function parseFdinfo(entries: readonly Buffer[]): FdinfoRow[] {
  return entries.map((raw) => {
    const m = Message.parse(raw);
    return { fd: Number(m.requireUint(4, 'fdinfo entry')), id: m.requireUint(1, 'fdinfo entry'), raw };
  });
}

export interface FilesResult {
  /** The new fdinfo entries (undefined: the base's are unchanged). */
  fdinfo: Buffer[] | undefined;
  /** Regular-file entries whose position or size was set. */
  patched: number;
  /** Descriptors opened since the base and added (regular files). */
  addedFds: number[];
  /** Descriptors closed since the base, dropped from the image. */
  closedFds: number[];
  /** Socket entries of files.img dropped with them (no descriptor left). */
  removedSockets: number;
  /** Epoll targets dropped with them (descriptors an epoll instance watched at the base). */
  epollTargetsRemoved: number;
  /** What could not be carried over, as "fd N (target)". */
  missing: string[];
  /** Items of `files` that named nothing to set. */
  skipped: string[];
}

/** Applies explicit FileState items (positions and sizes only). */
export function applyFileStates(table: FileTable, fdinfo: readonly Buffer[], items: readonly FileState[]): FilesResult {
  const rows = parseFdinfo(fdinfo);
  const ids = new Set<bigint>();
  const skipped: string[] = [];
  for (const item of items) {
    if ('fd' in item) {
      if (!Number.isInteger(item.fd) || item.fd < 0) throw new ImageBuildError('INVALID_STATE', `files: bad fd ${String(item.fd)}`);
      const row = rows.find((r) => r.fd === item.fd);
      if (!row) {
        skipped.push(`fd ${item.fd} (not in the image: opened since the base and not a reopenable file)`);
        continue;
      }
      if (table.typeOf(row.id) === undefined) throw new ImageBuildError('BASE_INVALID', `files.img has no entry ${row.id} (fd ${item.fd})`);
      if (table.typeOf(row.id) !== FD_TYPE_REG) {
        skipped.push(`fd ${item.fd} (not a regular file)`);
        continue;
      }
      table.setPosSize(row.id, big(item.pos, `files: fd ${item.fd} pos`), item.size === undefined ? undefined : big(item.size, `files: fd ${item.fd} size`));
      ids.add(row.id);
    } else {
      const size = big(item.size, `files: ${item.path} size`);
      const found = table.regIdsNamed(item.path);
      if (found.length === 0) skipped.push(`${item.path} (not in files.img)`);
      for (const id of found) {
        table.setPosSize(id, undefined, size);
        ids.add(id);
      }
    }
  }
  return { fdinfo: undefined, patched: ids.size, addedFds: [], closedFds: [], removedSockets: 0, epollTargetsRemoved: 0, missing: [], skipped };
}

function isReopenable(target: string): boolean {
  return target.startsWith('/') && !target.endsWith(' (deleted)');
}

/** Reconciles the base's descriptor table with the epoch's (see the header). */
export function reconcileFds(table: FileTable, fdinfo: readonly Buffer[], fds: readonly FdWire[]): FilesResult {
  const rows = parseFdinfo(fdinfo);
  const now = new Map(fds.map((f) => [f.fd, f]));
  const out: FdinfoRow[] = [];
  const result: FilesResult = { fdinfo: undefined, patched: 0, addedFds: [], closedFds: [], removedSockets: 0, epollTargetsRemoved: 0, missing: [], skipped: [] };
  const patched = new Set<bigint>();
  const addNew = (f: FdWire): void => {
    if (f.size < 0 || !isReopenable(f.target) || !existsSync(f.target)) {
      result.missing.push(`fd ${f.fd} (${f.target})`);
      return;
    }
    const id = table.addOpenFile(f.target, f.flags, f.pos, BigInt(f.size));
    const entry = new Message([varintField(1, id), varintField(2, (f.flags & O_CLOEXEC) !== 0 ? FD_CLOEXEC : 0), varintField(3, FD_TYPE_REG), varintField(4, f.fd)]);
    out.push({ fd: f.fd, id, raw: entry.serialize() });
    result.addedFds.push(f.fd);
  };
  for (const row of rows) {
    const f = now.get(row.fd);
    if (!f) {
      result.closedFds.push(row.fd);
      continue;
    }
    now.delete(row.fd);
    const type = table.typeOf(row.id);
    if (type === FD_TYPE_REG) {
      const name = table.nameOf(row.id);
      if (name !== undefined && isReopenable(f.target) && f.target !== name) {
        // The number was closed and reused for another file.
        result.closedFds.push(row.fd);
        addNew(f);
        continue;
      }
      if (f.size >= 0 || typeof f.pos === 'bigint') {
        table.setPosSize(row.id, f.pos, f.size >= 0 ? BigInt(f.size) : undefined);
        patched.add(row.id);
      }
    }
    out.push(row);
  }
  for (const f of now.values()) addNew(f);
  out.sort((a, b) => a.fd - b.fd);
  // Epoll instances forget the descriptors that are not the base's any more (closed, or
  // reused for another file, which the process may not have added to the instance).
  const fromBase = new Set(rows);
  result.epollTargetsRemoved = table.pruneEpollTargets(new Set(out.filter((r) => fromBase.has(r)).map((r) => r.fd)));
  // Sockets whose every descriptor was closed since the base go from files.img too (see
  // FileTable.remove); other entries without a descriptor stay (mapped files have none).
  const used = new Set(out.map((r) => r.id));
  for (const row of rows) {
    if (!used.has(row.id) && table.typeOf(row.id) === FD_TYPE_INETSK) {
      table.remove(row.id);
      used.add(row.id);
      result.removedSockets++;
    }
  }
  result.patched = patched.size;
  result.fdinfo = out.map((r) => r.raw);
  return result;
}
