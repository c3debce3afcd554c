#pragma once

#include <memory>
#include <napi.h>

#include "js/convert.h"
#include "js/tracer_thread.h"
#include "tracker/tracker.h"

namespace remus {

// JS class NativeTracker: one tracked process. Every operation runs on the tracker's
// own tracer thread and returns a promise. close() (or the environment's cleanup hook)
// stops the thread; jobs already queued finish first, so a freeze is always thawed.
class TrackerWrap : public Napi::ObjectWrap<TrackerWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit TrackerWrap(const Napi::CallbackInfo& info);
  ~TrackerWrap() override;

 private:
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value Epoch(const Napi::CallbackInfo& info);
  Napi::Value Present(const Napi::CallbackInfo& info);
  Napi::Value ReadLive(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  static void Cleanup(void* self);

  pid_t pid_ = 0;
  TrackerOptions options_;
  // Only touched on the tracer thread once created.
  std::shared_ptr<Tracker> tracker_;
  std::shared_ptr<BufferPool> pool_;
  std::shared_ptr<LayoutMemo> memo_ = std::make_shared<LayoutMemo>();
  std::unique_ptr<TracerThread> thread_;
  bool closed_ = false;
  napi_env env_ = nullptr;
};

}  // namespace remus
