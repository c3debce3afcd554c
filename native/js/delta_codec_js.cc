#include "js/delta_codec_js.h"

#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <string>
#include <vector>

#include "codec/crc32c.h"
#include "codec/delta_batch.h"
#include "codec/page_delta.h"
#include "codec/shadow_cache.h"
#include "memory/buffer_pool.h"
#include "js/convert.h"

namespace remus {
namespace {

constexpr size_t kPage = 4096;
constexpr double kDefaultMaxBytes = 64.0 * 1024 * 1024;
constexpr double kLargestMaxBytes = 1024.0 * 1024 * 1024 * 1024;  // 1 TiB: a sanity bound

// Tags the opaque handle parseBatch returns, so that no other External passes for one.
const napi_type_tag kParsedBatchTag = {0x5245'4d55'5344'454cull, 0x5441'2d42'4154'4348ull};

struct CacheState {
  ShadowCache cache;
  EncodeOptions options;
  CacheState(size_t max_bytes, Eviction policy) : cache(max_bytes, policy) {}
};

Napi::Buffer<uint8_t> OwnedToBuffer(Napi::Env env, OwnedBytes&& b) {
  if (b.size == 0) return Napi::Buffer<uint8_t>::New(env, 0);
  struct Sizes { size_t cap, len; };
  size_t cap;
  uint8_t* p = b.data.Release(&cap);
  auto out = Napi::Buffer<uint8_t>::New(env, p, b.size, [](Napi::Env fenv, uint8_t* d, Sizes* z) {
    RecountExternal(fenv, z->len);
    FreeLargeBuffer(d, z->cap);
    delete z;
  }, new Sizes{cap, b.size});
  UncountExternal(env, b.size);
  return out;
}

Napi::Buffer<uint8_t> U64ToBuffer(Napi::Env env, const std::vector<uint64_t>& v) {
  if (v.empty()) return Napi::Buffer<uint8_t>::New(env, 0);
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(v.data()), v.size() * 8);
}

std::vector<uint64_t> ReadU64s(const uint8_t* p, size_t n) {
  std::vector<uint64_t> v(n);
  if (n) memcpy(v.data(), p, n * 8);  // a Buffer's bytes need not be 8-byte aligned
  return v;
}

Napi::Object EncodeStatsToJs(Napi::Env env, const EncodeStats& s) {
  Napi::Object o = Napi::Object::New(env);
  auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
  num("pages", s.pages);
  num("zero", s.zero);
  num("full", s.full);
  num("delta", s.delta);
  num("unchanged", s.unchanged);
  num("hits", s.hits);
  num("misses", s.misses);
  num("evictions", s.evictions);
  num("rawBytes", static_cast<double>(s.pages) * kPage);
  num("bodyBytes", static_cast<double>(s.body_bytes));
  num("deltaBytes", static_cast<double>(s.delta_bytes));
  num("wireBytes", static_cast<double>(s.wire_bytes));
  o.Set("compressed", Napi::Boolean::New(env, s.compressed));
  return o;
}

struct CacheSnapshot {
  size_t entries = 0, capacity = 0, bytes = 0, max_bytes = 0;
  Eviction policy = Eviction::kClock;
  CacheCounters counters;
};

CacheSnapshot Snapshot(const ShadowCache& c) {
  return {c.entries(), c.capacity(), c.bytes(), c.max_bytes(), c.policy(), c.counters()};
}

class ShadowCacheWrap : public Napi::ObjectWrap<ShadowCacheWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ShadowCache",
                       {InstanceMethod<&ShadowCacheWrap::Encode>("encode"),
                        InstanceMethod<&ShadowCacheWrap::EncodeSync>("encodeSync"),
                        InstanceMethod<&ShadowCacheWrap::Reset>("reset"),
                        InstanceMethod<&ShadowCacheWrap::Retain>("retain"),
                        InstanceMethod<&ShadowCacheWrap::Stats>("stats"),
                        InstanceMethod<&ShadowCacheWrap::CheckInvariants>("checkInvariants"),
                        InstanceMethod<&ShadowCacheWrap::Close>("close")});
  }

  explicit ShadowCacheWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ShadowCacheWrap>(info) {
    Napi::Env env = info.Env();
    double max_bytes = kDefaultMaxBytes;
    Eviction policy = Eviction::kLru;
    EncodeOptions options;
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      if (!info[0].IsObject()) throw Napi::TypeError::New(env, "ShadowCache(options?: { maxBytes?, eviction?, xorRuns?, compress? })");
      Napi::Object o = info[0].As<Napi::Object>();
      Napi::Value mb = o.Get("maxBytes");
      if (!mb.IsUndefined()) {
        if (!mb.IsNumber()) throw Napi::TypeError::New(env, "ShadowCache: maxBytes must be a number");
        max_bytes = mb.As<Napi::Number>().DoubleValue();
        if (!(max_bytes >= 1) || max_bytes > kLargestMaxBytes || max_bytes != static_cast<double>(static_cast<uint64_t>(max_bytes)))
          throw Napi::RangeError::New(env, "ShadowCache: maxBytes must be a whole number of bytes between 1 and 2^40");
      }
      Napi::Value ev = o.Get("eviction");
      if (!ev.IsUndefined()) {
        std::string e = ev.IsString() ? ev.As<Napi::String>().Utf8Value() : "";
        if (e == "clock") policy = Eviction::kClock;
        else if (e == "lru") policy = Eviction::kLru;
        else throw Napi::RangeError::New(env, "ShadowCache: eviction must be 'clock' or 'lru'");
      }
      Napi::Value xr = o.Get("xorRuns");
      if (!xr.IsUndefined()) options.xor_runs = xr.ToBoolean();
      Napi::Value cz = o.Get("compress");
      if (!cz.IsUndefined()) options.compress = cz.ToBoolean();
      Napi::Value mg = o.Get("mergeGap");
      if (!mg.IsUndefined()) {
        double g = mg.ToNumber().DoubleValue();
        if (!(g >= 0 && g <= 64)) throw Napi::RangeError::New(env, "ShadowCache: mergeGap must be between 0 and 64");
        options.merge_gap = static_cast<size_t>(g);
      }
    }
    try {
      state_ = std::make_shared<CacheState>(static_cast<size_t>(max_bytes), policy);
    } catch (const std::invalid_argument& e) {
      throw Napi::RangeError::New(env, std::string("ShadowCache: ") + e.what());
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
    state_->options = options;
    snap_ = Snapshot(state_->cache);
    env_ = env;
    napi_add_env_cleanup_hook(env, &ShadowCacheWrap::Cleanup, this);
  }

  ~ShadowCacheWrap() override {
    if (env_) napi_remove_env_cleanup_hook(env_, &ShadowCacheWrap::Cleanup, this);
    state_.reset();
  }

  // Called by EncodeWorker on the JS thread once the work is done.
  void Done() {
    busy_ = false;
    if (state_) snap_ = Snapshot(state_->cache);
  }

 private:
  static void Cleanup(void* self) {
    auto* w = static_cast<ShadowCacheWrap*>(self);
    w->closed_ = true;
    w->state_.reset();  // a running encode keeps its own reference until it ends
  }

  // Throws unless a new operation may start now.
  void Enter(Napi::Env env, const char* op) {
    if (closed_ || !state_) throw Napi::Error::New(env, std::string("ShadowCache.") + op + ": the cache is closed");
    if (busy_)
      throw Napi::Error::New(env, std::string("ShadowCache.") + op +
                                      ": an encode() on this cache is still running; calls on one cache must not overlap (await each)");
  }

  struct Input {
    std::vector<uint64_t> addrs;
    const uint8_t* pages;
    size_t count;
  };

  static Input ReadInput(const Napi::CallbackInfo& info, const char* op) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsBuffer())
      throw Napi::TypeError::New(env, std::string("ShadowCache.") + op + "(addrs: Buffer /* u64 LE */, pages: Buffer)");
    auto addrs = info[0].As<Napi::Buffer<uint8_t>>();
    auto pages = info[1].As<Napi::Buffer<uint8_t>>();
    if (pages.Length() % kPage) throw Napi::RangeError::New(env, std::string("ShadowCache.") + op + ": pages length is not a multiple of 4096");
    size_t count = pages.Length() / kPage;
    if (addrs.Length() != count * 8)
      throw Napi::RangeError::New(env, std::string("ShadowCache.") + op + ": " + std::to_string(addrs.Length() / 8) +
                                           " addresses for " + std::to_string(count) + " pages (one u64 per page)");
    if (count > kMaxBatchPages)
      throw Napi::RangeError::New(env, std::string("ShadowCache.") + op + ": " + std::to_string(count) +
                                           " pages: at most " + std::to_string(kMaxBatchPages) + " per batch");
    return {ReadU64s(addrs.Data(), count), pages.Data(), count};
  }

  class EncodeWorker : public Napi::AsyncWorker {
   public:
    EncodeWorker(Napi::Env env, ShadowCacheWrap* self, Napi::Object self_obj, Napi::Buffer<uint8_t> pages, Input in)
        : Napi::AsyncWorker(env, "remus-delta-encode"), deferred_(Napi::Promise::Deferred::New(env)), self_(self),
          self_ref_(Napi::Persistent(self_obj)), pages_ref_(Napi::Persistent(pages)), state_(self->state_),
          in_(std::move(in)) {}
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
      std::string err = EncodeBatch(state_->cache, in_.addrs.data(), in_.pages, in_.count, state_->options, &out_, &stats_);
      if (!err.empty()) SetError("ShadowCache.encode: " + err);
    }
    void OnOK() override {
      self_->Done();
      Napi::Env env = Env();
      Napi::Object o = Napi::Object::New(env);
      o.Set("data", OwnedToBuffer(env, std::move(out_)));
      o.Set("stats", EncodeStatsToJs(env, stats_));
      deferred_.Resolve(o);
    }
    void OnError(const Napi::Error& e) override {
      self_->Done();
      deferred_.Reject(e.Value());
    }

   private:
    Napi::Promise::Deferred deferred_;
    ShadowCacheWrap* self_;
    Napi::ObjectReference self_ref_;              // keeps the wrap alive until we finish
    Napi::Reference<Napi::Buffer<uint8_t>> pages_ref_;  // keeps the pages alive while we read them
    std::shared_ptr<CacheState> state_;
    Input in_;
    OwnedBytes out_;
    EncodeStats stats_;
  };

  Napi::Value Encode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Enter(env, "encode");
    Input in = ReadInput(info, "encode");
    auto* w = new EncodeWorker(env, this, info.This().As<Napi::Object>(), info[1].As<Napi::Buffer<uint8_t>>(), std::move(in));
    busy_ = true;
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value EncodeSync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Enter(env, "encodeSync");
    Input in = ReadInput(info, "encodeSync");
    OwnedBytes out;
    EncodeStats stats;
    std::string err = EncodeBatch(state_->cache, in.addrs.data(), in.pages, in.count, state_->options, &out, &stats);
    snap_ = Snapshot(state_->cache);
    if (!err.empty()) throw Napi::Error::New(env, "ShadowCache.encodeSync: " + err);
    Napi::Object o = Napi::Object::New(env);
    o.Set("data", OwnedToBuffer(env, std::move(out)));
    o.Set("stats", EncodeStatsToJs(env, stats));
    return o;
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    Enter(info.Env(), "reset");
    state_->cache.Clear();
    snap_ = Snapshot(state_->cache);
    return info.Env().Undefined();
  }

  // retain(ranges: BigUint64Array | Buffer): [start, end) byte-address pairs, sorted.
  Napi::Value Retain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Enter(env, "retain");
    std::vector<uint64_t> r;
    if (info.Length() > 0 && info[0].IsTypedArray() &&
        info[0].As<Napi::TypedArray>().TypedArrayType() == napi_biguint64_array) {
      auto a = info[0].As<Napi::BigUint64Array>();
      r.assign(a.Data(), a.Data() + a.ElementLength());
    } else if (info.Length() > 0 && info[0].IsBuffer()) {
      auto b = info[0].As<Napi::Buffer<uint8_t>>();
      if (b.Length() % 8) throw Napi::RangeError::New(env, "ShadowCache.retain: ranges length is not a multiple of 8");
      r = ReadU64s(b.Data(), b.Length() / 8);
    } else {
      throw Napi::TypeError::New(env, "ShadowCache.retain(ranges: BigUint64Array /* [start, end) pairs, sorted */)");
    }
    if (r.size() % 2) throw Napi::RangeError::New(env, "ShadowCache.retain: ranges must be [start, end) pairs");
    for (size_t i = 0; i < r.size(); i += 2) {
      if (r[i] > r[i + 1]) throw Napi::RangeError::New(env, "ShadowCache.retain: a range ends before it starts");
      if (i && r[i] < r[i - 1]) throw Napi::RangeError::New(env, "ShadowCache.retain: ranges must be sorted and not overlap");
    }
    size_t dropped = state_->cache.Retain(r.data(), r.size() / 2);
    snap_ = Snapshot(state_->cache);
    return Napi::Number::New(env, static_cast<double>(dropped));
  }

  // The figures as of the end of the last operation (an encode() in flight is not seen).
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
    num("entries", static_cast<double>(snap_.entries));
    num("capacity", static_cast<double>(snap_.capacity));
    num("bytes", static_cast<double>(snap_.bytes));
    num("maxBytes", static_cast<double>(snap_.max_bytes));
    o.Set("eviction", Napi::String::New(env, snap_.policy == Eviction::kLru ? "lru" : "clock"));
    num("hits", static_cast<double>(snap_.counters.hits));
    num("misses", static_cast<double>(snap_.counters.misses));
    num("evictions", static_cast<double>(snap_.counters.evictions));
    num("inserts", static_cast<double>(snap_.counters.inserts));
    num("erased", static_cast<double>(snap_.counters.erased));
    o.Set("closed", Napi::Boolean::New(env, closed_));
    return o;
  }

  Napi::Value CheckInvariants(const Napi::CallbackInfo& info) {
    Enter(info.Env(), "checkInvariants");
    return Napi::String::New(info.Env(), state_->cache.CheckInvariants());
  }

  // Frees the cache now (an encode() in flight finishes first, on its own reference).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    closed_ = true;
    state_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<CacheState> state_;
  CacheSnapshot snap_;
  bool busy_ = false;
  bool closed_ = false;
  napi_env env_ = nullptr;
};

