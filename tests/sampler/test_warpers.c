/* test_warpers.c -- the pure warpers of sampler/warpers.c. */
#include "sampler/sampler.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NINF (-INFINITY)

static int count_finite(const float *x, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++) c += isfinite(x[i]);
    return c;
}

static int same_bits(const float *a, const float *b, int n) { return memcmp(a, b, (size_t)n * sizeof *a) == 0; }

/* Gaussian-ish logits from the module's own seeded RNG. */
static void random_logits(float *x, int n, uint64_t seed, float scale)
{
    sampler_rng r;
    sampler_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        float s = 0;
        for (int j = 0; j < 4; j++) s += sampler_rng_uniform(&r) - 0.5f;
        x[i] = s * scale;
    }
}

/* ---- temperature ---- */

Test(temperature, identity_at_one)
{
    float x[6] = { 1.5f, -2.0f, 0.0f, 3.25f, NINF, -0.125f }, y[6];
    cr_assert_eq(sampler_apply_temperature(x, y, 6, 1.0f), SAMPLER_OK);
    cr_assert(same_bits(x, y, 6));
}

Test(temperature, divides_and_sharpens_or_flattens)
{
    float x[4] = { 2.0f, 1.0f, 0.0f, -1.0f }, cold[4], hot[4], p1[4], pc[4], ph[4];
    cr_assert_eq(sampler_apply_temperature(x, cold, 4, 0.5f), 0);
    cr_assert_eq(sampler_apply_temperature(x, hot, 4, 2.0f), 0);
    cr_assert_float_eq(cold[0], 4.0f, 0);
    cr_assert_float_eq(hot[3], -0.5f, 0);
    sampler_softmax(x, p1, 4);
    sampler_softmax(cold, pc, 4);
    sampler_softmax(hot, ph, 4);
    cr_assert_gt(pc[0], p1[0]); /* sharper: the top token gains */
    cr_assert_lt(pc[3], p1[3]);
    cr_assert_lt(ph[0], p1[0]); /* flatter: the top token loses */
    cr_assert_gt(ph[3], p1[3]);
    cr_assert_eq(sampler_argmax(cold, 4), 0);
    cr_assert_eq(sampler_argmax(hot, 4), 0);
}

Test(temperature, in_place)
{
    float x[3] = { 1.0f, 2.0f, 3.0f };
    cr_assert_eq(sampler_apply_temperature(x, x, 3, 4.0f), 0);
    cr_assert_float_eq(x[0], 0.25f, 0);
    cr_assert_float_eq(x[2], 0.75f, 0);
}

