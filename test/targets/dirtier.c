/*
 * dirtier: a test target for the dirty-page tracker.
 *
 * It owns a main anonymous region (and optionally a MAP_PRIVATE file mapping)
 * and writes exactly the pages it is told to write, so tests can compare the
 * tracker's report with the set of pages really written.
 *
 * Usage: dirtier [--pages N] [--threads T] [--file PATH] [--file-pages M]
 *
 * On start it prints one line:
 *   ready pid=<pid> region=<hex> pages=<N> file=<hex or 0> filepages=<M or 0>
 * then answers every command line read from stdin with exactly one line
 * (except `crash`, which never answers). See test/helpers/target.ts.
 *
 * A "write" to a page always means an atomic increment of a 64-bit counter at
 * offset (pageno * 64) % 4096 of that page (pageno = index in the main region
 * or in the file mapping, or address >> 12 for `wa`). All accesses that may
 * race with another thread are __atomic operations, so there are no data races.
 *
 * Linux x86_64 only; libc + pthread only.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE ((size_t)4096)
#define LINE_BUF_SIZE ((size_t)1 << 20)
#define MAX_THREADS 1024u
#define MAX_PAGES ((uint64_t)1 << 26) /* 256 GiB: far beyond any test */

/* ------------------------------------------------------------------------- */
/* state                                                                     */

static unsigned char *g_region;    /* main region */
static size_t g_pages;             /* its size in pages */
static unsigned char *g_file;      /* private file mapping, or NULL */
static size_t g_file_pages;        /* its size in pages, or 0 */
static unsigned g_threads;         /* --threads */

/* random writers (`rand` / `stop`) */
struct rand_worker {
    pthread_t tid;
    unsigned index;
    uint64_t per_burst;            /* writes per 10 ms burst for this thread */
    uint64_t writes;               /* written by the thread, read after join */
};
static struct rand_worker *g_rand_workers;
static unsigned g_rand_count;      /* number of running (joinable) workers */
static int g_rand_stop;            /* __atomic flag */
static struct timespec g_rand_deadline;

/* thread spawner (`spawn` / `spawnwait`) */
static pthread_t g_spawner;
static int g_spawner_active;
static uint64_t g_spawn_target;
static uint64_t g_spawn_created;   /* written by the spawner, read after join */

/* ------------------------------------------------------------------------- */
/* helpers                                                                   */

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static size_t counter_offset(uint64_t pageno)
{
    return (size_t)((pageno * 64u) % PAGE); /* always a multiple of 8 */
}

static void write_page(unsigned char *page, uint64_t pageno)
{
    uint64_t *counter = (uint64_t *)(void *)(page + counter_offset(pageno));
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

static void write_main_page(uint64_t i)
{
    write_page(g_region + i * PAGE, i);
}

static void zero_page(unsigned char *page)
{
    uint64_t *w = (uint64_t *)(void *)page;
    for (size_t k = 0; k < PAGE / sizeof(uint64_t); k++)
        __atomic_store_n(&w[k], 0, __ATOMIC_RELAXED);
}

/* Decimal (base 10) or hex (base 16, optional 0x) unsigned number; the whole
 * token must be consumed. */
static int parse_u64(const char *s, int base, uint64_t *out)
{
    if (s == NULL || *s == '\0' || *s == '-' || *s == '+' || *s == ' ')
        return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, base);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_nonneg_double(const char *s, double *out)
{
    if (s == NULL || *s == '\0')
        return -1;
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0 && v <= 1e300))
        return -1;
    *out = v;
    return 0;
}

/* Parse a hex page-aligned address and a page count n >= 1 such that the
 * range does not wrap. */
static const char *parse_range(char *a, char *n, uintptr_t *addr, size_t *len)
{
    uint64_t av, nv;
    if (parse_u64(a, 16, &av) != 0)
        return "bad address";
    if (av % PAGE != 0)
        return "address not page aligned";
    if (parse_u64(n, 10, &nv) != 0 || nv == 0 || nv > MAX_PAGES)
        return "bad page count";
    if (av > UINTPTR_MAX - nv * PAGE)
        return "range wraps";
    *addr = (uintptr_t)av;
    *len = (size_t)(nv * PAGE);
    return NULL;
}

/* All tokens must be page indices < limit. */
static const char *check_indices(int argc, char **argv, size_t limit)
{
    for (int k = 0; k < argc; k++) {
        uint64_t v;
        if (parse_u64(argv[k], 10, &v) != 0)
            return "bad page index";
        if (v >= limit)
            return "page index out of range";
    }
    return NULL;
}

