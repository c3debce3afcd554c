// mm-PID.img: the memory layout (MmEntry; its VMAs are field 14, brk field 7), rebuilt from
// the epoch's /proc/PID/maps on top of the base's entries.
//
// Each VMA of the epoch becomes one VmaEntry {1 start, 2 end, 3 pgoff, 4 shmid, 5 prot,
// 6 flags (MAP_*), 7 status (CRIU's VMA_* bits), 8 fd (sint64, -1), 9 madv, 10 fdflags}:
//
//   * special mappings ([vdso], [vvar], [vvar_vclock], [vsyscall], [uprobes]): the base's
//     entries, unchanged (CRIU keeps [vvar] and [vvar_vclock] as one VVAR entry, and puts
//     these mappings back where they were itself);
//   * a VMA with the same bounds and kind as a base VMA (most of them): that entry, prot
//     from maps (kernel objects a maps line does not identify, like memfd, SysV shm or an
//     AIO ring, by their bounds alone);
//   * a VMA whose start lies in a compatible base VMA (same kind: anonymous, shared anonymous
//     memory, or the same file; private or shared; heap or not), or failing that that
//     overlaps one (a stack that grew down): a copy of that entry with start, end and prot
//     from maps, and pgoff from maps for a file or shared memory mapping (a split file
//     mapping's upper part starts further into the file). Every other field (shmid = the
//     file's id in files.img, flags, status, madv, fdflags) stays the base's;
//   * a new anonymous private VMA: a fresh entry {pgoff 0, shmid 0, MAP_PRIVATE|MAP_ANONYMOUS,
//     status REGULAR|ANON_PRIVATE (|HEAP for [heap]), fd -1};
//   * a new file mapping (a library loaded since the base): a fresh entry {pgoff from maps,
//     shmid = the file's id in files.img (an entry is added when the base has none), MAP_PRIVATE
//     or MAP_SHARED, status REGULAR|FILE_PRIVATE or FILE_SHARED, fdflags O_RDONLY, or O_RDWR
//     for a writable shared mapping}; CRIU reopens the file by path, so it must exist on the
//     standby and not be deleted;
//   * anything else new (new shared anonymous memory): an error (re-base needed): its content
//     is in no image.
//
// For the pages, each planned VMA also says where the base's pages still describe it (the
// overlap with the compatible base VMAs it came from; for a file mapping only where the file
// offset lines up), whether the page source applies (private, not special), whether a page
// missing from the pagemap reads the file, and whether CRIU may restore it lazily.
import { existsSync } from 'node:fs';
import type { VmaWire } from '../../protocol/messages.js';
import { ImageBuildError } from './errors.js';
import { Message, varintField, zigzagEncode } from './protobuf.js';

export const PAGE = 4096n;

export const VmaStatus = {
  REGULAR: 1 << 0,
  STACK: 1 << 1,
  VSYSCALL: 1 << 2,
  VDSO: 1 << 3,
  HEAP: 1 << 5,
  FILE_PRIVATE: 1 << 6,
  FILE_SHARED: 1 << 7,
  ANON_SHARED: 1 << 8,
  ANON_PRIVATE: 1 << 9,
  SYSVIPC: 1 << 10,
  SOCKET: 1 << 11,
  VVAR: 1 << 12,
  AIORING: 1 << 13,
  MEMFD: 1 << 14,
  SHSTK: 1 << 15,
  GUARD: 1 << 16,
  UPROBES: 1 << 17,
} as const;

const SPECIAL = VmaStatus.VSYSCALL | VmaStatus.VDSO | VmaStatus.VVAR | VmaStatus.UPROBES;
const SPECIAL_NAMES = new Set(['[vdso]', '[vvar]', '[vvar_vclock]', '[vsyscall]', '[uprobes]']);

const O_RDONLY = 0;
const O_RDWR = 2;

export const MapFlags = {
  SHARED: 0x01, PRIVATE: 0x02, ANONYMOUS: 0x20, GROWSDOWN: 0x100, LOCKED: 0x2000, HUGETLB: 0x40000,
} as const;

