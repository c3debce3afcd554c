#include "core/proc.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/unique_fd.h"

namespace remus {

bool Vma::special() const {
  return path == "[vdso]" || path == "[vvar]" || path == "[vsyscall]" || path == "[vvar_vclock]";
}

bool Vma::writable() const { return (prot & PROT_WRITE) != 0; }

bool ReadProcFile(const std::string& path, std::string& out) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  out.clear();
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    out.append(buf, static_cast<size_t>(n));
  }
}

std::vector<Vma> ParseMaps(const std::string& text) {
  std::vector<Vma> vmas;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const char* line = text.c_str() + pos;
    Vma v;
    char perms[5] = {};
    unsigned long long start, end, offset, inode;
    unsigned major, minor;
    int path_at = 0;
    if (sscanf(line, "%llx-%llx %4s %llx %x:%x %llu %n", &start, &end, perms, &offset, &major, &minor,
               &inode, &path_at) < 7)
      throw std::runtime_error("malformed /proc/PID/maps line: " + text.substr(pos, eol - pos));
    v.start = start;
    v.end = end;
    v.offset = offset;
    v.dev_major = major;
    v.dev_minor = minor;
    v.inode = inode;
    if (perms[0] == 'r') v.prot |= PROT_READ;
    if (perms[1] == 'w') v.prot |= PROT_WRITE;
    if (perms[2] == 'x') v.prot |= PROT_EXEC;
    v.shared = perms[3] == 's';
    size_t path_start = pos + static_cast<size_t>(path_at);
    if (path_at > 0 && path_start < eol) v.path = text.substr(path_start, eol - path_start);
    vmas.push_back(std::move(v));
    pos = eol + 1;
  }
  return vmas;
}

std::vector<Vma> ReadMaps(pid_t pid) {
  std::string text;
  if (!ReadProcFile("/proc/" + std::to_string(pid) + "/maps", text))
    ThrowSys(pid, "read_maps", errno, "reading /proc/" + std::to_string(pid) + "/maps");
  return ParseMaps(text);
}

std::vector<pid_t> ListThreads(pid_t pid) {
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(dir.c_str());
  if (!d) ThrowSys(pid, "list_threads", errno == ENOENT ? ESRCH : errno, "listing " + dir);
  std::vector<pid_t> tids;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    tids.push_back(static_cast<pid_t>(atoi(e->d_name)));
  }
  closedir(d);
  if (tids.empty()) ThrowSys(pid, "list_threads", ESRCH);
  return tids;
}

bool ReadStat(const std::string& stat_path, ProcStat& out) {
  std::string text;
  if (!ReadProcFile(stat_path, text)) return false;
  // The command name may hold spaces and parentheses: fields start after the last ')'.
  size_t close = text.rfind(')');
  if (close == std::string::npos) return false;
  char state;
  int ppid;
  unsigned long flags;
  // state ppid pgrp session tty_nr tpgid flags
  if (sscanf(text.c_str() + close + 1, " %c %d %*d %*d %*d %*d %lu", &state, &ppid, &flags) != 3) return false;
  out.state = state;
  out.ppid = ppid;
  out.flags = flags;
  return true;
}

void ValidateTarget(pid_t pid) {
  auto invalid = [pid](const std::string& why) {
    throw NativeError(ErrorCode::kInvalidTarget, EINVAL, pid, "validate", why);
  };
  if (pid <= 0) throw NativeError(ErrorCode::kInvalidArgument, EINVAL, pid, "validate",
                                  "PID must be a positive integer, got " + std::to_string(pid));
  if (pid == 1) invalid("refusing to trace PID 1 (init): freezing it would stall the whole system");
  if (pid == getpid()) invalid("PID " + std::to_string(pid) + " is this agent's own process; pass the PID of the service to protect");
  ProcStat st;
  std::string base = "/proc/" + std::to_string(pid);
  if (!ReadStat(base + "/stat", st))
    throw NativeError(ErrorCode::kTargetGone, ESRCH, pid, "validate",
                      "no process with PID " + std::to_string(pid) + " (check the PID; it may have exited)");
  std::string status;
  if (ReadProcFile(base + "/status", status)) {
    size_t at = status.find("\nTgid:");
    if (at != std::string::npos) {
      pid_t tgid = static_cast<pid_t>(atoi(status.c_str() + at + 6));
      if (tgid != pid)
        invalid("PID " + std::to_string(pid) + " is a thread of process " + std::to_string(tgid) +
                "; pass the process ID " + std::to_string(tgid));
    }
  }
  constexpr unsigned long kPfKthread = 0x00200000;
  if (st.flags & kPfKthread) invalid("PID " + std::to_string(pid) + " is a kernel thread; only user processes can be replicated");
  if (st.state == 'Z' || st.state == 'X')
    invalid("PID " + std::to_string(pid) + " is a zombie: it has exited and waits to be reaped by its parent (PID " +
            std::to_string(st.ppid) + ")");
  if (st.ppid == getpid())
    invalid("PID " + std::to_string(pid) + " is a child of this process; Node's child reaping (libuv waitpid on "
            "SIGCHLD) would steal ptrace stops. Start it with spawnTarget() or `replicate run`, which put a "
            "keeper process between the agent and the target");
}

std::vector<OpenFd> ReadFds(pid_t pid) {
  std::string base = "/proc/" + std::to_string(pid);
  DIR* d = opendir((base + "/fd").c_str());
  if (!d) ThrowSys(pid, "read_fds", errno == ENOENT ? ESRCH : errno, "listing " + base + "/fd");
  std::vector<OpenFd> out;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    OpenFd f;
    f.fd = atoi(e->d_name);
    std::string link = base + "/fd/" + e->d_name;
    char buf[4096];
    ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
    if (n < 0) continue;  // closed meanwhile
    f.target.assign(buf, static_cast<size_t>(n));
    if (f.target.rfind("socket:[", 0) == 0) {
      f.inode = strtoull(f.target.c_str() + 8, nullptr, 10);
      out.push_back(std::move(f));
      continue;
    }
    ReadFdInfo(pid, f);
    struct stat st;
    if (stat(link.c_str(), &st) == 0) {
      f.inode = st.st_ino;
      if (S_ISREG(st.st_mode)) f.size = st.st_size;
    }
    out.push_back(std::move(f));
  }
  closedir(d);
  std::sort(out.begin(), out.end(), [](const OpenFd& a, const OpenFd& b) { return a.fd < b.fd; });
  return out;
}

bool ReadFdInfo(pid_t pid, OpenFd& f) {
  std::string info;
  if (!ReadProcFile("/proc/" + std::to_string(pid) + "/fdinfo/" + std::to_string(f.fd), info)) return false;
  // "pos:\t0\nflags:\t0100002\nmnt_id:\t..."
  size_t at = info.find("pos:");
  if (at != std::string::npos) f.pos = strtoull(info.c_str() + at + 4, nullptr, 10);
  at = info.find("flags:");
  if (at != std::string::npos) f.flags = static_cast<uint32_t>(strtoul(info.c_str() + at + 6, nullptr, 8));
  return true;
}

std::vector<pid_t> ReadChildren(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t tid : ListThreads(pid)) {
    std::string text;
    if (!ReadProcFile("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/children", text)) continue;
    const char* p = text.c_str();
    char* end = nullptr;
    for (long v = strtol(p, &end, 10); end != p; p = end, v = strtol(p, &end, 10)) out.push_back(static_cast<pid_t>(v));
  }
  return out;
}

}  // namespace remus