/* Only called after check_indices succeeded on the same tokens. */
static uint64_t index_of(const char *tok)
{
    uint64_t v = 0;
    (void)parse_u64(tok, 10, &v);
    return v;
}

static struct timespec now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts;
}

static int ts_before(struct timespec a, struct timespec b)
{
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static struct timespec ts_add_ns(struct timespec a, uint64_t ns)
{
    uint64_t total = (uint64_t)a.tv_nsec + ns;
    a.tv_sec += (time_t)(total / 1000000000u);
    a.tv_nsec = (long)(total % 1000000000u);
    return a;
}

/* Is [addr, addr+len) entirely covered by writable mappings? */
static int range_writable(uintptr_t addr, size_t len)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return 0;
    uintptr_t cur = addr, end = addr + len;
    char line[4096 + 256];
    int ok = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
            continue;
        if (lo <= cur && cur < hi) {
            if (perms[1] != 'w')
                break;
            cur = hi;
            if (cur >= end) {
                ok = 1;
                break;
            }
        } else if (lo > cur) {
            break; /* hole: maps is sorted by address */
        }
    }
    fclose(f);
    return ok;
}

/* ------------------------------------------------------------------------- */
/* tw: T fresh threads write a page list concurrently                       */

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned arrived;
    int go;
    int abort;
};

struct tw_arg {
    struct gate *gate;
    const uint64_t *idx;
    size_t count;
    size_t start;
    size_t step;
};

static void *tw_thread(void *p)
{
    struct tw_arg *a = p;
    struct gate *g = a->gate;
    pthread_mutex_lock(&g->mu);
    g->arrived++;
    pthread_cond_broadcast(&g->cv);
    while (!g->go)
        pthread_cond_wait(&g->cv, &g->mu);
    int abort_now = g->abort;
    pthread_mutex_unlock(&g->mu);
    if (!abort_now)
        for (size_t k = a->start; k < a->count; k += a->step)
            write_main_page(a->idx[k]);
    return NULL;
}

static void cmd_tw(int argc, char **argv)
{
    uint64_t t;
    if (argc < 1 || parse_u64(argv[0], 10, &t) != 0 || t == 0 || t > MAX_THREADS) {
        reply("err tw: thread count must be 1..%u", MAX_THREADS);
        return;
    }
    const char *e = check_indices(argc - 1, argv + 1, g_pages);
    if (e != NULL) {
        reply("err tw: %s", e);
        return;
    }
    size_t count = (size_t)(argc - 1);
    uint64_t *idx = calloc(count ? count : 1, sizeof *idx);
    pthread_t *tids = calloc((size_t)t, sizeof *tids);
    struct tw_arg *args = calloc((size_t)t, sizeof *args);
    if (idx == NULL || tids == NULL || args == NULL) {
        free(idx);
        free(tids);
        free(args);
        reply("err tw: out of memory");
        return;
    }
    for (size_t k = 0; k < count; k++)
        idx[k] = index_of(argv[k + 1]);

    struct gate g = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0 };
    unsigned created = 0;
    int create_err = 0;
    for (unsigned k = 0; k < (unsigned)t; k++) {
        args[k] = (struct tw_arg){ &g, idx, count, k, (size_t)t };
        create_err = pthread_create(&tids[k], NULL, tw_thread, &args[k]);
        if (create_err != 0)
            break;
        created++;
    }
    pthread_mutex_lock(&g.mu);
    while (g.arrived < created)
        pthread_cond_wait(&g.cv, &g.mu);
    g.abort = create_err != 0;
    g.go = 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    for (unsigned k = 0; k < created; k++)
        pthread_join(tids[k], NULL);
    free(idx);
    free(tids);
    free(args);
    if (create_err != 0)
        reply("err tw: pthread_create: %s", strerror(create_err));
    else
        reply("ok");
}

/* ------------------------------------------------------------------------- */
/* rand / stop: persistent random writers                                   */

