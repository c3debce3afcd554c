#include "js/tracer_thread.h"

namespace remus {

TracerThread::TracerThread() : thread_([this] { Loop(); }) {}

TracerThread::~TracerThread() { Stop(); }

bool TracerThread::Post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

void TracerThread::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void TracerThread::Loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

Napi::Error ToJsError(Napi::Env env, const JobError& e) {
  Napi::Error err = Napi::Error::New(env, e.message);
  err.Set("code", Napi::String::New(env, e.native ? ErrorCodeName(e.code) : "SYSTEM_ERROR"));
  if (e.err) err.Set("errno", Napi::Number::New(env, e.err));
  if (e.pid) err.Set("pid", Napi::Number::New(env, e.pid));
  if (!e.op.empty()) err.Set("op", Napi::String::New(env, e.op));
  return err;
}

}  // namespace remus
