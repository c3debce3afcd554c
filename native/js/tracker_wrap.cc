#include "js/tracker_wrap.h"

#include "js/convert.h"

namespace remus {

Napi::Function TrackerWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeTracker",
                     {InstanceMethod<&TrackerWrap::Attach>("attach"), InstanceMethod<&TrackerWrap::Epoch>("epoch"),
                      InstanceMethod<&TrackerWrap::Present>("present"), InstanceMethod<&TrackerWrap::ReadLive>("readLive"),
                      InstanceMethod<&TrackerWrap::Close>("close")});
}

// new NativeTracker(pid, { backend, freezeTimeoutMs }) — options are validated in TS.
TrackerWrap::TrackerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TrackerWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsObject())
    throw Napi::TypeError::New(env, "NativeTracker(pid: number, options: object)");
  pid_ = info[0].As<Napi::Number>().Int32Value();
  Napi::Object opts = info[1].As<Napi::Object>();
  options_.backend = ParseBackend(opts.Get("backend").ToString().Utf8Value());
  options_.freeze_timeout = std::chrono::milliseconds(opts.Get("freezeTimeoutMs").ToNumber().Int64Value());
  thread_ = std::make_unique<TracerThread>();
  env_ = env;
  napi_add_env_cleanup_hook(env, &TrackerWrap::Cleanup, this);
}

TrackerWrap::~TrackerWrap() {
  if (env_) napi_remove_env_cleanup_hook(env_, &TrackerWrap::Cleanup, this);
  Cleanup(this);
}

void TrackerWrap::Cleanup(void* self) {
  auto* t = static_cast<TrackerWrap*>(self);
  // Queued jobs run to completion (each thaws the target) before the thread ends; the
  // tracker (and its userfaultfd) is destroyed on its own thread.
  if (t->thread_) {
    auto tracker = std::move(t->tracker_);
    t->thread_->Post([tracker]() mutable { tracker.reset(); });
    t->thread_->Stop();
    t->thread_.reset();
  }
}

Napi::Value TrackerWrap::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) throw Napi::Error::New(env, "tracker is closed");
  pid_t pid = pid_;
  TrackerOptions options = options_;
  auto holder = std::make_shared<std::shared_ptr<Tracker>>();
  auto self = this;
  // Keeps this object alive until the promise settles.
  auto keep = std::make_shared<Napi::ObjectReference>(Napi::Persistent(info.This().As<Napi::Object>()));
  return RunOnTracer<AttachInfo>(
      env, *thread_,
      [pid, options, holder]() {
        auto tracker = std::make_shared<Tracker>(pid, options);
        AttachInfo info = tracker->Attach();
        *holder = std::move(tracker);
        return info;
      },
      [self, holder, keep](Napi::Env env, AttachInfo& info) -> Napi::Value {
        self->tracker_ = *holder;
        self->pool_ = self->tracker_->pool();
        return AttachInfoToJs(env, info);
      });
}

Napi::Value TrackerWrap::Epoch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) throw Napi::Error::New(env, "tracker is closed");
  if (!tracker_) throw Napi::Error::New(env, "tracker is not attached: call attach() first");
  EpochOptions opts;
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    opts.pages = o.Get("pages").ToBoolean();
    opts.registers = o.Get("registers").ToBoolean();
    opts.layout = o.Get("layout").ToBoolean();
    opts.full = o.Get("full").ToBoolean();
    if (o.Has("files")) opts.files = o.Get("files").ToBoolean();
  }
  std::shared_ptr<Tracker> tracker = tracker_;
  std::shared_ptr<BufferPool> pool = pool_;
  std::shared_ptr<LayoutMemo> memo = memo_;
  return RunOnTracer<EpochData>(
      env, *thread_, [tracker, opts]() { return tracker->Epoch(opts); },
      [pool, memo](Napi::Env env, EpochData& data) { return EpochToJs(env, data, pool, *memo); });
}

Napi::Value TrackerWrap::Present(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || !tracker_) throw Napi::Error::New(env, "tracker is closed or not attached");
  std::shared_ptr<Tracker> tracker = tracker_;
  return RunOnTracer<std::vector<PageRange>>(
      env, *thread_, [tracker]() { return tracker->PresentNow(); },
      [](Napi::Env env, std::vector<PageRange>& r) { return RangesToJs(env, r); });
}

// readLive(ranges: BigUint64Array): Promise<{ pages: Buffer, unreadable: number }>
Napi::Value TrackerWrap::ReadLive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_ || !tracker_) throw Napi::Error::New(env, "tracker is closed or not attached");
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "readLive(ranges: BigUint64Array)");
  auto arr = info[0].As<Napi::BigUint64Array>();
  std::vector<PageRange> ranges;
  for (size_t i = 0; i + 1 < arr.ElementLength(); i += 2) ranges.push_back({arr[i], arr[i + 1]});
  struct Result {
    std::unique_ptr<PageBuffer> pages;
    uint64_t bytes = 0;
    uint64_t unreadable = 0;
  };
  std::shared_ptr<Tracker> tracker = tracker_;
  return RunOnTracer<Result>(
      env, *thread_,
      [tracker, ranges]() {
        Result r;
        r.bytes = CountPages(ranges) * kPageSize;
        r.pages = PageBuffer::Allocate(r.bytes);
        r.unreadable = tracker->ReadLive(ranges, r.pages->data());
        return r;
      },
      [](Napi::Env env, Result& r) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("unreadable", Napi::Number::New(env, static_cast<double>(r.unreadable)));
        if (r.bytes == 0) {
          o.Set("pages", Napi::Buffer<uint8_t>::New(env, 0));
        } else {
          PageBuffer* raw = r.pages.release();
          o.Set("pages", Napi::Buffer<uint8_t>::New(env, raw->data(), r.bytes, [](Napi::Env, uint8_t*, PageBuffer* b) { delete b; }, raw));
        }
        return o;
      });
}

Napi::Value TrackerWrap::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  if (closed_) {
    deferred.Resolve(env.Undefined());
    return deferred.Promise();
  }
  closed_ = true;
  std::shared_ptr<Tracker> tracker = std::move(tracker_);
  // Release the tracker on its thread, then stop the (now idle) thread.
  auto self = this;
  auto keep = std::make_shared<Napi::ObjectReference>(Napi::Persistent(info.This().As<Napi::Object>()));
  return RunOnTracer<bool>(
      env, *thread_,
      [tracker]() mutable {
        tracker.reset();
        return true;
      },
      [self, keep](Napi::Env env, bool&) -> Napi::Value {
        if (self->thread_) {
          self->thread_->Stop();
          self->thread_.reset();
        }
        return env.Undefined();
      });
}

}  // namespace remus