Test(temperature, rejects_bad_args_and_leaves_out_untouched)
{
    float x[3] = { 1, 2, 3 }, y[3] = { 7, 7, 7 };
    const float bad[] = { 0.0f, -1.0f, NAN, INFINITY, -INFINITY };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(sampler_apply_temperature(x, y, 3, bad[i]), SAMPLER_EINVAL);
        cr_assert(y[0] == 7 && y[1] == 7 && y[2] == 7);
    }
    cr_assert_eq(sampler_apply_temperature(x, y, 0, 1.0f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_temperature(NULL, y, 3, 1.0f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_temperature(x, NULL, 3, 1.0f), SAMPLER_EINVAL);
}

/* ---- top-k ---- */

Test(top_k, k_equals_vocab_is_identity_and_larger_k_clamps)
{
    float x[5] = { 0.5f, -1.0f, 2.0f, 2.0f, NINF }, y[5], z[5];
    cr_assert_eq(sampler_top_k_filter(x, y, 5, 5), 0);
    cr_assert(same_bits(x, y, 5));
    cr_assert_eq(sampler_top_k_filter(x, z, 5, 1000), 0);
    cr_assert(same_bits(x, z, 5));
}

Test(top_k, k_one_keeps_only_argmax)
{
    float x[6] = { 0.1f, 3.0f, -2.0f, 2.9f, 1.0f, 0.0f }, y[6];
    cr_assert_eq(sampler_top_k_filter(x, y, 6, 1), 0);
    for (int i = 0; i < 6; i++) cr_assert(i == 1 ? y[i] == 3.0f : y[i] == NINF, "i=%d y=%g", i, y[i]);
}

Test(top_k, keeps_k_largest_exact_values)
{
    float x[7] = { 0.3f, 5.5f, -1.0f, 4.25f, 0.9f, 4.5f, -7.0f }, y[7];
    cr_assert_eq(sampler_top_k_filter(x, y, 7, 3), 0);
    const float want[7] = { NINF, 5.5f, NINF, 4.25f, NINF, 4.5f, NINF };
    cr_assert(same_bits(y, want, 7));
    float pr[7]; /* the survivors' softmax sums to 1, the dropped get exactly 0 */
    cr_assert_eq(sampler_softmax(y, pr, 7), 0);
    cr_assert(pr[0] == 0.0f && pr[2] == 0.0f && pr[6] == 0.0f);
    cr_assert_float_eq(pr[1] + pr[3] + pr[5], 1.0f, 1e-6);
}

Test(top_k, ties_with_kth_value_survive)
{
    float x[6] = { 1.0f, 3.0f, 2.0f, 2.0f, 2.0f, 0.0f }, y[6];
    cr_assert_eq(sampler_top_k_filter(x, y, 6, 2), 0);
    const float want[6] = { NINF, 3.0f, 2.0f, 2.0f, 2.0f, NINF };
    cr_assert(same_bits(y, want, 6));
    /* -0 and +0 are the same value: a tie. */
    float z[4] = { 1.0f, -0.0f, 0.0f, -1.0f }, w[4];
    cr_assert_eq(sampler_top_k_filter(z, w, 4, 2), 0);
    cr_assert_eq(count_finite(w, 4), 3);
}

Test(top_k, argmax_preserved_and_in_place)
{
    float x[64];
    random_logits(x, 64, 11, 6.0f);
    int a = sampler_argmax(x, 64);
    float keep = x[a];
    for (int k = 1; k <= 64; k += 7) {
        float y[64];
        memcpy(y, x, sizeof y);
        cr_assert_eq(sampler_top_k_filter(y, y, 64, k), 0);
        cr_assert_eq(count_finite(y, 64), k);
        cr_assert(y[a] == keep);
    }
}

Test(top_k, with_infinities)
{
    float x[5] = { NINF, 1.0f, NINF, NINF, NINF }, y[5];
    cr_assert_eq(sampler_top_k_filter(x, y, 5, 3), 0);
    cr_assert(same_bits(x, y, 5)); /* fewer finite than k: all kept (the -INF stay -INF) */
    float z[4] = { 0.0f, INFINITY, 5.0f, INFINITY }, w[4];
    cr_assert_eq(sampler_top_k_filter(z, w, 4, 1), 0); /* +INF ties survive together */
    const float want[4] = { NINF, INFINITY, NINF, INFINITY };
    cr_assert(same_bits(w, want, 4));
}

Test(top_k, matches_brute_force_on_random_rows)
{
    enum { V = 1000 };
    static float x[V], y[V];
    for (uint64_t seed = 1; seed <= 30; seed++) {
        random_logits(x, V, seed, seed % 3 ? 8.0f : 0.01f);
        for (int i = 0; i < V; i += (int)seed + 3) /* inject ties */
            x[i] = x[(i * 7) % V];
        int k = (int)(seed * 37 % V) + 1;
        cr_assert_eq(sampler_top_k_filter(x, y, V, k), 0);
        for (int i = 0; i < V; i++) {
            int greater = 0;
            for (int j = 0; j < V; j++) greater += x[j] > x[i];
            float want = greater < k ? x[i] : NINF; /* ties with the k-th survive */
            cr_assert(memcmp(&want, &y[i], sizeof want) == 0, "seed %d i %d", (int)seed, i);
        }
    }
}

Test(top_k, rejects_bad_args_and_leaves_out_untouched)
{
    float x[3] = { 1, 2, 3 }, y[3] = { 7, 7, 7 };
    cr_assert_eq(sampler_top_k_filter(x, y, 3, 0), SAMPLER_EINVAL);
    cr_assert_eq(sampler_top_k_filter(x, y, 3, -2), SAMPLER_EINVAL);
    cr_assert_eq(sampler_top_k_filter(x, y, -1, 1), SAMPLER_EINVAL);
    cr_assert(y[0] == 7 && y[1] == 7 && y[2] == 7);
}

/* ---- top-p ---- */

/* Reference: sort by (value desc, index asc), keep the prefix up to the crossing. */
static int ref_cmp_base_n;
static const float *ref_cmp_x;
static int ref_cmp(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    float xi = ref_cmp_x[i], xj = ref_cmp_x[j];
    if (xi != xj) return xi > xj ? -1 : 1;
    return i - j;
}

static void ref_top_p(const float *x, float *y, int n, double p)
{
    int *order = malloc((size_t)n * sizeof *order);
    double m = -INFINITY, z = 0;
    for (int i = 0; i < n; i++) {
        order[i] = i;
        if (x[i] > m) m = x[i];
    }
    for (int i = 0; i < n; i++) z += exp((double)x[i] - m);
    ref_cmp_x = x;
    ref_cmp_base_n = n;
    qsort(order, (size_t)n, sizeof *order, ref_cmp);
    double acc = 0;
    for (int r = 0; r < n; r++) {
        int i = order[r];
        y[i] = acc < p * z ? x[i] : NINF;
        acc += exp((double)x[i] - m);
    }
    free(order);
}

Test(top_p, keeps_smallest_prefix_reaching_p)
{
    /* probabilities 0.5, 0.25, 0.125, 0.125 */
    float x[4] = { logf(0.125f), logf(0.5f), logf(0.125f), logf(0.25f) }, y[4];
    cr_assert_eq(sampler_top_p_filter(x, y, 4, 0.6f), 0);
    const float want[4] = { NINF, x[1], NINF, x[3] }; /* 0.5 < 0.6 <= 0.75: crossing kept */
    cr_assert(same_bits(y, want, 4));
    cr_assert_eq(sampler_top_p_filter(x, y, 4, 0.5f), 0); /* exactly reached by the first */
    cr_assert_eq(count_finite(y, 4), 1);
    cr_assert(y[1] == x[1]);
    cr_assert_eq(sampler_top_p_filter(x, y, 4, 0.8f), 0);
    cr_assert_eq(count_finite(y, 4), 3);
    cr_assert(y[0] == x[0] && y[2] == NINF); /* tie at the crossing: lower id first */
}

Test(top_p, argmax_kept_when_its_own_mass_exceeds_p)
{
    float x[5] = { 0.0f, 0.0f, 10.0f, 0.0f, 0.0f }, y[5];
    cr_assert_eq(sampler_top_p_filter(x, y, 5, 0.1f), 0);
    const float want[5] = { NINF, NINF, 10.0f, NINF, NINF };
    cr_assert(same_bits(y, want, 5));
    float tiny = 1e-7f; /* smallest valid p still keeps the argmax */
    cr_assert_eq(sampler_top_p_filter(x, y, 5, tiny), 0);
    cr_assert(same_bits(y, want, 5));
}

Test(top_p, p_one_is_identity)
{
    float x[5] = { 0.5f, -3.0f, 2.0f, NINF, 1.0f }, y[5];
    cr_assert_eq(sampler_top_p_filter(x, y, 5, 1.0f), 0);
    cr_assert(same_bits(x, y, 5));
}

Test(top_p, uniform_logits_keep_ceil_pn)
{
    float x[10], y[10];
    for (int i = 0; i < 10; i++) x[i] = 0.75f;
    cr_assert_eq(sampler_top_p_filter(x, y, 10, 0.35f), 0);
    cr_assert_eq(count_finite(y, 10), 4);
    for (int i = 0; i < 4; i++) cr_assert(y[i] == 0.75f);
}

Test(top_p, survivor_softmax_sums_to_one)
{
    enum { V = 500 };
    float x[V], y[V], pr[V];
    random_logits(x, V, 3, 10.0f);
    cr_assert_eq(sampler_top_p_filter(x, y, V, 0.9f), 0);
    cr_assert_eq(sampler_softmax(y, pr, V), 0);
    double s = 0;
    for (int i = 0; i < V; i++) {
        s += pr[i];
        if (y[i] == NINF) cr_assert(pr[i] == 0.0f);
    }
    cr_assert_float_eq(s, 1.0, 1e-5);
}

Test(top_p, matches_reference_on_random_rows)
{
    enum { V = 2000 };
    static float x[V], y[V], r[V];
    const float ps[] = { 0.05f, 0.3f, 0.5f, 0.9f, 0.95f, 0.999f };
    for (uint64_t seed = 1; seed <= 24; seed++) {
        float scale = seed % 4 == 0 ? 0.001f : (float)(seed % 5) * 4.0f + 1.0f;
        random_logits(x, V, seed, scale);
        for (int i = 0; i < V; i += (int)seed + 5) /* ties */
            x[i] = x[(i * 13) % V];
        if (seed % 3 == 0)
            for (int i = 0; i < V; i += 7) x[i] = NINF;
        float p = ps[seed % 6];
        cr_assert_eq(sampler_top_p_filter(x, y, V, p), 0);
        ref_top_p(x, r, V, p);
        int diff = 0;
        for (int i = 0; i < V; i++) diff += memcmp(&y[i], &r[i], sizeof y[i]) != 0;
        /* The reference sums in another order; allow a difference only at the very
         * crossing (at most one token) from rounding. */
        cr_assert_leq(diff, 1, "seed %d p %g: %d tokens differ", (int)seed, p, diff);
    }
}

Test(top_p, infinities)
{
    float a[4] = { NINF, NINF, 2.0f, NINF }, b[4];
    cr_assert_eq(sampler_top_p_filter(a, b, 4, 0.5f), 0);
    cr_assert(same_bits(a, b, 4));
    float c[4] = { NINF, NINF, NINF, NINF }, d[4];
    cr_assert_eq(sampler_top_p_filter(c, d, 4, 0.5f), 0);
    cr_assert(same_bits(c, d, 4));
    float e[4] = { 1.0f, INFINITY, 3.0f, INFINITY }, f[4];
    cr_assert_eq(sampler_top_p_filter(e, f, 4, 0.4f), 0); /* half the mass on each +INF */
    const float want[4] = { NINF, INFINITY, NINF, NINF };
    cr_assert(same_bits(f, want, 4));
}

Test(top_p, rejects_bad_args_and_leaves_out_untouched)
{
    float x[3] = { 1, 2, 3 }, y[3] = { 7, 7, 7 };
    const float bad[] = { 0.0f, -0.5f, 1.0001f, NAN, INFINITY };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(sampler_top_p_filter(x, y, 3, bad[i]), SAMPLER_EINVAL);
    cr_assert(y[0] == 7 && y[1] == 7 && y[2] == 7);
}

/* ---- NaN: never survives a filter, stays NaN through arithmetic ---- */

Test(nan, filters_drop_nan_arithmetic_keeps_it)
{
    float x[4] = { 1.0f, NAN, 3.0f, 2.0f }, y[4];
    cr_assert_eq(sampler_top_k_filter(x, y, 4, 4), 0);
    cr_assert(y[1] == NINF && y[0] == 1.0f);
    cr_assert_eq(sampler_top_k_filter(x, y, 4, 2), 0);
    cr_assert(y[1] == NINF && y[2] == 3.0f && y[3] == 2.0f && y[0] == NINF);
    cr_assert_eq(sampler_top_p_filter(x, y, 4, 0.99f), 0);
    cr_assert(y[1] == NINF && y[2] == 3.0f);
    cr_assert_eq(sampler_min_p_filter(x, y, 4, 0.01f), 0);
    cr_assert(y[1] == NINF && y[0] == 1.0f);
    cr_assert_eq(sampler_apply_temperature(x, y, 4, 2.0f), 0);
    cr_assert(isnan(y[1]));
    float pr[4];
    cr_assert_eq(sampler_softmax(x, pr, 4), 0);
    cr_assert(pr[1] == 0.0f);
    cr_assert_float_eq(pr[0] + pr[2] + pr[3], 1.0f, 1e-6);
    cr_assert_eq(sampler_argmax(x, 4), 2);
    float all[2] = { NAN, NAN };
    cr_assert_eq(sampler_argmax(all, 2), SAMPLER_EINVAL);
    cr_assert_eq(sampler_softmax(all, pr, 2), SAMPLER_EINVAL);
}

/* ---- per-row independence: a warper sees only its own row ---- */

Test(warpers, rows_are_independent)
{
    enum { V = 50 };
    float rows[3][V], single[V], batch[3][V];
    for (int r = 0; r < 3; r++) random_logits(rows[r], V, 100 + (uint64_t)r, 5.0f);
    for (int r = 0; r < 3; r++) { cr_assert_eq(sampler_top_k_filter(rows[r], batch[r], V, 5), 0); }
    /* Warping row 1 alone gives the same as within the batch, and rows 0/2 are not read. */
    float alone[V];
    memcpy(alone, rows[1], sizeof alone);
    cr_assert_eq(sampler_top_k_filter(alone, single, V, 5), 0);
    cr_assert(same_bits(single, batch[1], V));
    cr_assert_eq(sampler_top_p_filter(rows[1], single, V, 0.7f), 0);
    float b2[3][V];
    for (int r = 0; r < 3; r++) sampler_top_p_filter(rows[r], b2[r], V, 0.7f);
    cr_assert(same_bits(single, b2[1], V));
    cr_assert(!same_bits(b2[0], b2[1], V));
}

/* ---- min-p ---- */

Test(min_p, drops_below_fraction_of_max)
{
    float x[4] = { logf(0.5f), logf(0.3f), logf(0.12f), logf(0.04f) }, y[4];
    cr_assert_eq(sampler_min_p_filter(x, y, 4, 0.2f), 0); /* threshold 0.1 */
    cr_assert(y[0] == x[0] && y[1] == x[1] && y[2] == x[2] && y[3] == NINF);
    cr_assert_eq(sampler_min_p_filter(x, y, 4, 0.0f), 0);
    cr_assert(same_bits(x, y, 4));
    cr_assert_eq(sampler_min_p_filter(x, y, 4, 1.0f), 0); /* only the max */
    cr_assert_eq(count_finite(y, 4), 1);
    float z[4] = { 7, 7, 7, 7 };
    cr_assert_eq(sampler_min_p_filter(x, z, 4, 1.5f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_min_p_filter(x, z, 4, -0.1f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_min_p_filter(x, z, 4, NAN), SAMPLER_EINVAL);
    cr_assert(z[0] == 7 && z[3] == 7);
}

/* ---- repetition penalty ---- */

Test(repetition, divides_positive_multiplies_negative_others_bit_identical)
{
    float x[6] = { 2.0f, -1.5f, 0.7f, -0.3f, 0.0f, 3.3f }, y[6];
    int32_t seen[4] = { 0, 1, 1, 4 }; /* 1 repeated: penalised once */
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 6, seen, 4, 2.0f), 0);
    cr_assert(y[0] == 1.0f);
    cr_assert(y[1] == -3.0f);
    cr_assert(y[4] == 0.0f);
    cr_assert(memcmp(&y[2], &x[2], sizeof(float)) == 0);
    cr_assert(memcmp(&y[3], &x[3], sizeof(float)) == 0);
    cr_assert(memcmp(&y[5], &x[5], sizeof(float)) == 0);
}

Test(repetition, in_place_repeated_ids_once)
{
    float x[3] = { 4.0f, -4.0f, 1.0f };
    int32_t seen[6] = { 0, 0, 0, 1, 1, 0 };
    cr_assert_eq(sampler_apply_repetition_penalty(x, x, 3, seen, 6, 2.0f), 0);
    cr_assert(x[0] == 2.0f && x[1] == -8.0f && x[2] == 1.0f);
}

Test(repetition, penalty_below_one_and_empty_seen)
{
    float x[3] = { 4.0f, -4.0f, 1.0f }, y[3];
    int32_t seen[2] = { 0, 1 };
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, seen, 2, 0.5f), 0);
    cr_assert(y[0] == 8.0f && y[1] == -2.0f);
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, NULL, 0, 1.3f), 0);
    cr_assert(same_bits(x, y, 3));
}

