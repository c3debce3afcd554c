// Reading /proc: thread lists, process state, the memory layout.
#pragma once

#include <cstdint>
#include <string>
#include <sys/types.h>
#include <vector>

namespace remus {

constexpr uint64_t kPageSize = 4096;

// One line of /proc/PID/maps.
struct Vma {
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t offset = 0;
  uint32_t prot = 0;  // PROT_READ | PROT_WRITE | PROT_EXEC
  bool shared = false;
  uint32_t dev_major = 0;
  uint32_t dev_minor = 0;
  uint64_t inode = 0;
  std::string path;  // "" for anonymous, "[heap]", "[stack]", "[vdso]", a file path...

  uint64_t pages() const { return (end - start) / kPageSize; }
  bool special() const;         // [vdso], [vvar], [vsyscall], [vvar_vclock]: never tracked
  bool file_backed() const { return inode != 0; }
  bool writable() const;
  // Private memory that is, or may become, different from any file: what replication copies.
  bool private_memory() const { return !shared && !special(); }
};

// Parses the text of /proc/PID/maps. Throws std::runtime_error on a malformed line.
std::vector<Vma> ParseMaps(const std::string& text);

// Reads a whole /proc file; returns false with errno set when it cannot be opened/read.
bool ReadProcFile(const std::string& path, std::string& out);

std::vector<Vma> ReadMaps(pid_t pid);

// Thread IDs in /proc/PID/task. Throws TARGET_GONE when the process has gone.
std::vector<pid_t> ListThreads(pid_t pid);

struct ProcStat {
  char state = '?';
  pid_t ppid = 0;
  unsigned long flags = 0;  // PF_* flags
};
// Parses /proc/PID/stat (or /proc/PID/task/TID/stat). Returns false when absent.
bool ReadStat(const std::string& stat_path, ProcStat& out);

// One open descriptor of a process, as /proc/PID/fd and /proc/PID/fdinfo show it.
struct OpenFd {
  int fd = 0;
  std::string target;     // readlink of /proc/PID/fd/N: a path, "socket:[ino]", "pipe:[ino]"...
  uint64_t pos = 0;       // fdinfo "pos"
  uint32_t flags = 0;     // fdinfo "flags" (octal there): O_ACCMODE, O_APPEND, O_NONBLOCK...
  int64_t size = -1;      // for regular files: st_size; -1 otherwise
  uint64_t inode = 0;     // st_ino of what it refers to (0 if unknown)
  // For sockets: "tcp-listen", "tcp" (connected or connecting), "udp", "unix", "raw",
  // "netlink", "socket" (anything else); "" for descriptors that are not sockets.
  std::string kind;
};

// Every open descriptor, in fd order. Descriptors closed meanwhile are skipped. For a
// socket only the link is read (its inode is in it): pos and flags stay 0 until
// ReadFdInfo, which the caller does for the sockets that need them (a TCP connection does
// not: four syscalls fewer per client inside the freeze).
std::vector<OpenFd> ReadFds(pid_t pid);

// Fills pos and flags from /proc/PID/fdinfo/FD; false when the descriptor is gone.
bool ReadFdInfo(pid_t pid, OpenFd& f);

// PIDs of the children of every thread of `pid` (/proc/PID/task/TID/children).
std::vector<pid_t> ReadChildren(pid_t pid);

// Refuses targets that cannot or must not be traced, with a message that says why.
void ValidateTarget(pid_t pid);

}  // namespace remus
