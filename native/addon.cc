// remus-replicate native addon: module entry points.
//
//   NativeTracker      one tracked process (freeze, dirty pages, registers, layout)
//   probe()            kernel capabilities, probed once
//   chooseBackend(n)   which dirty-tracking backend a request resolves to, and why
//   releasePages(buf)  give an epoch's page buffer back for reuse (empties `buf`)
//   externalMemory()   V8's external memory count (for tests of the accounting)
//   copyPages(...)     gathers/scatters whole pages between two buffers in one call
//   parsePagemap(b,a)  pure pagemap parsing, exposed so it can be tested on bytes
//   compressPages(b)   whole pages, zero pages split out, the rest as one LZ4 block
//   decompressBlock()  the reverse, bounded
//   ShadowCache, parseBatch, applyBatch, crc32c, codecInfo: the page-delta codec (js/delta_codec_js.h)
//   codecBench         benchmark only: XBZRLE and plain LZ4 for comparison (js/codec_bench_js.h)
//   setChildSubreaper  adopt orphans (restored processes) below this process
//   reapChild(pid)     non-blocking reap of one such process
//   runProgram(...)    posix_spawn + wait off the event loop (no fork of a large parent)
//   placeholderSockets closed sockets at descriptor numbers a restore could not bring back
//   benchFloor(...)    benchmark only: the physical floor of an epoch (see below)
#include <napi.h>
#include <cstring>
#include <fcntl.h>

#include <climits>
#include <sys/uio.h>
#include <time.h>

#include "core/caps.h"
#include "core/uffd.h"
#include "memory/buffer_pool.h"
#include "dirty/pagemap.h"
#include "js/codec_bench_js.h"
#include "js/codec_js.h"
#include "js/delta_codec_js.h"
#include "js/convert.h"
#include "js/tracker_wrap.h"
#include "process/children.h"
#include "process/placeholders.h"
#include "process/spawn.h"

namespace remus {
namespace {

Napi::Value Probe(const Napi::CallbackInfo& info) { return CapsToJs(info.Env(), GetKernelCaps()); }

Napi::Value Choose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BackendChoice c = ChooseBackend(ParseBackend(info[0].ToString().Utf8Value()));
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", c.name);
  o.Set("reason", c.reason);
  o.Set("available", c.available);
  return o;
}

Napi::Value Release(const Napi::CallbackInfo& info) {
  ReleasePages(info.Env(), info[0]);
  return info.Env().Undefined();
}

// V8's count of external memory, the one that schedules full collections (not the
// backing-store bytes that v8.getHeapStatistics() reports): tests check that handing page
// buffers out and taking them back leaves it where it was.
Napi::Value ExternalMemory(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Napi::MemoryManagement::AdjustExternalMemory(info.Env(), 0)));
}

// copyPages(src, srcPages: Int32Array, dst, dstPages: Int32Array): page srcPages[i] of
// `src` (4096-byte units) to page dstPages[i] of `dst`, for every i. One call per batch
// instead of a Buffer.copy per page: the standby's cache of recent pages moved thousands
// of pages an epoch, and the per-call cost was as large as the copying.
Napi::Value CopyPagesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "copyPages(src: Buffer, srcPages: Int32Array, dst: Buffer, dstPages: Int32Array)";
  if (info.Length() < 4 || !info[0].IsBuffer() || !info[1].IsTypedArray() || !info[2].IsBuffer() || !info[3].IsTypedArray())
    throw Napi::TypeError::New(env, usage);
  auto src = info[0].As<Napi::Buffer<uint8_t>>();
  auto dst = info[2].As<Napi::Buffer<uint8_t>>();
  if (info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(env, usage);
  auto from = info[1].As<Napi::Int32Array>();
  auto to = info[3].As<Napi::Int32Array>();
  if (from.ElementLength() != to.ElementLength()) throw Napi::RangeError::New(env, "copyPages: srcPages and dstPages differ in length");
  constexpr size_t kPage = 4096;
  const size_t src_pages = src.Length() / kPage, dst_pages = dst.Length() / kPage;
  // Check everything before copying anything: a bad index changes nothing.
  for (size_t i = 0; i < from.ElementLength(); ++i) {
    if (from[i] < 0 || static_cast<size_t>(from[i]) >= src_pages || to[i] < 0 || static_cast<size_t>(to[i]) >= dst_pages)
      throw Napi::RangeError::New(env, "copyPages: page index " + std::to_string(i) + " out of range (" + std::to_string(from[i]) + " -> " + std::to_string(to[i]) + ")");
  }
  for (size_t i = 0; i < from.ElementLength(); ++i)
    memmove(dst.Data() + static_cast<size_t>(to[i]) * kPage, src.Data() + static_cast<size_t>(from[i]) * kPage, kPage);
  return env.Undefined();
}

