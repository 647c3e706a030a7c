/* test_sample.c -- softmax, draw, argmax and log-probabilities (sampler/sample.c). */
#include "sampler/sampler.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

Test(softmax, sums_to_one_and_matches_double_reference)
{
    float x[5] = { 1.0f, 2.0f, 3.0f, -1.0f, 0.5f }, p[5];
    cr_assert_eq(sampler_softmax(x, p, 5), 0);
    double z = 0, s = 0;
    for (int i = 0; i < 5; i++) z += exp((double)x[i]);
    for (int i = 0; i < 5; i++) {
        cr_assert_float_eq(p[i], exp((double)x[i]) / z, 1e-7);
        s += p[i];
    }
    cr_assert_float_eq(s, 1.0, 1e-6);
}

Test(softmax, neg_infinity_is_exactly_zero_and_large_logits_do_not_overflow)
{
    float x[4] = { -INFINITY, 1000.0f, 999.0f, -INFINITY }, p[4];
    cr_assert_eq(sampler_softmax(x, p, 4), 0);
    cr_assert(p[0] == 0.0f && p[3] == 0.0f);
    cr_assert_float_eq(p[1], 1.0 / (1.0 + exp(-1.0)), 1e-6);
    float y[3] = { -INFINITY, -INFINITY, -INFINITY }, q[3] = { 7, 7, 7 };
    cr_assert_eq(sampler_softmax(y, q, 3), SAMPLER_EINVAL); /* no distribution */
    cr_assert(q[0] == 7 && q[2] == 7);
    float w[3] = { INFINITY, 0.0f, INFINITY }, r[3];
    cr_assert_eq(sampler_softmax(w, r, 3), 0);
    cr_assert(r[0] == 0.5f && r[1] == 0.0f && r[2] == 0.5f);
}

