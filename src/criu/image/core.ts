// core-TID.img: one CoreEntry per thread. What an epoch changes in it, and nothing else:
//
//   CoreEntry
//   ├─ 1 mtype (X86_64 = 1)                                  checked
//   ├─ 2 thread_info: ThreadInfoX86
//   │   ├─ 1 clear_tid_addr                                  kept
//   │   ├─ 2 gpregs: UserX86RegsEntry  1..27 = user_regs_struct's 27 u64 in order;  <- epoch
//   │   │                               28 mode (NATIVE) kept
//   │   ├─ 3 fpregs: UserX86FpregsEntry 1 cwd 2 swd 3 twd 4 fop 5 rip 6 rdp 7 mxcsr
//   │   │   │                           8 mxcsr_mask 9 st_space x32 10 xmm_space x64  <- epoch
//   │   │   ├─ 11 padding                                    kept
//   │   │   └─ 13 xsave: UserX86XsaveEntry 1 xstate_bv, 2 ymmh_space, 3 bndreg_state,
//   │   │          4 bndcsr_state, 5 opmask_reg, 6 zmm_upper, 7 hi16_zmm, 8 pkru  <- epoch
//   │   │          9 cet                                     kept
//   │   └─ 4 tls (GDT entries)                               kept
//   ├─ 3 tc: TaskCoreEntry (thread-group leader only)  5 blk_sigset               <- epoch
//   ├─ 4 ids                                                 kept
//   └─ 5 thread_core: ThreadCoreEntry                  6 blk_sigset               <- epoch
//
// CRIU's restore takes the leader's blocked mask from tc.blk_sigset and every other
// thread's from thread_core.blk_sigset (the leader's dump has none there). The XSAVE components are written
// exactly where the base image has them (CRIU dumped those its CPU has), with the element
// counts it used; a component the epoch's CPU uses but the base lacks is an error.
import type { ThreadStateWire } from '../../protocol/messages.js';
import { ImageBuildError } from './errors.js';
import { Message, WireType } from './protobuf.js';
import { XSAVE_COMPONENTS, fxsaveFields, type XsaveLayout } from './xsave.js';

export const GPREGS_COUNT = 27;

function u64s(buf: Buffer, off: number, n: number): bigint[] {
  return Array.from({ length: n }, (_, i) => buf.readBigUInt64LE(off + 8 * i));
}

function u32s(buf: Buffer, off: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => buf.readUInt32LE(off + 4 * i));
}

function sub(parent: Message, no: number, what: string): Message {
  const m = parent.getMessage(no);
  if (!m) throw new ImageBuildError('BASE_INVALID', `${what} (field ${no}) is missing`);
  return m;
}

/** Rewrites the XSAVE submessage of a base fpregs entry from a captured area. */
function patchXsave(base: Message, area: Buffer, layout: XsaveLayout, where: string): Message {
  const x = base.clone();
  const xstateBv = area.length >= 520 ? area.readBigUInt64LE(512) : 0n;
  x.setUint(1, xstateBv);
  for (const c of XSAVE_COMPONENTS) {
    const inBase = base.all(c.field);
    const used = (xstateBv & (1n << BigInt(c.feature))) !== 0n;
    if (inBase.length === 0) {
      if (used)
        throw new ImageBuildError('BASE_INVALID',
          `${where}: the epoch has ${c.name} state (XSAVE feature ${c.feature}) but the base image keeps none: ` +
          `base and epoch come from different kinds of CPU`);
      continue;
    }
    if (inBase.some((f) => f.wt !== WireType.Varint))
      throw new ImageBuildError('BASE_INVALID', `${where}: ${c.name} (field ${c.field}) is not an unpacked varint list`);
    const bytes = inBase.length * c.elemBytes;
    const place = layout.components[c.feature];
    if (!place)
      throw new ImageBuildError('BASE_INVALID',
        `${where}: the base image keeps ${c.name} state but the XSAVE layout (${layout.source}) has no place for it`);
    if (place.size !== bytes)
      throw new ImageBuildError('BASE_INVALID',
        `${where}: ${c.name} is ${bytes} bytes in the base image but ${place.size} in the XSAVE layout (${layout.source})`);
    if (place.offset + place.size > area.length)
      throw new ImageBuildError('INVALID_STATE',
        `${where}: the captured XSAVE area is ${area.length} bytes, too short for ${c.name} at ${place.offset}+${place.size}`);
    const values = c.elemBytes === 8 ? u64s(area, place.offset, inBase.length) : u32s(area, place.offset, inBase.length);
    x.setRepeatedVarint(c.field, values);
  }
  return x;
}

export interface CorePatchOptions {
  /** The thread-group leader (its core carries the TaskCoreEntry). */
  leader: boolean;
  layout: XsaveLayout;
  /** For messages: the image file name. */
  file: string;
}

/** Returns the CoreEntry `entry` with the registers and signal mask of `thread`. */
export function patchCoreEntry(entry: Buffer, thread: ThreadStateWire, o: CorePatchOptions): Buffer {
  const where = o.file;
  if (thread.gpregs.length !== GPREGS_COUNT * 8)
    throw new ImageBuildError('INVALID_STATE', `thread ${thread.tid}: gpregs is ${thread.gpregs.length} bytes, expected ${GPREGS_COUNT * 8}`);
  if (thread.xsave.length < 512)
    throw new ImageBuildError('INVALID_STATE', `thread ${thread.tid}: the XSAVE area is ${thread.xsave.length} bytes, less than FXSAVE's 512`);
  const core = Message.parse(entry);
  const mtype = core.getUint(1);
  if (mtype !== 1n) throw new ImageBuildError('BASE_INVALID', `${where}: not an x86_64 core (mtype ${String(mtype)})`);

  const ti = sub(core, 2, `${where}: thread_info`);
  // General-purpose registers: fields 1..27, in user_regs_struct order.
  const gp = sub(ti, 2, `${where}: thread_info.gpregs`);
  const regs = u64s(thread.gpregs, 0, GPREGS_COUNT);
  for (let i = 0; i < GPREGS_COUNT; i++) gp.setUint(i + 1, regs[i]!);
  ti.setMessage(2, gp);

  // FPU: the FXSAVE part, then the XSAVE components.
  const fp = ti.getMessage(3);
  if (fp) {
    const fx = fxsaveFields(thread.xsave);
    fp.setUint(1, fx.cwd).setUint(2, fx.swd).setUint(3, fx.twd).setUint(4, fx.fop)
      .setUint(5, fx.rip).setUint(6, fx.rdp).setUint(7, fx.mxcsr).setUint(8, fx.mxcsrMask)
      .setRepeatedVarint(9, fx.st).setRepeatedVarint(10, fx.xmm);
    const xs = fp.getMessage(13);
    if (xs) fp.setMessage(13, patchXsave(xs, thread.xsave, o.layout, where));
    ti.setMessage(3, fp);
  }
  core.setMessage(2, ti);

  // Blocked signals.
  if (o.leader) {
    const tc = sub(core, 3, `${where}: tc (the leader's TaskCoreEntry)`);
    tc.setUint(5, thread.sigmask);
    core.setMessage(3, tc);
  }
  // The leader's own dump has no thread_core.blk_sigset (tc has it): add it only to the others.
  const tcore = core.getMessage(5);
  if (tcore && (!o.leader || tcore.has(6))) {
    tcore.setUint(6, thread.sigmask);
    core.setMessage(5, tcore);
  } else if (!tcore && !o.leader) {
    throw new ImageBuildError('BASE_INVALID', `${where}: thread_core (field 5) is missing`);
  }
  return core.serialize();
}
