// The replication protocol's messages (version 1). The byte layout of a frame lives in
// src/transport/frame-codec.ts; this file is the vocabulary both ends share.
//
//   primary                                   standby
//   hello  ------------------------------------>
//          <------------------------------------  welcome | refuse
//   begin{epoch, base, full}  ----------------->      a batch: the pages of epochs (base, epoch]
//   image{...} x N  --------------------------->      a new CRIU base image (full batches, re-bases)
//   pages{...} x N  --------------------------->      (full: every page; replaces the store)
//   end{epoch, pages, capturedAt, state}  ----->      applied atomically, fsync'd, then:
//          <------------------------------------  ack{epoch}
//   hb  <-------------------------------------->  both ways, every heartbeat interval
//   bye{reason}  <----------------------------->  orderly close, either way

export const PROTOCOL_VERSION = 1;

/** How a `pages` message's `data` is encoded. */
export type PageCodec =
  /** The pages, concatenated, compressed as one LZ4 block (`rawBytes` = count × 4096). */
  | 'lz4'
  /** The pages, concatenated, as they are. */
  | 'raw'
  /**
   * Page-delta batch (docs/wire-format.md): every page as ZERO, FULL or a DELTA against the
   * version last sent, addresses inside `data`; `addrs` and `zeros` are empty and `rawBytes`
   * is 4096 × the pages with data (FULL and DELTA).
   */
  | 'delta';

export interface ThreadStateWire {
  tid: number;
  /** struct user_regs_struct (27 × u64), adjusted for syscall restart. */
  gpregs: Buffer;
  /** The whole standard-format XSAVE area. */
  xsave: Buffer;
  /** Blocked-signal mask. */
  sigmask: bigint;
  restart: 'none' | 'restart' | 'interrupted';
  /**
   * The thread's registered rseq area (addr 0: none). The kernel rewrites its cpu id fields
   * each time the thread resumes on another CPU, so those bytes legitimately differ from
   * any capture; CRIU re-registers the area at restore.
   */
  rseq: { addr: bigint; size: number };
}

/** A line of /proc/PID/maps. (`inode` is a JS number: inodes above 2^53 are refused.) */
export interface VmaWire {
  start: bigint; end: bigint; perms: string; offset: bigint; dev: string; inode: number; path: string;
}

/** An open descriptor of the target, read while it was frozen. */
export interface FdWire {
  fd: number;
  /** What /proc/PID/fd/N links to: a path, 'socket:[123]', 'pipe:[456]'... */
  target: string;
  pos: bigint;
  flags: number;
  /** st_size of a regular file, -1 for anything else. */
  size: number;
  /**
   * For sockets: 'tcp-listen', 'tcp' (a connection: restored closed, so a new one needs no
   * new base), 'udp', 'unix', 'raw', 'netlink', 'socket'; '' for anything else.
   */
  kind: string;
}

/** What a consistent epoch carries besides pages: enough to build a CRIU image. */
export interface EpochState {
  pid: number;
  threads: ThreadStateWire[];
  vmas: VmaWire[];
  brk: bigint;
  clocks: { monotonicNs: bigint; boottimeNs: bigint; realtimeNs: bigint };
  fds: FdWire[];
  /** PIDs of the target's children (replication refuses targets that have any). */
  children: number[];
  /** Id of the CRIU base image this state goes with ('' when there is none). */
  base: string;
}

export interface HelloMsg {
  t: 'hello';
  proto: number;
  role: 'primary';
  /** Identifies one protection of one process: random, made when the primary starts. */
  lineage: string;
  /** Raised by every promotion; a primary of an older generation is refused. */
  generation: number;
  pid: number;
  host: string;
  agent: string;
  /**
   * 'beats': a second connection that carries heartbeats only, for the session the welcome
   * named in `session`. Heartbeats on the data connection queue behind megabytes of pages;
   * on this one they do not, so the standby's failure detector hears the primary, or its
   * silence, whatever the backlog of data.
   */
  channel?: 'beats';
  session?: string;
  /**
   * On a heartbeat channel: how often (ms) the standby should send its heartbeats back.
   * The primary needs them only to self-fence (and for the round-trip time), not at the
   * rate it sends its own; absent: the standby's own heartbeat interval.
   */
  beatsMs?: number;
}

