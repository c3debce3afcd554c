// Where each state component sits in a standard-format (non-compacted) XSAVE area, the
// format PTRACE_GETREGSET(NT_X86_XSTATE) returns, and how CRIU's image keeps them.
//
//   byte 0    FXSAVE legacy area (512 bytes): cwd u16 @0, swd u16 @2, twd u16 @4, fop u16 @6,
//             rip u64 @8, rdp u64 @16, mxcsr u32 @24, mxcsr_mask u32 @28,
//             st_space 32 x u32 @32, xmm_space 64 x u32 @160, padding @416,
//             sw_reserved @464 (ptrace puts XCR0 there: the user features enabled, u64)
//   byte 512  XSAVE header: xstate_bv u64 @512, xcomp_bv u64 @520 (0 in standard format)
//   byte 576+ extended components, each at the offset CPUID leaf 0xD sub-leaf i gives
//             (EBX = offset, EAX = size):
//
//   i  component   size   CRIU field (UserX86XsaveEntry)   Intel offset   AMD offset
//   2  YMM_Hi128    256   ymmh_space   2 (64 x u32)             576            576
//   3  BNDREGS       64   bndreg_state 3 (8 x u64)              960             -
//   4  BNDCSR        64   bndcsr_state 4 (8 x u64)             1024             -
//   5  Opmask        64   opmask_reg   5 (8 x u64)             1088            832
//   6  ZMM_Hi256    512   zmm_upper    6 (64 x u64)            1152            896
//   7  Hi16_ZMM    1024   hi16_zmm     7 (128 x u64)           1664           1408
//   9  PKRU           8   pkru         8 (2 x u32)             2688           2432
//
// The offsets are the CPU's business: Intel keeps them fixed (room for MPX even where MPX
// is absent), AMD packs the components it has (this project's AMD EPYC has PKRU at 2432, not
// 2688). So the layout is read from CPUID, in this order of preference:
//   1. given by the caller (the primary may one day send its own CPU's layout);
//   2. CPUID leaf 0xD through /dev/cpu/N/cpuid (the kernel's cpuid driver; root; `modprobe
//      cpuid` if the device is missing) - on the standby, which must have the same kind of
//      CPU as the primary anyway: CRIU restores the XSAVE state with the standby's XRSTOR;
//   3. a table by vendor (/proc/cpuinfo vendor_id): the offsets above, which each vendor has
//      kept fixed across its CPUs (AMD leaves out MPX but keeps AVX-512's room even on CPUs
//      without AVX-512: PKRU is at 2432 on every AMD CPU with PKU), for the features XCR0
//      enables. Used only when /dev/cpu is unavailable; the build reports which source it used.
// A spawned C helper was the other option; it needs a compiler or a shipped binary on the
// standby, and reading CPUID through the kernel's driver needs neither.

import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

/** CRIU's XSAVE components, by XSAVE feature number. */
export const XSAVE_COMPONENTS = [
  { feature: 2, name: 'YMM_Hi128', field: 2, elemBytes: 4, size: 256 },
  { feature: 3, name: 'BNDREGS', field: 3, elemBytes: 8, size: 64 },
  { feature: 4, name: 'BNDCSR', field: 4, elemBytes: 8, size: 64 },
  { feature: 5, name: 'Opmask', field: 5, elemBytes: 8, size: 64 },
  { feature: 6, name: 'ZMM_Hi256', field: 6, elemBytes: 8, size: 512 },
  { feature: 7, name: 'Hi16_ZMM', field: 7, elemBytes: 8, size: 1024 },
  { feature: 9, name: 'PKRU', field: 8, elemBytes: 4, size: 8 },
] as const;

export interface XsaveComponentPlace { offset: number; size: number }

export interface XsaveLayout {
  /** Feature number -> where it is in the standard-format area. */
  components: Record<number, XsaveComponentPlace>;
  /** Size of the whole area for the enabled features (CPUID 0xD.0 EBX), when known. */
  size?: number;
  /** Where the layout came from. */
  source: 'caller' | 'cpuid' | 'vendor-table';
}

const INTEL_OFFSETS: Record<number, number> = { 2: 576, 3: 960, 4: 1024, 5: 1088, 6: 1152, 7: 1664, 9: 2688 };
const AMD_OFFSETS: Record<number, number> = { 2: 576, 5: 832, 6: 896, 7: 1408, 9: 2432 };

