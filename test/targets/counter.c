/*
 * counter: a multi-threaded target whose memory keeps an invariant that a torn snapshot
 * (memory from one instant, registers or other memory from another) would break. Used by
 * test/20-image-builder.test.ts to check CRIU images built from a base dump + an epoch.
 *
 *   counter --status FILE [--pages N] [--writers W] [--file PATH] [--file-pages N] [--data PATH] [--file2 PATH] [--fill]
 *
 * --fill writes every page of the array at start (a fully resident target, for benchmarks).
 *
 * Threads: the main thread serves commands on a TCP port of 127.0.0.1 and ticks; W (default
 * 2) writer threads update the array. Three threads by default.
 *
 * Invariant (checked by `check`, under the lock): the array has N pages; page p holds the
 * value owner[p] in each of its 512 u64 words (0 if never written); owner[] lives in the brk
 * heap; `counter` equals the largest value written and `sum` the sum of owner[]. A writer
 * updates, under the lock: c = ++counter; page p = hash(c) % N filled with c; sum += c -
 * owner[p]; owner[p] = c.
 *
 * Stdio is /dev/null (the keeper's 'ignore'): no pipes, so that a restored copy can reopen it.
 * Once listening it writes "port=P pid=PID counter=0x.. region=0x.. pages=N" to FILE (via a
 * rename), then serves one command per connection, one line in, one line out:
 *
 *   get             counter=C ticks=T mono=NS paused=0|1 updates=U
 *   check           ok checked=PAGES   |  bad <what>
 *   pause / resume  writers park / run again (pause returns once both are parked)
 *   mmap PAGES      a new anonymous private mapping, every page filled with a pattern
 *   munmap-mid ID   unmaps the middle third of mapping ID (it splits in two)
 *   brk BYTES       grows the heap with sbrk, filling the new bytes with a pattern
 *   fwrite K        writes K pages (a pattern) into the private file mapping (--file)
 *   funmap-mid      unmaps the middle third of the private file mapping
 *   data BYTES      writes BYTES to the data file (--data, O_RDWR, not append): size grows
 *   sleep MS        nanosleep(MS) and report how long it took in the restored clock
 *   clocks          mono=NS boot=NS real=NS
 *   thread          starts one more (sleeping) thread
 *   closedata       closes the data file's descriptor
 *   logopen PATH    opens PATH O_WRONLY|O_APPEND|O_CREAT (a descriptor the base does not have)
 *   logwrite        appends "entry\n" to it; replies its offset: ok pos=N
 *   map2            maps the file --file2 (16 pages, private, written at start) and writes
 *                   one page of the mapping: a file mapping the base image does not have
 *
 * Ticks: the main thread counts 10 ms ticks on CLOCK_MONOTONIC absolute deadlines, like an
 * event loop's timers; if the clock jumps backwards, ticks stall for as long.
 *
 * Vector registers: on a CPU with AVX the main thread waits in poll(2) with a value that
 * changes every wait held in ymm8 (both halves) across the syscall, and counts a mismatch
 * afterwards (`get` reports ymm_checks and ymm_bad): a restore that loses the upper halves
 * or brings back an older wait's value is caught.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MAX_MAPS 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static volatile uint64_t counter;
static uint64_t sum;
static uint64_t *owner;       /* in the brk heap */
static unsigned char *region; /* anonymous private mapping */
static size_t npages = 4096;
static int paused, parked, nwriters = 2;
static uint64_t updates;
static uint64_t ticks;

struct extra { unsigned char *addr; size_t pages; int live[3]; /* thirds still mapped */ };
static struct extra maps[MAX_MAPS];
static int nmaps;

static unsigned char *brk_start; /* what `brk` commands added: [brk_start, brk_end) */
static size_t brk_len;

