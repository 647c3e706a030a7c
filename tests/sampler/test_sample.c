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
