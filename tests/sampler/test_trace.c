/* test_trace.c -- the trace of a step (sampler/trace.c, sampler_step_traced).
 *
 * The reference for every stage is the public warpers called one by one on the
 * full row, in the documented order (sampler.h), on the same logits: the trace
 * must hold exactly their values for its candidates, their survivor counts, and
 * the candidates must be the top N of each of their rows. */
#include "sampler/sampler.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { VB = 3000, HIST = 8 };

/* The rows of the documented order, built from the public warpers. */
typedef struct {
    float row[SAMPLER_STAGE_COUNT][VB];
    int ran[SAMPLER_STAGE_COUNT];
} reference;

static void reference_rows(const sampler_params *p, const float *logits, const int32_t *ids, int n_ids, int n_gen,
                           reference *r)
{
    memset(r->ran, 0, sizeof r->ran);
    float x[VB];
    memcpy(x, logits, sizeof x);
#define KEEP(st) (memcpy(r->row[st], x, sizeof x), r->ran[st] = 1)
    KEEP(SAMPLER_STAGE_LOGITS);
    if (p->n_bias) {
        cr_assert_eq(sampler_apply_logit_bias(x, x, VB, p->bias_ids, p->bias_values, p->n_bias), 0);
        KEEP(SAMPLER_STAGE_LOGIT_BIAS);
    }
    if (p->repetition_penalty != 0.0f && p->repetition_penalty != 1.0f) {
        int start = p->penalty_last_n && n_ids > p->penalty_last_n ? n_ids - p->penalty_last_n : 0;
        cr_assert_eq(sampler_apply_repetition_penalty(x, x, VB, ids + start, n_ids - start, p->repetition_penalty), 0);
        KEEP(SAMPLER_STAGE_REPETITION_PENALTY);
    }
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
        cr_assert_eq(sampler_apply_presence_frequency(x, x, VB, ids + n_ids - n_gen, n_gen, p->presence_penalty,
                                                      p->frequency_penalty),
                     0);
        KEEP(SAMPLER_STAGE_PRESENCE_FREQUENCY);
    }
    if (p->temperature == 0.0f) return;
    if (p->temperature != 1.0f) {
        cr_assert_eq(sampler_apply_temperature(x, x, VB, p->temperature), 0);
        KEEP(SAMPLER_STAGE_TEMPERATURE);
    }
    if (p->top_k > 0 && p->top_k < VB) {
        cr_assert_eq(sampler_top_k_filter(x, x, VB, p->top_k), 0);
        KEEP(SAMPLER_STAGE_TOP_K);
    }
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        cr_assert_eq(sampler_top_p_filter(x, x, VB, p->top_p), 0);
        KEEP(SAMPLER_STAGE_TOP_P);
    }
    if (p->min_p > 0.0f) {
        cr_assert_eq(sampler_min_p_filter(x, x, VB, p->min_p), 0);
        KEEP(SAMPLER_STAGE_MIN_P);
    }
    cr_assert_eq(sampler_softmax(x, r->row[SAMPLER_STAGE_SOFTMAX], VB), 0);
    r->ran[SAMPLER_STAGE_SOFTMAX] = 1;
#undef KEEP
}

static int alive(float x, int softmax) { return softmax ? x > 0.0f : !(x == -INFINITY || isnan(x)); }

static int survivors(const float *row, int softmax)
{
    int c = 0;
    for (int i = 0; i < VB; i++) c += alive(row[i], softmax);
    return c;
}

/* rank[t] of every token in a row: its place by value, equal values by increasing
 * id, dropped tokens last (VB).  By a plain sort, nothing like the sampler's select. */
static const float *sort_row;
static int by_value(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = sort_row[i], y = sort_row[j];
    if (x != y) return x > y ? -1 : 1;
    return i < j ? -1 : i > j;
}

