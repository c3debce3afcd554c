// An epoch's state (registers, layout, descriptors) travels as a difference from the
// previous batch's, which the standby has committed and which this batch applies on.
//
// Why: the whole state of a redis-server (5 threads, ~100 mappings) is 28 KB, in every
// batch. At idle that was 40 times the pages, and making, checking, sending and reading it
// again was most of an epoch's fixed cost on both sides. Mappings and descriptors rarely
// change from one epoch to the next, nor do the registers of a thread that is blocked.
//
//   EndMsg.same      what was left out of EndMsg.state, being equal to the previous state:
//     vmas: true       state.vmas is [] on the wire; the previous mappings hold
//     fds: true        likewise for state.fds
//     children: true   likewise for state.children
//     threads: [tid]   these threads are absent from state.threads; their previous
//                      registers hold (the others in state.threads are new values)
//   pid, brk, clocks and base always travel (small, and the clocks always change).
//
// A full batch never carries `same` (the standby starts over), nor does the first batch
// of a connection: the primary then has no previous state it knows the standby holds.
import type { EndMsg, EpochState, FdWire, ThreadStateWire, VmaWire } from './messages.js';

export type StateDelta = NonNullable<EndMsg['same']>;

/** `next` as it travels after `prev`: the fields equal to prev's left out, and which. */
export function stateDelta(prev: EpochState | undefined, next: EpochState): { state: EpochState; same?: StateDelta } {
  if (!prev || prev.pid !== next.pid) return { state: next };
  const same: StateDelta = {};
  const state: EpochState = { ...next };
  if (listsEqual(prev.vmas, next.vmas, vmaEqual)) { same.vmas = true; state.vmas = []; }
  if (listsEqual(prev.fds, next.fds, fdEqual)) { same.fds = true; state.fds = []; }
  if (listsEqual(prev.children, next.children, (a, b) => a === b)) { same.children = true; state.children = []; }
  const before = new Map(prev.threads.map((t) => [t.tid, t]));
  const kept: number[] = [];
  state.threads = next.threads.filter((t) => {
    const p = before.get(t.tid);
    if (p && threadEqual(p, t)) { kept.push(t.tid); return false; }
    return true;
  });
  if (kept.length) same.threads = kept;
  return Object.keys(same).length ? { state, same } : { state: next };
}

/**
 * The whole state from `state` as it travelled and the previous (committed) one. Throws
 * Error saying what is wrong when `same` names what `prev` does not have.
 */
export function applyStateDelta(prev: EpochState | null | undefined, state: EpochState, same: StateDelta | undefined): EpochState {
  if (!same) return state;
  if (!prev) throw new Error('the batch leaves parts of its state out (end.same), but no previous state is committed here');
  if (prev.pid !== state.pid) throw new Error(`end.same refers to the state of pid ${prev.pid}, this batch is of pid ${state.pid}`);
  const out: EpochState = { ...state };
  if (same.vmas) out.vmas = prev.vmas;
  if (same.fds) out.fds = prev.fds;
  if (same.children) out.children = prev.children;
  if (same.threads) {
    const before = new Map(prev.threads.map((t) => [t.tid, t]));
    const kept = same.threads.map((tid) => {
      const t = before.get(tid);
      if (!t) throw new Error(`end.same.threads names thread ${tid}, which the committed state does not have`);
      return t;
    });
    out.threads = [...state.threads, ...kept];
  }
  return out;
}

function listsEqual<T>(a: readonly T[], b: readonly T[], eq: (x: T, y: T) => boolean): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!eq(a[i]!, b[i]!)) return false;
  return true;
}

function vmaEqual(a: VmaWire, b: VmaWire): boolean {
  return a.start === b.start && a.end === b.end && a.perms === b.perms && a.offset === b.offset && a.dev === b.dev && a.inode === b.inode && a.path === b.path;
}

function fdEqual(a: FdWire, b: FdWire): boolean {
  return a.fd === b.fd && a.target === b.target && a.pos === b.pos && a.flags === b.flags && a.size === b.size && a.kind === b.kind;
}

function threadEqual(a: ThreadStateWire, b: ThreadStateWire): boolean {
  return a.tid === b.tid && a.sigmask === b.sigmask && a.restart === b.restart && a.rseq.addr === b.rseq.addr && a.rseq.size === b.rseq.size &&
    a.gpregs.equals(b.gpregs) && a.xsave.equals(b.xsave);
}