static void *rand_thread(void *p)
{
    struct rand_worker *w = p;
    /* xorshift64*, seeded per thread; never zero */
    struct timespec t0 = now_mono();
    uint64_t x = ((uint64_t)t0.tv_nsec << 20) ^ (uint64_t)t0.tv_sec ^
                 ((uint64_t)(w->index + 1) * 0x9E3779B97F4A7C15ull);
    if (x == 0)
        x = 0x2545F4914F6CDD1Dull;
    struct timespec next = t0;
    while (!__atomic_load_n(&g_rand_stop, __ATOMIC_RELAXED)) {
        struct timespec now = now_mono();
        if (!ts_before(now, g_rand_deadline))
            break;
        for (uint64_t k = 0; k < w->per_burst; k++) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            uint64_t r = x * 0x2545F4914F6CDD1Dull;
            write_main_page((r >> 11) % g_pages);
            w->writes++;
        }
        next = ts_add_ns(next, 10 * 1000 * 1000);
        now = now_mono();
        if (ts_before(ts_add_ns(next, 10 * 1000 * 1000), now))
            next = now; /* fell far behind: do not burst to catch up */
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
    }
    return NULL;
}

static uint64_t rand_stop_and_join(void)
{
    uint64_t total = 0;
    __atomic_store_n(&g_rand_stop, 1, __ATOMIC_RELAXED);
    for (unsigned k = 0; k < g_rand_count; k++) {
        pthread_join(g_rand_workers[k].tid, NULL);
        total += g_rand_workers[k].writes;
    }
    free(g_rand_workers);
    g_rand_workers = NULL;
    g_rand_count = 0;
    return total;
}

static void cmd_rand(int argc, char **argv)
{
    double seconds, pct;
    if (argc != 2 || parse_nonneg_double(argv[0], &seconds) != 0 ||
        parse_nonneg_double(argv[1], &pct) != 0 || seconds > 1e6 || pct > 100) {
        reply("err rand: usage: rand <seconds> <pct 0..100>");
        return;
    }
    if (g_rand_workers != NULL) {
        reply("err rand: already running");
        return;
    }
    unsigned n = g_threads > 0 ? g_threads : 1;
    uint64_t burst = (uint64_t)((double)g_pages * pct / 100.0 + 0.5); /* pct <= 100 */
    if (burst == 0 && pct > 0)
        burst = 1;
    g_rand_workers = calloc(n, sizeof *g_rand_workers);
    if (g_rand_workers == NULL) {
        reply("err rand: out of memory");
        return;
    }
    __atomic_store_n(&g_rand_stop, 0, __ATOMIC_RELAXED);
    g_rand_deadline = ts_add_ns(now_mono(), (uint64_t)(seconds * 1e9));
    int err = 0;
    for (unsigned k = 0; k < n; k++) {
        struct rand_worker *w = &g_rand_workers[k];
        w->index = k;
        w->per_burst = burst / n + (k < burst % n ? 1 : 0);
        w->writes = 0;
        err = pthread_create(&w->tid, NULL, rand_thread, w);
        if (err != 0)
            break;
        g_rand_count++;
    }
    if (err != 0) {
        (void)rand_stop_and_join();
        reply("err rand: pthread_create: %s", strerror(err));
        return;
    }
    reply("ok");
}

static void cmd_stop(void)
{
    if (g_rand_workers == NULL) {
        reply("ok 0");
        return;
    }
    uint64_t total = rand_stop_and_join();
    reply("ok %" PRIu64, total);
}

/* ------------------------------------------------------------------------- */
/* spawn / spawnwait: many short-lived threads                              */

static void *short_thread(void *p)
{
    uint64_t k = (uint64_t)(uintptr_t)p;
    write_main_page(k % g_pages);
    return NULL;
}

static void *spawner_thread(void *p)
{
    (void)p;
    uint64_t created = 0;
    for (uint64_t k = 0; k < g_spawn_target; k++) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_thread, (void *)(uintptr_t)k) != 0)
            break;
        pthread_join(t, NULL);
        created++;
    }
    g_spawn_created = created;
    return NULL;
}

static void cmd_spawn(int argc, char **argv)
{
    uint64_t n;
    if (argc != 1 || parse_u64(argv[0], 10, &n) != 0) {
        reply("err spawn: usage: spawn <n>");
        return;
    }
    if (g_spawner_active) {
        reply("err spawn: already running");
        return;
    }
    g_spawn_target = n;
    g_spawn_created = 0;
    int err = pthread_create(&g_spawner, NULL, spawner_thread, NULL);
    if (err != 0) {
        reply("err spawn: pthread_create: %s", strerror(err));
        return;
    }
    g_spawner_active = 1;
    reply("ok");
}

