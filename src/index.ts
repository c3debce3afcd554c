export { ReplicateError, type ReplicateErrorCode } from './errors.js';
export { Tracker, chooseBackend, PAGE_SIZE, type AttachInfo, type Epoch, type EpochOptions, type ThreadState, type TrackerOptions, type Vma } from './tracker/tracker.js';
export { decodeGpRegisters, GP_REGISTERS, type GpRegisters } from './tracker/registers.js';
export type { BackendName, BackendRequest, KernelCaps } from './native/binding.js';
export { check, formatCheck, type CheckReport } from './check/check.js';
export { locateCriu, type CriuInfo } from './criu/locate.js';
export { spawnTarget, type SpawnedTarget } from './spawn/spawn-target.js';
export { measureDirtyRate, type DirtyRateOptions, type DirtyRateReport } from './dirty-rate/dirty-rate.js';
export { parseDuration } from './util/duration.js';