Test(draw, inverse_cdf_with_given_coin)
{
    float p[4] = { 0.1f, 0.0f, 0.6f, 0.3f };
    cr_assert_eq(sampler_draw(p, 4, 0.0f), 0);
    cr_assert_eq(sampler_draw(p, 4, 0.05f), 0);
    cr_assert_eq(sampler_draw(p, 4, 0.1f), 2); /* never the zero-probability 1 */
    cr_assert_eq(sampler_draw(p, 4, 0.69f), 2);
    cr_assert_eq(sampler_draw(p, 4, 0.71f), 3);
    cr_assert_eq(sampler_draw(p, 4, 0.99999994f), 3);
    float q[3] = { 0.3f, 0.3f, 0.0f }; /* sums below the coin: the last positive */
    cr_assert_eq(sampler_draw(q, 3, 0.9f), 1);
    cr_assert_eq(sampler_draw(p, 4, 1.0f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_draw(p, 4, -0.1f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_draw(p, 0, 0.5f), SAMPLER_EINVAL);
}

Test(argmax, lowest_index_among_equal_maxima)
{
    float x[5] = { 1.0f, 3.0f, -2.0f, 3.0f, 0.0f };
    cr_assert_eq(sampler_argmax(x, 5), 1);
    float y[3] = { -INFINITY, -INFINITY, -5.0f };
    cr_assert_eq(sampler_argmax(y, 3), 2);
    cr_assert_eq(sampler_argmax(y, 0), SAMPLER_EINVAL);
}

Test(logprobs, match_double_log_softmax_and_rank_top)
{
    enum { V = 300 };
    float x[V];
    sampler_rng r;
    sampler_rng_seed(&r, 5);
    for (int i = 0; i < V; i++) x[i] = (sampler_rng_uniform(&r) - 0.5f) * 12.0f;
    x[17] = x[42]; /* a tie somewhere */
    double m = -INFINITY, z = 0;
    for (int i = 0; i < V; i++) m = fmax(m, x[i]);
    for (int i = 0; i < V; i++) z += exp((double)x[i] - m);
    double lse = m + log(z);
    sampler_choice c;
    cr_assert_eq(sampler_logprobs(x, V, 123, 10, &c), 0);
    cr_assert_eq(c.token, 123);
    cr_assert_float_eq(c.logprob, (double)x[123] - lse, 1e-5);
    cr_assert_eq(c.n_top, 10);
    for (int j = 0; j < 10; j++) {
        int id = c.top[j].id;
        cr_assert_float_eq(c.top[j].logprob, (double)x[id] - lse, 1e-5);
        int better = 0; /* exactly j tokens rank above it (value desc, then id asc) */
        for (int i = 0; i < V; i++) better += x[i] > x[id] || (x[i] == x[id] && i < id);
        cr_assert_eq(better, j, "rank %d id %d", j, id);
    }
    double s = 0;
    for (int i = 0; i < V; i++) {
        sampler_choice ci;
        sampler_logprobs(x, V, i, 0, &ci);
        s += exp((double)ci.logprob);
    }
    cr_assert_float_eq(s, 1.0, 1e-5);
}

Test(logprobs, small_vocab_and_bad_args)
{
    float x[3] = { 0.0f, -INFINITY, 1.0f };
    sampler_choice c;
    cr_assert_eq(sampler_logprobs(x, 3, 1, SAMPLER_MAX_TOP, &c), 0);
    cr_assert_eq(c.n_top, 3); /* clamped to the vocabulary */
    cr_assert_eq(c.top[0].id, 2);
    cr_assert_eq(c.top[1].id, 0);
    cr_assert_eq(c.top[2].id, 1);
    cr_assert(c.logprob == -INFINITY);
    cr_assert_eq(sampler_logprobs(x, 3, 3, 1, &c), SAMPLER_EINVAL);
    cr_assert_eq(sampler_logprobs(x, 3, 0, SAMPLER_MAX_TOP + 1, &c), SAMPLER_EINVAL);
    cr_assert_eq(sampler_logprobs(x, 3, 0, -1, &c), SAMPLER_EINVAL);
}

/* ---- internals: the float exp and the order-preserving key ---- */
#include "sampler/sampler_internal.h"

Test(internal, exp_neg_accuracy_and_edges)
{
    /* Relative error against exp() in double below 2 float ulps (2 * 2^-23 = 2.4e-7;
     * measured 9.7e-8) over [-87, 0]; exactly 1 at 0; exactly 0 below -87, at
     * -INFINITY and for NaN. */
    double worst = 0;
    for (int i = 0; i <= 870000; i++) {
        float x = -(float)i * 1e-4f;
        double want = exp((double)x);
        double got = sampler__exp_neg(x);
        double rel = fabs(got - want) / want;
        worst = rel > worst ? rel : worst;
    }
    cr_assert_lt(worst, 2.4e-7, "worst relative error %g", worst);
    cr_log_info("exp_neg worst relative error %g", worst);
    cr_assert(sampler__exp_neg(0.0f) == 1.0f);
    cr_assert(sampler__exp_neg(-0.0f) == 1.0f);
    cr_assert(sampler__exp_neg(-87.5f) == 0.0f);
    cr_assert(sampler__exp_neg(-INFINITY) == 0.0f);
    cr_assert(sampler__exp_neg(NAN) == 0.0f);
    cr_assert(sampler__exp_neg(5.0f) == 1.0f); /* outside the domain: clamped to exp(0) */
    cr_assert(sampler__exp_neg(INFINITY) == 1.0f);
}

Test(internal, key_preserves_order)
{
    const float v[] = { -INFINITY, -3e38f, -2.5f, -1e-40f, -0.0f, 0.0f, 1e-40f, 1.0f, 2.5f, 3e38f, INFINITY };
    int n = (int)(sizeof v / sizeof v[0]);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            uint32_t a = sampler__key(v[i]), b = sampler__key(v[j]);
            cr_assert_eq(v[i] < v[j], a < b, "%g vs %g", v[i], v[j]);
            cr_assert_eq(v[i] == v[j], a == b, "%g vs %g", v[i], v[j]);
        }
    cr_assert_eq(sampler__key(NAN), 0u);
    cr_assert_eq(sampler__key(-NAN), 0u);
    cr_assert_gt(sampler__key(-INFINITY), 0u);
}

Test(internal, fixed_order_reductions)
{
    float x[37];
    double d[37], want = 0;
    for (int i = 0; i < 37; i++) {
        x[i] = (float)i - 10.5f;
        d[i] = x[i];
        want += x[i];
    }
    cr_assert_float_eq(sampler__sum_f(x, 37), want, 1e-12);
    cr_assert_float_eq(sampler__sum_d(d, 37), want, 1e-12);
    x[36] = NAN;
    cr_assert(sampler__max(x, 37) == 24.5f); /* NaN ignored */
    x[0] = INFINITY;
    cr_assert(sampler__max(x, 37) == INFINITY);
    float none[3] = { NAN, -INFINITY, NAN };
    cr_assert(sampler__max(none, 3) == -INFINITY);
}

/* The portable eight-lane maximum that sampler__max must equal to the bit (its AVX
 * path keeps the same lanes), and the first index holding it. */
static float ref_max(const float *x, int n)
{
    float acc[8];
    for (int j = 0; j < 8; j++) acc[j] = -INFINITY;
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    float m = -INFINITY;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int j = 0; j < 8; j++) m = acc[j] > m ? acc[j] : m;
    return m;
}

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

