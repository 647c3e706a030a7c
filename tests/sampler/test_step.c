/* test_step.c -- the step-wise sampler (sampler/step.c), the shared warp+draw
 * (sampler/choose.c), parameter validation (sampler/params.c), and the
 * statistical check that draws follow softmax(logits / T). */
#include "sampler/sampler.h"
#include "toy_lm.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { V = 32 };

/* Run the step interface over the toy model, the way a server would. */
static int step_loop(const sampler_params *p, const int32_t *prompt, int n_prompt, int n_new, int max_seq_len,
                     int32_t *out)
{
    sampler *s = sampler_new(V, p);
    cr_assert_not_null(s);
    memcpy(out, prompt, (size_t)n_prompt * sizeof *out);
    int len = n_prompt;
    for (int i = 0; i < n_new; i++) {
        float lg[V];
        int n_ctx = len < max_seq_len ? len : max_seq_len;
        toy_logits(TOY_WAVE, out + len - n_ctx, n_ctx, V, lg);
        sampler_choice c;
        cr_assert_eq(sampler_step(s, lg, out, len, len - n_prompt, 3, &c), 0);
        out[len++] = c.token;
        int stop = 0;
        for (int j = 0; j < p->n_stop_ids; j++) stop |= p->stop_ids[j] == c.token;
        if (stop) break;
    }
    sampler_free(s);
    return len;
}

Test(step, same_tokens_as_generate_for_every_option)
{
    static toy_lm toy;
    int32_t ids[2] = { 4, 9 };
    float bias[2] = { 1.5f, -INFINITY };
    int32_t stop[1] = { 17 };
    const sampler_params cases[] = {
        { 0 },
        { .temperature = 1.0f, .seed = 1 },
        { .temperature = 0.7f, .top_k = 5, .seed = 2 },
        { .temperature = 1.3f, .top_p = 0.8f, .seed = 3 },
        { .temperature = 0.9f, .top_k = 10, .top_p = 0.9f, .min_p = 0.05f, .seed = 4 },
        { .temperature = 1.0f, .repetition_penalty = 1.3f, .penalty_last_n = 4, .seed = 5 },
        { .temperature = 1.0f, .presence_penalty = 0.5f, .frequency_penalty = 0.3f, .seed = 6 },
        { .temperature = 1.1f,
          .bias_ids = ids,
          .bias_values = bias,
          .n_bias = 2,
          .seed = 7,
          .stop_ids = stop,
          .n_stop_ids = 1 },
        { .repetition_penalty = 2.0f, .frequency_penalty = -0.5f, .bias_ids = ids, .bias_values = bias, .n_bias = 2 },
    };
    const int32_t prompt[4] = { 3, 1, 4, 1 };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int32_t a[4 + 40], b[4 + 40];
        toy_init(&toy, TOY_WAVE, V, 6);
        int na = sampler_generate(&toy.lm, prompt, 4, 40, &cases[k], a);
        int nb = step_loop(&cases[k], prompt, 4, 40, 6, b);
        cr_assert_eq(na, nb, "case %zu", k);
        cr_assert(memcmp(a, b, (size_t)na * sizeof *a) == 0, "case %zu", k);
        if (cases[k].n_bias)
            for (int i = 4; i < na; i++) cr_assert_neq(a[i], 9);
    }
}

/* The documented order, composed from the public warpers with the same coins. */
static int32_t reference_choice(const sampler_params *p, const float *logits, int vocab, const int32_t *ids, int n_ids,
                                int n_gen, sampler_rng *rng)
{
    float *x = malloc((size_t)vocab * sizeof *x), *pr = malloc((size_t)vocab * sizeof *pr);
    memcpy(x, logits, (size_t)vocab * sizeof *x);
    if (p->n_bias) sampler_apply_logit_bias(x, x, vocab, p->bias_ids, p->bias_values, p->n_bias);
    if (p->repetition_penalty != 0.0f) {
        int start = p->penalty_last_n && n_ids > p->penalty_last_n ? n_ids - p->penalty_last_n : 0;
        sampler_apply_repetition_penalty(x, x, vocab, ids + start, n_ids - start, p->repetition_penalty);
    }
    sampler_apply_presence_frequency(x, x, vocab, ids + n_ids - n_gen, n_gen, p->presence_penalty,
                                     p->frequency_penalty);
    int32_t t;
    if (p->temperature == 0.0f) {
        t = sampler_argmax(x, vocab);
    } else {
        sampler_apply_temperature(x, x, vocab, p->temperature);
        if (p->top_k) sampler_top_k_filter(x, x, vocab, p->top_k);
        if (p->top_p != 0.0f) sampler_top_p_filter(x, x, vocab, p->top_p);
        sampler_min_p_filter(x, x, vocab, p->min_p);
        sampler_softmax(x, pr, vocab);
        t = sampler_draw(pr, vocab, sampler_rng_uniform(rng));
    }
    free(x);
    free(pr);
    return t;
}

