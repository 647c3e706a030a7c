/* failalloc.c -- make one allocation of the server's loop thread fail, on request (tests only).
 *
 * Loaded with LD_PRELOAD into `lmserve serve` by test_failalloc.py.  malloc, calloc,
 * realloc and aligned allocations pass through to the next definition (libc's, or the
 * sanitizer's) until the test arms it: it writes a number N to the file named by
 * $FAILALLOC_CTL and sends SIGUSR2.  From then on, the N-th allocation made by the main
 * thread (the server's loop thread: HTTP, routing, validation, output) returns NULL, once,
 * and the shim disarms itself.  N = 0 disarms.  Lines on stderr tell the test what
 * happened: "failalloc: armed N", "failalloc: failed call N".
 *
 * Only the main thread counts: the engine thread's allocations (the scheduler, the
 * model) and libuv's worker threads are left alone, so the N-th call is the same call
 * from one run to the next for the same request.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *(*next_malloc)(size_t);
static void *(*next_calloc)(size_t, size_t);
static void *(*next_realloc)(void *, size_t);
static int (*next_posix_memalign)(void **, size_t, size_t);
static void *(*next_aligned_alloc)(size_t, size_t);
static void (*next_free)(void *);

static pid_t main_tid;
static atomic_long countdown; /* > 0: armed, the call that brings it to 0 fails */
static atomic_int resolving;

/* dlsym may allocate: those calls get memory from here (never freed by them) */
static char boot[4096];
static size_t boot_used;

static void *boot_alloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (boot_used + n > sizeof boot) return NULL;
    void *p = boot + boot_used;
    boot_used += n;
    return p;
}

static int is_boot(const void *p) { return (const char *)p >= boot && (const char *)p < boot + sizeof boot; }

static void say(const char *what, long n)
{
    char buf[64], digits[24];
    size_t len = strlen(what), k = 0;
    memcpy(buf, what, len);
    if (n < 0) n = 0;
    do digits[k++] = (char)('0' + n % 10);
    while ((n /= 10) && k < sizeof digits);
    while (k) buf[len++] = digits[--k];
    buf[len++] = '\n';
    ssize_t w = write(2, buf, len);
    (void)w;
}

static void resolve(void)
{
    if (next_malloc || atomic_exchange(&resolving, 1)) return;
    next_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    next_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    next_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    next_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    next_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    next_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    atomic_store(&resolving, 0);
}

/* 1 if this call must fail */
static int fail_now(void)
{
    if (atomic_load_explicit(&countdown, memory_order_relaxed) <= 0) return 0;
    if ((pid_t)syscall(SYS_gettid) != main_tid) return 0;
    static long calls;
    calls++;
    if (atomic_fetch_sub(&countdown, 1) == 1) {
        say("failalloc: failed call ", calls);
        if (getenv("FAILALLOC_BT")) {
            void *frames[24];
            backtrace_symbols_fd(frames, backtrace(frames, 24), 2);
        }
        calls = 0;
        return 1;
    }
    return 0;
}

static void on_usr2(int sig)
{
    (void)sig;
    const char *path = getenv("FAILALLOC_CTL");
    long n = 0;
    if (path) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            char buf[32];
            ssize_t r = read(fd, buf, sizeof buf - 1);
            close(fd);
            for (ssize_t i = 0; i < r && buf[i] >= '0' && buf[i] <= '9'; i++) n = n * 10 + (buf[i] - '0');
        }
    }
    atomic_store(&countdown, n);
    say("failalloc: armed ", n);
}

__attribute__((constructor)) static void failalloc_init(void)
{
    main_tid = (pid_t)syscall(SYS_gettid);
    resolve();
    if (getenv("FAILALLOC_BT")) {
        void *frames[2];
        backtrace(frames, 2); /* loads the unwinder now, not inside a failing malloc */
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
}

void *malloc(size_t n)
{
    if (!next_malloc) {
        resolve();
        if (!next_malloc) return boot_alloc(n);
    }
    if (fail_now()) return NULL;
    return next_malloc(n);
}

void *calloc(size_t a, size_t b)
{
    if (!next_calloc) {
        resolve();
        if (!next_calloc) return boot_alloc(a * b); /* static: already zero */
    }
    if (fail_now()) return NULL;
    return next_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
    if (!next_realloc) resolve();
    if (is_boot(p)) {
        size_t have = (size_t)(boot + sizeof boot - (char *)p);
        void *q = malloc(n);
        if (q) memcpy(q, p, n < have ? n : have);
        return q;
    }
    if (fail_now()) return NULL;
    return next_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (!next_posix_memalign) resolve();
    if (fail_now()) return 12; /* ENOMEM */
    return next_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    if (!next_aligned_alloc) resolve();
    if (fail_now()) return NULL;
    return next_aligned_alloc(align, n);
}

void free(void *p)
{
    if (!p || is_boot(p)) return;
    if (!next_free) return; /* only while dlsym itself runs: the block is left */
    next_free(p);
}