export interface WelcomeMsg {
  t: 'welcome';
  proto: number;
  /** What the standby has committed (null: nothing yet). */
  lineage: string | null;
  generation: number;
  committedEpoch: number;
  /** The session's id, for a heartbeat channel (see HelloMsg.channel). */
  session?: string;
}

export interface RefuseMsg { t: 'refuse'; code: string; reason: string }

export interface BeginMsg {
  t: 'begin';
  /** The epoch this batch brings the standby to. */
  epoch: number;
  /** The epoch it applies on top of (the standby's committed epoch); 0 with `full`. */
  base: number;
  /** Every page of the process: replaces what the standby has (on commit). */
  full: boolean;
}

/**
 * A piece of a file of a CRIU base image (`criu dump --leave-running` of the target).
 * Sent inside a batch, before its `end`: the batch's state names this base, and the
 * standby switches to it when the batch commits.
 */
export interface ImageMsg {
  t: 'image';
  base: string;
  /** File name inside the image directory (no slashes). */
  name: string;
  offset: number;
  data: Buffer;
  /** The file is complete with this piece. */
  last: boolean;
}

export interface PagesMsg {
  t: 'pages';
  epoch: number;
  codec: PageCodec;
  /** Page addresses, u64 little-endian, one per page, in the order of `data`. */
  addrs: Buffer;
  /** Pages that are all zeros, u64 little-endian addresses (no data travels for them). */
  zeros: Buffer;
  /** Size of `data` once decoded: 4096 × number of addresses in `addrs`. */
  rawBytes: number;
  data: Buffer;
}

export interface EndMsg {
  t: 'end';
  epoch: number;
  /** Pages sent in this batch (a check against loss). */
  pages: number;
  /** Wall-clock time (ms) the newest epoch in the batch was captured. */
  capturedAt: number;
  state: EpochState;
  /**
   * Parts of `state` left out because they equal the previous batch's state, which the
   * standby has committed (see state-delta.ts): `vmas`, `fds`, `children` (sent as []),
   * and the threads listed by tid (absent from state.threads).
   */
  same?: { vmas?: true; fds?: true; children?: true; threads?: number[] };
}

export interface AckMsg { t: 'ack'; epoch: number; committedAt: number }

export interface HeartbeatMsg {
  t: 'hb';
  /** Sender's wall clock (ms). */
  sentAt: number;
  /**
   * The last `sentAt` received from the peer plus how long we held it before this
   * heartbeat, so that the peer's round-trip time excludes our heartbeat interval; 0 if none.
   */
  echo: number;
  /**
   * Heartbeats the sender skipped since its previous one because its socket was backed up
   * (the peer was hearing its bytes anyway): that gap says nothing of the sender's regularity.
   */
  skipped?: number;
  /** Primary: the target's state ('running' | 'exited'); standby: its role. */
  status?: string;
}

/**
 * An orderly end of the link. Reasons with a meaning for the standby:
 *   'target-exited'  the protected process exited on a healthy primary: no promotion
 *                    (unless the standby was told to promote then too)
 *   'primary stopping'  the operator stopped replication: no promotion
 */
export interface ByeMsg { t: 'bye'; reason: string; exitCode?: number }

export type Message = HelloMsg | WelcomeMsg | RefuseMsg | BeginMsg | ImageMsg | PagesMsg | EndMsg | AckMsg | HeartbeatMsg | ByeMsg;
export type MessageType = Message['t'];

/**
 * Heartbeat interval on a data connection whose liveness the peer judges by a heartbeat
 * channel: a keep-alive, well inside the standby's 3 x heartbeat + 1 s before it lets
 * another primary replace a silent one.
 */
export function keepAliveMs(heartbeatMs: number): number {
  return Math.max(heartbeatMs, 500);
}

/**
 * How often the primary asks to hear the standby on the heartbeat channel: a keep-alive,
 * unless self-fencing needs to hear it sooner (four heartbeats per self-fence delay, never
 * more often than the primary's own). Each heartbeat costs both sides a TLS record, a frame
 * and a wake-up: at 20 a second the standby's made ~8 % of the agent's CPU under load.
 */
export function standbyBeatsMs(heartbeatMs: number, selfFenceAfterMs?: number): number {
  const keep = keepAliveMs(heartbeatMs);
  if (selfFenceAfterMs === undefined) return keep;
  return Math.min(keep, Math.max(heartbeatMs, Math.floor(selfFenceAfterMs / 4)));
}
