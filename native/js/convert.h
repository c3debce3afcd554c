// Conversions between native structs and JS values (on the JS thread only).
#pragma once

#include <napi.h>

#include "core/caps.h"
#include "dirty/backend.h"
#include "tracker/tracker.h"

namespace remus {

Napi::Value EpochToJs(Napi::Env env, EpochData& data, const std::shared_ptr<BufferPool>& pool);
Napi::Value AttachInfoToJs(Napi::Env env, const AttachInfo& info);
Napi::Value CapsToJs(Napi::Env env, const KernelCaps& caps);
Napi::Value RangesToJs(Napi::Env env, const std::vector<PageRange>& ranges);
// Returns a buffer handed out by EpochToJs to its pool now and empties the JS buffer.
void ReleasePages(Napi::Env env, Napi::Value buffer);
BackendKind ParseBackend(const std::string& name);

}  // namespace remus
