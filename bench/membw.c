/* membw.c -- how fast can this machine read memory?  The ceiling for single-stream
 * decoding, which must read every weight once per token.
 *
 *   membw [--threads N] [--rounds R] [--fma] SIZE_MB [SIZE_MB ...]
 *
 * For each size: a buffer of SIZE_MB MiB (filled, so its pages exist) is summed by N
 * threads (each a contiguous share, 32-byte vector loads the compiler emits from a
 * plain loop), R times; prints the best round's rate in GB/s (10^9 bytes/s).  Sizes
 * below the last-level cache measure the cache, not memory: use one well above it
 * (e.g. 512) for the DRAM figure, and the model's own weight size to see what the
 * forward pass can hope for.  The buffer is the memory the model's weights get
 * (model_alloc_weights, then model_weights_huge: 2 MiB-aligned, on transparent huge
 * pages; LMSERVE_NO_HUGEPAGES=1 for 4 KiB pages -- the read rate differs, see docs/BENCHMARKS.md).
 *
 * --fma first prints one thread's rate of 8-lane fused multiply-adds (12 independent
 * chains, enough to fill both FMA pipes), in GFLOP/s: the arithmetic ceiling of one
 * core at the clock it runs at now.  On a VM the host's clock moves between runs
 * (docs/TUNING.md), and the batched kernels, which are compute-bound, move with it;
 * the figure records the machine state a benchmark run saw.
 */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include "cli/cli.h"
#include "model/loader.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const float *a;
    size_t n;
    pthread_barrier_t *go;
    int rounds;
    double sum;
    double t0, t1; /* this round's start and end, taken by the reader itself */
} share;

/* 64 partial sums: the compiler turns them into 8 independent 8-lane vector chains
 * (or 4 of 16 lanes), so the adds' latency does not limit the rate -- with 8 sums it
 * made one vector chain, one add per add-latency, slower than memory on fast parts. */
static double sum_floats(const float *a, size_t n)
{
    float s[64] = { 0 };
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 64; k++) s[k] += a[i + k];
    double t = 0;
    for (int k = 0; k < 64; k++) t += s[k];
    for (; i < n; i++) t += a[i];
    return t;
}

static void *reader(void *arg)
{
    share *s = arg;
    for (int r = 0; r < s->rounds; r++) {
        pthread_barrier_wait(s->go);
        s->t0 = cli_seconds(CLOCK_MONOTONIC);
        s->sum += sum_floats(s->a, s->n);
        s->t1 = cli_seconds(CLOCK_MONOTONIC);
        pthread_barrier_wait(s->go);
    }
    return NULL;
}

static double measure(size_t bytes, int threads, int rounds)
{
    size_t n = bytes / sizeof(float);
    size_t maplen;
    float *a = model_alloc_weights(n * sizeof(float), &maplen); /* the weights' kind of memory */
    if (!a) {
        fprintf(stderr, "membw: cannot allocate %zu bytes\n", bytes);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    model_weights_huge(a, maplen, NULL); /* as the model's weights end up after loading */
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)threads + 1);
    share *sh = calloc((size_t)threads, sizeof *sh);
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    if (!sh || !tid) {
        fprintf(stderr, "membw: out of memory\n");
        exit(1);
    }
    size_t per = (n / (size_t)threads) & ~(size_t)15;
    for (int t = 0; t < threads; t++) {
        sh[t] = (share){
            .a = a + per * (size_t)t, .n = t == threads - 1 ? n - per * (size_t)t : per, .go = &go, .rounds = rounds
        };
        pthread_create(&tid[t], NULL, reader, &sh[t]);
    }
    double best = 0;
    for (int r = 0; r < rounds; r++) {
        pthread_barrier_wait(&go); /* all threads start together ... */
        pthread_barrier_wait(&go); /* ... and the round ends when the last one is done */
        /* The readers time themselves: this thread is one too many for the CPUs when
         * threads == cores, and its own clock readings could land late after the
         * start barrier (a round that seemed to take almost no time). */
        double t0 = sh[0].t0, t1 = sh[0].t1;
        for (int t = 1; t < threads; t++) {
            t0 = sh[t].t0 < t0 ? sh[t].t0 : t0;
            t1 = sh[t].t1 > t1 ? sh[t].t1 : t1;
        }
        double dt = t1 - t0;
        double rate = (double)(n * sizeof(float)) / dt / 1e9;
        if (rate > best) best = rate;
    }
    double check = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        check += sh[t].sum;
    }
    if (check < 0) /* never: keeps the sums from being optimised away */
        printf("%g\n", check);
    pthread_barrier_destroy(&go);
    free(sh);
    free(tid);
    model_unmap((const uint8_t *)a, n * sizeof(float));
    return best;
}

/* GFLOP/s of one thread's FMAs (best of 5 rounds of ~0.1 s); 0 without AVX2/FMA. */
static double fma_rate(void)
{
#if defined(__AVX2__) && defined(__FMA__)
    double best = 0;
    for (int round = 0; round < 5; round++) {
        __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-9f), a[12];
        for (int k = 0; k < 12; k++) a[k] = _mm256_set1_ps((float)k);
        long n = 20000000;
        double t0 = cli_seconds(CLOCK_MONOTONIC);
        for (long i = 0; i < n; i++) {
            for (int k = 0; k < 12; k++) /* unrolled by the compiler: 12 chains in registers */
                a[k] = _mm256_fmadd_ps(a[k], b, c);
            __asm__ volatile(""
                             : "+x"(a[0]), "+x"(a[1]), "+x"(a[2]), "+x"(a[3]), "+x"(a[4]), "+x"(a[5]), "+x"(a[6]),
                               "+x"(a[7]), "+x"(a[8]), "+x"(a[9]), "+x"(a[10]), "+x"(a[11]));
        }
        double dt = cli_seconds(CLOCK_MONOTONIC) - t0;
        float out[8];
        __m256 s = a[0];
        for (int k = 1; k < 12; k++) s = _mm256_add_ps(s, a[k]);
        _mm256_storeu_ps(out, s);
        if (out[0] < 0) /* never: keeps the chains live */
            printf("%g\n", out[0]);
        double rate = (double)n * 12 * 16 / dt / 1e9;
        if (rate > best) best = rate;
    }
    return best;
#else
    return 0;
#endif
}

int main(int argc, char **argv)
{
    int threads = 2, rounds = 20, nsizes = 0, fma = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--fma"))
            fma = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (atof(argv[i]) > 0)
            nsizes++;
        else {
            fprintf(stderr, "usage: membw [--threads N] [--rounds R] [--fma] SIZE_MB [SIZE_MB ...]\n");
            return 2;
        }
    }
    if (threads < 1 || rounds < 1 || !nsizes) {
        fprintf(stderr, "usage: membw [--threads N] [--rounds R] [--fma] SIZE_MB [SIZE_MB ...]\n");
        return 2;
    }
    if (fma) {
        double r = fma_rate();
        if (r > 0)
            printf("fma  one thread: %6.1f GFLOP/s (8-lane fused multiply-adds, best of 5)\n", r);
        else
            printf("fma  one thread: n/a (built without AVX2/FMA)\n");
        fflush(stdout);
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--fma")) continue;
        if (!strcmp(argv[i], "--threads") || !strcmp(argv[i], "--rounds")) {
            i++;
            continue;
        }
        double mb = atof(argv[i]);
        size_t bytes = (size_t)(mb * 1024 * 1024);
        printf("read %8.1f MiB with %d threads: %6.1f GB/s (best of %d)\n", mb, threads,
               measure(bytes, threads, rounds), rounds);
        fflush(stdout);
    }
    return 0;
}