Test(repetition, rejects_bad_args_and_leaves_out_untouched)
{
    float x[3] = { 1, 2, 3 }, y[3] = { 7, 7, 7 };
    int32_t ok[1] = { 1 }, bad[2] = { 1, 3 }, neg[1] = { -1 };
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, ok, 1, 0.0f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, ok, 1, -1.0f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, ok, 1, NAN), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, bad, 2, 1.5f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, neg, 1, 1.5f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, NULL, 1, 1.5f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_repetition_penalty(x, y, 3, ok, -1, 1.5f), SAMPLER_EINVAL);
    cr_assert(y[0] == 7 && y[1] == 7 && y[2] == 7);
    /* in place: a bad id at the end must not have modified the earlier ones */
    int32_t late[2] = { 0, 9 };
    cr_assert_eq(sampler_apply_repetition_penalty(x, x, 3, late, 2, 2.0f), SAMPLER_EINVAL);
    cr_assert(x[0] == 1.0f);
}

/* ---- logit bias ---- */

Test(logit_bias, adds_and_forbids)
{
    float x[4] = { 1.0f, 2.0f, 3.0f, 4.0f }, y[4], pr[4];
    int32_t ids[3] = { 0, 3, 0 };
    float b[3] = { 0.5f, NINF, 1.0f };
    cr_assert_eq(sampler_apply_logit_bias(x, y, 4, ids, b, 3), 0);
    cr_assert(y[0] == 2.5f && y[1] == 2.0f && y[2] == 3.0f && y[3] == NINF);
    cr_assert_eq(sampler_softmax(y, pr, 4), 0);
    cr_assert(pr[3] == 0.0f);
    float z[4] = { 7, 7, 7, 7 };
    int32_t bad[1] = { 4 };
    float inf[1] = { INFINITY }, nan1[1] = { NAN };
    cr_assert_eq(sampler_apply_logit_bias(x, z, 4, bad, b, 1), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_logit_bias(x, z, 4, ids, inf, 1), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_logit_bias(x, z, 4, ids, nan1, 1), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_logit_bias(x, z, 4, ids, NULL, 1), SAMPLER_EINVAL);
    cr_assert(z[0] == 7 && z[3] == 7);
}

