// A thread that owns every ptrace call for one tracker. ptrace binds a tracee to the
// thread that attached it, so the libuv pool (a different thread each time) cannot be
// used. Jobs run in order; each settles a JS promise through a thread-safe function.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <napi.h>
#include <optional>
#include <string>
#include <thread>

#include "core/errors.h"

namespace remus {

class TracerThread {
 public:
  TracerThread();
  ~TracerThread();
  TracerThread(const TracerThread&) = delete;
  TracerThread& operator=(const TracerThread&) = delete;

  // Queues `job`; returns false when the thread is stopping.
  bool Post(std::function<void()> job);
  // Runs queued jobs to the end, then joins. Idempotent.
  void Stop();

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::thread thread_;
};

// The outcome of a job: a value to convert on the JS thread, or an error.
struct JobError {
  bool native = false;
  ErrorCode code = ErrorCode::kSystem;
  int err = 0;
  pid_t pid = 0;
  std::string op;
  std::string message;
};

Napi::Error ToJsError(Napi::Env env, const JobError& e);

// Runs `work` on `thread` and returns a promise settled with `convert(env, result)`.
template <typename R>
Napi::Promise RunOnTracer(Napi::Env env, TracerThread& thread, std::function<R()> work,
                          std::function<Napi::Value(Napi::Env, R&)> convert) {
  struct Call {
    Napi::Promise::Deferred deferred;
    std::function<R()> work;
    std::function<Napi::Value(Napi::Env, R&)> convert;
    std::optional<R> result;
    JobError error;
  };
  auto call = std::make_unique<Call>(Call{Napi::Promise::Deferred::New(env), std::move(work), std::move(convert), {}, {}});
  Napi::Promise promise = call->deferred.Promise();
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function(), "remus-tracer", 0, 1);
  auto settle = [](Napi::Env env, Napi::Function, Call* raw) {
    std::unique_ptr<Call> c(raw);
    if (env == nullptr) return;  // environment shutting down
    Napi::HandleScope scope(env);
    if (c->result) {
      try {
        c->deferred.Resolve(c->convert(env, *c->result));
      } catch (const Napi::Error& e) {
        c->deferred.Reject(e.Value());
      }
    } else {
      c->deferred.Reject(ToJsError(env, c->error).Value());
    }
  };
  Call* raw = call.get();
  bool queued = thread.Post([raw, tsfn, settle]() mutable {
    std::unique_ptr<Call> c(raw);
    try {
      c->result.emplace(c->work());
    } catch (const NativeError& e) {
      c->error = {true, e.code(), e.err(), e.pid(), e.op(), e.what()};
    } catch (const std::exception& e) {
      c->error = {false, ErrorCode::kSystem, 0, 0, "", e.what()};
    }
    // If the environment is shutting down the call cannot be settled; leak it rather
    // than destroy JS handles off the JS thread.
    tsfn.BlockingCall(c.get(), settle);
    c.release();
    tsfn.Release();
  });
  if (queued) {
    call.release();
  } else {
    tsfn.Release();
    JobError e{true, ErrorCode::kInvalidArgument, 0, 0, "closed", "the tracker is closed"};
    call->deferred.Reject(ToJsError(env, e).Value());
  }
  return promise;
}

}  // namespace remus