static void ranks(const float *row, int softmax, int *rank)
{
    static int32_t order[VB];
    int m = 0;
    for (int i = 0; i < VB; i++)
        if (alive(row[i], softmax)) order[m++] = i;
    sort_row = row;
    qsort(order, (size_t)m, sizeof *order, by_value);
    for (int i = 0; i < VB; i++) rank[i] = VB;
    for (int r = 0; r < m; r++) rank[order[r]] = r;
}

static int cand_index(const sampler_trace *tr, int32_t t)
{
    for (int c = 0; c < tr->n_candidates; c++)
        if (tr->candidate[c] == t) return c;
    return -1;
}

static void random_row(float *lg, sampler_rng *g)
{
    for (int v = 0; v < VB; v++) lg[v] = 4.0f * (sampler_rng_uniform(g) + sampler_rng_uniform(g) - 1.0f);
    for (int j = 0; j < 6; j++) /* a few likely tokens, as a model has */
        lg[sampler_rng_next(g) % VB] += 3.0f + (float)j;
}

static sampler_trace tr; /* ~7 KB: static, not on the test's stack */
static reference ref;

Test(trace, equals_the_public_warpers_stage_by_stage)
{
    static float lg[VB];
    static int32_t ids[HIST + 40];
    int32_t bias_ids[4] = { 10, 20, 30, 40 };
    float bias_v[4] = { 9.0f, -INFINITY, 6.5f, -100.0f };
    const struct {
        sampler_params p;
        int n;
    } cases[] = {
        /* every stage on */
        { { .temperature = 0.7f,
            .top_k = 40,
            .top_p = 0.9f,
            .min_p = 0.02f,
            .repetition_penalty = 1.3f,
            .penalty_last_n = 16,
            .presence_penalty = 0.5f,
            .frequency_penalty = 0.4f,
            .bias_ids = bias_ids,
            .bias_values = bias_v,
            .n_bias = 4,
            .seed = 11 },
          5 },
        { { .temperature = 1.3f, .top_p = 0.8f, .seed = 12 }, 20 },
        { { .temperature = 0.9f, .min_p = 0.1f, .repetition_penalty = 0.8f, .seed = 13 }, 3 },
        { { .temperature = 0.5f, .top_k = 5, .frequency_penalty = -1.5f, .seed = 14 }, 8 },
        { { .temperature = 0.0f, .repetition_penalty = 1.5f, .bias_ids = bias_ids, .bias_values = bias_v, .n_bias = 4 },
          4 },
        { { .temperature = 1.0f, .seed = 15 }, 1 },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const sampler_params *p = &cases[k].p;
        int N = cases[k].n;
        sampler *s = sampler_new(VB, p);
        cr_assert_not_null(s);
        cr_assert_eq(sampler_trace_enable(s, N), 0);
        sampler_rng g, coins;
        sampler_rng_seed(&g, 500 + k);
        sampler_rng_seed(&coins, p->seed); /* the sampler's own stream, drawn once per step */
        int n = HIST;
        for (int i = 0; i < n; i++) ids[i] = (int32_t)(sampler_rng_next(&g) % VB);
        for (int st = 0; st < 40; st++) {
            random_row(lg, &g);
            sampler_choice ch;
            cr_assert_eq(sampler_step_traced(s, lg, ids, n, n - HIST, 0, &ch, &tr), 0);
            reference_rows(p, lg, ids, n, n - HIST, &ref);
            cr_assert_eq(tr.token, ch.token);
            cr_assert_eq(tr.n, N);
            cr_assert_eq(tr.greedy, p->temperature == 0.0f);
            for (int sg = 0; sg < SAMPLER_STAGE_COUNT; sg++) {
                const sampler_trace_stage *t = &tr.stage[sg];
                int sm = sg == SAMPLER_STAGE_SOFTMAX;
                cr_assert_eq(t->ran, ref.ran[sg], "case %zu step %d stage %s", k, st, sampler_stage_name(sg));
                if (!t->ran) continue;
                cr_assert_eq(t->survivors, survivors(ref.row[sg], sm), "case %zu step %d stage %s", k, st,
                             sampler_stage_name(sg));
                for (int c = 0; c < tr.n_candidates; c++) {
                    float want = ref.row[sg][tr.candidate[c]], got = t->value[c];
                    if (sm) /* the step sums the survivors only, the reference the whole row
                             * (zeros included): the same terms in another order */
                        cr_assert_float_eq(got, want, 1e-7, "case %zu step %d softmax", k, st);
                    else
                        cr_assert(memcmp(&got, &want, sizeof got) == 0, "case %zu step %d stage %s token %d: %a vs %a",
                                  k, st, sampler_stage_name(sg), tr.candidate[c], got, want);
                }
            }
            /* The candidates: every token in the top N of some stage's row, the raw top N
             * first (in order), and the drawn token -- nothing else. */
            static int rank[SAMPLER_STAGE_COUNT][VB];
            for (int sg = 0; sg < SAMPLER_STAGE_COUNT; sg++)
                if (ref.ran[sg]) ranks(ref.row[sg], sg == SAMPLER_STAGE_SOFTMAX, rank[sg]);
            for (int c = 0; c < tr.n_candidates; c++) {
                int32_t t = tr.candidate[c];
                int top_somewhere = 0;
                for (int sg = 0; sg < SAMPLER_STAGE_COUNT; sg++) top_somewhere |= ref.ran[sg] && rank[sg][t] < N;
                cr_assert(top_somewhere || t == tr.token, "case %zu step %d: candidate %d", k, st, t);
                if (c < N) cr_assert_eq(rank[SAMPLER_STAGE_LOGITS][t], c, "raw top N first, in order");
                for (int d = 0; d < c; d++) cr_assert_neq(tr.candidate[d], t, "each candidate once");
            }
            for (int sg = 0; sg < SAMPLER_STAGE_COUNT; sg++)
                for (int v = 0; ref.ran[sg] && v < VB; v++)
                    if (rank[sg][v] < N)
                        cr_assert_geq(cand_index(&tr, v), 0, "case %zu: stage %s top %d missing", k,
                                      sampler_stage_name(sg), v);
            /* The draw: the coin is the sampler's next uniform, and it lands on the token in
             * the reference distribution. */
            if (p->temperature == 0.0f) {
                cr_assert(isnan(tr.coin) && isnan(tr.probability));
                for (int d = 0; d < tr.n_candidates; d++) cr_assert(isnan(tr.cdf_before[d]));
                int last = 0;
                for (int sg = 0; sg < SAMPLER_STAGE_COUNT; sg++) last = ref.ran[sg] ? sg : last;
                cr_assert_eq(tr.token, sampler_argmax(ref.row[last], VB), "greedy: the argmax");
            } else {
                cr_assert(tr.coin == sampler_rng_uniform(&coins));
                cr_assert_eq(sampler_draw(ref.row[SAMPLER_STAGE_SOFTMAX], VB, tr.coin), tr.token);
                int c = cand_index(&tr, tr.token);
                cr_assert(tr.probability == tr.stage[SAMPLER_STAGE_SOFTMAX].value[c]);
                /* Every candidate's place on the draw's line: the reference probabilities
                 * of the lower ids, summed; the coin inside the chosen token's interval. */
                const float *pr = ref.row[SAMPLER_STAGE_SOFTMAX];
                for (int d = 0; d < tr.n_candidates; d++) {
                    int32_t t = tr.candidate[d];
                    if (!(pr[t] > 0.0f)) {
                        cr_assert(isnan(tr.cdf_before[d]));
                        continue;
                    }
                    double below = 0;
                    for (int v = 0; v < t; v++) below += pr[v];
                    cr_assert_float_eq(tr.cdf_before[d], below, 1e-6, "case %zu step %d", k, st);
                }
                cr_assert_leq(tr.cdf_before[c], (double)tr.coin);
                cr_assert_lt((double)tr.coin, tr.cdf_before[c] + (double)tr.probability);
            }
            ids[n++] = ch.token;
        }
        sampler_free(s);
    }
}