static void cmd_spawnwait(void)
{
    if (!g_spawner_active) {
        reply("err spawnwait: no spawn in progress");
        return;
    }
    pthread_join(g_spawner, NULL);
    g_spawner_active = 0;
    reply("ok %" PRIu64, g_spawn_created);
}

/* ------------------------------------------------------------------------- */
/* other commands                                                            */

static void cmd_w(int argc, char **argv)
{
    const char *e = check_indices(argc, argv, g_pages);
    if (e != NULL) {
        reply("err w: %s", e);
        return;
    }
    for (int k = 0; k < argc; k++)
        write_main_page(index_of(argv[k]));
    reply("ok");
}

static void cmd_wr(int argc, char **argv)
{
    uint64_t a, b;
    if (argc != 2 || parse_u64(argv[0], 10, &a) != 0 || parse_u64(argv[1], 10, &b) != 0) {
        reply("err wr: usage: wr <a> <b>");
        return;
    }
    if (a > b || b > g_pages) {
        reply("err wr: page range out of bounds");
        return;
    }
    for (uint64_t i = a; i < b; i++)
        write_main_page(i);
    reply("ok");
}

/* wrt a b: like wr, timed inside the target (for the first-write cost benchmark). */
static void cmd_wrt(int argc, char **argv)
{
    uint64_t a, b;
    if (argc != 2 || parse_u64(argv[0], 10, &a) != 0 || parse_u64(argv[1], 10, &b) != 0 || a > b || b > g_pages) {
        reply("err wrt: usage: wrt <a> <b> within the region");
        return;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t i = a; i < b; i++)
        write_main_page(i);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    reply("ok %" PRIu64, (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec)));
}

static void cmd_fw(int argc, char **argv)
{
    if (g_file == NULL) {
        reply("err fw: no file mapping");
        return;
    }
    const char *e = check_indices(argc, argv, g_file_pages);
    if (e != NULL) {
        reply("err fw: %s", e);
        return;
    }
    for (int k = 0; k < argc; k++) {
        uint64_t i = index_of(argv[k]);
        write_page(g_file + i * PAGE, i);
    }
    reply("ok");
}

static void cmd_zero(int argc, char **argv)
{
    const char *e = check_indices(argc, argv, g_pages);
    if (e != NULL) {
        reply("err zero: %s", e);
        return;
    }
    for (int k = 0; k < argc; k++)
        zero_page(g_region + index_of(argv[k]) * PAGE);
    reply("ok");
}

static void cmd_mmap(int argc, char **argv)
{
    uint64_t n;
    if (argc != 1 || parse_u64(argv[0], 10, &n) != 0 || n == 0 || n > MAX_PAGES) {
        reply("err mmap: usage: mmap <pages>");
        return;
    }
    void *p = mmap(NULL, (size_t)n * PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        reply("err mmap: %s", strerror(errno));
        return;
    }
    unsigned char *base = p;
    for (uint64_t i = 0; i < n; i++)
        write_page(base + i * PAGE, i);
    reply("ok %" PRIxPTR, (uintptr_t)p);
}

static void cmd_munmap(int argc, char **argv)
{
    uintptr_t addr;
    size_t len;
    const char *e = argc == 2 ? parse_range(argv[0], argv[1], &addr, &len) : "usage: munmap <hexaddr> <pages>";
    if (e != NULL) {
        reply("err munmap: %s", e);
        return;
    }
    if (munmap((void *)addr, len) != 0) {
        reply("err munmap: %s", strerror(errno));
        return;
    }
    reply("ok");
}

static void cmd_mprotect(int argc, char **argv)
{
    uintptr_t addr;
    size_t len;
    const char *e = argc == 3 ? parse_range(argv[0], argv[1], &addr, &len) : "usage: mprotect <hexaddr> <pages> r|rw|none";
    if (e != NULL) {
        reply("err mprotect: %s", e);
        return;
    }
    int prot;
    if (strcmp(argv[2], "r") == 0)
        prot = PROT_READ;
    else if (strcmp(argv[2], "rw") == 0)
        prot = PROT_READ | PROT_WRITE;
    else if (strcmp(argv[2], "none") == 0)
        prot = PROT_NONE;
    else {
        reply("err mprotect: prot must be r, rw or none");
        return;
    }
    if (mprotect((void *)addr, len, prot) != 0) {
        reply("err mprotect: %s", strerror(errno));
        return;
    }
    reply("ok");
}

