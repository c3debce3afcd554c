// The replication protocol's messages (version 1). The byte layout of a frame lives in
// src/transport/frame-codec.ts; this file is the vocabulary both ends share.
//
//   primary                                   standby
//   hello  ------------------------------------>
//          <------------------------------------  welcome | refuse
//   begin{epoch, base, full}  ----------------->      a batch: the pages of epochs (base, epoch]
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
  | 'raw';

export interface ThreadStateWire {
  tid: number;
  /** struct user_regs_struct (27 × u64), adjusted for syscall restart. */
  gpregs: Buffer;
  /** The whole standard-format XSAVE area. */
  xsave: Buffer;
  /** Blocked-signal mask. */
  sigmask: bigint;
  restart: 'none' | 'restart' | 'interrupted';
}

/** A line of /proc/PID/maps. (`inode` is a JS number: inodes above 2^53 are refused.) */
export interface VmaWire {
  start: bigint; end: bigint; perms: string; offset: bigint; dev: string; inode: number; path: string;
}

/** What a consistent epoch carries besides pages: enough to build a CRIU image. */
export interface EpochState {
  pid: number;
  threads: ThreadStateWire[];
  vmas: VmaWire[];
  brk: bigint;
  clocks: { monotonicNs: bigint; boottimeNs: bigint; realtimeNs: bigint };
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
}

export interface WelcomeMsg {
  t: 'welcome';
  proto: number;
  /** What the standby has committed (null: nothing yet). */
  lineage: string | null;
  generation: number;
  committedEpoch: number;
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
  /** Primary: the target's state ('running' | 'exited'); standby: its role. */
  status?: string;
}

export interface ByeMsg { t: 'bye'; reason: string }

export type Message = HelloMsg | WelcomeMsg | RefuseMsg | BeginMsg | PagesMsg | EndMsg | AckMsg | HeartbeatMsg | ByeMsg;
export type MessageType = Message['t'];