Test(trace, top_k_5_leaves_5_survivors_and_more_only_on_ties)
{
    static float lg[VB];
    sampler_rng g;
    sampler_rng_seed(&g, 3);
    random_row(lg, &g);
    sampler_params p = { .temperature = 0.8f, .top_k = 5, .seed = 1 };
    sampler *s = sampler_new(VB, &p);
    cr_assert_eq(sampler_trace_enable(s, 10), 0);
    sampler_choice ch;
    cr_assert_eq(sampler_step_traced(s, lg, NULL, 0, 0, 0, &ch, &tr), 0);
    cr_assert_eq(tr.stage[SAMPLER_STAGE_TOP_K].survivors, 5);
    cr_assert_eq(tr.stage[SAMPLER_STAGE_SOFTMAX].survivors, 5);
    cr_assert_eq(tr.stage[SAMPLER_STAGE_TEMPERATURE].survivors, VB);
    /* N = 10 > 5: the 5 dropped candidates show -INFINITY after top-k, 0 after softmax */
    int dropped = 0;
    for (int c = 0; c < tr.n_candidates; c++)
        if (tr.stage[SAMPLER_STAGE_TOP_K].value[c] == -INFINITY) {
            dropped++;
            cr_assert(tr.stage[SAMPLER_STAGE_SOFTMAX].value[c] == 0.0f);
            cr_assert(isfinite(tr.stage[SAMPLER_STAGE_TEMPERATURE].value[c]));
        }
    cr_assert_eq(dropped, 5);
    /* Three tokens tied with the 5th value: all of them survive (7 in all). */
    float sorted[VB];
    memcpy(sorted, lg, sizeof sorted);
    float fifth = -INFINITY;
    for (int r = 0; r < 5; r++) { /* the 5th largest, by repeated max */
        int a = sampler_argmax(sorted, VB);
        fifth = sorted[a];
        sorted[a] = -INFINITY;
    }
    int tied = 0;
    for (int v = 0; v < VB && tied < 2; v++)
        if (lg[v] < fifth) {
            lg[v] = fifth;
            tied++;
        }
    cr_assert_eq(sampler_step_traced(s, lg, NULL, 0, 0, 0, &ch, &tr), 0);
    cr_assert_eq(tr.stage[SAMPLER_STAGE_TOP_K].survivors, 7);
    sampler_free(s);
}

