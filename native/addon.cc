// remus-replicate native addon: module entry points.
//
//   NativeTracker      one tracked process (freeze, dirty pages, registers, layout)
//   probe()            kernel capabilities, probed once
//   chooseBackend(n)   which dirty-tracking backend a request resolves to, and why
//   releasePages(buf)  give an epoch's page buffer back for reuse (empties `buf`)
//   parsePagemap(b,a)  pure pagemap parsing, exposed so it can be tested on bytes
#include <napi.h>

#include "core/caps.h"
#include "dirty/pagemap.h"
#include "js/convert.h"
#include "js/tracker_wrap.h"

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

}  // namespace
}  // namespace remus

namespace {
Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  using namespace remus;
  exports.Set("NativeTracker", TrackerWrap::Define(env));
  exports.Set("probe", Napi::Function::New<Probe>(env, "probe"));
  exports.Set("chooseBackend", Napi::Function::New<Choose>(env, "chooseBackend"));
  exports.Set("releasePages", Napi::Function::New<Release>(env, "releasePages"));
  exports.Set("parsePagemap", Napi::Function::New<ParsePagemapJs>(env, "parsePagemap"));
  return exports;
}
}  // namespace

NODE_API_MODULE(remus_native, InitModule)