export interface BaseVma {
  start: bigint;
  end: bigint;
  pgoff: bigint;
  shmid: bigint;
  prot: number;
  flags: number;
  status: number;
  /** The VmaEntry as it is in the base. */
  msg: Message;
}

export interface PlannedVma {
  start: bigint;
  end: bigint;
  /** The VmaEntry to write. */
  entry: Message;
  flags: number;
  status: number;
  /** 'special': the base's special entry; 'base': copied from a base VMA; 'new': made up. */
  origin: 'special' | 'base' | 'new';
  /** The maps line it was made from (not for special entries). */
  path: string;
  /** Pages of the page source belong here (a private, non-special mapping). */
  takesSource: boolean;
  /** A page absent from the pagemap reads the file (so a zero page must be written out). */
  fileBacked: boolean;
  /** CRIU's own rule for PE_LAZY: anonymous private, not locked, not special, not hugetlb. */
  lazy: boolean;
  /** Sorted, disjoint [start, end) ranges where the base's pages are this mapping's. */
  baseRanges: Array<[bigint, bigint]>;
}

export function parseBaseVmas(mm: Message): BaseVma[] {
  return mm.all(14).map((f, i) => {
    const m = Message.parse(f.value);
    const need = (no: number): bigint => m.requireUint(no, `mm VMA #${i}`);
    return {
      start: need(1), end: need(2), pgoff: need(3), shmid: need(4),
      prot: Number(need(5)), flags: Number(need(6)), status: Number(need(7)), msg: m,
    };
  });
}