static void cmd_madv(int argc, char **argv)
{
    uintptr_t addr;
    size_t len;
    const char *e = argc == 2 ? parse_range(argv[0], argv[1], &addr, &len) : "usage: madv <hexaddr> <pages>";
    if (e != NULL) {
        reply("err madv: %s", e);
        return;
    }
    if (madvise((void *)addr, len, MADV_DONTNEED) != 0) {
        reply("err madv: %s", strerror(errno));
        return;
    }
    reply("ok");
}

static void cmd_wa(int argc, char **argv)
{
    uintptr_t addr;
    size_t len;
    const char *e = argc == 2 ? parse_range(argv[0], argv[1], &addr, &len) : "usage: wa <hexaddr> <pages>";
    if (e != NULL) {
        reply("err wa: %s", e);
        return;
    }
    if (!range_writable(addr, len)) {
        reply("err wa: range is not entirely mapped writable");
        return;
    }
    for (uintptr_t p = addr; p < addr + len; p += PAGE)
        write_page((unsigned char *)p, (uint64_t)(p / PAGE));
    reply("ok");
}

static void cmd_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL) {
        reply("err threads: %s", strerror(errno));
        return;
    }
    unsigned n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    reply("ok %u", n);
}

static void cmd_sum(void)
{
    /* FNV-1a over every byte, in address order. Words are loaded atomically
     * (bytes then hashed in little-endian order) so concurrent writers are
     * not a data race. */
    uint64_t h = 0xcbf29ce484222325ull;
    const uint64_t *w = (const uint64_t *)(const void *)g_region;
    size_t words = g_pages * PAGE / sizeof(uint64_t);
    for (size_t k = 0; k < words; k++) {
        uint64_t v = __atomic_load_n(&w[k], __ATOMIC_RELAXED);
        for (int b = 0; b < 8; b++) {
            h ^= (v >> (8 * b)) & 0xffu;
            h *= 0x100000001b3ull;
        }
    }
    reply("ok %016" PRIx64, h);
}

static void cmd_exit(int argc, char **argv)
{
    uint64_t code;
    if (argc != 1 || parse_u64(argv[0], 10, &code) != 0 || code > 255) {
        reply("err exit: usage: exit <code 0..255>");
        return;
    }
    reply("ok");
    _exit((int)code);
}

static void cmd_crash(void)
{
    fflush(stdout);
    /* Both volatile: the compiler can neither see that p is NULL nor drop
     * the store. */
    volatile int *volatile p = NULL;
    *p = 1;
    raise(SIGSEGV); /* not reached */
    _exit(139);
}

static void cmd_sleep(int argc, char **argv)
{
    uint64_t ms;
    if (argc != 1 || parse_u64(argv[0], 10, &ms) != 0 || ms > 86400000u) {
        reply("err sleep: usage: sleep <ms>");
        return;
    }
    struct timespec req = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L }, rem;
    while (nanosleep(&req, &rem) != 0 && errno == EINTR)
        req = rem;
    reply("ok");
}

static void dispatch(int argc, char **argv)
{
    if (argc == 0) {
        reply("err empty command");
        return;
    }
    const char *c = argv[0];
    int n = argc - 1;
    char **a = argv + 1;
    if (strcmp(c, "w") == 0) cmd_w(n, a);
    else if (strcmp(c, "wr") == 0) cmd_wr(n, a);
    else if (strcmp(c, "wrt") == 0) cmd_wrt(n, a);
    else if (strcmp(c, "fw") == 0) cmd_fw(n, a);
    else if (strcmp(c, "tw") == 0) cmd_tw(n, a);
    else if (strcmp(c, "mmap") == 0) cmd_mmap(n, a);
    else if (strcmp(c, "munmap") == 0) cmd_munmap(n, a);
    else if (strcmp(c, "mprotect") == 0) cmd_mprotect(n, a);
    else if (strcmp(c, "madv") == 0) cmd_madv(n, a);
    else if (strcmp(c, "wa") == 0) cmd_wa(n, a);
    else if (strcmp(c, "zero") == 0) cmd_zero(n, a);
    else if (strcmp(c, "rand") == 0) cmd_rand(n, a);
    else if (strcmp(c, "stop") == 0 && n == 0) cmd_stop();
    else if (strcmp(c, "spawn") == 0) cmd_spawn(n, a);
    else if (strcmp(c, "spawnwait") == 0 && n == 0) cmd_spawnwait();
    else if (strcmp(c, "threads") == 0 && n == 0) cmd_threads();
    else if (strcmp(c, "sum") == 0 && n == 0) cmd_sum();
    else if (strcmp(c, "exit") == 0) cmd_exit(n, a);
    else if (strcmp(c, "crash") == 0 && n == 0) cmd_crash();
    else if (strcmp(c, "sleep") == 0) cmd_sleep(n, a);
    else reply("err unknown command: %.64s", c);
}