static unsigned char *fmap; /* private file mapping */
static size_t fpages;
static int fmid_unmapped;
static unsigned char fwritten[4096];
static int datafd = -1;
static int logfd = -1;
static const char *file2;
static unsigned char *f2map;
#define F2PAGES 16

static uint64_t ymm_checks, ymm_bad;

/* poll(2) on one fd with ymm8 = f(tag) live across the syscall. */
__attribute__((target("avx"))) static long poll_ymm(struct pollfd *pfd, int timeout, uint64_t tag) {
  uint64_t in[4] = {tag, ~tag, tag ^ 0x5555555555555555ULL, tag * 3 + 1}, out[4];
  long ret;
  __asm__ volatile("vmovdqu %[in], %%ymm8\n\t"
                   "syscall\n\t"
                   "vmovdqu %%ymm8, %[out]\n\t"
                   "vzeroupper"
                   : "=a"(ret), [out] "=m"(out)
                   : "0"(7L /* SYS_poll */), "D"(pfd), "S"(1L), "d"((long)timeout), [in] "m"(in)
                   : "rcx", "r11", "memory", "xmm8");
  ymm_checks++;
  if (memcmp(in, out, sizeof in) != 0) ymm_bad++;
  return ret;
}

static uint64_t now_ns(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return x;
}

static void *writer(void *arg) {
  (void)arg;
  for (unsigned n = 0;; n++) {
    pthread_mutex_lock(&lock);
    while (paused) {
      parked++;
      pthread_cond_broadcast(&cond);
      pthread_cond_wait(&cond, &lock);
      parked--;
    }
    uint64_t c = ++counter;
    size_t p = mix(c) % npages;
    uint64_t *w = (uint64_t *)(region + p * PAGE);
    for (size_t i = 0; i < WORDS; i++) w[i] = c;
    sum += c - owner[p];
    owner[p] = c;
    updates++;
    pthread_mutex_unlock(&lock);
    if ((n & 15) == 15) {
      struct timespec ts = {0, 500000};
      nanosleep(&ts, NULL);
    }
  }
  return NULL;
}

/* Pattern of page i of extra mapping m: every u64 = m << 32 | i | 0xABCD << 48. */
static uint64_t pat(uint64_t m, uint64_t i) { return 0xABCDULL << 48 | m << 32 | i; }

static void fill(unsigned char *p, uint64_t v) {
  uint64_t *w = (uint64_t *)p;
  for (size_t i = 0; i < WORDS; i++) w[i] = v;
}

static int check_fill(const unsigned char *p, uint64_t v) {
  const uint64_t *w = (const uint64_t *)p;
  for (size_t i = 0; i < WORDS; i++) if (w[i] != v) return 0;
  return 1;
}

