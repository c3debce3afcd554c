#include "js/convert.h"

#include <cstring>
#include <mutex>
#include <sys/mman.h>
#include <unordered_map>

namespace remus {
namespace {

Napi::BigInt Big(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

Napi::Value TimespecNs(Napi::Env env, const struct timespec& ts) {
  return Big(env, static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec));
}

Napi::Buffer<uint8_t> CopyBuffer(Napi::Env env, const void* data, size_t len) {
  return Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(data), len);
}

std::string Perms(const Vma& v) {
  std::string p = "----";
  if (v.prot & PROT_READ) p[0] = 'r';
  if (v.prot & PROT_WRITE) p[1] = 'w';
  if (v.prot & PROT_EXEC) p[2] = 'x';
  p[3] = v.shared ? 's' : 'p';
  return p;
}

const char* RestartName(SyscallRestart r) {
  switch (r) {
    case SyscallRestart::kRestart: return "restart";
    case SyscallRestart::kInterrupted: return "interrupted";
    case SyscallRestart::kNone: break;
  }
  return "none";
}

bool SameVma(const Vma& a, const Vma& b) {
  return a.start == b.start && a.end == b.end && a.offset == b.offset && a.prot == b.prot && a.shared == b.shared &&
         a.dev_major == b.dev_major && a.dev_minor == b.dev_minor && a.inode == b.inode && a.path == b.path;
}

bool SameFd(const OpenFd& a, const OpenFd& b) {
  return a.fd == b.fd && a.target == b.target && a.pos == b.pos && a.flags == b.flags && a.size == b.size && a.inode == b.inode &&
         a.kind == b.kind;
}

template <typename T, typename Eq>
bool SameList(const std::vector<T>& a, const std::vector<T>& b, Eq eq) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!eq(a[i], b[i])) return false;
  return true;
}

// Page buffers lent to JS, by data pointer, so that ReleasePages can return them early.
struct Lent {
  std::unique_ptr<PageBuffer> buf;
  std::weak_ptr<BufferPool> pool;
  size_t bytes = 0;  // the JS buffer's length (see UncountExternal)
};
std::mutex g_lent_mu;
std::unordered_map<const uint8_t*, Lent*> g_lent;

void GiveBack(Lent* lent) {
  if (!lent->buf) return;
  if (auto pool = lent->pool.lock()) pool->Give(std::move(lent->buf));
  lent->buf.reset();
}

}  // namespace

BackendKind ParseBackend(const std::string& name) {
  if (name == "uffd-wp") return BackendKind::kUffdWp;
  if (name == "soft-dirty") return BackendKind::kSoftDirty;
  if (name == "hash") return BackendKind::kHash;
  return BackendKind::kAuto;
}

Napi::Value RangesToJs(Napi::Env env, const std::vector<PageRange>& ranges) {
  auto arr = Napi::BigUint64Array::New(env, ranges.size() * 2);
  for (size_t i = 0; i < ranges.size(); ++i) {
    arr[i * 2] = ranges[i].start;
    arr[i * 2 + 1] = ranges[i].npages;
  }
  return arr;
}

