// JS entry points of the page-delta codec (native/codec/delta_batch.h owns the format).
//
//   new ShadowCache({ maxBytes?, eviction?: 'clock' | 'lru', xorRuns?, compress? })
//     .encode(addrs: Buffer, pages: Buffer): Promise<{ data: Buffer, stats }>   (libuv pool)
//     .encodeSync(addrs, pages): { data, stats }                                 (this thread)
//     .reset(), .retain(ranges), .stats(), .checkInvariants(), .close()
//   parseBatch(data): Promise<{ addrs, zeros, needBase: Buffer (u64 LE), count, batch }>
//   parseBatchSync(data)
//   applyBatch(batch | data, bases: Buffer): Promise<{ addrs, zeros, pages }>
//   applyBatchSync(batch | data, bases)
//   crc32c(buf, portable?: boolean): number;  codecInfo(): { crc32c, diff }
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