/* ------------------------------------------------------------------------- */
/* startup                                                                   */

static void usage_exit(const char *msg)
{
    fprintf(stderr, "dirtier: %s\nusage: dirtier [--pages N] [--threads T] [--file PATH] [--file-pages M]\n", msg);
    exit(2);
}

static uint64_t arg_u64(int argc, char **argv, int *k, uint64_t lo, uint64_t hi)
{
    uint64_t v;
    if (*k + 1 >= argc)
        usage_exit("missing value");
    if (parse_u64(argv[*k + 1], 10, &v) != 0 || v < lo || v > hi)
        usage_exit("bad numeric value");
    (*k)++;
    return v;
}

int main(int argc, char **argv)
{
    uint64_t pages = 256, file_pages = 16;
    const char *file = NULL;
    for (int k = 1; k < argc; k++) {
        if (strcmp(argv[k], "--pages") == 0)
            pages = arg_u64(argc, argv, &k, 1, MAX_PAGES);
        else if (strcmp(argv[k], "--threads") == 0)
            g_threads = (unsigned)arg_u64(argc, argv, &k, 0, MAX_THREADS);
        else if (strcmp(argv[k], "--file-pages") == 0)
            file_pages = arg_u64(argc, argv, &k, 1, MAX_PAGES);
        else if (strcmp(argv[k], "--file") == 0) {
            if (k + 1 >= argc)
                usage_exit("missing value");
            file = argv[++k];
        } else
            usage_exit("unknown argument");
    }
    if (sysconf(_SC_PAGESIZE) != (long)PAGE) {
        fprintf(stderr, "dirtier: page size is not 4096\n");
        return 1;
    }

    g_pages = (size_t)pages;
    void *r = mmap(NULL, g_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) {
        fprintf(stderr, "dirtier: mmap region: %s\n", strerror(errno));
        return 1;
    }
    g_region = r;
    for (size_t i = 0; i < g_pages; i++)
        write_main_page(i);

    if (file != NULL) {
        int fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "dirtier: open %s: %s\n", file, strerror(errno));
            return 1;
        }
        struct stat st;
        size_t flen = (size_t)file_pages * PAGE;
        if (fstat(fd, &st) != 0 ||
            ((uint64_t)st.st_size < flen && ftruncate(fd, (off_t)flen) != 0)) {
            fprintf(stderr, "dirtier: sizing %s: %s\n", file, strerror(errno));
            return 1;
        }
        void *f = mmap(NULL, flen, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (f == MAP_FAILED) {
            fprintf(stderr, "dirtier: mmap %s: %s\n", file, strerror(errno));
            return 1;
        }
        close(fd);
        g_file = f;
        g_file_pages = (size_t)file_pages;
        uint64_t acc = 0;
        for (size_t i = 0; i < g_file_pages; i++)
            acc += *(volatile const unsigned char *)(g_file + i * PAGE);
        (void)acc;
    }

    char *line = malloc(LINE_BUF_SIZE);
    char **toks = malloc((LINE_BUF_SIZE / 2 + 2) * sizeof *toks);
    if (line == NULL || toks == NULL) {
        fprintf(stderr, "dirtier: out of memory\n");
        return 1;
    }

    printf("ready pid=%d region=%" PRIxPTR " pages=%zu file=%" PRIxPTR " filepages=%zu\n",
           (int)getpid(), (uintptr_t)g_region, g_pages, (uintptr_t)g_file, g_file_pages);
    fflush(stdout);

    while (fgets(line, (int)LINE_BUF_SIZE, stdin) != NULL) {
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        } else if (len == LINE_BUF_SIZE - 1) {
            /* line too long: discard the rest of it and answer once */
            int ch;
            while ((ch = getchar()) != EOF && ch != '\n')
                ;
            reply("err line too long");
            continue;
        }
        int n = 0;
        char *save = NULL;
        for (char *t = strtok_r(line, " \t\r", &save); t != NULL; t = strtok_r(NULL, " \t\r", &save))
            toks[n++] = t;
        dispatch(n, toks);
    }
    /* stdin closed: the driver is gone */
    fflush(stdout);
    _exit(0);
}