/* The chosen token survives every stage that ran, and when every survivor is a
 * candidate their final probabilities sum to 1. */
Test(trace, chosen_token_survives_and_final_probabilities_sum_to_one)
{
    static float lg[VB];
    static int32_t ids[64];
    const sampler_params cases[] = {
        { .temperature = 1.5f, .top_k = 12, .top_p = 0.95f, .min_p = 0.01f, .seed = 21 },
        { .temperature = 0.9f, .top_k = 20, .repetition_penalty = 1.2f, .seed = 22 },
        { .temperature = 2.0f, .top_k = 3, .presence_penalty = 1.0f, .seed = 23 },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        sampler *s = sampler_new(VB, &cases[k]);
        cr_assert_eq(sampler_trace_enable(s, SAMPLER_TRACE_MAX), 0);
        sampler_rng g;
        sampler_rng_seed(&g, 40 + k);
        int n = 0;
        for (int st = 0; st < 50; st++) {
            random_row(lg, &g);
            sampler_choice ch;
            cr_assert_eq(sampler_step_traced(s, lg, ids, n, n, 0, &ch, &tr), 0);
            int c = cand_index(&tr, tr.token);
            cr_assert_geq(c, 0, "the drawn token is a candidate");
            for (int sg = 0; sg < SAMPLER_STAGE_COUNT; sg++)
                if (tr.stage[sg].ran)
                    cr_assert(alive(tr.stage[sg].value[c], sg == SAMPLER_STAGE_SOFTMAX),
                              "case %zu step %d: the chosen token dropped by %s", k, st, sampler_stage_name(sg));
            const sampler_trace_stage *sm = &tr.stage[SAMPLER_STAGE_SOFTMAX];
            cr_assert_leq(sm->survivors, cases[k].top_k);
            double sum = 0;
            int counted = 0;
            for (int d = 0; d < tr.n_candidates; d++)
                if (sm->value[d] > 0.0f) {
                    sum += sm->value[d];
                    counted++;
                }
            cr_assert_eq(counted, sm->survivors, "every survivor is a candidate (top_k <= N)");
            cr_assert_float_eq(sum, 1.0, 1e-6, "case %zu step %d: sum %.9f", k, st, sum);
            ids[n++] = ch.token;
        }
        sampler_free(s);
    }
}