// --- decoding ----------------------------------------------------------------------------

using BatchPtr = std::shared_ptr<ParsedBatch>;

size_t HandleBytes(const ParsedBatch& b) { return b.body_len + b.entries.size() * sizeof(ParsedBatch::Entry); }

Napi::Value MakeHandle(Napi::Env env, BatchPtr batch) {
  int64_t bytes = static_cast<int64_t>(HandleBytes(*batch));
  auto* holder = new BatchPtr(std::move(batch));
  auto ext = Napi::External<BatchPtr>::New(env, holder, [bytes](Napi::Env env, BatchPtr* p) {
    if (bytes >= (1 << 16)) Napi::MemoryManagement::AdjustExternalMemory(env, -bytes);
    delete p;
  });
  napi_status s = napi_type_tag_object(env, ext, &kParsedBatchTag);
  if (s != napi_ok) throw Napi::Error::New(env, "parseBatch: cannot tag the batch handle");
  if (bytes >= (1 << 16)) Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  return ext;
}

// The parsed batch behind a handle, or null when `v` is not one of ours.
BatchPtr FromHandle(Napi::Env env, Napi::Value v) {
  if (!v.IsExternal()) return nullptr;
  bool ok = false;
  if (napi_check_object_type_tag(env, v, &kParsedBatchTag, &ok) != napi_ok || !ok) return nullptr;
  return *v.As<Napi::External<BatchPtr>>().Data();
}


