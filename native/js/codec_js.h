// JS entry points of the page codec. Compression and decompression run on libuv's pool
// (AsyncWorker): they touch only buffers, never the tracee, so any thread will do.
#pragma once

#include <napi.h>

namespace remus {

// compressPages(pages: Buffer, addrs: Buffer): Promise<{ addrs, zeros: Buffer (u64 LE), data: Buffer,
//   compressed: boolean, rawBytes: number }>
Napi::Value CompressPagesJs(const Napi::CallbackInfo& info);
// decompressBlock(data: Buffer, rawBytes: number): Promise<Buffer>
Napi::Value DecompressBlockJs(const Napi::CallbackInfo& info);

}  // namespace remus