/* Tracing reads the step's arrays and nothing else: the same seed draws the same
 * tokens (and log-probabilities) traced or not, sampled or greedy. */
Test(trace, traced_steps_draw_the_untraced_tokens)
{
    static float lg[VB];
    static int32_t ids[128];
    const sampler_params cases[] = {
        { .temperature = 1.0f, .top_p = 0.9f, .seed = 31 },
        { .temperature = 0.8f, .top_k = 40, .repetition_penalty = 1.1f, .seed = 32 },
        { .temperature = 0.0f, .frequency_penalty = 0.5f },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        sampler *a = sampler_new(VB, &cases[k]), *b = sampler_new(VB, &cases[k]);
        cr_assert_eq(sampler_trace_enable(a, 7), 0);
        sampler_rng g;
        sampler_rng_seed(&g, 60 + k);
        int n = 0;
        for (int st = 0; st < 100; st++) {
            random_row(lg, &g);
            sampler_choice ca, cb;
            cr_assert_eq(sampler_step_traced(a, lg, ids, n, n, 3, &ca, &tr), 0);
            cr_assert_eq(sampler_step(b, lg, ids, n, n, 3, &cb), 0);
            cr_assert_eq(ca.token, cb.token, "case %zu step %d", k, st);
            cr_assert(ca.logprob == cb.logprob);
            ids[n++] = ca.token;
        }
        sampler_free(a);
        sampler_free(b);
    }
}

Test(trace, stages_that_are_identities_do_not_run)
{
    static float lg[VB];
    sampler_rng g;
    sampler_rng_seed(&g, 9);
    random_row(lg, &g);
    /* temperature 1, top-p 1, top-k >= vocab, min-p 0, no penalties, no bias */
    sampler_params p = { .temperature = 1.0f, .top_p = 1.0f, .top_k = VB, .repetition_penalty = 1.0f, .seed = 2 };
    sampler *s = sampler_new(VB, &p);
    cr_assert_eq(sampler_trace_enable(s, 4), 0);
    sampler_choice ch;
    cr_assert_eq(sampler_step_traced(s, lg, NULL, 0, 0, 0, &ch, &tr), 0);
    for (int sg = 0; sg < SAMPLER_STAGE_COUNT; sg++)
        cr_assert_eq(tr.stage[sg].ran, sg == SAMPLER_STAGE_LOGITS || sg == SAMPLER_STAGE_SOFTMAX, "%s",
                     sampler_stage_name(sg));
    cr_assert_eq(tr.stage[SAMPLER_STAGE_LOGITS].survivors, VB);
    sampler_free(s);

    /* Greedy: the penalties run, then the argmax; nothing after it. */
    sampler_params gp = { .temperature = 0.0f, .top_k = 5, .top_p = 0.5f, .min_p = 0.1f, .presence_penalty = 1.0f };
    int32_t hist[3] = { 7, 8, 7 };
    s = sampler_new(VB, &gp);
    cr_assert_eq(sampler_trace_enable(s, 4), 0);
    cr_assert_eq(sampler_step_traced(s, lg, hist, 3, 3, 0, &ch, &tr), 0);
    cr_assert_eq(tr.greedy, 1);
    cr_assert(tr.stage[SAMPLER_STAGE_PRESENCE_FREQUENCY].ran);
    for (int sg = SAMPLER_STAGE_TEMPERATURE; sg < SAMPLER_STAGE_COUNT; sg++)
        cr_assert_eq(tr.stage[sg].ran, 0, "%s after greedy's argmax", sampler_stage_name(sg));
    reference_rows(&gp, lg, hist, 3, 3, &ref);
    cr_assert_eq(tr.token, sampler_argmax(ref.row[SAMPLER_STAGE_PRESENCE_FREQUENCY], VB));
    cr_assert_geq(cand_index(&tr, tr.token), 0);
    sampler_free(s);
}

