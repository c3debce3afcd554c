// JS entry points of the page-delta codec (native/codec/delta_batch.h owns the format).
//
//   new ShadowCache({ maxBytes?, eviction?: 'clock' | 'lru', xorRuns?, compress? })
//     .encode(addrs: Buffer, pages: Buffer): Promise<{ data: Buffer, stats }>   (libuv pool)
//     .encodeSync(addrs, pages): { data, stats }                                 (this thread)
//     .reset(), .retain(ranges), .stats(), .checkInvariants(), .close()
//   parseBatch(data, { pages? }): Promise<{ addrs, zeros, needBase: Buffer (u64 LE),
//     needSlot (u32 LE), count, full, delta, zero, batch, pages (with { pages: true }) }>
//   parseBatchSync(data, { pages? })
//   applyBatch(batch | data, bases: Buffer): Promise<{ addrs, zeros, pages }>   (copies bases)
//   applyBatchSync(batch | data, bases)
//   applyBatchInPlace(batch, pages): Promise<{ addrs, zeros, pages }>   (bases already in
//     `pages` at their slots: each checked and patched where it is; the standby's path)
//   applyBatchInPlaceSync(batch, pages)
//   releaseDecoded(pages): gives a decoded buffer back to the pool now
//   crc32c(buf, portable?: boolean): number;  codecInfo(): { crc32c, diff }
//
// Decoded pages of 64 KiB or more come from a pool of faulted-in buffers (parseBatch's
// `pages`, applyBatch's result), returned at garbage collection or by releaseDecoded.
//
// Calls on one ShadowCache must not overlap: a second call while an encode() runs throws
// instead of racing. `batch` is an opaque handle (a type-tagged External) holding the
// validated, decompressed body in native memory, so applyBatch needs no second check
// and nothing the caller does to its buffers can change what was validated.
#pragma once

#include <napi.h>

namespace remus {

void InitDeltaCodec(Napi::Env env, Napi::Object exports);

}  // namespace remus