// Decoded pages: from a pool of mapped, already faulted-in buffers when large (a fresh
// megabyte costs 256 page faults and zeroings, about as much as decoding it), from the heap
// when small. A pooled buffer goes back to the pool when JS drops it.
BufferPool& OutputPool() {
  static BufferPool* pool = new BufferPool(8, size_t{64} << 20);  // never destroyed: finalizers may run late
  return *pool;
}

constexpr size_t kPoolFrom = 64 * 1024;

// Pooled buffers lent to JS, by data pointer, so that releaseDecoded can return one early.
struct Lent {
  std::unique_ptr<PageBuffer> buf;
  size_t bytes = 0;  // the JS buffer's length (see UncountExternal)
};
std::mutex g_lent_mu;
std::unordered_map<const uint8_t*, Lent*>& LentMap() {
  static auto* m = new std::unordered_map<const uint8_t*, Lent*>();  // never destroyed, as the pool
  return *m;
}

void GiveBack(Lent* lent) {
  if (lent->buf) OutputPool().Give(std::move(lent->buf));
}

struct PagesOut {
  std::unique_ptr<PageBuffer> pooled;
  std::unique_ptr<uint8_t[]> heap;
  size_t size = 0;
  // Set by Borrow: the caller's Buffer (held by its reference), written in place and
  // returned as a view of its first `size` bytes: no new ArrayBuffer per batch.
  uint8_t* borrowed = nullptr;
  size_t borrowed_len = 0;
  Napi::Reference<Napi::Buffer<uint8_t>> borrowed_ref;
  void Borrow(Napi::Buffer<uint8_t> buf) {
    borrowed = buf.Data();
    borrowed_len = buf.Length();
    borrowed_ref = Napi::Persistent(buf);
  }
  // "" or why the output cannot take n bytes.
  std::string Allocate(size_t n) {
    size = n;
    if (borrowed) return n <= borrowed_len ? "" : "out: " + std::to_string(borrowed_len) + " bytes for " + std::to_string(n / kPage) + " pages with data (" + std::to_string(n) + " needed)";
    if (n >= kPoolFrom) pooled = OutputPool().Take(n);
    else if (n) heap.reset(new uint8_t[n]);
    return "";
  }
  uint8_t* data() { return borrowed ? borrowed : pooled ? pooled->data() : heap.get(); }
  Napi::Value ToJs(Napi::Env env) {
    if (borrowed) {
      Napi::Buffer<uint8_t> buf = borrowed_ref.Value();
      return buf.Get("subarray").As<Napi::Function>().Call(buf, {Napi::Number::New(env, 0), Napi::Number::New(env, static_cast<double>(size))});
    }
    if (size == 0) return Napi::Buffer<uint8_t>::New(env, 0);
    if (pooled) {
      uint8_t* data = pooled->data();
      auto* lent = new Lent{std::move(pooled), size};
      {
        std::lock_guard<std::mutex> lock(g_lent_mu);
        LentMap()[data] = lent;
      }
      auto out = Napi::Buffer<uint8_t>::New(env, data, size,
                                        [](Napi::Env fenv, uint8_t* d, Lent* l) {
                                          RecountExternal(fenv, l->bytes);
                                          {
                                            std::lock_guard<std::mutex> lock(g_lent_mu);
                                            auto it = LentMap().find(d);
                                            if (it != LentMap().end() && it->second == l) LentMap().erase(it);
                                          }
                                          GiveBack(l);
                                          delete l;
                                        },
                                        lent);
      UncountExternal(env, size);
      return out;
    }
    return Napi::Buffer<uint8_t>::New(env, heap.release(), size, [](Napi::Env, uint8_t* d) { delete[] d; });
  }
};