Napi::Value ParsePagemapJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBuffer() || !info[1].IsBigInt()) throw Napi::TypeError::New(env, "parsePagemap(entries: Buffer, start: bigint)");
  auto buf = info[0].As<Napi::Buffer<uint8_t>>();
  bool lossless;
  uint64_t start = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  std::vector<uint64_t> entries(buf.Length() / 8);
  memcpy(entries.data(), buf.Data(), entries.size() * 8);
  std::vector<PageRange> present, dirty;
  ParsePagemap(entries.data(), entries.size(), start, &present, &dirty);
  Napi::Object o = Napi::Object::New(env);
  o.Set("present", RangesToJs(env, present));
  o.Set("softDirty", RangesToJs(env, dirty));
  return o;
}

Napi::Value SetChildSubreaperJs(const Napi::CallbackInfo& info) {
  int err = SetChildSubreaper();
  if (err) throw Napi::Error::New(info.Env(), std::string("prctl(PR_SET_CHILD_SUBREAPER): ") + strerror(err));
  return info.Env().Undefined();
}

// reapChild(pid): null while it runs; { code, signal, notChild } once it has exited (reaped).
Napi::Value ReapChildJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "reapChild(pid: number)");
  ChildStatus s = ReapChild(info[0].As<Napi::Number>().Int32Value());
  if (!s.exited) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("code", Napi::Number::New(env, s.code));
  o.Set("signal", Napi::Number::New(env, s.signal));
  o.Set("notChild", Napi::Boolean::New(env, s.not_child));
  return o;
}

// runProgram(path, args, { stdoutFile?, stderrFile?, timeoutMs? }): Promise<{ code, signal,
// timedOut, ms }>. posix_spawn and the wait on a worker thread (see process/spawn.h).
class RunProgramWorker : public Napi::AsyncWorker {
 public:
  RunProgramWorker(Napi::Env env, SpawnRequest req)
      : Napi::AsyncWorker(env, "remus-run-program"), deferred_(Napi::Promise::Deferred::New(env)), req_(std::move(req)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      result_ = RunProgram(req_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("code", Napi::Number::New(env, result_.code));
    o.Set("signal", Napi::Number::New(env, result_.signal));
    o.Set("timedOut", Napi::Boolean::New(env, result_.timed_out));
    o.Set("ms", Napi::Number::New(env, result_.ms));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  SpawnRequest req_;
  SpawnResult result_;
};

Napi::Value RunProgramJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray())
    throw Napi::TypeError::New(env, "runProgram(path: string, args: string[], options?: { stdoutFile?, stderrFile?, timeoutMs? })");
  SpawnRequest req;
  req.path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array a = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) req.args.push_back(a.Get(i).ToString().Utf8Value());
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    if (o.Has("stdoutFile") && o.Get("stdoutFile").IsString()) req.stdout_file = o.Get("stdoutFile").As<Napi::String>().Utf8Value();
    if (o.Has("stderrFile") && o.Get("stderrFile").IsString()) req.stderr_file = o.Get("stderrFile").As<Napi::String>().Utf8Value();
    if (o.Has("timeoutMs") && o.Get("timeoutMs").IsNumber()) req.timeout_ms = o.Get("timeoutMs").As<Napi::Number>().Int32Value();
  }
  auto* w = new RunProgramWorker(env, std::move(req));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// placeholderSockets(pid, fds): Promise<number>. Injected syscalls in a stopped process,
// all on one worker thread (a ptrace tracee belongs to the thread that seized it).
class PlaceholderWorker : public Napi::AsyncWorker {
 public:
  PlaceholderWorker(Napi::Env env, pid_t pid, std::vector<int> fds)
      : Napi::AsyncWorker(env, "remus-placeholders"), deferred_(Napi::Promise::Deferred::New(env)), pid_(pid), fds_(std::move(fds)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      placed_ = PlaceholderSockets(pid_, fds_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), placed_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  pid_t pid_;
  std::vector<int> fds_;
  int placed_ = 0;
};

Napi::Value PlaceholderSocketsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsArray()) throw Napi::TypeError::New(env, "placeholderSockets(pid: number, fds: number[])");
  auto arr = info[1].As<Napi::Array>();
  std::vector<int> fds;
  for (uint32_t i = 0; i < arr.Length(); ++i) fds.push_back(arr.Get(i).As<Napi::Number>().Int32Value());
  auto* w = new PlaceholderWorker(env, info[0].As<Napi::Number>().Int32Value(), std::move(fds));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