static void do_check(char *out, size_t n) {
  pthread_mutex_lock(&lock);
  uint64_t max = 0, s = 0;
  size_t checked = 0;
  for (size_t p = 0; p < npages; p++) {
    if (!check_fill(region + p * PAGE, owner[p])) {
      snprintf(out, n, "bad page %zu holds %llu, owner says %llu", p,
               (unsigned long long)((uint64_t *)(region + p * PAGE))[0], (unsigned long long)owner[p]);
      goto done;
    }
    if (owner[p] > max) max = owner[p];
    s += owner[p];
    checked++;
  }
  if (max != counter) {
    snprintf(out, n, "bad counter %llu but the newest page holds %llu", (unsigned long long)counter, (unsigned long long)max);
    goto done;
  }
  if (s != sum) {
    snprintf(out, n, "bad sum %llu but the pages add up to %llu", (unsigned long long)sum, (unsigned long long)s);
    goto done;
  }
  for (int m = 0; m < nmaps; m++) {
    for (size_t i = 0; i < maps[m].pages; i++) {
      size_t third = i * 3 / maps[m].pages;
      if (!maps[m].live[third]) continue;
      if (!check_fill(maps[m].addr + i * PAGE, pat((uint64_t)m, i))) {
        snprintf(out, n, "bad mapping %d page %zu", m, i);
        goto done;
      }
      checked++;
    }
  }
  for (size_t i = 0; i + 8 <= brk_len; i += 8) {
    if (*(uint64_t *)(brk_start + i) != (0x5EEDULL << 48 | i)) {
      snprintf(out, n, "bad brk byte %zu", i);
      goto done;
    }
  }
  for (size_t i = 0; fmap && i < fpages; i++) {
    size_t third = i * 3 / fpages;
    if (third == 1 && fmid_unmapped) continue;
    const unsigned char *pg = fmap + i * PAGE;
    if (fwritten[i]) {
      if (!check_fill(pg, pat(0xF11E, i))) { snprintf(out, n, "bad written file page %zu", i); goto done; }
    } else {
      for (size_t b = 0; b < PAGE; b++)
        if (pg[b] != (unsigned char)(i + 1)) { snprintf(out, n, "bad file page %zu byte %zu", i, b); goto done; }
    }
    checked++;
  }
  for (size_t i = 0; f2map && i < F2PAGES; i++) {
    const unsigned char *pg = f2map + i * PAGE;
    if (i == 3) {
      if (!check_fill(pg, pat(0xF22E, i))) { snprintf(out, n, "bad written file2 page %zu", i); goto done; }
    } else {
      for (size_t b = 0; b < PAGE; b++)
        if (pg[b] != (unsigned char)(0x80 + i)) { snprintf(out, n, "bad file2 page %zu byte %zu", i, b); goto done; }
    }
    checked++;
  }
  snprintf(out, n, "ok checked=%zu", checked);
done:
  pthread_mutex_unlock(&lock);
}

static void *sleeper(void *arg) {
  (void)arg;
  for (;;) sleep(1);
  return NULL;
}

static void set_paused(int on) {
  pthread_mutex_lock(&lock);
  paused = on;
  pthread_cond_broadcast(&cond);
  if (on) while (parked < nwriters) pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
}