// Applies `b` into a fresh output; "" or the error.
std::string Apply(const ParsedBatch& b, const uint8_t* bases, size_t bases_len, PagesOut* pages, DecodedBatch* out) {
  std::string err = pages->Allocate((b.full + b.delta) * kPage);
  if (!err.empty()) return err;
  return ApplyBatch(b, bases, bases_len, pages->data(), out);
}

Napi::Object DecodedToJs(Napi::Env env, DecodedBatch& d, PagesOut& pages) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("addrs", U64ToBuffer(env, d.addrs));
  o.Set("zeros", U64ToBuffer(env, d.zeros));
  o.Set("pages", pages.ToJs(env));
  return o;
}

Napi::Object ParsedToJs(Napi::Env env, const BatchPtr& b, PagesOut& pages, bool want_pages) {
  std::vector<uint64_t> addrs, zeros, need;
  std::vector<uint32_t> slots;
  addrs.reserve(b->full + b->delta);
  zeros.reserve(b->zero);
  need.reserve(b->delta);
  slots.reserve(b->delta);
  for (const auto& e : b->entries) {
    if (e.kind == kZero) {
      zeros.push_back(e.addr);
    } else {
      addrs.push_back(e.addr);
      if (e.kind == kDelta) {
        need.push_back(e.addr);
        slots.push_back(e.slot);
      }
    }
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("addrs", U64ToBuffer(env, addrs));
  o.Set("zeros", U64ToBuffer(env, zeros));
  o.Set("needBase", U64ToBuffer(env, need));
  o.Set("needSlot", slots.empty() ? Napi::Buffer<uint8_t>::New(env, 0)
                                  : Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(slots.data()), slots.size() * 4));
  if (want_pages) o.Set("pages", pages.ToJs(env));
  o.Set("count", Napi::Number::New(env, static_cast<double>(b->entries.size())));
  o.Set("full", Napi::Number::New(env, static_cast<double>(b->full)));
  o.Set("delta", Napi::Number::New(env, static_cast<double>(b->delta)));
  o.Set("zero", Napi::Number::New(env, static_cast<double>(b->zero)));
  o.Set("batch", MakeHandle(env, b));
  return o;
}