uint64_t MonoNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// benchFloor(pid, spanStart, spanEnd, ranges?): the least any tracker must spend on an
// epoch, without freezing: with `ranges` undefined, one PAGEMAP_SCAN fast-path walk
// (written pages, write-protecting them again) over an already registered span, then
// process_vm_readv of exactly the pages it found; with `ranges`, only the read of those.
// Runs on the JS thread: for benchmarks only, never on a service's event loop.
Napi::Value BenchFloor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = info[0].As<Napi::Number>().Int32Value();
  bool lossless;
  uint64_t lo = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  uint64_t hi = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
  std::vector<PageRange> ranges;
  uint64_t t0 = MonoNs(), t1 = t0;
  if (info[3].IsTypedArray()) {
    auto arr = info[3].As<Napi::BigUint64Array>();
    for (size_t i = 0; i + 1 < arr.ElementLength(); i += 2) ranges.push_back({arr[i], arr[i + 1]});
  } else {
    UniqueFd pagemap(open(("/proc/" + std::to_string(pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
    std::vector<abi::PageRegion> regions;
    t0 = MonoNs();
    int err = uffd::Scan(pagemap.get(), lo, hi, abi::kPmScanWpMatching, abi::kPageIsWritten, 0, 0, abi::kPageIsWritten, regions);
    t1 = MonoNs();
    if (err) throw Napi::Error::New(env, std::string("PAGEMAP_SCAN: ") + strerror(err));
    for (auto& r : regions) ranges.push_back({r.start, (r.end - r.start) / kPageSize});
  }
  std::unique_ptr<PageBuffer> buf = PageBuffer::Allocate(CountPages(ranges) * kPageSize);
  uint64_t t2 = MonoNs();
  // A plain single-threaded read, as any tracker could do it.
  std::vector<struct iovec> remote;
  uint8_t* out = buf->data();
  for (size_t i = 0; i < ranges.size();) {
    remote.clear();
    uint64_t bytes = 0;
    for (; i < ranges.size() && remote.size() < IOV_MAX; ++i) {
      remote.push_back({reinterpret_cast<void*>(ranges[i].start), ranges[i].npages * kPageSize});
      bytes += ranges[i].npages * kPageSize;
    }
    struct iovec local = {out, bytes};
    if (process_vm_readv(pid, &local, 1, remote.data(), remote.size(), 0) != static_cast<ssize_t>(bytes))
      throw Napi::Error::New(env, std::string("process_vm_readv: ") + strerror(errno));
    out += bytes;
  }
  uint64_t t3 = MonoNs();
  Napi::Object o = Napi::Object::New(env);
  o.Set("scanNs", Napi::Number::New(env, static_cast<double>(t1 - t0)));
  o.Set("readNs", Napi::Number::New(env, static_cast<double>(t3 - t2)));
  o.Set("pages", Napi::Number::New(env, static_cast<double>(CountPages(ranges))));
  return o;
}

}  // namespace
}  // namespace remus

namespace {
Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  using namespace remus;
  exports.Set("NativeTracker", TrackerWrap::Define(env));
  exports.Set("probe", Napi::Function::New<Probe>(env, "probe"));
  exports.Set("chooseBackend", Napi::Function::New<Choose>(env, "chooseBackend"));
  exports.Set("releasePages", Napi::Function::New<Release>(env, "releasePages"));
  exports.Set("externalMemory", Napi::Function::New<ExternalMemory>(env, "externalMemory"));
  exports.Set("copyPages", Napi::Function::New<CopyPagesJs>(env, "copyPages"));
  exports.Set("parsePagemap", Napi::Function::New<ParsePagemapJs>(env, "parsePagemap"));
  exports.Set("compressPages", Napi::Function::New<CompressPagesJs>(env, "compressPages"));
  exports.Set("decompressBlock", Napi::Function::New<DecompressBlockJs>(env, "decompressBlock"));
  exports.Set("setChildSubreaper", Napi::Function::New<SetChildSubreaperJs>(env, "setChildSubreaper"));
  exports.Set("reapChild", Napi::Function::New<ReapChildJs>(env, "reapChild"));
  exports.Set("runProgram", Napi::Function::New<RunProgramJs>(env, "runProgram"));
  exports.Set("placeholderSockets", Napi::Function::New<PlaceholderSocketsJs>(env, "placeholderSockets"));
  exports.Set("benchFloor", Napi::Function::New<BenchFloor>(env, "benchFloor"));
  InitDeltaCodec(env, exports);
  InitCodecBench(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(remus_native, InitModule)
