/* sample.c -- softmax, the multinomial draw, argmax and log-probabilities.
 *
 * NaN logits count as "no probability" everywhere here: softmax gives them 0,
 * argmax skips them, and they rank last among the top alternatives.  A
 * +INFINITY logit takes all the mass (shared equally among +INFINITY entries).
 */
#include "sampler/sampler_internal.h"

#include <math.h>

/* Largest non-NaN value; NAN if none. */
static float finite_max(const float *x, int n)
{
    float m = NAN;
    for (int i = 0; i < n; i++)
        if (x[i] > m || (isnan(m) && !isnan(x[i])))
            m = x[i];
    return m;
}

int sampler_softmax(const float *logits, float *probs, int vocab)
{
    if (!logits || !probs || vocab <= 0)
        return SAMPLER_EINVAL;
    float m = finite_max(logits, vocab);
    if (isnan(m) || m == -INFINITY)
        return SAMPLER_EINVAL; /* no token has any probability: nothing written */
    if (m == INFINITY) {
        int c = 0;
        for (int i = 0; i < vocab; i++)
            c += logits[i] == INFINITY;
        for (int i = 0; i < vocab; i++)
            probs[i] = logits[i] == INFINITY ? (float)(1.0 / c) : 0.0f;
        return SAMPLER_OK;
    }
    /* Max-subtracted, accumulated in double; -INFINITY and NaN give exactly 0. */
    double z = 0.0;
    for (int i = 0; i < vocab; i++) {
        float x = logits[i];
        double e = (isnan(x) || x == -INFINITY) ? 0.0 : exp((double)x - (double)m);
        probs[i] = (float)e;
        z += e;
    }
    double inv = 1.0 / z; /* z >= 1: the max contributes exp(0) */
    for (int i = 0; i < vocab; i++)
        probs[i] = (float)((double)probs[i] * inv);
    return SAMPLER_OK;
}

int sampler_draw(const float *probs, int n, float coin)
{
    if (!probs || n <= 0 || !(coin >= 0.0f && coin < 1.0f))
        return SAMPLER_EINVAL;
    /* Inverse CDF in double.  If rounding leaves the CDF below the coin, the last
     * token with nonzero probability is taken: a zero-probability token is never drawn. */
    double cdf = 0.0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (!(probs[i] > 0.0f))
            continue;
        cdf += probs[i];
        last = i;
        if ((double)coin < cdf)
            return i;
    }
    return last >= 0 ? last : SAMPLER_EINVAL;
}

int sampler_argmax(const float *logits, int n)
{
    if (!logits || n <= 0)
        return SAMPLER_EINVAL;
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (isnan(logits[i]))
            continue;
        if (best < 0 || logits[i] > logits[best])
            best = i;
    }
    return best >= 0 ? best : SAMPLER_EINVAL;
}

/* ---- Log-probabilities ------------------------------------------------------------
 * log_softmax(x)_i = x_i - (max + log sum exp(x - max)), in double.  The top-n are
 * kept in a small sorted array (insertion, O(vocab * n) worst case, usually one
 * comparison per token); equal logits rank by increasing id, NaN ranks last. */

static double log_norm(const float *x, int n, float m)
{
    if (isnan(m) || m == -INFINITY)
        return NAN;
    if (m == INFINITY) {
        int c = 0;
        for (int i = 0; i < n; i++)
            c += x[i] == INFINITY;
        return log((double)c); /* relative to the +INFINITY entries */
    }
    double z = 0.0;
    for (int i = 0; i < n; i++)
        if (!isnan(x[i]) && x[i] != -INFINITY)
            z += exp((double)x[i] - (double)m);
    return (double)m + log(z);
}

static float logprob_of(float x, float m, double lse)
{
    if (isnan(x) || isnan(lse))
        return NAN;
    if (m == INFINITY) /* lse holds log(count of +INFINITY entries) */
        return x == INFINITY ? (float)-lse : -INFINITY;
    if (x == -INFINITY)
        return -INFINITY;
    return (float)((double)x - lse);
}

int sampler_logprobs(const float *logits, int vocab, int32_t token, int n_top,
                     sampler_choice *out)
{
    if (!logits || !out || vocab <= 0 || token < 0 || token >= vocab || n_top < 0 ||
        n_top > SAMPLER_MAX_TOP)
        return SAMPLER_EINVAL;
    if (n_top > vocab)
        n_top = vocab;
    float m = finite_max(logits, vocab);
    double lse = log_norm(logits, vocab, m);

    int32_t best[SAMPLER_MAX_TOP];
    uint32_t bkey[SAMPLER_MAX_TOP];
    int nb = 0;
    for (int i = 0; i < vocab && n_top > 0; i++) {
        uint32_t k = sampler__key(logits[i]);
        if (nb == n_top && k <= bkey[nb - 1])
            continue; /* not strictly better than the current n-th: earlier id wins ties */
        int j = nb < n_top ? nb++ : nb - 1;
        while (j > 0 && bkey[j - 1] < k) {
            bkey[j] = bkey[j - 1];
            best[j] = best[j - 1];
            j--;
        }
        bkey[j] = k;
        best[j] = i;
    }
    out->token = token;
    out->logprob = logprob_of(logits[token], m, lse);
    out->n_top = n_top;
    for (int j = 0; j < n_top; j++) {
        out->top[j].id = best[j];
        out->top[j].logprob = logprob_of(logits[best[j]], m, lse);
    }
    return SAMPLER_OK;
}