Test(step, follows_the_documented_order_of_the_public_warpers)
{
    enum { VB = 3000, STEPS = 60 };
    static float lg[VB];
    static int32_t ids[STEPS + 8];
    int32_t bias_ids[3] = { 10, 20, 30 };
    float bias_v[3] = { 4.0f, -INFINITY, 2.5f };
    const sampler_params cases[] = {
        { .temperature = 0.0f, .repetition_penalty = 1.5f, .presence_penalty = 0.4f },
        { .temperature = 0.8f, .top_k = 50, .top_p = 0.9f, .seed = 1 },
        { .temperature = 1.2f,
          .top_p = 0.7f,
          .min_p = 0.02f,
          .repetition_penalty = 1.2f,
          .penalty_last_n = 16,
          .frequency_penalty = 0.3f,
          .seed = 2 },
        { .temperature = 0.5f, .top_k = 5, .bias_ids = bias_ids, .bias_values = bias_v, .n_bias = 3, .seed = 3 },
        { .temperature = 1.0f, .min_p = 0.1f, .seed = 4 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sampler *s = sampler_new(VB, &cases[c]);
        sampler_rng ref_rng, lg_rng;
        sampler_rng_seed(&ref_rng, cases[c].seed);
        sampler_rng_seed(&lg_rng, 1000 + c);
        int n = 8;
        for (int i = 0; i < n; i++) ids[i] = (int32_t)(sampler_rng_next(&lg_rng) % VB);
        for (int st = 0; st < STEPS; st++) {
            for (int v = 0; v < VB; v++)
                lg[v] = 4.0f * (sampler_rng_uniform(&lg_rng) + sampler_rng_uniform(&lg_rng) - 1.0f);
            sampler_choice ch;
            cr_assert_eq(sampler_step(s, lg, ids, n, n - 8, 0, &ch), 0);
            int32_t want = reference_choice(&cases[c], lg, VB, ids, n, n - 8, &ref_rng);
            cr_assert_eq(ch.token, want, "case %zu step %d", c, st);
            ids[n++] = ch.token;
        }
        sampler_free(s);
    }
}

Test(step, logprobs_come_from_the_raw_logits)
{
    float lg[V];
    for (int i = 0; i < V; i++) lg[i] = 0.1f * (float)((i * 7) % V);
    int32_t force[1] = { 0 };
    float big[1] = { 100.0f }; /* forces token 0, whose raw probability is the smallest */
    sampler_params p = {
        .temperature = 1.0f, .bias_ids = force, .bias_values = big, .n_bias = 1, .top_k = 3, .seed = 1
    };
    sampler *s = sampler_new(V, &p);
    cr_assert_not_null(s);
    sampler_choice c;
    cr_assert_eq(sampler_step(s, lg, NULL, 0, 0, 5, &c), 0);
    cr_assert_eq(c.token, 0);
    double m = -INFINITY, z = 0;
    for (int i = 0; i < V; i++) m = fmax(m, lg[i]);
    for (int i = 0; i < V; i++) z += exp((double)lg[i] - m);
    double lse = m + log(z);
    cr_assert_float_eq(c.logprob, (double)lg[0] - lse, 1e-6);
    cr_assert_eq(c.n_top, 5);
    for (int j = 0; j < 5; j++) {
        cr_assert_float_eq(c.top[j].logprob, (double)lg[c.top[j].id] - lse, 1e-6);
        if (j) cr_assert_geq(c.top[j - 1].logprob, c.top[j].logprob);
    }
    cr_assert_eq(c.top[0].id, 9); /* 0.1 * 31: (9 * 7) % 32 = 31 */
    /* logits are not modified by a step */
    for (int i = 0; i < V; i++) cr_assert(lg[i] == 0.1f * (float)((i * 7) % V));
    sampler_free(s);
}

Test(step, params_are_copied)
{
    int32_t ids[1] = { 7 };
    float bias[1] = { -INFINITY };
    sampler_params p = { .bias_ids = ids, .bias_values = bias, .n_bias = 1 };
    sampler *s = sampler_new(V, &p);
    ids[0] = 8; /* the caller reuses its arrays: the sampler must not see it */
    bias[0] = 50.0f;
    float lg[V] = { 0 };
    lg[7] = 5.0f;
    sampler_choice c;
    cr_assert_eq(sampler_step(s, lg, NULL, 0, 0, 0, &c), 0);
    cr_assert_neq(c.token, 7);
    cr_assert_neq(c.token, 8);
    cr_assert_eq(c.token, 0); /* greedy over the rest: lowest id among the 0s */
    sampler_free(s);
}

Test(step, rejects_bad_arguments)
{
    sampler_params bad = { .temperature = -1.0f };
    cr_assert_null(sampler_new(V, &bad));
    cr_assert_null(sampler_new(0, &(sampler_params){ 0 }));
    cr_assert_null(sampler_new(V, NULL));
    sampler_free(NULL);
    sampler *s = sampler_new(V, &(sampler_params){ .temperature = 1.0f });
    float lg[V] = { 0 };
    int32_t ids[3] = { 1, 2, V };
    sampler_choice c;
    cr_assert_eq(sampler_step(s, lg, ids, 3, 0, 0, &c), SAMPLER_EINVAL); /* id out of range */
    cr_assert_eq(sampler_step(s, lg, ids, 2, 3, 0, &c), SAMPLER_EINVAL); /* n_generated > n_ids */
    cr_assert_eq(sampler_step(s, lg, ids, 2, 0, SAMPLER_MAX_TOP + 1, &c), SAMPLER_EINVAL);
    cr_assert_eq(sampler_step(s, lg, ids, -1, 0, 0, &c), SAMPLER_EINVAL);
    cr_assert_eq(sampler_step(s, NULL, ids, 2, 0, 0, &c), SAMPLER_EINVAL);
    cr_assert_eq(sampler_step(NULL, lg, ids, 2, 0, 0, &c), SAMPLER_EINVAL);
    float nan_row[V];
    for (int i = 0; i < V; i++) nan_row[i] = NAN;
    cr_assert_eq(sampler_step(s, nan_row, ids, 2, 0, 0, &c), SAMPLER_EINVAL);
    sampler_free(s);
}

Test(params, validate_names_the_offending_field)
{
    const char *name = "x";
    sampler_params ok = { .temperature = 0.7f };
    cr_assert_eq(sampler_params_validate(&ok, V, &name), SAMPLER_OK);
    cr_assert_null(name);
    struct {
        sampler_params p;
        const char *field;
    } cases[] = {
        { { .temperature = -1.0f }, "temperature" },
        { { .top_k = -3 }, "top_k" },
        { { .top_p = 1.01f }, "top_p" },
        { { .top_p = NAN }, "top_p" },
        { { .repetition_penalty = -0.1f }, "repetition_penalty" },
        { { .repetition_penalty = INFINITY }, "repetition_penalty" },
        { { .n_stop_ids = -1 }, "stop_ids" },
        { { .min_p = -0.5f }, "min_p" },
        { { .presence_penalty = 2.5f }, "presence_penalty" },
        { { .frequency_penalty = NAN }, "frequency_penalty" },
        { { .penalty_last_n = -4 }, "penalty_last_n" },
        { { .n_bias = 2 }, "logit_bias" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(sampler_params_validate(&cases[i].p, V, &name), SAMPLER_EINVAL);
        cr_assert_str_eq(name, cases[i].field);
    }
    cr_assert_eq(sampler_params_validate(NULL, V, NULL), SAMPLER_EINVAL);
    sampler_params edge = {
        .top_p = 1.0f, .min_p = 1.0f, .presence_penalty = -2.0f, .frequency_penalty = 2.0f, .repetition_penalty = 1.0f
    };
    cr_assert_eq(sampler_params_validate(&edge, V, NULL), SAMPLER_OK);
}

/* ---- statistics ---------------------------------------------------------------------
 * Pearson's chi-square of N draws against the expected probabilities.  The seed is
 * fixed, so the outcome is deterministic; the threshold is the 0.999 quantile of the
 * chi-square distribution for the stated degrees of freedom, so a correct sampler
 * with a different seed would fail only one time in a thousand. */

static double chi_square(const float *logits, int n, const sampler_params *p, int draws, const double *expected)
{
    sampler *s = sampler_new(n, p);
    cr_assert_not_null(s);
    long counts[16] = { 0 };
    for (int i = 0; i < draws; i++) {
        sampler_choice c;
        cr_assert_eq(sampler_step(s, logits, NULL, 0, 0, 0, &c), 0);
        counts[c.token]++;
    }
    sampler_free(s);
    double chi = 0;
    for (int i = 0; i < n; i++) {
        if (expected[i] == 0.0) {
            cr_assert_eq(counts[i], 0, "token %d has probability 0", i);
            continue;
        }
        double e = expected[i] * draws;
        chi += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi;
}

Test(statistics, draws_follow_softmax_of_logits_over_temperature)
{
    enum { N = 8, DRAWS = 100000 };
    const float lg[N] = { 1.0f, 0.2f, -0.5f, 2.0f, 0.0f, -1.5f, 1.2f, 0.6f };
    const float temps[3] = { 0.6f, 1.0f, 1.8f };
    for (int t = 0; t < 3; t++) {
        double e[N], z = 0;
        for (int i = 0; i < N; i++) z += e[i] = exp((double)lg[i] / temps[t]);
        for (int i = 0; i < N; i++) e[i] /= z;
        sampler_params p = { .temperature = temps[t], .seed = 2024 + (uint64_t)t };
        double chi = chi_square(lg, N, &p, DRAWS, e);
        /* 7 degrees of freedom: chi2_0.999 = 24.32 */
        cr_assert_lt(chi, 24.32, "T=%g chi2=%g", temps[t], chi);
    }
}

Test(statistics, top_k_draws_follow_renormalised_survivors)
{
    enum { N = 8, DRAWS = 100000 };
    const float lg[N] = { 1.0f, 0.2f, -0.5f, 2.0f, 0.0f, -1.5f, 1.2f, 0.6f };
    /* top-3 keeps ids 3, 6, 0; at T = 0.8 */
    double e[N] = { 0 }, z = 0;
    const int keep[3] = { 3, 6, 0 };
    for (int j = 0; j < 3; j++) z += e[keep[j]] = exp((double)lg[keep[j]] / 0.8);
    for (int j = 0; j < 3; j++) e[keep[j]] /= z;
    sampler_params p = { .temperature = 0.8f, .top_k = 3, .seed = 99 };
    double chi = chi_square(lg, N, &p, DRAWS, e);
    /* 2 degrees of freedom: chi2_0.999 = 13.82 */
    cr_assert_lt(chi, 13.82, "chi2=%g", chi);
}

Test(statistics, chi_square_detects_a_wrong_temperature)
{
    /* The test above has power: the same draws judged against T = 1 fail clearly. */
    enum { N = 8, DRAWS = 100000 };
    const float lg[N] = { 1.0f, 0.2f, -0.5f, 2.0f, 0.0f, -1.5f, 1.2f, 0.6f };
    double e[N], z = 0;
    for (int i = 0; i < N; i++) z += e[i] = exp((double)lg[i]);
    for (int i = 0; i < N; i++) e[i] /= z;
    sampler_params p = { .temperature = 0.8f, .seed = 2024 };
    cr_assert_gt(chi_square(lg, N, &p, DRAWS, e), 100.0);
}

/* SAMPLER_TOKEN_ONLY draws exactly the tokens a full step draws (same RNG use),
 * and reports no log-probabilities. */
Test(step, token_only_draws_the_same_tokens)
{
    float lg[V];
    sampler_params p = { .temperature = 0.9f, .top_p = 0.95f, .top_k = 40, .repetition_penalty = 1.2f, .seed = 77 };
    sampler *a = sampler_new(V, &p), *b = sampler_new(V, &p);
    cr_assert(a && b);
    sampler_rng g;
    sampler_rng_seed(&g, 5);
    int32_t ids[64];
    int n = 0;
    for (int st = 0; st < 60; st++) {
        for (int i = 0; i < V; i++) lg[i] = 3.0f * sampler_rng_uniform(&g);
        sampler_choice ca, cb;
        cr_assert_eq(sampler_step(a, lg, ids, n, n, 2, &ca), 0);
        cr_assert_eq(sampler_step(b, lg, ids, n, n, SAMPLER_TOKEN_ONLY, &cb), 0);
        cr_assert_eq(ca.token, cb.token, "step %d", st);
        cr_assert_eq(cb.n_top, 0);
        cr_assert(isnan(cb.logprob));
        cr_assert(isfinite(ca.logprob));
        ids[n++] = ca.token;
    }
    cr_assert_eq(sampler_step(a, lg, ids, n, n, SAMPLER_TOKEN_ONLY - 1, &(sampler_choice){ 0 }), SAMPLER_EINVAL);
    sampler_free(a);
    sampler_free(b);
}
