// Conversions between native structs and JS values (on the JS thread only).
#pragma once

#include <napi.h>

#include "core/caps.h"
#include "dirty/backend.h"
#include "tracker/tracker.h"

namespace remus {

// The layout and descriptors last handed to JS by one tracker. Between two epochs they
// rarely change, and building ~100 mapping objects (BigInts, strings) was most of what
// converting an idle epoch cost: an unchanged list goes out as `vmasSame` / `fdsSame`
// with an empty array, and the Tracker in TS hands out the array it kept. Touched only on
// the JS thread, by the conversion.
struct LayoutMemo {
  std::vector<Vma> vmas;
  std::vector<OpenFd> fds;
  bool has_vmas = false;
  bool has_fds = false;
};

Napi::Value EpochToJs(Napi::Env env, EpochData& data, const std::shared_ptr<BufferPool>& pool, LayoutMemo& memo);
Napi::Value AttachInfoToJs(Napi::Env env, const AttachInfo& info);
Napi::Value CapsToJs(Napi::Env env, const KernelCaps& caps);
Napi::Value RangesToJs(Napi::Env env, const std::vector<PageRange>& ranges);
// Returns a buffer handed out by EpochToJs to its pool now and empties the JS buffer.
void ReleasePages(Napi::Env env, Napi::Value buffer);
BackendKind ParseBackend(const std::string& name);

// V8 counts the bytes of every new ArrayBuffer as external memory and starts a full garbage
// collection every ~64 MiB of them, even when the memory behind is native and recycled
// explicitly (page buffers go back to their pool when released or finalized). An epoch hands
// out megabytes in a few buffers, so the agent spent more CPU collecting than capturing.
// UncountExternal() cancels the count when such a buffer is made; RecountExternal(), in its
// finalizer, gives it back before V8 subtracts it again: the balance stays exact.
inline void UncountExternal(Napi::Env env, size_t bytes) {
  if (bytes) Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(bytes));
}
inline void RecountExternal(Napi::Env env, size_t bytes) {
  if (bytes) Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes));
}
// Detaching such a buffer makes V8 subtract its bytes at once, and V8 takes any dip in its
// external count as the new low since the last full collection: what is counted again
// afterwards then looks like memory allocated since that collection. Counting the bytes
// back only in the finalizer, or after the detach, made each released epoch buffer look
// like a new allocation, and every collection scheduled the next (3 a second on the
// agent). So the bytes are counted back first, then the buffer is detached: no dip, and
// the finalizer is left nothing to restore (`*bytes` becomes 0).
inline void DetachCounted(Napi::Env env, Napi::ArrayBuffer ab, size_t* bytes) {
  RecountExternal(env, *bytes);
  *bytes = 0;
  ab.Detach();
}

}  // namespace remus
