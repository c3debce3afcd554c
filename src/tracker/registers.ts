/** Field order of struct user_regs_struct on x86_64 (each a u64). */
export const GP_REGISTERS = [
  'r15', 'r14', 'r13', 'r12', 'bp', 'bx', 'r11', 'r10', 'r9', 'r8', 'ax', 'cx', 'dx', 'si', 'di',
  'orig_ax', 'ip', 'cs', 'flags', 'sp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const;

export type GpRegisterName = (typeof GP_REGISTERS)[number];
export type GpRegisters = Record<GpRegisterName, bigint>;

/** Decodes a thread's `gpregs` buffer into named registers (CRIU's UserX86RegsEntry names). */
export function decodeGpRegisters(buf: Buffer): GpRegisters {
  if (buf.length !== GP_REGISTERS.length * 8) throw new RangeError(`gpregs must be ${GP_REGISTERS.length * 8} bytes, got ${buf.length}`);
  const out = {} as GpRegisters;
  GP_REGISTERS.forEach((name, i) => { out[name] = buf.readBigUInt64LE(i * 8); });
  return out;
}