class ParseWorker : public Napi::AsyncWorker {
 public:
  ParseWorker(Napi::Env env, Napi::Buffer<uint8_t> data, bool want_pages)
      : Napi::AsyncWorker(env, "remus-delta-parse"), deferred_(Napi::Promise::Deferred::New(env)),
        ref_(Napi::Persistent(data)), data_(data.Data()), len_(data.Length()), batch_(std::make_shared<ParsedBatch>()),
        want_pages_(want_pages) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    std::string err = ParseBatch(data_, len_, batch_.get());
    if (!err.empty()) return SetError("parseBatch: " + err);
    if (want_pages_) pages_.Allocate((batch_->full + batch_->delta) * kPage);
  }
  void OnOK() override { deferred_.Resolve(ParsedToJs(Env(), batch_, pages_, want_pages_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Buffer<uint8_t>> ref_;
  const uint8_t* data_;
  size_t len_;
  BatchPtr batch_;
  bool want_pages_;
  PagesOut pages_;
};

class ApplyWorker : public Napi::AsyncWorker {
 public:
  ApplyWorker(Napi::Env env, BatchPtr batch, Napi::Value data, Napi::Buffer<uint8_t> bases, Napi::Value out)
      : Napi::AsyncWorker(env, "remus-delta-apply"), deferred_(Napi::Promise::Deferred::New(env)), batch_(std::move(batch)),
        bases_ref_(Napi::Persistent(bases)), bases_(bases.Data()), bases_len_(bases.Length()) {
    if (out.IsBuffer()) pages_.Borrow(out.As<Napi::Buffer<uint8_t>>());
    if (!batch_) {
      auto buf = data.As<Napi::Buffer<uint8_t>>();
      data_ref_ = Napi::Persistent(buf);
      data_ = buf.Data();
      data_len_ = buf.Length();
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    if (!batch_) {
      batch_ = std::make_shared<ParsedBatch>();
      std::string err = ParseBatch(data_, data_len_, batch_.get());
      if (!err.empty()) return SetError("applyBatch: " + err);
    }
    std::string err = Apply(*batch_, bases_, bases_len_, &pages_, &out_);
    if (!err.empty()) SetError("applyBatch: " + err);
  }
  void OnOK() override { deferred_.Resolve(DecodedToJs(Env(), out_, pages_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  BatchPtr batch_;
  Napi::Reference<Napi::Buffer<uint8_t>> data_ref_;
  const uint8_t* data_ = nullptr;
  size_t data_len_ = 0;
  Napi::Reference<Napi::Buffer<uint8_t>> bases_ref_;
  const uint8_t* bases_;
  size_t bases_len_;
  DecodedBatch out_;
  PagesOut pages_;
};

class ApplyInPlaceWorker : public Napi::AsyncWorker {
 public:
  ApplyInPlaceWorker(Napi::Env env, BatchPtr batch, Napi::Buffer<uint8_t> pages)
      : Napi::AsyncWorker(env, "remus-delta-apply"), deferred_(Napi::Promise::Deferred::New(env)), batch_(std::move(batch)),
        pages_ref_(Napi::Persistent(pages)), pages_(pages.Data()), len_(pages.Length()) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    std::string err = ApplyBatchInPlace(*batch_, pages_, len_, &out_);
    if (!err.empty()) SetError("applyBatchInPlace: " + err);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("addrs", U64ToBuffer(env, out_.addrs));
    o.Set("zeros", U64ToBuffer(env, out_.zeros));
    o.Set("pages", pages_ref_.Value());
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  BatchPtr batch_;
  Napi::Reference<Napi::Buffer<uint8_t>> pages_ref_;
  uint8_t* pages_;
  size_t len_;
  DecodedBatch out_;
};

BatchPtr HandleArg(const Napi::CallbackInfo& info, const char* op) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, std::string(op) + "(batch: handle from parseBatch, pages: Buffer)");
  BatchPtr b = FromHandle(env, info[0]);
  if (!b) throw Napi::TypeError::New(env, std::string(op) + ": batch must be the handle parseBatch returned");
  return b;
}

// applyBatchInPlace(batch, pages): `pages` (parseBatch's `pages`, or any Buffer of
// (full + delta) x 4096 bytes) holds each DELTA page's base at its slot (needSlot).
Napi::Value ApplyBatchInPlaceJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BatchPtr b = HandleArg(info, "applyBatchInPlace");
  auto* w = new ApplyInPlaceWorker(env, std::move(b), info[1].As<Napi::Buffer<uint8_t>>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value ApplyBatchInPlaceSyncJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BatchPtr b = HandleArg(info, "applyBatchInPlaceSync");
  auto pages = info[1].As<Napi::Buffer<uint8_t>>();
  DecodedBatch out;
  std::string err = ApplyBatchInPlace(*b, pages.Data(), pages.Length(), &out);
  if (!err.empty()) throw Napi::Error::New(env, "applyBatchInPlaceSync: " + err);
  Napi::Object o = Napi::Object::New(env);
  o.Set("addrs", U64ToBuffer(env, out.addrs));
  o.Set("zeros", U64ToBuffer(env, out.zeros));
  o.Set("pages", pages);
  return o;
}

// parseBatch's options: { pages: true } asks for the output buffer of applyBatchInPlace.
bool WantPages(const Napi::CallbackInfo& info) {
  return info.Length() > 1 && info[1].IsObject() && info[1].As<Napi::Object>().Get("pages").ToBoolean();
}

Napi::Value ParseBatchJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "parseBatch(data: Buffer, options?: { pages?: boolean })");
  auto* w = new ParseWorker(env, info[0].As<Napi::Buffer<uint8_t>>(), WantPages(info));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value ParseBatchSyncJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "parseBatchSync(data: Buffer, options?: { pages?: boolean })");
  auto data = info[0].As<Napi::Buffer<uint8_t>>();
  auto batch = std::make_shared<ParsedBatch>();
  std::string err = ParseBatch(data.Data(), data.Length(), batch.get());
  if (!err.empty()) throw Napi::Error::New(env, "parseBatchSync: " + err);
  PagesOut pages;
  bool want = WantPages(info);
  if (want) pages.Allocate((batch->full + batch->delta) * kPage);
  return ParsedToJs(env, batch, pages, want);
}

// The batch argument: a handle from parseBatch, or the batch's bytes (parsed here).
BatchPtr BatchArg(const Napi::CallbackInfo& info, const char* op) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsBuffer())
    throw Napi::TypeError::New(env, std::string(op) + "(batch: handle from parseBatch | Buffer, bases: Buffer, out?: Buffer)");
  BatchPtr b = FromHandle(env, info[0]);
  if (!b && !info[0].IsBuffer())
    throw Napi::TypeError::New(env, std::string(op) + ": batch must be the handle parseBatch returned, or the batch's bytes");
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsBuffer())
    throw Napi::TypeError::New(env, std::string(op) + ": out, when given, must be a Buffer");
  return b;
}