function cpuid(fd: number, leaf: number, sub: number): [number, number, number, number] {
  const b = Buffer.alloc(16);
  // The driver takes the leaf in the low 32 bits of the file position and the sub-leaf in
  // the high 32 bits.
  const pos = BigInt(sub) * 0x1_0000_0000n + BigInt(leaf);
  const n = readSync(fd, b, 0, 16, pos);
  if (n !== 16) throw new Error(`short read from the cpuid device (${n} bytes)`);
  return [b.readUInt32LE(0), b.readUInt32LE(4), b.readUInt32LE(8), b.readUInt32LE(12)];
}

/** Reads CPUID leaf 0xD of CPU `cpu` through /dev/cpu/N/cpuid. Throws when unavailable. */
export function readCpuidXsaveLayout(cpu = 0): XsaveLayout {
  const fd = openSync(`/dev/cpu/${cpu}/cpuid`, 'r');
  try {
    const [, ebx0] = cpuid(fd, 0xd, 0);
    const components: Record<number, XsaveComponentPlace> = {};
    for (const c of XSAVE_COMPONENTS) {
      const [eax, ebx, ecx] = cpuid(fd, 0xd, c.feature);
      // ECX bit 0 set: a supervisor component (not in the standard user area).
      if (eax !== 0 && (ecx & 1) === 0) components[c.feature] = { offset: ebx, size: eax };
    }
    return { components, size: ebx0, source: 'cpuid' };
  } finally {
    closeSync(fd);
  }
}

/** The vendor table (see the header): `xcr0` says which features are enabled. */
export function vendorXsaveLayout(vendor: string, xcr0: bigint): XsaveLayout {
  const table = vendor === 'AuthenticAMD' || vendor === 'HygonGenuine' ? AMD_OFFSETS : INTEL_OFFSETS;
  const components: Record<number, XsaveComponentPlace> = {};
  for (const c of XSAVE_COMPONENTS) {
    const offset = table[c.feature];
    if (offset !== undefined && xcr0 & (1n << BigInt(c.feature))) components[c.feature] = { offset, size: c.size };
  }
  return { components, source: 'vendor-table' };
}

function cpuVendor(): string {
  try {
    return /^vendor_id\s*:\s*(\S+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** XCR0 as ptrace reports it, in the sw_reserved bytes of the FXSAVE area. */
export function xcr0Of(area: Buffer): bigint {
  return area.length >= 472 ? area.readBigUInt64LE(464) : 0n;
}

/** The layout to decode areas captured on this kind of CPU (see the header for the order). */
export function resolveXsaveLayout(given: XsaveLayout | undefined, sample: Buffer | undefined): { layout: XsaveLayout; note?: string } {
  if (given) return { layout: { ...given, source: 'caller' } };
  try {
    return { layout: readCpuidXsaveLayout(0) };
  } catch (e) {
    const vendor = cpuVendor();
    const layout = vendorXsaveLayout(vendor, sample ? xcr0Of(sample) : 0x3n);
    return {
      layout,
      note: `CPUID through /dev/cpu/0/cpuid is unavailable (${(e as Error).message}; try 'modprobe cpuid'): ` +
        `XSAVE offsets taken from the ${vendor} table`,
    };
  }
}

/** The FXSAVE fields of an area, as CRIU's UserX86FpregsEntry numbers them. */
export function fxsaveFields(area: Buffer): {
  cwd: number; swd: number; twd: number; fop: number; rip: bigint; rdp: bigint; mxcsr: number; mxcsrMask: number;
  st: number[]; xmm: number[];
} {
  if (area.length < 512) throw new RangeError(`an FXSAVE area is 512 bytes, got ${area.length}`);
  const u32s = (off: number, n: number): number[] => Array.from({ length: n }, (_, i) => area.readUInt32LE(off + 4 * i));
  return {
    cwd: area.readUInt16LE(0),
    swd: area.readUInt16LE(2),
    twd: area.readUInt16LE(4),
    fop: area.readUInt16LE(6),
    rip: area.readBigUInt64LE(8),
    rdp: area.readBigUInt64LE(16),
    mxcsr: area.readUInt32LE(24),
    mxcsrMask: area.readUInt32LE(28),
    st: u32s(32, 32),
    xmm: u32s(160, 64),
  };
}