static void command(char *line, char *out, size_t n) {
  char *nl = strchr(line, '\n');
  if (nl) *nl = 0;
  unsigned long long arg = 0;
  char *sp = strchr(line, ' ');
  if (sp) arg = strtoull(sp + 1, NULL, 0);
  if (!strcmp(line, "get")) {
    pthread_mutex_lock(&lock);
    snprintf(out, n, "counter=%llu ticks=%llu mono=%llu paused=%d updates=%llu ymm_checks=%llu ymm_bad=%llu",
             (unsigned long long)counter, (unsigned long long)ticks, (unsigned long long)now_ns(CLOCK_MONOTONIC), paused,
             (unsigned long long)updates, (unsigned long long)ymm_checks, (unsigned long long)ymm_bad);
    pthread_mutex_unlock(&lock);
  } else if (!strcmp(line, "check")) {
    do_check(out, n);
  } else if (!strcmp(line, "pause")) {
    set_paused(1);
    snprintf(out, n, "ok counter=%llu", (unsigned long long)counter);
  } else if (!strcmp(line, "resume")) {
    set_paused(0);
    snprintf(out, n, "ok");
  } else if (!strncmp(line, "mmap ", 5)) {
    if (nmaps >= MAX_MAPS || arg < 3) { snprintf(out, n, "err too many or too small"); return; }
    unsigned char *a = mmap(NULL, arg * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) { snprintf(out, n, "err mmap %s", strerror(errno)); return; }
    pthread_mutex_lock(&lock);
    int m = nmaps;
    for (size_t i = 0; i < arg; i++) fill(a + i * PAGE, pat((uint64_t)m, i));
    maps[m].addr = a; maps[m].pages = arg; maps[m].live[0] = maps[m].live[1] = maps[m].live[2] = 1;
    nmaps++;
    pthread_mutex_unlock(&lock);
    snprintf(out, n, "ok id=%d addr=%p", m, (void *)a);
  } else if (!strncmp(line, "munmap-mid ", 11)) {
    if ((int)arg >= nmaps) { snprintf(out, n, "err no mapping %llu", arg); return; }
    struct extra *x = &maps[arg];
    size_t lo = (x->pages + 2) / 3, hi = (2 * x->pages + 2) / 3; /* first page of thirds 1 and 2 */
    /* pages i with i*3/pages == 1 are exactly [lo, hi) */
    pthread_mutex_lock(&lock);
    munmap(x->addr + lo * PAGE, (hi - lo) * PAGE);
    x->live[1] = 0;
    pthread_mutex_unlock(&lock);
    snprintf(out, n, "ok %p-%p", (void *)(x->addr + lo * PAGE), (void *)(x->addr + hi * PAGE));
  } else if (!strncmp(line, "brk ", 4)) {
    pthread_mutex_lock(&lock);
    unsigned char *p = sbrk((intptr_t)arg);
    if (p == (void *)-1) { pthread_mutex_unlock(&lock); snprintf(out, n, "err sbrk"); return; }
    if (!brk_start) brk_start = p;
    if (p != brk_start + brk_len) { pthread_mutex_unlock(&lock); snprintf(out, n, "err heap not contiguous"); return; }
    for (size_t i = brk_len; i + 8 <= brk_len + arg; i += 8) *(uint64_t *)(brk_start + i) = 0x5EEDULL << 48 | i;
    brk_len += arg;
    pthread_mutex_unlock(&lock);
    snprintf(out, n, "ok brk=%p", sbrk(0));
  } else if (!strncmp(line, "fwrite ", 7)) {
    if (!fmap) { snprintf(out, n, "err no file mapping"); return; }
    pthread_mutex_lock(&lock);
    size_t done = 0;
    for (size_t i = 0; i < fpages && done < arg; i += 2) {
      if (fwritten[i] || (fmid_unmapped && i * 3 / fpages == 1)) continue;
      fill(fmap + i * PAGE, pat(0xF11E, i));
      fwritten[i] = 1;
      done++;
    }
    pthread_mutex_unlock(&lock);
    snprintf(out, n, "ok wrote=%zu", done);
  } else if (!strcmp(line, "funmap-mid")) {
    if (!fmap) { snprintf(out, n, "err no file mapping"); return; }
    size_t lo = (fpages + 2) / 3, hi = (2 * fpages + 2) / 3;
    pthread_mutex_lock(&lock);
    munmap(fmap + lo * PAGE, (hi - lo) * PAGE);
    fmid_unmapped = 1;
    pthread_mutex_unlock(&lock);
    snprintf(out, n, "ok");
  } else if (!strncmp(line, "data ", 5)) {
    if (datafd < 0) { snprintf(out, n, "err no data file"); return; }
    char buf[4096];
    memset(buf, 'd', sizeof buf);
    size_t left = arg;
    while (left > 0) {
      ssize_t w = write(datafd, buf, left < sizeof buf ? left : sizeof buf);
      if (w <= 0) { snprintf(out, n, "err write %s", strerror(errno)); return; }
      left -= (size_t)w;
    }
    snprintf(out, n, "ok pos=%lld", (long long)lseek(datafd, 0, SEEK_CUR));
  } else if (!strncmp(line, "sleep ", 6)) {
    uint64_t t0 = now_ns(CLOCK_MONOTONIC);
    struct timespec ts = {(time_t)(arg / 1000), (long)(arg % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    snprintf(out, n, "ok slept_ns=%llu", (unsigned long long)(now_ns(CLOCK_MONOTONIC) - t0));
  } else if (!strcmp(line, "clocks")) {
    snprintf(out, n, "mono=%llu boot=%llu real=%llu", (unsigned long long)now_ns(CLOCK_MONOTONIC),
             (unsigned long long)now_ns(CLOCK_BOOTTIME), (unsigned long long)now_ns(CLOCK_REALTIME));
  } else if (!strcmp(line, "map2")) {
    if (!file2 || f2map) { snprintf(out, n, "err no --file2, or mapped already"); return; }
    int fd = open(file2, O_RDONLY);
    if (fd < 0) { snprintf(out, n, "err open %s", strerror(errno)); return; }
    unsigned char *m = mmap(NULL, F2PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) { snprintf(out, n, "err mmap %s", strerror(errno)); return; }
    pthread_mutex_lock(&lock);
    fill(m + 3 * PAGE, pat(0xF22E, 3));
    f2map = m;
    pthread_mutex_unlock(&lock);
    snprintf(out, n, "ok addr=%p", (void *)m);
  } else if (!strcmp(line, "closedata")) {
    if (datafd < 0) { snprintf(out, n, "err no data file"); return; }
    close(datafd);
    datafd = -1;
    snprintf(out, n, "ok");
  } else if (!strncmp(line, "logopen ", 8)) {
    logfd = open(line + 8, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (logfd < 0) snprintf(out, n, "err open %s", strerror(errno));
    else snprintf(out, n, "ok fd=%d", logfd);
  } else if (!strcmp(line, "logwrite")) {
    if (logfd < 0 || write(logfd, "entry\n", 6) != 6) { snprintf(out, n, "err logwrite %s", strerror(errno)); return; }
    snprintf(out, n, "ok pos=%lld", (long long)lseek(logfd, 0, SEEK_CUR));
  } else if (!strcmp(line, "thread")) {
    pthread_t th;
    int e = pthread_create(&th, NULL, sleeper, NULL);
    if (e) snprintf(out, n, "err pthread_create %s", strerror(e));
    else snprintf(out, n, "ok");
  } else {
    snprintf(out, n, "err unknown command");
  }
}

static void serve(int c) {
  char line[256];
  size_t len = 0;
  struct pollfd pfd = {c, POLLIN, 0};
  const char *why = NULL; /* why the line ended without its newline */
  int err = 0;
  while (len < sizeof line - 1) {
    /* EINTR is retried, as servers do: a criu dump (our base image, a re-base) makes a
     * poll with a timeout return it ("Will restore with interrupted system call"). */
    int p = poll(&pfd, 1, 2000);
    if (p < 0 && errno == EINTR) continue;
    if (p <= 0) { why = p ? "poll" : "poll timed out"; err = errno; break; }
    ssize_t r = read(c, line + len, sizeof line - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { why = r ? "read" : "eof"; err = errno; break; }
    len += (size_t)r;
    if (memchr(line, '\n', len)) break;
  }
  line[len] = 0;
  char out[512];
  if (why && !memchr(line, '\n', len))
    /* Say so rather than run half a command: a test then sees what cut it short. */
    snprintf(out, sizeof out - 1, "err incomplete command after %zu bytes: %s%s%s", len, why, err ? ": " : "", err ? strerror(err) : "");
  else
    command(line, out, sizeof out - 1);
  strcat(out, "\n");
  ssize_t w = write(c, out, strlen(out));
  (void)w;
  close(c);
}

int main(int argc, char **argv) {
  const char *status = NULL, *file = NULL, *data = NULL;
  int prefill = 0;
  /* Like every network server: a client gone before its reply must not kill us. After a
   * failover the connections accepted after the base image come back as closed sockets,
   * and a reply written to one raises SIGPIPE. */
  signal(SIGPIPE, SIG_IGN);
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--status") && i + 1 < argc) status = argv[++i];
    else if (!strcmp(argv[i], "--pages") && i + 1 < argc) npages = strtoul(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--writers") && i + 1 < argc) nwriters = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--file") && i + 1 < argc) file = argv[++i];
    else if (!strcmp(argv[i], "--file-pages") && i + 1 < argc) fpages = strtoul(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--data") && i + 1 < argc) data = argv[++i];
    else if (!strcmp(argv[i], "--fill")) prefill = 1;
    else if (!strcmp(argv[i], "--file2") && i + 1 < argc) file2 = argv[++i];
    else { fprintf(stderr, "counter: bad argument %s\n", argv[i]); return 2; }
  }
  if (!status || npages == 0 || nwriters < 1 || nwriters > 16) { fprintf(stderr, "usage: counter --status FILE ...\n"); return 2; }

  region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) { perror("mmap"); return 1; }
  owner = sbrk((intptr_t)(npages * sizeof(uint64_t)));
  if (owner == (void *)-1) { perror("sbrk"); return 1; }
  memset(owner, 0, npages * sizeof(uint64_t));
  for (size_t p = 0; prefill && p < npages; p++) {
    uint64_t c = ++counter;
    fill(region + p * PAGE, c);
    owner[p] = c;
    sum += c;
  }

  if (file) {
    if (fpages == 0) fpages = 48;
    if (fpages > sizeof fwritten) fpages = sizeof fwritten;
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror("open file"); return 1; }
    unsigned char pg[PAGE];
    for (size_t i = 0; i < fpages; i++) {
      memset(pg, (int)(unsigned char)(i + 1), PAGE);
      if (write(fd, pg, PAGE) != (ssize_t)PAGE) { perror("write file"); return 1; }
    }
    fmap = mmap(NULL, fpages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (fmap == MAP_FAILED) { perror("mmap file"); return 1; }
    close(fd);
    /* fault every page in (read), so that the private mapping has file pages present */
    volatile unsigned char s = 0;
    for (size_t i = 0; i < fpages; i++) s ^= fmap[i * PAGE];
    (void)s;
  }
  if (file2) {
    int fd = open(file2, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror("open file2"); return 1; }
    unsigned char pg[PAGE];
    for (size_t i = 0; i < F2PAGES; i++) {
      memset(pg, 0x80 + (int)i, PAGE);
      if (write(fd, pg, PAGE) != (ssize_t)PAGE) { perror("write file2"); return 1; }
    }
    close(fd);
  }
  if (data) {
    datafd = open(data, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (datafd < 0) { perror("open data"); return 1; }
  }

  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 16) != 0) { perror("listen"); return 1; }
  socklen_t sl = sizeof sa;
  getsockname(ls, (struct sockaddr *)&sa, &sl);

  pthread_t th;
  for (int i = 0; i < nwriters; i++) pthread_create(&th, NULL, writer, NULL);

  char tmp[4096], msg[512];
  snprintf(tmp, sizeof tmp, "%s.tmp", status);
  int n = snprintf(msg, sizeof msg, "port=%d pid=%d counter=%p region=%p pages=%zu file=%p filepages=%zu\n",
                   ntohs(sa.sin_port), getpid(), (void *)&counter, (void *)region, npages, (void *)fmap, fpages);
  int sfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (sfd < 0 || write(sfd, msg, (size_t)n) != n) { perror("status"); return 1; }
  close(sfd);
  rename(tmp, status);

  int avx = __builtin_cpu_supports("avx");
  uint64_t waits = 0;
  uint64_t next = now_ns(CLOCK_MONOTONIC) + 10000000ULL;
  for (;;) {
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    while (now >= next) {
      __atomic_add_fetch(&ticks, 1, __ATOMIC_RELAXED);
      next += 10000000ULL;
    }
    struct pollfd pfd = {ls, POLLIN, 0};
    int timeout = (int)((next - now + 999999) / 1000000);
    int r = avx ? (int)poll_ymm(&pfd, timeout, ++waits * 0x9E3779B97F4A7C15ULL) : poll(&pfd, 1, timeout);
    if (r > 0) {
      int c = accept(ls, NULL, NULL);
      if (c >= 0) serve(c);
    }
  }
}