function protOf(perms: string): number {
  return (perms[0] === 'r' ? 1 : 0) | (perms[1] === 'w' ? 2 : 0) | (perms[2] === 'x' ? 4 : 0);
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

function stripDeleted(p: string): string {
  return p.endsWith(' (deleted)') ? p.slice(0, -' (deleted)'.length) : p;
}

type Kind = 'anon' | 'shmem' | 'file';

/** What a maps line is: private/shared anonymous memory, or a file. */
function mapsKind(v: VmaWire): Kind {
  if (v.perms[3] === 's' && /^(\/dev\/zero|\/SYSV[0-9a-f]{8}|\[anon_shmem:)/.test(v.path)) return 'shmem';
  return v.inode === 0 && !v.path.startsWith('/') ? 'anon' : 'file';
}

function baseKind(b: BaseVma): Kind {
  if ((b.status & (VmaStatus.FILE_PRIVATE | VmaStatus.FILE_SHARED)) !== 0) return 'file';
  if ((b.status & (VmaStatus.ANON_SHARED | VmaStatus.SYSVIPC)) !== 0) return 'shmem';
  return 'anon';
}

function baseShared(b: BaseVma): boolean {
  return (b.flags & MapFlags.SHARED) !== 0;
}

/** Private memory whose pages the replication carries (not special, not a kernel object). */
function takesSource(shared: boolean, status: number): boolean {
  const odd = SPECIAL | VmaStatus.AIORING | VmaStatus.SOCKET | VmaStatus.SYSVIPC;
  return !shared && (status & (VmaStatus.ANON_PRIVATE | VmaStatus.FILE_PRIVATE)) !== 0 && (status & odd) === 0;
}

export function canBeLazy(flags: number, status: number): boolean {
  return (flags & MapFlags.ANONYMOUS) !== 0 && (flags & MapFlags.PRIVATE) !== 0 && (flags & MapFlags.LOCKED) === 0 &&
    (status & (VmaStatus.VDSO | VmaStatus.VVAR | VmaStatus.VSYSCALL)) === 0 && (flags & MapFlags.HUGETLB) === 0;
}

function freshAnonEntry(v: VmaWire, heap: boolean): Message {
  const flags = MapFlags.PRIVATE | MapFlags.ANONYMOUS | (v.path === '[stack]' ? MapFlags.GROWSDOWN : 0);
  const status = VmaStatus.REGULAR | VmaStatus.ANON_PRIVATE | (heap ? VmaStatus.HEAP : 0);
  return new Message([
    varintField(1, v.start), varintField(2, v.end), varintField(3, 0), varintField(4, 0),
    varintField(5, protOf(v.perms)), varintField(6, flags), varintField(7, status), varintField(8, zigzagEncode(-1n)),
  ]);
}

/** Checks the epoch's layout: aligned, non-empty, sorted and disjoint. Returns it sorted. */
export function checkLayout(vmas: readonly VmaWire[]): VmaWire[] {
  if (vmas.length === 0) throw new ImageBuildError('INVALID_STATE', 'the epoch has no VMAs');
  const sorted = [...vmas].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  let prevEnd = 0n;
  for (const v of sorted) {
    if (v.start % PAGE !== 0n || v.end % PAGE !== 0n || v.end <= v.start)
      throw new ImageBuildError('INVALID_STATE', `bad VMA ${hex(v.start)}-${hex(v.end)} (empty or not page-aligned)`);
    if (v.start < prevEnd) throw new ImageBuildError('INVALID_STATE', `VMAs overlap at ${hex(v.start)}`);
    if (typeof v.perms !== 'string' || v.perms.length !== 4)
      throw new ImageBuildError('INVALID_STATE', `VMA ${hex(v.start)}: bad perms '${String(v.perms)}'`);
    prevEnd = v.end;
  }
  return sorted;
}

/** File ids of files.img (a file VMA's shmid): names, and new entries for new mappings. */
export interface FileIds {
  nameOf(id: bigint): string | undefined;
  idFor(path: string): bigint;
}

/**
 * Plans the epoch's VMA list from the base's. A new mapping of a file the base does not
 * know gets a new entry in `files` (see FileTable).
 */
export function planVmas(base: readonly BaseVma[], files: FileIds, epochVmas: readonly VmaWire[]): PlannedVma[] {
  const vmas = checkLayout(epochVmas);
  const specials = base.filter((b) => (b.status & SPECIAL) !== 0);
  const regular = base.filter((b) => (b.status & SPECIAL) === 0);
  const out: PlannedVma[] = specials.map((b) => ({
    start: b.start, end: b.end, entry: b.msg, flags: b.flags, status: b.status, origin: 'special', path: '',
    takesSource: false, fileBacked: false, lazy: false, baseRanges: [[b.start, b.end]],
  }));

  for (const v of vmas) {
    const inSpecial = specials.find((b) => b.start <= v.start && v.end <= b.end);
    if (inSpecial) continue;
    if (SPECIAL_NAMES.has(v.path) || specials.some((b) => b.start < v.end && v.start < b.end))
      throw new ImageBuildError('REBASE_NEEDED',
        `the special mapping ${v.path || '(anonymous)'} at ${hex(v.start)}-${hex(v.end)} is not where the base image has it (re-base needed)`);
    const kind = mapsKind(v);
    const shared = v.perms[3] === 's';
    const heap = v.path === '[heap]';
    const path = stripDeleted(v.path);
    const prot = protOf(v.perms);
    const derive = (from: BaseVma, baseRanges: Array<[bigint, bigint]>): PlannedVma => {
      const entry = from.msg.clone().setUint(1, v.start).setUint(2, v.end).setUint(5, prot);
      if (baseKind(from) !== 'anon') entry.setUint(3, v.offset);
      return {
        start: v.start, end: v.end, entry, flags: from.flags, status: from.status, origin: 'base', path: v.path,
        takesSource: takesSource(shared, from.status), fileBacked: baseKind(from) === 'file', lazy: canBeLazy(from.flags, from.status), baseRanges,
      };
    };
    const compatible = (b: BaseVma): boolean => {
      if (baseKind(b) !== kind || baseShared(b) !== shared) return false;
      if (kind === 'anon') return ((b.status & VmaStatus.HEAP) !== 0) === heap;
      if (kind === 'shmem') return true;
      const name = files.nameOf(b.shmid);
      return name !== undefined && stripDeleted(name) === path;
    };
    // The same mapping as in the base (the common case), kept as it was; kernel objects the
    // maps line cannot identify (memfd, SysV shm, AIO ring, packet ring) by their bounds.
    const exotic = VmaStatus.AIORING | VmaStatus.SOCKET | VmaStatus.MEMFD | VmaStatus.SYSVIPC;
    const same = regular.find((b) => b.start === v.start && b.end === v.end && baseShared(b) === shared &&
      ((b.status & exotic) !== 0 || compatible(b)));
    if (same) {
      out.push(derive(same, [[v.start, v.end]]));
      continue;
    }
    // Does base VMA b hold the same pages at the same addresses (for a file: same offset)?
    const alignedWith = (b: BaseVma): boolean => kind === 'anon' || v.offset - b.pgoff === v.start - b.start;
    const overlapping = regular.filter((b) => b.start < v.end && v.start < b.end && compatible(b));
    const from = overlapping.find((b) => b.start <= v.start && v.start < b.end) ?? overlapping[0];
    if (from) {
      out.push(derive(from, overlapping.filter(alignedWith)
        .map((b): [bigint, bigint] => [b.start > v.start ? b.start : v.start, b.end < v.end ? b.end : v.end])));
      continue;
    }
    if (kind === 'anon' && !shared) {
      const entry = freshAnonEntry(v, heap);
      const flags = Number(entry.getUint(6));
      const status = Number(entry.getUint(7));
      out.push({
        start: v.start, end: v.end, entry, flags, status, origin: 'new', path: v.path,
        takesSource: true, fileBacked: false, lazy: canBeLazy(flags, status), baseRanges: [],
      });
      continue;
    }
    if (kind === 'file') {
      if (v.path.endsWith(' (deleted)') || !v.path.startsWith('/'))
        throw new ImageBuildError('REBASE_NEEDED',
          `a new mapping of ${v.path} at ${hex(v.start)}-${hex(v.end)} appeared since the base image and its file cannot be reopened (re-base needed)`);
      if (!existsSync(v.path))
        throw new ImageBuildError('REBASE_NEEDED', `a new mapping of ${v.path} appeared since the base image and the file does not exist here`);
      const flags = shared ? MapFlags.SHARED : MapFlags.PRIVATE;
      const status = VmaStatus.REGULAR | (shared ? VmaStatus.FILE_SHARED : VmaStatus.FILE_PRIVATE);
      const entry = new Message([
        varintField(1, v.start), varintField(2, v.end), varintField(3, v.offset), varintField(4, files.idFor(v.path)),
        varintField(5, prot), varintField(6, flags), varintField(7, status), varintField(8, zigzagEncode(-1n)),
        varintField(10, shared && (prot & 2) !== 0 ? O_RDWR : O_RDONLY),
      ]);
      out.push({
        start: v.start, end: v.end, entry, flags, status, origin: 'new', path: v.path,
        takesSource: !shared, fileBacked: true, lazy: false, baseRanges: [],
      });
      continue;
    }
    throw new ImageBuildError('REBASE_NEEDED',
      `a new ${kind === 'shmem' ? `shared memory mapping (${v.path})` : 'shared anonymous mapping'} at ` +
      `${hex(v.start)}-${hex(v.end)} appeared since the base image; no image holds its content (re-base needed)`);
  }
  out.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  for (let i = 1; i < out.length; i++)
    if (out[i]!.start < out[i - 1]!.end)
      throw new ImageBuildError('INVALID_STATE', `planned VMAs overlap at ${hex(out[i]!.start)} (${out[i - 1]!.path || 'special'} / ${out[i]!.path})`);
  return out;
}

/** The MmEntry with the planned VMAs and, when known (non-zero), the epoch's brk. */
export function patchMmEntry(entry: Buffer, planned: readonly PlannedVma[], brk: bigint): Buffer {
  const mm = Message.parse(entry);
  mm.setRepeatedMessage(14, planned.map((p) => p.entry));
  if (brk > 0n) {
    const startBrk = mm.getUint(6);
    if (startBrk !== undefined && brk < startBrk)
      throw new ImageBuildError('INVALID_STATE', `brk ${hex(brk)} is below the heap's start ${hex(startBrk)}`);
    mm.setUint(7, brk);
  }
  return mm.serialize();
}
