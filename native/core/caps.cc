#include "core/caps.h"

#include <cerrno>
#include <cpuid.h>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <mutex>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "core/uffd.h"
#include "core/unique_fd.h"

namespace remus {
namespace {

constexpr size_t kPage = 4096;

std::string Err(const char* what, int err) { return std::string(what) + ": " + strerror(err); }

// An anonymous mapping released on scope exit.
struct Mapping {
  void* addr = MAP_FAILED;
  size_t len = 0;
  Mapping(size_t l, int prot, int flags, int fd = -1) : len(l) {
    addr = mmap(nullptr, l, prot, flags, fd, 0);
  }
  ~Mapping() {
    if (addr != MAP_FAILED) munmap(addr, len);
  }
  bool ok() const { return addr != MAP_FAILED; }
  char* at(size_t page) const { return static_cast<char*>(addr) + page * kPage; }
  uint64_t base() const { return reinterpret_cast<uint64_t>(addr); }
};

// Written pages among `pages` pages of `m`, as a bitmask, using PAGEMAP_SCAN.
int ScanWritten(int pagemap, const Mapping& m, size_t pages, uint64_t& mask) {
  std::vector<abi::PageRegion> regions;
  int err = uffd::Scan(pagemap, m.base(), m.base() + pages * kPage,
                       abi::kPmScanWpMatching | abi::kPmScanCheckWpAsync, abi::kPageIsWritten, 0,
                       0, abi::kPageIsWritten, regions);
  if (err) return err;
  mask = 0;
  for (auto& r : regions)
    for (uint64_t a = r.start; a < r.end; a += kPage) mask |= 1ull << ((a - m.base()) / kPage);
  return 0;
}

void ProbeUffd(KernelCaps& caps) {
  UniqueFd fd(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  if (!fd.valid()) {
    int e = errno;
    caps.userfaultfd.why = e == ENOSYS ? "kernel built without CONFIG_USERFAULTFD"
                          : e == EPERM ? "userfaultfd(2) denied: needs CAP_SYS_PTRACE or "
                                         "vm.unprivileged_userfaultfd=1"
                                       : Err("userfaultfd(2)", e);
    caps.uffd_wp_async.why = caps.pagemap_scan.why = caps.uffd_wp_file.why = "no userfaultfd";
    return;
  }
  caps.userfaultfd.ok = true;
  if (int e = uffd::EnableAsyncWp(fd.get())) {
    caps.uffd_wp_async.why = e == EINVAL ? "kernel lacks UFFD_FEATURE_WP_ASYNC (needs linux 6.7+)"
                                         : Err("UFFDIO_API", e);
    caps.pagemap_scan.why = caps.uffd_wp_file.why = "no async write-protect";
    return;
  }
  Mapping m(4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (!m.ok()) {
    caps.uffd_wp_async.why = Err("mmap", errno);
    return;
  }
  m.at(0)[0] = 1;  // one populated page, the rest unpopulated (WP_UNPOPULATED covers them)
  if (int e = uffd::RegisterAndProtect(fd.get(), m.base(), m.len)) {
    caps.uffd_wp_async.why = Err("UFFDIO_REGISTER/WRITEPROTECT", e);
    caps.pagemap_scan.why = caps.uffd_wp_file.why = "no async write-protect";
    return;
  }
  caps.uffd_wp_async.ok = true;
  UniqueFd pagemap(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  uint64_t marker = 0;
  if (pagemap.valid() && pread(pagemap.get(), &marker, 8, static_cast<off_t>(m.base() / kPage * 8 + 3 * 8)) == 8 &&
      (marker & abi::kPmSwapped))
    caps.uffd_marker_frame = marker & ((1ull << 55) - 1);
  uint64_t mask = 0;
  int e = pagemap.valid() ? ScanWritten(pagemap.get(), m, 4, mask) : errno;
  if (e) {
    caps.pagemap_scan.why = e == ENOTTY || e == EINVAL ? "kernel lacks the PAGEMAP_SCAN ioctl (linux 6.7+)"
                                                       : Err("PAGEMAP_SCAN", e);
    caps.uffd_wp_file.why = "no PAGEMAP_SCAN";
    return;
  }
  m.at(0)[1] = 2;  // a populated page
  m.at(2)[0] = 3;  // an unpopulated page
  e = ScanWritten(pagemap.get(), m, 4, mask);
  if (e || mask != 0b101) {
    caps.pagemap_scan.why = e ? Err("PAGEMAP_SCAN", e)
                              : "PAGEMAP_SCAN reported the wrong pages (mask " + std::to_string(mask) + ", expected 5)";
    return;
  }
  caps.pagemap_scan.ok = true;

  // Private file-backed writable mappings (a library's .data): async WP on them needs a
  // kernel that allows WP_ASYNC on any memory type.
  UniqueFd exe(open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
  Mapping f(kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE, exe.get());
  if (!f.ok()) {
    caps.uffd_wp_file.why = Err("mmap of a file", errno);
    return;
  }
  volatile char c = f.at(0)[0];
  (void)c;
  if (int e2 = uffd::RegisterAndProtect(fd.get(), f.base(), kPage)) {
    caps.uffd_wp_file.why = "write-protect of private file mappings refused (" + Err("UFFDIO_REGISTER", e2) +
                            "): such mappings are tracked by hashing";
    return;
  }
  f.at(0)[0] = 7;
  e = ScanWritten(pagemap.get(), f, 1, mask);
  caps.uffd_wp_file.ok = e == 0 && mask == 1;
  if (!caps.uffd_wp_file.ok) caps.uffd_wp_file.why = "PAGEMAP_SCAN on a private file mapping did not report the write";
}

void ProbeSoftDirty(KernelCaps& caps) {
  Mapping m(kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (!m.ok()) {
    caps.soft_dirty.why = Err("mmap", errno);
    return;
  }
  m.at(0)[0] = 1;
  UniqueFd clear(open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC));
  if (!clear.valid() || write(clear.get(), "4", 1) != 1) {
    caps.soft_dirty.why = Err("writing 4 to /proc/self/clear_refs", errno);
    return;
  }
  m.at(0)[0] = 2;
  UniqueFd pagemap(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  uint64_t entry = 0;
  if (!pagemap.valid() ||
      pread(pagemap.get(), &entry, 8, static_cast<off_t>(m.base() / kPage * 8)) != 8) {
    caps.soft_dirty.why = Err("reading /proc/self/pagemap", errno);
    return;
  }
  caps.soft_dirty.ok = (entry & abi::kPmSoftDirty) != 0;
  if (!caps.soft_dirty.ok)
    caps.soft_dirty.why = "soft-dirty not supported by this kernel (CONFIG_MEM_SOFT_DIRTY off: "
                          "clear_refs=4 accepted but pagemap bit 55 never set)";
}

void ProbePtrace(KernelCaps& caps) {
  // CapEff bit 19 is CAP_SYS_PTRACE.
  std::ifstream status("/proc/self/status");
  std::string line;
  uint64_t eff = 0;
  while (std::getline(status, line))
    if (line.rfind("CapEff:", 0) == 0) eff = std::stoull(line.substr(7), nullptr, 16);
  bool cap = (eff >> 19) & 1;
  int scope = 0;
  std::ifstream yama("/proc/sys/kernel/yama/ptrace_scope");
  if (yama) yama >> scope;
  if (scope >= 3) {
    caps.ptrace.why = "kernel.yama.ptrace_scope=3 forbids all ptrace attach";
  } else if (cap) {
    caps.ptrace.ok = true;
    caps.ptrace.why = "CAP_SYS_PTRACE";
  } else if (scope == 0) {
    caps.ptrace.ok = true;
    caps.ptrace.why = "same-user processes only (no CAP_SYS_PTRACE)";
  } else {
    caps.ptrace.why = "needs CAP_SYS_PTRACE (kernel.yama.ptrace_scope=" + std::to_string(scope) + ")";
  }
}

void ProbePidfd(KernelCaps& caps) {
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0)));
  if (!pidfd.valid()) {
    caps.pidfd_getfd.why = Err("pidfd_open", errno);
    return;
  }
  UniqueFd dup(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), 0, 0)));
  caps.pidfd_getfd.ok = dup.valid();
  if (!dup.valid()) caps.pidfd_getfd.why = Err("pidfd_getfd", errno);
}

size_t XsaveSize() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(0xD, 0, &eax, &ebx, &ecx, &edx)) return 512 + 64;
  return ebx;  // size needed for the features enabled in XCR0
}

}  // namespace

const KernelCaps& GetKernelCaps() {
  static KernelCaps caps;
  static std::once_flag once;
  std::call_once(once, [] {
    struct utsname u;
    if (uname(&u) == 0) caps.release = u.release;
    ProbeUffd(caps);
    ProbeSoftDirty(caps);
    ProbePtrace(caps);
    ProbePidfd(caps);
    caps.xsave_size = XsaveSize();
  });
  return caps;
}

}  // namespace remus