Test(internal, max_and_argmax_equal_the_portable_loops)
{
    static float x[32000 + 9];
    uint64_t s = 42;
    int lens[] = { 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1001, 32000, 32009 };
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int n = lens[li];
        for (int trial = 0; trial < 40; trial++) {
            for (int i = 0; i < n; i++) x[i] = (float)((int)(lcg(&s) % 2001) - 1000) / 64.0f;
            int kind = trial % 8, at = (int)(lcg(&s) % (uint64_t)n);
            if (kind == 1) x[at] = NAN; /* NaN never wins */
            if (kind == 2) x[at] = INFINITY;
            if (kind == 3) /* only -inf and NaN */
                for (int i = 0; i < n; i++) x[i] = i % 3 ? -INFINITY : NAN;
            if (kind == 4) { /* ties: the first must win */
                x[at] = 100.0f;
                if ((at ^ 1) < n) x[at ^ 1] = 100.0f; /* two in one group of 8 */
                x[(at + 1 + (int)(lcg(&s) % (uint64_t)n)) % n] = 100.0f;
            }
            if (kind == 5) { /* signed zeros at the top */
                for (int i = 0; i < n; i++) x[i] = -1.0f;
                x[at] = -0.0f;
                x[(int)(lcg(&s) % (uint64_t)n)] = 0.0f;
            }
            if (kind == 6) x[n - 1] = 1000.0f; /* in the tail past the lanes */
            if (kind == 7) x[0] = 1000.0f;
            float want = ref_max(x, n), got = sampler__max(x, n);
            cr_assert_eq(memcmp(&want, &got, sizeof want), 0, "n %d kind %d: max %a, want %a", n, kind, (double)got,
                         (double)want);
            int first = -1;
            for (int i = 0; i < n && first < 0; i++)
                if (x[i] == want) first = i;
            int a = sampler_argmax(x, n);
            cr_assert_eq(a, first < 0 ? SAMPLER_EINVAL : first, "n %d kind %d: argmax %d, want %d", n, kind, a, first);
        }
    }
}

Test(draw, without_the_normalising_pass_equals_softmax_then_draw)
{
    enum { N = 32000 + 5 };
    static float x[N], p[N], e[N];
    uint64_t s = 7;
    for (int trial = 0; trial < 12; trial++) {
        int n = trial < 6 ? N : 1 + (int)(lcg(&s) % 300);
        float spread = trial % 3 == 0 ? 30.0f : 3.0f; /* wide spreads make tiny probabilities */
        for (int i = 0; i < n; i++) x[i] = spread * ((float)(lcg(&s) % 100000) / 100000.0f - 0.5f);
        for (int k = 0; k < n / 50; k++) x[lcg(&s) % (uint64_t)n] = -INFINITY;
        if (trial == 5) x[n / 2] = x[n - 1] = INFINITY;
        double scale;
        cr_assert_eq(sampler_softmax(x, p, n), 0);
        cr_assert_eq(sampler__softmax_scaled(x, e, n, &scale), 0);
        for (int i = 0; i < n; i++) {
            float q = (float)((double)e[i] * scale);
            cr_assert_eq(memcmp(&q, &p[i], sizeof q), 0, "probability %d differs", i);
        }
        for (int c = 0; c < 400; c++) {
            float coin = (float)(lcg(&s) % 16777216) / 16777216.0f;
            cr_assert_eq(sampler__draw_scaled(e, scale, n, coin), sampler_draw(p, n, coin), "trial %d coin %a", trial,
                         (double)coin);
        }
        cr_assert_eq(sampler__draw_scaled(e, scale, n, 0.99999994f), sampler_draw(p, n, 0.99999994f));
        /* coins on the float grid around every CDF boundary: where a draw that kept
         * the probabilities in double (not rounded to float) would part from it */
        double cdf = 0.0;
        for (int i = 0; i < n; i++) {
            if (!(p[i] > 0.0f)) continue;
            cdf += p[i];
            if (i > 2000 && i % 97) continue; /* each check walks i entries: sample the far ones */
            float f = (float)cdf;
            float coins[3] = { nextafterf(f, 0.0f), f, nextafterf(f, 1.0f) };
            for (int c = 0; c < 3; c++)
                if (coins[c] >= 0.0f && coins[c] < 1.0f)
                    cr_assert_eq(sampler__draw_scaled(e, scale, n, coins[c]), sampler_draw(p, n, coins[c]),
                                 "trial %d boundary %d coin %a", trial, i, (double)coins[c]);
        }
    }
}
