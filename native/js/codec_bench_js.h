// Benchmark-only functions for bench/codec (exports.codecBench): an XBZRLE encoder and
// decoder in the manner of QEMU's migration/xbzrle.c (word-at-a-time scan, ULEB128
// run lengths, new bytes, no compression), for comparison only, and synchronous plain LZ4
// of a buffer. They run on the calling thread: never call them from a service.
#pragma once

#include <napi.h>

namespace remus {

void InitCodecBench(Napi::Env env, Napi::Object exports);

}  // namespace remus
