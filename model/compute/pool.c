/* pool.c -- a persistent pool of worker threads for the kernels.
 *
 * Design
 * ------
 * model_pool_run() hands out task indices [0, n_tasks) to the workers and to
 * the calling thread; it returns when every task has finished.  A forward
 * step issues dozens of these dispatches per millisecond, so the hand-off
 * avoids locks:
 *
 *   - One 64-bit atomic `state` packs (generation, n_tasks, next index).  A
 *     thread claims a task with a compare-and-swap that succeeds only while
 *     the generation it saw is still current, so a slow worker can never run
 *     a task of an old job with the arguments of a new one.  The job's fn and
 *     arg are written before the generation is published (release) and read
 *     only after a successful claim (acquire); a generation cannot end while
 *     one of its claimed tasks is running, so they are stable while read.
 *   - `done` counts finished tasks; the caller spins on it (it waits only for
 *     the last tasks still running elsewhere).
 *   - Idle workers spin for a short while (new work usually follows within
 *     microseconds during a forward pass), then sleep on a futex that the
 *     dispatcher bumps and wakes only when someone is asleep.
 *
 * Oversubscribed machines (more runnable threads than cores, e.g. other busy
 * processes): workers that rarely get a CPU only slow the caller down (they spin on a
 * sibling, claim tasks late, or hold a task while preempted so the caller
 * waits a whole time slice).  So the caller watches two signals: waits longer
 * than STRAGGLE_NS several times in a row, and the workers' share of the
 * tasks over a window of dispatches falling well below their fair share.
 * Either sends the next SOLO_RUNS dispatches to the calling thread alone; then
 * the workers are tried again.  Results do not depend on this (see below).
 *
 * Which thread runs which task is not deterministic; callers make each
 * task's result independent of that (kernels split output rows only).
 */
#include "model/compute/pool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define POOL_MAX_THREADS 64
#define SPIN_NS          300000L /* idle workers spin this long before sleeping */
#define STRAGGLE_NS      500000L /* a caller wait this long means a worker was preempted */
#define STRAGGLE_STRIKES 3       /* ... this many times in a row: go solo */
#define SOLO_RUNS        4000    /* dispatches run by the caller alone before retrying */
#define SHARE_WINDOW     256     /* dispatches per worker-share measurement */

/* state = gen (20 bits) | n_tasks (22 bits) | next (22 bits) */
#define ST_IDX_BITS  22
#define ST_N_BITS    22
#define ST_IDX_MASK  ((UINT64_C(1) << ST_IDX_BITS) - 1)
#define ST_N_MASK    ((UINT64_C(1) << ST_N_BITS) - 1)
#define ST_MAX_TASKS ((int)ST_N_MASK)
#define st_gen(s)    ((s) >> (ST_IDX_BITS + ST_N_BITS))
#define st_n(s)      (((s) >> ST_IDX_BITS) & ST_N_MASK)
#define st_idx(s)    ((s)&ST_IDX_MASK)

struct model_pool {
    int n_threads; /* including the caller */
    int n_workers;
    pthread_t threads[POOL_MAX_THREADS];
    _Atomic uint64_t state;
    _Atomic int done;
    _Atomic uint32_t wake; /* futex word, bumped on each dispatch */
    _Atomic int sleepers;
    _Atomic int stop;
    model_pool_fn fn; /* the current job (see the design note) */
    void *arg;
    int strikes;                /* consecutive straggling dispatches (caller only) */
    int solo_left;              /* dispatches still to run on the caller alone */
    int win_n;                  /* dispatches in the current share window */
    long win_tasks, win_caller; /* tasks in it, and how many the caller ran */
    void *scratch;              /* model_pool_scratch */
    size_t scratch_len;
};

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Claim and run tasks of generation `gen` until none is left.  Returns the
 * number of tasks this thread ran. */