/* N = 1 at a high temperature: most draws are not the top token, yet the drawn
 * token is always reported, after the stages' top-1s. */
Test(trace, the_drawn_token_is_a_candidate_even_outside_every_top_n)
{
    static float lg[VB];
    sampler_params p = { .temperature = 5.0f, .seed = 5 };
    sampler *s = sampler_new(VB, &p);
    cr_assert_eq(sampler_trace_enable(s, 1), 0);
    sampler_rng g;
    sampler_rng_seed(&g, 77);
    int outside = 0;
    for (int st = 0; st < 30; st++) {
        random_row(lg, &g);
        sampler_choice ch;
        cr_assert_eq(sampler_step_traced(s, lg, NULL, 0, 0, 0, &ch, &tr), 0);
        cr_assert_eq(tr.candidate[0], sampler_argmax(lg, VB));
        cr_assert_eq(tr.candidate[tr.n_candidates - 1], tr.token);
        if (tr.token != tr.candidate[0]) {
            outside++;
            cr_assert_eq(tr.n_candidates, 2);
        }
    }
    cr_assert_gt(outside, 20);
    sampler_free(s);
}

Test(trace, rejects_bad_arguments)
{
    float lg[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    sampler *s = sampler_new(8, &(sampler_params){ .temperature = 1.0f });
    sampler_choice ch;
    cr_assert_eq(sampler_step_traced(s, lg, NULL, 0, 0, 0, &ch, &tr), SAMPLER_EINVAL, "tracing not enabled");
    cr_assert_eq(sampler_step_traced(s, lg, NULL, 0, 0, 0, &ch, NULL), 0, "NULL trace: a plain step");
    cr_assert_eq(sampler_trace_enable(s, 0), SAMPLER_EINVAL);
    cr_assert_eq(sampler_trace_enable(s, SAMPLER_TRACE_MAX + 1), SAMPLER_EINVAL);
    cr_assert_eq(sampler_trace_enable(NULL, 3), SAMPLER_EINVAL);
    cr_assert_eq(sampler_trace_enable(s, 3), 0);
    cr_assert_eq(sampler_trace_enable(s, 2), 0, "again with another N");
    cr_assert_eq(sampler_step_traced(s, lg, NULL, 0, 0, 0, &ch, &tr), 0);
    cr_assert_eq(tr.n, 2);
    cr_assert_eq(tr.stage[SAMPLER_STAGE_LOGITS].survivors, 8);
    cr_assert_eq(tr.candidate[0], 7);
    cr_assert_eq(tr.candidate[1], 6);
    cr_assert_str_eq(sampler_stage_name(SAMPLER_STAGE_TOP_P), "top_p");
    cr_assert_null(sampler_stage_name(SAMPLER_STAGE_COUNT));
    cr_assert_null(sampler_stage_name(-1));
    sampler_free(s);
}
