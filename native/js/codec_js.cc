#include "js/codec_js.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "codec/lz4_pages.h"

namespace remus {
namespace {

// Hands a vector's memory to JS without a copy; freed by the buffer's finalizer.
Napi::Buffer<uint8_t> VectorToBuffer(Napi::Env env, std::vector<uint8_t>&& v) {
  if (v.empty()) return Napi::Buffer<uint8_t>::New(env, 0);
  auto* owned = new std::vector<uint8_t>(std::move(v));
  return Napi::Buffer<uint8_t>::New(env, owned->data(), owned->size(),
                                    [](Napi::Env, uint8_t*, std::vector<uint8_t>* p) { delete p; }, owned);
}

class CompressWorker : public Napi::AsyncWorker {
 public:
  CompressWorker(Napi::Env env, Napi::Buffer<uint8_t> pages, Napi::Buffer<uint8_t> addrs)
      : Napi::AsyncWorker(env, "remus-compress"), deferred_(Napi::Promise::Deferred::New(env)),
        input_(Napi::Persistent(pages)), addrs_ref_(Napi::Persistent(addrs)), data_(pages.Data()),
        count_(pages.Length() / 4096) {
    // The addresses are few: copy them (a Buffer's bytes need not be 8-byte aligned).
    addrs_.resize(count_);
    memcpy(addrs_.data(), addrs.Data(), count_ * 8);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { out_ = CompressPages(data_, addrs_.data(), count_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("addrs", VectorToBuffer(env, std::move(out_.addrs)));
    o.Set("zeros", VectorToBuffer(env, std::move(out_.zeros)));
    o.Set("data", VectorToBuffer(env, std::move(out_.data)));
    o.Set("compressed", Napi::Boolean::New(env, out_.compressed));
    o.Set("rawBytes", Napi::Number::New(env, static_cast<double>(out_.raw_bytes)));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Buffer<uint8_t>> input_;  // keeps the pages alive while we read them
  Napi::Reference<Napi::Buffer<uint8_t>> addrs_ref_;
  const uint8_t* data_;
  size_t count_;
  std::vector<uint64_t> addrs_;
  CompressedPages out_;
};

class DecompressWorker : public Napi::AsyncWorker {
 public:
  DecompressWorker(Napi::Env env, Napi::Buffer<uint8_t> src, size_t raw_bytes)
      : Napi::AsyncWorker(env, "remus-decompress"), deferred_(Napi::Promise::Deferred::New(env)),
        input_(Napi::Persistent(src)), src_(src.Data()), len_(src.Length()), raw_bytes_(raw_bytes) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    out_.resize(raw_bytes_);
    std::string err = DecompressBlock(src_, len_, out_.data(), raw_bytes_);
    if (!err.empty()) SetError(err);
  }
  void OnOK() override { deferred_.Resolve(VectorToBuffer(Env(), std::move(out_))); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Buffer<uint8_t>> input_;
  const uint8_t* src_;
  size_t len_;
  size_t raw_bytes_;
  std::vector<uint8_t> out_;
};

}  // namespace

Napi::Value CompressPagesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsBuffer())
    throw Napi::TypeError::New(env, "compressPages(pages: Buffer, addrs: Buffer)");
  auto pages = info[0].As<Napi::Buffer<uint8_t>>();
  auto addrs = info[1].As<Napi::Buffer<uint8_t>>();
  if (pages.Length() % 4096 != 0) throw Napi::RangeError::New(env, "compressPages: length is not a multiple of 4096");
  if (addrs.Length() != pages.Length() / 4096 * 8) throw Napi::RangeError::New(env, "compressPages: one u64 address per page");
  auto* w = new CompressWorker(env, pages, addrs);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value DecompressBlockJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "decompressBlock(data: Buffer, rawBytes: number)");
  double raw = info[1].As<Napi::Number>().DoubleValue();
  if (!(raw >= 0) || raw > 1024.0 * 1024 * 1024) throw Napi::RangeError::New(env, "decompressBlock: rawBytes out of range");
  auto* w = new DecompressWorker(env, info[0].As<Napi::Buffer<uint8_t>>(), static_cast<size_t>(raw));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace remus
