/*
 * lazytarget: a target for lazy (userfaultfd post-copy) restore tests
 * (test/21-lazy-restore.test.ts). Its memory has a known pattern that it can verify itself.
 *
 *   lazytarget --status FILE [--mib N] [--writer-us US]
 *
 * Memory:
 *   region   N MiB (default 64) of anonymous private memory; word w of page p holds
 *            pattern(p, w) = splitmix64(seed ^ (p << 9 | w)), every page written at start
 *   heapbuf  256 KiB malloc'd (brk heap or its own mapping), the same pattern with another seed
 *   seed     chosen at start (from the clock and the PID), kept in .bss
 *
 * Threads: the main thread serves commands on a TCP port of 127.0.0.1 and counts ticks
 * (poll timeouts of 1 ms); a writer thread (unless --writer-us 0) rewrites, every US
 * microseconds (default 200), one word of a
 * pseudo-random page of the region with the value the pattern wants there (so the pattern
 * still holds, but the process keeps writing into pages that a lazy restore may not have
 * brought back yet: a page served as zeros or not at all is caught by `verify`).
 *
 * Stdio is /dev/null (the keeper's 'ignore'); nothing is read from pipes, so that a
 * restored copy needs nothing from a parent that is gone. Once listening it writes
 * "port=P pid=PID pages=N region=0x.. seed=0x.." to FILE (via a rename), then serves one
 * command per connection, one line in, one line out:
 *
 *   get      ticks=T writes=W pages=N
 *   verify   ok pages=N heap=H writes=W   |  bad region page=P word=W got=0x.. want=0x..
 *            (every word of every page of the region and of heapbuf, ~1 s for 1 GiB)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define HEAP_BYTES (256UL << 10)

static uint64_t seed;
static uint64_t *region;
static size_t npages;
static uint64_t *heapbuf;
static volatile uint64_t ticks;
static volatile uint64_t writes;
static long writer_us = 200;

static inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static inline uint64_t pattern(uint64_t s, uint64_t page, uint64_t word) {
  return mix(s ^ (page << 9 | word));
}

static void fill(uint64_t *mem, size_t pages, uint64_t s) {
  for (size_t p = 0; p < pages; p++)
    for (size_t w = 0; w < WORDS; w++) mem[p * WORDS + w] = pattern(s, p, w);
}

/* 0 when the pattern holds, else fills `out` with the first difference. */
static int check(const char *what, const uint64_t *mem, size_t pages, uint64_t s, char *out, size_t outlen) {
  for (size_t p = 0; p < pages; p++)
    for (size_t w = 0; w < WORDS; w++) {
      uint64_t want = pattern(s, p, w), got = mem[p * WORDS + w];
      if (got != want) {
        snprintf(out, outlen, "bad %s page=%zu word=%zu got=0x%" PRIx64 " want=0x%" PRIx64 "\n", what, p, w, got, want);
        return -1;
      }
    }
  return 0;
}

static void *writer(void *arg) {
  (void)arg;
  uint64_t x = seed;
  struct timespec ts = { writer_us / 1000000, (writer_us % 1000000) * 1000 };
  for (;;) {
    x = mix(x);
    size_t p = x % npages, w = (x >> 32) % WORDS;
    region[p * WORDS + w] = pattern(seed, p, w);
    writes++;
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void serve(int c) {
  char cmd[64] = { 0 };
  ssize_t n = 0;
  while (n < (ssize_t)sizeof cmd - 1) {
    ssize_t r = read(c, cmd + n, sizeof cmd - 1 - n);
    if (r <= 0) break;
    n += r;
    if (memchr(cmd, '\n', n)) break;
  }
  char out[256];
  if (strncmp(cmd, "get", 3) == 0) {
    snprintf(out, sizeof out, "ticks=%" PRIu64 " writes=%" PRIu64 " pages=%zu\n", ticks, writes, npages);
  } else if (strncmp(cmd, "verify", 6) == 0) {
    if (check("region", region, npages, seed, out, sizeof out) == 0 &&
        check("heap", heapbuf, HEAP_BYTES / PAGE, ~seed, out, sizeof out) == 0)
      snprintf(out, sizeof out, "ok pages=%zu heap=%lu writes=%" PRIu64 "\n", npages, HEAP_BYTES / PAGE, writes);
  } else {
    snprintf(out, sizeof out, "unknown command\n");
  }
  size_t len = strlen(out), off = 0;
  while (off < len) {
    ssize_t w = write(c, out + off, len - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
}

int main(int argc, char **argv) {
  const char *status = NULL;
  size_t mib = 64;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--status") && i + 1 < argc) status = argv[++i];
    else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--writer-us") && i + 1 < argc) writer_us = strtol(argv[++i], NULL, 10);
    else { fprintf(stderr, "usage: lazytarget --status FILE [--mib N] [--writer-us US]\n"); return 2; }
  }
  if (!status || mib == 0 || writer_us < 0) { fprintf(stderr, "usage: lazytarget --status FILE [--mib N] [--writer-us US]\n"); return 2; }

  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  seed = mix((uint64_t)now.tv_nsec ^ ((uint64_t)now.tv_sec << 32) ^ (uint64_t)getpid());

  npages = mib * 256;
  region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) { perror("mmap"); return 1; }
  fill(region, npages, seed);
  heapbuf = malloc(HEAP_BYTES);
  if (!heapbuf) return 1;
  fill(heapbuf, HEAP_BYTES / PAGE, ~seed);

  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0 };
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) { perror("listen"); return 1; }
  socklen_t alen = sizeof a;
  getsockname(l, (struct sockaddr *)&a, &alen);

  pthread_t t;
  if (writer_us > 0 && pthread_create(&t, NULL, writer, NULL)) return 1;

  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", status);
  FILE *f = fopen(tmp, "w");
  if (!f) { perror("status"); return 1; }
  fprintf(f, "port=%d pid=%d pages=%zu region=0x%lx seed=0x%" PRIx64 "\n", ntohs(a.sin_port), getpid(), npages,
          (unsigned long)region, seed);
  fclose(f);
  if (rename(tmp, status)) { perror("rename"); return 1; }

  struct pollfd pfd = { .fd = l, .events = POLLIN };
  for (;;) {
    int r = poll(&pfd, 1, 1);
    if (r == 0) { ticks++; continue; }
    if (r < 0) { if (errno == EINTR) continue; return 1; }
    int c = accept(l, NULL, NULL);
    if (c < 0) continue;
    serve(c);
    close(c);
  }
}