Napi::Value ApplyBatchJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BatchPtr b = BatchArg(info, "applyBatch");
  auto* w = new ApplyWorker(env, std::move(b), info[0], info[1].As<Napi::Buffer<uint8_t>>(), info.Length() > 2 ? info[2] : env.Undefined());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value ApplyBatchSyncJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BatchPtr b = BatchArg(info, "applyBatchSync");
  if (!b) {
    auto data = info[0].As<Napi::Buffer<uint8_t>>();
    b = std::make_shared<ParsedBatch>();
    std::string err = ParseBatch(data.Data(), data.Length(), b.get());
    if (!err.empty()) throw Napi::Error::New(env, "applyBatchSync: " + err);
  }
  auto bases = info[1].As<Napi::Buffer<uint8_t>>();
  DecodedBatch out;
  PagesOut pages;
  if (info.Length() > 2 && info[2].IsBuffer()) pages.Borrow(info[2].As<Napi::Buffer<uint8_t>>());
  std::string err = Apply(*b, bases.Data(), bases.Length(), &pages, &out);
  if (!err.empty()) throw Napi::Error::New(env, "applyBatchSync: " + err);
  return DecodedToJs(env, out, pages);
}

// releaseDecoded(pages: Buffer): gives a decoded `pages` buffer back for reuse now instead
// of at garbage collection; the buffer is detached (empty) afterwards. Anything else: no-op.
Napi::Value ReleaseDecodedJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) return env.Undefined();
  auto buf = info[0].As<Napi::Buffer<uint8_t>>();
  Lent* lent = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_lent_mu);
    auto it = LentMap().find(buf.Data());
    if (it == LentMap().end()) return env.Undefined();
    lent = it->second;
    LentMap().erase(it);
  }
  // Detach first: after this no JS view can reach the memory we hand back.
  Napi::ArrayBuffer ab = buf.ArrayBuffer();
  if (!ab.IsDetached()) DetachCounted(env, ab, &lent->bytes);
  GiveBack(lent);
  return env.Undefined();
}

