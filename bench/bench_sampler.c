/* bench_sampler.c -- cost of one token's warp + draw (sampler_step) at vocab 32000.
 *
 * Logits are Gaussian (Box-Muller from the sampler's own seeded RNG), scaled by
 * 3 with a handful of boosted tokens, roughly what a small LM emits.  Each
 * configuration runs a fresh row per token (rows are precomputed so only the
 * sampler is timed) and prints microseconds of CPU time per token, the best of
 * ROUNDS rounds.  "token only" rows skip the chosen token's log-probability, as the
 * server does when a request asks for no logprobs.  "trace N" rows record the step's
 * stages (sampler_step_traced, what a request with sampler_trace: N costs); every
 * other row is the untraced step.  Not part of `make test`.
 *
 *   build/release/bench/bench_sampler [tokens]     (tokens per round, default 1000)
 */
#include "cli/cli.h"
#include "sampler/sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Times are CPU time of this thread (cli_seconds(CLOCK_THREAD_CPUTIME_ID)): the machine
 * is shared, so wall time mostly measures the neighbours.  Each configuration reports
 * the best of ROUNDS rounds. */
enum { VOCAB = 32000, ROWS = 16, ROUNDS = 5 };

static void gaussian_row(float *x, int n, sampler_rng *r)
{
    for (int i = 0; i < n; i += 2) {
        double u1 = (sampler_rng_uniform(r) + 0x1p-25), u2 = sampler_rng_uniform(r);
        double rad = sqrt(-2.0 * log(u1));
        x[i] = (float)(3.0 * rad * cos(2.0 * M_PI * u2));
        if (i + 1 < n) x[i + 1] = (float)(3.0 * rad * sin(2.0 * M_PI * u2));
    }
    for (int j = 0; j < 8; j++) /* a few likely continuations */
        x[sampler_rng_next(r) % (uint64_t)n] += 8.0f + (float)j;
}

/* Reference point only: what one full sort of the vocabulary per token would cost
 * (the naive top-p), which the sampler avoids. */
typedef struct {
    float v;
    int32_t id;
} pair;
static int pair_desc(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->id - y->id;
}

int main(int argc, char **argv)
{
    int tokens = argc > 1 ? atoi(argv[1]) : 1000;
    if (tokens <= 0) tokens = 1000;
    float *rows = malloc((size_t)ROWS * VOCAB * sizeof *rows); /* (ROWS, VOCAB) */
    int32_t *ids = malloc((size_t)tokens * sizeof *ids);
    if (!rows || !ids) return 1;
    sampler_rng r;
    sampler_rng_seed(&r, 1);
    for (int k = 0; k < ROWS; k++) gaussian_row(rows + (size_t)k * VOCAB, VOCAB, &r);
    for (int i = 0; i < tokens; i++) ids[i] = (int32_t)(sampler_rng_next(&r) % VOCAB);

    struct {
        const char *name;
        sampler_params p;
        int n_top;
        int trace;
    } cfg[] = {
        { "greedy", { .temperature = 0.0f }, 0, 0 },
        { "greedy, token only", { .temperature = 0.0f }, SAMPLER_TOKEN_ONLY, 0 },
        { "temperature 0.8", { .temperature = 0.8f, .seed = 1 }, 0, 0 },
        { "temperature 0.8, token only", { .temperature = 0.8f, .seed = 1 }, SAMPLER_TOKEN_ONLY, 0 },
        { "top_k 40", { .temperature = 0.8f, .top_k = 40, .seed = 1 }, 0, 0 },
        { "top_p 0.9", { .temperature = 0.8f, .top_p = 0.9f, .seed = 1 }, 0, 0 },
        { "top_p 0.9, T 1.0", { .temperature = 1.0f, .top_p = 0.9f, .seed = 1 }, 0, 0 },
        { "top_k 40 + top_p 0.9", { .temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .seed = 1 }, 0, 0 },
        { "top_p 0.9 + rep 1.1 (64) + 5 logprobs",
          { .temperature = 0.8f, .top_p = 0.9f, .repetition_penalty = 1.1f, .penalty_last_n = 64, .seed = 1 },
          5,
          0 },
        { "top_k 40 + top_p 0.9, trace 5", { .temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .seed = 1 }, 0, 5 },
        { "top_p 0.9 + rep 1.1 (64), trace 20",
          { .temperature = 0.8f, .top_p = 0.9f, .repetition_penalty = 1.1f, .penalty_last_n = 64, .seed = 1 },
          0,
          20 },
    };
    static sampler_trace trace;
    printf("sampler warp+draw per token (CPU us, best of %d rounds), vocab %d, %d tokens per round\n", ROUNDS, VOCAB,
           tokens);
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        sampler *s = sampler_new(VOCAB, &cfg[c].p);
        if (!s || (cfg[c].trace && sampler_trace_enable(s, cfg[c].trace) != 0)) return 1;
        sampler_choice ch;
        long sum = 0;
        double us = INFINITY;
        for (int round = 0; round < ROUNDS; round++) {
            double t0 = cli_seconds(CLOCK_THREAD_CPUTIME_ID);
            for (int i = 0; i < tokens; i++) {
                const float *lg = rows + (size_t)(i % ROWS) * VOCAB;
                int n_ids = i < 256 ? i : 256;
                int rc = cfg[c].trace
                             ? sampler_step_traced(s, lg, ids + (i - n_ids), n_ids, n_ids, cfg[c].n_top, &ch, &trace)
                             : sampler_step(s, lg, ids + (i - n_ids), n_ids, n_ids, cfg[c].n_top, &ch);
                if (rc < 0) return 1;
                sum += ch.token;
            }
            double t = (cli_seconds(CLOCK_THREAD_CPUTIME_ID) - t0) * 1e6 / tokens;
            us = t < us ? t : us;
        }
        printf("  %-40s %8.1f us/token   (checksum %ld)\n", cfg[c].name, us, sum);
        sampler_free(s);
    }
    pair *pairs = malloc((size_t)VOCAB * sizeof *pairs);
    if (!pairs) return 1;
    double best = INFINITY;
    for (int round = 0; round < ROUNDS; round++) {
        int n_sorts = tokens / 10 > 0 ? tokens / 10 : 1;
        double t0 = cli_seconds(CLOCK_THREAD_CPUTIME_ID);
        for (int i = 0; i < n_sorts; i++) {
            const float *lg = rows + (size_t)(i % ROWS) * VOCAB;
            for (int v = 0; v < VOCAB; v++) pairs[v] = (pair){ lg[v], v };
            qsort(pairs, VOCAB, sizeof *pairs, pair_desc);
        }
        double t = (cli_seconds(CLOCK_THREAD_CPUTIME_ID) - t0) * 1e6 / n_sorts;
        best = t < best ? t : best;
    }
    printf("  %-40s %8.1f us/token   (reference, not used)\n", "[one qsort of the vocabulary]", best);
    free(pairs);
    free(rows);
    free(ids);
    return 0;
}
