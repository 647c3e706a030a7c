/* sample.c -- softmax, the multinomial draw, argmax and log-probabilities.
 *
 * NaN logits count as "no probability" everywhere here: softmax gives them 0,
 * argmax skips them, and they rank last among the top alternatives.  A
 * +INFINITY logit takes all the mass (shared equally among +INFINITY entries).
 */
#include "sampler/sampler_internal.h"

#include <math.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

/* ---- Fixed-order reductions ---------------------------------------------------- */

double sampler__sum_f(const float *x, int n)
{
    double acc[8] = { 0 };
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)x[i + j];
    double s = 0.0;
    for (; i < n; i++) s += (double)x[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

double sampler__sum_d(const double *x, int n)
{
    double acc[8] = { 0 };
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[i + j];
    double s = 0.0;
    for (; i < n; i++) s += x[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

float sampler__max(const float *x, int n)
{
    float acc[8];
    for (int j = 0; j < 8; j++) acc[j] = -INFINITY;
    int i = 0;
#ifdef __AVX__
    /* The same eight lanes in one register: maxps(a, b) is exactly "a > b ? a : b"
     * (b when equal or either is NaN), so the result is the portable loop's to the
     * bit.  The compiler does not vectorise that loop itself (it will not assume
     * away NaN and signed zeros); docs/TUNING.md has the speed-up. */
    __m256 v = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) v = _mm256_max_ps(_mm256_loadu_ps(x + i), v);
    _mm256_storeu_ps(acc, v);
#endif
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j]; /* NaN compares false */
    float m = -INFINITY;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int j = 0; j < 8; j++) m = acc[j] > m ? acc[j] : m;
    return m;
}

int sampler__softmax_scaled(const float *logits, float *e, int vocab, double *scale)
{
    if (!logits || !e || vocab <= 0) return SAMPLER_EINVAL;
    float m = sampler__max(logits, vocab);
    if (m == -INFINITY) return SAMPLER_EINVAL; /* no token has any probability: nothing written */
    if (m == INFINITY) {
        int c = 0;
        for (int i = 0; i < vocab; i++) c += logits[i] == INFINITY;
        for (int i = 0; i < vocab; i++) e[i] = logits[i] == INFINITY ? (float)(1.0 / c) : 0.0f;
        *scale = 1.0; /* exact: (float)((double)p * 1.0) == p */
        return SAMPLER_OK;
    }
    /* Max-subtracted, accumulated in double; -INFINITY and NaN give exactly 0. */
    for (int i = 0; i < vocab; i++) e[i] = sampler__exp_neg(logits[i] - m);
    *scale = 1.0 / sampler__sum_f(e, vocab); /* sum >= 1: the max gives exp(0) */
    return SAMPLER_OK;
}

int sampler_softmax(const float *logits, float *probs, int vocab)
{
    double inv;
    int rc = sampler__softmax_scaled(logits, probs, vocab, &inv);
    if (rc < 0) return rc;
    for (int i = 0; i < vocab; i++) probs[i] = sampler__prob(probs[i], inv);
    return SAMPLER_OK;
}

int sampler__draw_scaled(const float *e, double scale, int n, float coin)
{
    if (!e || n <= 0 || !(coin >= 0.0f && coin < 1.0f)) return SAMPLER_EINVAL;
    /* Inverse CDF in double.  If rounding leaves the CDF below the coin, the last
     * token with nonzero probability is taken: a zero-probability token is never drawn.
     * The running sum is a chain of dependent additions, so the multiply and the
     * rounding to float that make each probability cost nothing here. */
    double cdf = 0.0; /* trace.c sums the same way for sampler_trace.cdf_before */
    int last = -1;
    for (int i = 0; i < n; i++) {
        float p = sampler__prob(e[i], scale);
        if (!(p > 0.0f)) continue;
        cdf += p;
        last = i;
        if ((double)coin < cdf) return i;
    }
    return last >= 0 ? last : SAMPLER_EINVAL;
}

int sampler_draw(const float *probs, int n, float coin) { return sampler__draw_scaled(probs, 1.0, n, coin); }

int sampler_argmax(const float *logits, int n)
{
    if (!logits || n <= 0) return SAMPLER_EINVAL;
    float m = sampler__max(logits, n);
    int i = 0;
#ifdef __AVX__
    __m256 mv = _mm256_set1_ps(m);
    for (; i + 8 <= n; i += 8) {
        int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(logits + i), mv, _CMP_EQ_OQ));
        if (hit) return i + __builtin_ctz((unsigned)hit); /* the first equal lane */
    }
#endif
    for (; i < n; i++)
        if (logits[i] == m) return i;
    return SAMPLER_EINVAL; /* only NaN (m = -INFINITY matches any -INFINITY above) */
}

/* ---- Log-probabilities ------------------------------------------------------------
 * log_softmax(x)_i = x_i - (max + log sum exp(x - max)), summed and subtracted in double.  The top-n are
 * kept in a small sorted array (insertion, O(vocab * n) worst case, usually one
 * comparison per token); equal logits rank by increasing id, NaN ranks last. */

static double log_norm(const float *x, int n, float m)
{
    if (m == -INFINITY) return NAN;
    if (m == INFINITY) {
        int c = 0;
        for (int i = 0; i < n; i++) c += x[i] == INFINITY;
        return log((double)c); /* relative to the +INFINITY entries */
    }
    float e[256]; /* exp in blocks so no allocation is needed */
    double z = 0.0;
    for (int i = 0; i < n; i += 256) {
        int b = n - i < 256 ? n - i : 256;
        for (int j = 0; j < b; j++) e[j] = sampler__exp_neg(x[i + j] - m);
        z += sampler__sum_f(e, b);
    }
    return (double)m + log(z);
}

static float logprob_of(float x, float m, double lse)
{
    if (isnan(x) || isnan(lse)) return NAN;
    if (m == INFINITY) /* lse holds log(count of +INFINITY entries) */
        return x == INFINITY ? (float)-lse : -INFINITY;
    if (x == -INFINITY) return -INFINITY;
    return (float)((double)x - lse);
}

int sampler_logprobs(const float *logits, int vocab, int32_t token, int n_top, sampler_choice *out)
{
    if (!logits || !out || vocab <= 0 || token < 0 || token >= vocab || n_top < 0 || n_top > SAMPLER_MAX_TOP)
        return SAMPLER_EINVAL;
    if (n_top > vocab) n_top = vocab;
    float m = sampler__max(logits, vocab);
    double lse = log_norm(logits, vocab, m);

    int32_t best[SAMPLER_MAX_TOP];
    uint32_t bkey[SAMPLER_MAX_TOP];
    int nb = 0;
    for (int i = 0; i < vocab && n_top > 0; i++) /* ids in increasing order: the earlier id wins ties */
        nb = sampler__top_offer(bkey, best, nb, n_top, sampler__key(logits[i]), i);
    out->token = token;
    out->logprob = logprob_of(logits[token], m, lse);
    out->n_top = n_top;
    out->constraint = SAMPLER_CONSTRAINT_NONE;
    for (int j = 0; j < n_top; j++) {
        out->top[j].id = best[j];
        out->top[j].logprob = logprob_of(logits[best[j]], m, lse);
    }
    return SAMPLER_OK;
}