/* ---- presence / frequency ---- */

Test(presence_frequency, openai_formula)
{
    float x[4] = { 1.0f, 1.0f, 1.0f, -1.0f }, y[4];
    int32_t seen[5] = { 0, 0, 0, 1, 3 };
    cr_assert_eq(sampler_apply_presence_frequency(x, y, 4, seen, 5, 0.5f, 0.25f), 0);
    cr_assert_float_eq(y[0], 1.0f - 3 * 0.25f - 0.5f, 0);
    cr_assert_float_eq(y[1], 1.0f - 0.25f - 0.5f, 0);
    cr_assert(y[2] == 1.0f);
    cr_assert_float_eq(y[3], -1.0f - 0.25f - 0.5f, 0);
    /* in place gives the same */
    cr_assert_eq(sampler_apply_presence_frequency(x, x, 4, seen, 5, 0.5f, 0.25f), 0);
    cr_assert(same_bits(x, y, 4));
    float z[4] = { 7, 7, 7, 7 };
    cr_assert_eq(sampler_apply_presence_frequency(x, z, 4, seen, 5, 2.5f, 0), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_presence_frequency(x, z, 4, seen, 5, 0, -2.01f), SAMPLER_EINVAL);
    cr_assert_eq(sampler_apply_presence_frequency(x, z, 4, seen, 5, NAN, 0), SAMPLER_EINVAL);
    int32_t bad[1] = { 4 };
    cr_assert_eq(sampler_apply_presence_frequency(x, z, 4, bad, 1, 1, 1), SAMPLER_EINVAL);
    cr_assert(z[0] == 7 && z[3] == 7);
}