Napi::Value EpochToJs(Napi::Env env, EpochData& d, const std::shared_ptr<BufferPool>& pool, LayoutMemo& memo) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("seq", Napi::Number::New(env, static_cast<double>(d.seq)));
  Napi::Object t = Napi::Object::New(env);
  t.Set("freezeNs", Napi::Number::New(env, static_cast<double>(d.timings.freeze_ns)));
  t.Set("captureNs", Napi::Number::New(env, static_cast<double>(d.timings.capture_ns)));
  t.Set("scanNs", Napi::Number::New(env, static_cast<double>(d.timings.scan_ns)));
  t.Set("readNs", Napi::Number::New(env, static_cast<double>(d.timings.read_ns)));
  t.Set("thawNs", Napi::Number::New(env, static_cast<double>(d.timings.thaw_ns)));
  t.Set("pauseNs", Napi::Number::New(env, static_cast<double>(d.timings.pause_ns)));
  o.Set("timings", t);
  Napi::Object clocks = Napi::Object::New(env);
  clocks.Set("monotonicNs", TimespecNs(env, d.monotonic));
  clocks.Set("boottimeNs", TimespecNs(env, d.boottime));
  clocks.Set("realtimeNs", TimespecNs(env, d.realtime));
  o.Set("clocks", clocks);

  Napi::Array threads = Napi::Array::New(env, d.threads.size());
  for (size_t i = 0; i < d.threads.size(); ++i) {
    const auto& r = d.threads[i];
    Napi::Object th = Napi::Object::New(env);
    th.Set("tid", Napi::Number::New(env, r.tid));
    th.Set("gpregs", CopyBuffer(env, &r.gp, sizeof(r.gp)));
    th.Set("xsave", CopyBuffer(env, r.xsave.data(), r.xsave.size()));
    th.Set("sigmask", Big(env, r.sigmask));
    th.Set("restart", Napi::String::New(env, RestartName(r.restart)));
    th.Set("pendingSignal", Napi::Number::New(env, r.pending_signal));
    th.Set("rseqAddr", Big(env, r.rseq_addr));
    th.Set("rseqSize", Napi::Number::New(env, r.rseq_size));
    threads[i] = th;
  }
  o.Set("threads", threads);

  // An empty list was not captured (layout: false; a process always has mappings): it
  // neither matches nor replaces the memo.
  const bool vmas_same = !d.vmas.empty() && memo.has_vmas && SameList(memo.vmas, d.vmas, SameVma);
  o.Set("vmasSame", Napi::Boolean::New(env, vmas_same));
  Napi::Array vmas = Napi::Array::New(env, vmas_same ? 0 : d.vmas.size());
  for (size_t i = 0; !vmas_same && i < d.vmas.size(); ++i) {
    const auto& v = d.vmas[i];
    Napi::Object m = Napi::Object::New(env);
    m.Set("start", Big(env, v.start));
    m.Set("end", Big(env, v.end));
    m.Set("perms", Napi::String::New(env, Perms(v)));
    m.Set("offset", Big(env, v.offset));
    m.Set("dev", Napi::String::New(env, std::to_string(v.dev_major) + ":" + std::to_string(v.dev_minor)));
    m.Set("inode", Napi::Number::New(env, static_cast<double>(v.inode)));
    m.Set("path", Napi::String::New(env, v.path));
    vmas[i] = m;
  }
  o.Set("vmas", vmas);
  o.Set("brk", Big(env, d.brk));
  const bool fds_same = !d.fds.empty() && memo.has_fds && SameList(memo.fds, d.fds, SameFd);
  o.Set("fdsSame", Napi::Boolean::New(env, fds_same));
  Napi::Array fds = Napi::Array::New(env, fds_same ? 0 : d.fds.size());
  for (size_t i = 0; !fds_same && i < d.fds.size(); ++i) {
    const auto& f = d.fds[i];
    Napi::Object x = Napi::Object::New(env);
    x.Set("fd", Napi::Number::New(env, f.fd));
    x.Set("target", Napi::String::New(env, f.target));
    x.Set("pos", Big(env, f.pos));
    x.Set("flags", Napi::Number::New(env, f.flags));
    x.Set("size", Napi::Number::New(env, static_cast<double>(f.size)));
    x.Set("inode", Napi::Number::New(env, static_cast<double>(f.inode)));
    x.Set("kind", Napi::String::New(env, f.kind));
    fds[i] = x;
  }
  o.Set("fds", fds);
  Napi::Array children = Napi::Array::New(env, d.children.size());
  for (size_t i = 0; i < d.children.size(); ++i) children[i] = Napi::Number::New(env, d.children[i]);
  o.Set("children", children);
  o.Set("ranges", RangesToJs(env, d.ranges));

  Napi::Object stats = Napi::Object::New(env);
  stats.Set("pages", Napi::Number::New(env, static_cast<double>(CountPages(d.ranges))));
  stats.Set("pagesWritten", Napi::Number::New(env, static_cast<double>(d.report.pages_written)));
  stats.Set("pagesNew", Napi::Number::New(env, static_cast<double>(d.report.pages_new)));
  stats.Set("pagesZapped", Napi::Number::New(env, static_cast<double>(d.report.pages_zapped)));
  stats.Set("pagesHashed", Napi::Number::New(env, static_cast<double>(d.report.pages_hashed)));
  o.Set("stats", stats);

  if (d.pages && d.page_bytes > 0) {
    uint8_t* data = d.pages->data();
    auto* lent = new Lent{std::move(d.pages), pool, d.page_bytes};
    {
      std::lock_guard<std::mutex> lock(g_lent_mu);
      g_lent[data] = lent;
    }
    o.Set("pages", Napi::Buffer<uint8_t>::New(env, data, d.page_bytes, [](Napi::Env fenv, uint8_t* p, Lent* l) {
      {
        std::lock_guard<std::mutex> lock(g_lent_mu);
        g_lent.erase(p);
      }
      RecountExternal(fenv, l->bytes);
      GiveBack(l);
      delete l;
    }, lent));
    UncountExternal(env, d.page_bytes);
  } else {
    o.Set("pages", Napi::Buffer<uint8_t>::New(env, 0));
  }
  // Only now, with nothing left that can throw: a conversion that failed half-way must not
  // leave the memo holding lists JS never received (the next epoch would be "same" as them).
  if (!vmas_same && !d.vmas.empty()) {
    memo.vmas = std::move(d.vmas);
    memo.has_vmas = true;
  }
  if (!fds_same && !d.fds.empty()) {
    memo.fds = std::move(d.fds);
    memo.has_fds = true;
  }
  return o;
}

