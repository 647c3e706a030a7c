/* test_sample.c -- softmax, draw, argmax and log-probabilities (sampler/sample.c). */
#include "sampler/sampler.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

Test(softmax, sums_to_one_and_matches_double_reference)
{
    float x[5] = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f}, p[5];
    cr_assert_eq(sampler_softmax(x, p, 5), 0);
    double z = 0, s = 0;
    for (int i = 0; i < 5; i++)
        z += exp((double)x[i]);
    for (int i = 0; i < 5; i++) {
        cr_assert_float_eq(p[i], exp((double)x[i]) / z, 1e-7);
        s += p[i];
    }
    cr_assert_float_eq(s, 1.0, 1e-6);
}

Test(softmax, neg_infinity_is_exactly_zero_and_large_logits_do_not_overflow)
{
    float x[4] = {-INFINITY, 1000.0f, 999.0f, -INFINITY}, p[4];
    cr_assert_eq(sampler_softmax(x, p, 4), 0);
    cr_assert(p[0] == 0.0f && p[3] == 0.0f);
    cr_assert_float_eq(p[1], 1.0 / (1.0 + exp(-1.0)), 1e-6);
    float y[3] = {-INFINITY, -INFINITY, -INFINITY}, q[3] = {7, 7, 7};
    cr_assert_eq(sampler_softmax(y, q, 3), SAMPLER_EINVAL); /* no distribution */
    cr_assert(q[0] == 7 && q[2] == 7);
    float w[3] = {INFINITY, 0.0f, INFINITY}, r[3];
    cr_assert_eq(sampler_softmax(w, r, 3), 0);
    cr_assert(r[0] == 0.5f && r[1] == 0.0f && r[2] == 0.5f);
}

Test(draw, inverse_cdf_with_given_coin)
{
    float p[4] = {0.1f, 0.0f, 0.6f, 0.3f};
    cr_assert_eq(sampler_draw(p, 4, 0.0f), 0);
    cr_assert_eq(sampler_draw(p, 4, 0.05f), 0);
    cr_assert_eq(sampler_draw(p, 4, 0.1f), 2); /* never the zero-probability 1 */
    cr_assert_eq(sampler_draw(p, 4, 0.69f), 2);
    cr_assert_eq(sampler_draw(p, 4, 0.71f), 3);
    cr_assert_eq(sampler_draw(p, 4, 0.99999994f), 3);
    float q[3] = {0.3f, 0.3f, 0.0f}; /* sums below the coin: the last positive */
    cr_assert_eq(sampler_draw(q, 3, 0.9f), 1);
    cr_assert_eq(sampler_draw(p, 4, 1.0f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_draw(p, 4, -0.1f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_draw(p, 0, 0.5f), SAMPLER_EINVAL);
}

Test(argmax, lowest_index_among_equal_maxima)
{
    float x[5] = {1.0f, 3.0f, -2.0f, 3.0f, 0.0f};
    cr_assert_eq(sampler_argmax(x, 5), 1);
    float y[3] = {-INFINITY, -INFINITY, -5.0f};
    cr_assert_eq(sampler_argmax(y, 3), 2);
    cr_assert_eq(sampler_argmax(y, 0), SAMPLER_EINVAL);
}

Test(logprobs, match_double_log_softmax_and_rank_top)
{
    enum { V = 300 };
    float x[V];
    sampler_rng r;
    sampler_rng_seed(&r, 5);
    for (int i = 0; i < V; i++)
        x[i] = (sampler_rng_uniform(&r) - 0.5f) * 12.0f;
    x[17] = x[42]; /* a tie somewhere */
    double m = -INFINITY, z = 0;
    for (int i = 0; i < V; i++)
        m = fmax(m, x[i]);
    for (int i = 0; i < V; i++)
        z += exp((double)x[i] - m);
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
        for (int i = 0; i < V; i++)
            better += x[i] > x[id] || (x[i] == x[id] && i < id);
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
    float x[3] = {0.0f, -INFINITY, 1.0f};
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
    const float v[] = {-INFINITY, -3e38f, -2.5f, -1e-40f, -0.0f, 0.0f, 1e-40f, 1.0f, 2.5f,
                       3e38f, INFINITY};
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
    float none[3] = {NAN, -INFINITY, NAN};
    cr_assert(sampler__max(none, 3) == -INFINITY);
}