Napi::Value Crc32cJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "crc32c(data: Buffer, path?: true | 'portable' | 'sse4.2' | 'copy')";
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, usage);
  auto b = info[0].As<Napi::Buffer<uint8_t>>();
  // The default is what the codec uses; the other paths are there for tests and benches.
  std::string path = info.Length() < 2 || info[1].IsUndefined() ? "auto"
                     : info[1].IsBoolean()                     ? (info[1].As<Napi::Boolean>().Value() ? "portable" : "auto")
                     : info[1].IsString()                      ? info[1].As<Napi::String>().Utf8Value()
                                                               : "?";
  if (path == "auto") return Napi::Number::New(env, b.Length() == kPage ? Crc32cPage(b.Data()) : Crc32c(0, b.Data(), b.Length()));
  if (path == "portable") return Napi::Number::New(env, Crc32cPortable(0, b.Data(), b.Length()));
  if (path != "sse4.2" && path != "copy") throw Napi::TypeError::New(env, usage);
  if (b.Length() != kPage) throw Napi::RangeError::New(env, "crc32c: the '" + path + "' path takes exactly one page (4096 bytes)");
  if (path == "sse4.2") return Napi::Number::New(env, Crc32cPageSse42(b.Data()));
  // 'copy': the decoder's fused copy-and-check; the copy must be exact too.
  std::vector<uint8_t> out(kPage);
  uint32_t c = Crc32cPageCopy(out.data(), b.Data());
  if (memcmp(out.data(), b.Data(), kPage) != 0) throw Napi::Error::New(env, "crc32c: the copying path wrote other bytes than it read");
  return Napi::Number::New(env, c);
}