Napi::Value AttachInfoToJs(Napi::Env env, const AttachInfo& info) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("backend", Napi::String::New(env, info.backend));
  o.Set("reason", Napi::String::New(env, info.reason));
  o.Set("armNs", Napi::Number::New(env, static_cast<double>(info.arm_ns)));
  o.Set("threads", Napi::Number::New(env, static_cast<double>(info.threads)));
  return o;
}

Napi::Value CapsToJs(Napi::Env env, const KernelCaps& caps) {
  auto feature = [env](const Feature& f) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("ok", Napi::Boolean::New(env, f.ok));
    o.Set("why", Napi::String::New(env, f.why));
    return o;
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("release", Napi::String::New(env, caps.release));
  o.Set("userfaultfd", feature(caps.userfaultfd));
  o.Set("uffdWpAsync", feature(caps.uffd_wp_async));
  o.Set("pagemapScan", feature(caps.pagemap_scan));
  o.Set("uffdWpFile", feature(caps.uffd_wp_file));
  o.Set("softDirty", feature(caps.soft_dirty));
  o.Set("pidfdGetfd", feature(caps.pidfd_getfd));
  o.Set("ptrace", feature(caps.ptrace));
  o.Set("xsaveSize", Napi::Number::New(env, static_cast<double>(caps.xsave_size)));
  return o;
}

void ReleasePages(Napi::Env env, Napi::Value value) {
  if (!value.IsBuffer()) return;
  auto buf = value.As<Napi::Buffer<uint8_t>>();
  Lent* lent = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_lent_mu);
    auto it = g_lent.find(buf.Data());
    if (it == g_lent.end()) return;
    lent = it->second;
  }
  // Detach first: after this no JS view can reach the memory we hand back.
  Napi::ArrayBuffer ab = buf.ArrayBuffer();
  if (ab.IsDetached()) return;
  DetachCounted(env, ab, &lent->bytes);
  GiveBack(lent);
}

}  // namespace remus