static int pool_work(model_pool *p, uint64_t gen)
{
    int ran = 0;
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    for (;;) {
        if (st_gen(s) != gen || st_idx(s) >= st_n(s)) break;
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        int task = (int)st_idx(s), n = (int)st_n(s);
        p->fn(p->arg, task, n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        ran++;
        s = atomic_load_explicit(&p->state, memory_order_acquire);
    }
    return ran;
}

static void *pool_worker(void *arg)
{
    model_pool *p = arg;
    uint64_t seen = st_gen(atomic_load(&p->state));
    for (;;) {
        /* Wait for a new generation: spin, then sleep. */
        uint64_t gen;
        long t0 = 0;
        unsigned spins = 0;
        for (;;) {
            if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
            gen = st_gen(atomic_load_explicit(&p->state, memory_order_acquire));
            if (gen != seen) break;
            if ((++spins & 255) == 0) {
                long t = now_ns();
                if (!t0)
                    t0 = t;
                else if (t - t0 > SPIN_NS) {
                    atomic_fetch_add(&p->sleepers, 1);
                    uint32_t w = atomic_load(&p->wake);
                    if (st_gen(atomic_load(&p->state)) == seen && !atomic_load(&p->stop))
                        futex(&p->wake, FUTEX_WAIT_PRIVATE, w);
                    atomic_fetch_sub(&p->sleepers, 1);
                    t0 = 0;
                }
            }
            cpu_relax();
        }
        seen = gen;
        pool_work(p, gen);
    }
}

model_pool *model_pool_new(int n_threads)
{
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > POOL_MAX_THREADS) n_threads = POOL_MAX_THREADS;
    model_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    atomic_init(&p->state, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->wake, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_worker, p) != 0) {
            model_pool_free(p);
            return NULL;
        }
        p->n_workers++;
    }
    return p;
}

void model_pool_free(model_pool *p)
{
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->wake, 1);
    futex(&p->wake, FUTEX_WAKE_PRIVATE, INT_MAX);
    for (int i = 0; i < p->n_workers; i++) pthread_join(p->threads[i], NULL);
    free(p->scratch);
    free(p);
}

int model_pool_size(const model_pool *p) { return p ? p->n_threads : 1; }

void model_pool_run(model_pool *p, model_pool_fn fn, void *arg, int n_tasks)
{
    if (n_tasks <= 0) return;
    if (p && p->solo_left > 0) p->solo_left--;
    if (!p || p->n_workers == 0 || n_tasks == 1 || n_tasks > ST_MAX_TASKS || p->solo_left > 0) {
        for (int t = 0; t < n_tasks; t++) fn(arg, t, n_tasks);
        return;
    }
    uint64_t s = atomic_load_explicit(&p->state, memory_order_relaxed);
    uint64_t gen = (st_gen(s) + 1) & ((UINT64_C(1) << (64 - ST_IDX_BITS - ST_N_BITS)) - 1);
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->state, (gen << (ST_IDX_BITS + ST_N_BITS)) | ((uint64_t)n_tasks << ST_IDX_BITS),
                          memory_order_seq_cst);
    atomic_fetch_add(&p->wake, 1);
    if (atomic_load(&p->sleepers) > 0) futex(&p->wake, FUTEX_WAKE_PRIVATE, INT_MAX);
    long w0 = now_ns();
    int mine = pool_work(p, gen);
    long worked = now_ns() - w0; /* the caller's own share of this dispatch */
    unsigned spins = 0;
    long t0 = 0, waited = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks) {
        if ((++spins & 255) == 0) {
            long t = now_ns();
            if (!t0) t0 = t;
            waited = t - t0;
            if (waited > STRAGGLE_NS) sched_yield();
        }
        cpu_relax();
    }
    /* A long wait is a strike only when it is also long against the caller's own
     * tasks: with coarse tasks (a large batch of a large model) waiting up to about
     * one task for the other thread's last one is the normal end of a dispatch, not
     * a preempted worker (docs/TUNING.md). */
    long per_task = mine > 0 ? worked / mine : worked;
    if (waited > STRAGGLE_NS && waited > 2 * per_task) {
        if (++p->strikes >= STRAGGLE_STRIKES) {
            p->strikes = 0;
            p->solo_left = SOLO_RUNS;
        }
    } else {
        p->strikes = 0;
    }
    p->win_tasks += n_tasks;
    p->win_caller += mine;
    if (++p->win_n >= SHARE_WINDOW) {
        /* workers' share vs their fair share (n_workers / n_threads), in 1/10s */
        long fair10 = 10 * p->win_tasks * p->n_workers / p->n_threads;
        long got = p->win_tasks - p->win_caller;
        if (10 * got * 10 < 6 * fair10) /* below 60 % of fair */
            p->solo_left = SOLO_RUNS;
        p->win_n = 0;
        p->win_tasks = p->win_caller = 0;
    }
}

void *model_pool_scratch(model_pool *p, size_t bytes)
{
    if (!p) return NULL;
    if (bytes > p->scratch_len) {
        size_t n = p->scratch_len * 2 > bytes ? p->scratch_len * 2 : bytes;
        void *b = aligned_alloc(64, (n + 63) & ~(size_t)63);
        if (!b) return NULL;
        free(p->scratch);
        p->scratch = b;
        p->scratch_len = n;
    }
    return p->scratch;
}