Napi::Value CodecInfoJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("crc32c", Crc32cImplementation());
  o.Set("diff", DiffImplementation());
  o.Set("formatVersion", Napi::Number::New(env, kDeltaVersion));
  o.Set("maxBatchPages", Napi::Number::New(env, static_cast<double>(kMaxBatchPages)));
  return o;
}

}  // namespace

void InitDeltaCodec(Napi::Env env, Napi::Object exports) {
  exports.Set("ShadowCache", ShadowCacheWrap::Define(env));
  exports.Set("parseBatch", Napi::Function::New<ParseBatchJs>(env, "parseBatch"));
  exports.Set("parseBatchSync", Napi::Function::New<ParseBatchSyncJs>(env, "parseBatchSync"));
  exports.Set("applyBatch", Napi::Function::New<ApplyBatchJs>(env, "applyBatch"));
  exports.Set("applyBatchSync", Napi::Function::New<ApplyBatchSyncJs>(env, "applyBatchSync"));
  exports.Set("applyBatchInPlace", Napi::Function::New<ApplyBatchInPlaceJs>(env, "applyBatchInPlace"));
  exports.Set("applyBatchInPlaceSync", Napi::Function::New<ApplyBatchInPlaceSyncJs>(env, "applyBatchInPlaceSync"));
  exports.Set("releaseDecoded", Napi::Function::New<ReleaseDecodedJs>(env, "releaseDecoded"));
  exports.Set("crc32c", Napi::Function::New<Crc32cJs>(env, "crc32c"));
  exports.Set("codecInfo", Napi::Function::New<CodecInfoJs>(env, "codecInfo"));
}

}  // namespace remus
