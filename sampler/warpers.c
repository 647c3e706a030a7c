/* warpers.c -- the pure logit warpers: temperature, top-k, top-p, min-p, repetition
 * penalty, logit bias, presence/frequency penalties.
 *
 * Common contract (see sampler.h): read logits[0..vocab), write out[0..vocab),
 * out may equal logits; every argument is validated before out is written.
 * Filters (top-k, top-p, min-p) copy survivors bit for bit and write -INFINITY
 * elsewhere.  NaN: the filters treat a NaN logit as lower than -INFINITY, so a
 * NaN never survives a filter (it becomes -INFINITY, even when everything else
 * is kept); the arithmetic warpers (temperature, penalties, bias) leave NaN as NaN.
 *
 * Top-k and top-p never sort the vocabulary.  Both are "weighted selection":
 * walking tokens in decreasing logit order, find the token where the running
 * weight first reaches a target (weight 1 and target k for top-k; weight
 * exp(l - max) and target p * sum for top-p).  That token is found by a radix
 * select on an order-preserving 32-bit key of the logit: a histogram of the
 * top 8 key bits locates the crossing bucket, the bucket's members are
 * compacted, and the next 8 bits are examined -- four passes over a shrinking
 * set, O(vocab) in all, whatever the distribution.
 */
#include "sampler/sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Weighted radix selection ---------------------------------------------------- */

/* key[0..n) and weight[0..n) are scratch filled by the caller (both are destroyed).
 * Returns the key K such that, summing weights in decreasing key order,
 * above < target <= above + (weight at K), with above = total weight of keys > K
 * stored in *above.  If rounding keeps the total below target, K is the smallest
 * key present (so everything is kept). */
static uint32_t radix_crossing(uint32_t *key, double *weight, int n, double target,
                               double *above)
{
    uint32_t prefix = 0;
    double acc_above = 0.0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        double mass[256];
        int count[256];
        memset(mass, 0, sizeof mass);
        memset(count, 0, sizeof count);
        for (int i = 0; i < n; i++) {
            unsigned b = (key[i] >> shift) & 255u;
            mass[b] += weight[i];
            count[b]++;
        }
        double acc = 0.0;
        int chosen = -1, last = -1;
        for (int b = 255; b >= 0; b--) {
            if (count[b] == 0)
                continue;
            last = b;
            if (acc + mass[b] >= target) {
                chosen = b;
                break;
            }
            acc += mass[b];
        }
        if (chosen < 0) { /* rounding: never reached; the lowest bucket crosses */
            chosen = last;
            acc -= mass[last];
        }
        acc_above += acc;
        target -= acc;
        prefix |= (uint32_t)chosen << shift;
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (((key[i] >> shift) & 255u) == (unsigned)chosen) {
                key[m] = key[i];
                weight[m] = weight[i];
                m++;
            }
        }
        n = m;
    }
    *above = acc_above;
    return prefix;
}

/* The largest non-NaN logit, or NAN if every logit is NaN. */
static float max_logit(const float *x, int n)
{
    float m = NAN;
    for (int i = 0; i < n; i++)
        if (x[i] > m || (isnan(m) && !isnan(x[i])))
            m = x[i];
    return m;
}

/* Copy with NaN -> -INFINITY (the filters' "keep everything"). */
static void copy_drop_nan(const float *x, float *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = isnan(x[i]) ? -INFINITY : x[i];
}

static int check_io(const float *logits, const float *out, int vocab)
{
    return logits && out && vocab > 0;
}

/* ---- Temperature ------------------------------------------------------------------ */

int sampler_apply_temperature(const float *logits, float *out, int vocab, float temperature)
{
    if (!check_io(logits, out, vocab) || !isfinite(temperature) || !(temperature > 0.0f))
        return SAMPLER_EINVAL;
    for (int i = 0; i < vocab; i++)
        out[i] = logits[i] / temperature;
    return SAMPLER_OK;
}

/* ---- Top-k ------------------------------------------------------------------------ */

int sampler__top_k(const float *logits, float *out, int vocab, int k, uint32_t *key,
                   double *weight)
{
    if (k >= vocab) {
        copy_drop_nan(logits, out, vocab);
        return SAMPLER_OK;
    }
    for (int i = 0; i < vocab; i++) {
        key[i] = sampler__key(logits[i]);
        weight[i] = 1.0;
    }
    double above;
    uint32_t kth = radix_crossing(key, weight, vocab, (double)k, &above);
    /* Ties with the k-th value survive: keep every key >= kth (never NaN). */
    for (int i = 0; i < vocab; i++) {
        uint32_t ki = sampler__key(logits[i]);
        out[i] = (ki >= kth && ki != 0) ? logits[i] : -INFINITY;
    }
    return SAMPLER_OK;
}

int sampler_top_k_filter(const float *logits, float *out, int vocab, int k)
{
    if (!check_io(logits, out, vocab) || k < 1)
        return SAMPLER_EINVAL;
    if (k >= vocab)
        return sampler__top_k(logits, out, vocab, k, NULL, NULL);
    uint32_t *key = malloc((size_t)vocab * sizeof *key);
    double *weight = malloc((size_t)vocab * sizeof *weight);
    int rc = SAMPLER_ENOMEM;
    if (key && weight)
        rc = sampler__top_k(logits, out, vocab, k, key, weight);
    free(key);
    free(weight);
    return rc;
}

/* ---- Top-p (nucleus) ---------------------------------------------------------------
 * Mass is the softmax of the input logits: w_i = exp(l_i - max) in double, summed in
 * double; the kept set is the smallest prefix, in decreasing logit order, whose mass
 * reaches p * sum (the crossing token included).  Equal logits are ordered by
 * increasing index, so among ties at the crossing the lowest ids are kept first.
 * With a +INFINITY logit the mass sits uniformly on the +INFINITY entries. */

static double top_p_weight(float x, float m)
{
    if (isinf(m)) /* m == +INFINITY */
        return x == INFINITY ? 1.0 : 0.0;
    if (isnan(x) || x == -INFINITY)
        return 0.0;
    return exp((double)x - (double)m);
}

int sampler__top_p(const float *logits, float *out, int vocab, float p, uint32_t *key,
                   double *weight)
{
    float m = max_logit(logits, vocab);
    if (p >= 1.0f || isnan(m) || m == -INFINITY) {
        /* p = 1 keeps every token with mass; with no finite logit there is no mass to
         * keep and the output is the input with NaN dropped (all -INFINITY). */
        copy_drop_nan(logits, out, vocab);
        return SAMPLER_OK;
    }
    double total = 0.0;
    for (int i = 0; i < vocab; i++) {
        key[i] = sampler__key(logits[i]);
        weight[i] = top_p_weight(logits[i], m);
        total += weight[i];
    }
    double target = (double)p * total;
    double above;
    uint32_t cross = radix_crossing(key, weight, vocab, target, &above);
    double acc = above;
    for (int i = 0; i < vocab; i++) {
        float x = logits[i];
        uint32_t ki = sampler__key(x);
        if (ki > cross) {
            out[i] = x;
        } else if (ki == cross && ki != 0 && acc < target) {
            acc += top_p_weight(x, m); /* the same value radix_crossing summed */
            out[i] = x;
        } else {
            out[i] = -INFINITY;
        }
    }
    return SAMPLER_OK;
}

int sampler_top_p_filter(const float *logits, float *out, int vocab, float p)
{
    if (!check_io(logits, out, vocab) || !(p > 0.0f && p <= 1.0f))
        return SAMPLER_EINVAL;
    if (p >= 1.0f)
        return sampler__top_p(logits, out, vocab, p, NULL, NULL);
    uint32_t *key = malloc((size_t)vocab * sizeof *key);
    double *weight = malloc((size_t)vocab * sizeof *weight);
    int rc = SAMPLER_ENOMEM;
    if (key && weight)
        rc = sampler__top_p(logits, out, vocab, p, key, weight);
    free(key);
    free(weight);
    return rc;
}

/* ---- Min-p -------------------------------------------------------------------------
 * Keep token i iff p_i >= min_p * p_max, i.e. exp(l_i - max) >= min_p (in double). */

int sampler_min_p_filter(const float *logits, float *out, int vocab, float min_p)
{
    if (!check_io(logits, out, vocab) || !(min_p >= 0.0f && min_p <= 1.0f))
        return SAMPLER_EINVAL;
    float m = max_logit(logits, vocab);
    if (min_p == 0.0f || isnan(m) || m == -INFINITY) {
        copy_drop_nan(logits, out, vocab);
        return SAMPLER_OK;
    }
    for (int i = 0; i < vocab; i++) {
        float x = logits[i];
        int keep;
        if (isnan(x))
            keep = 0;
        else if (m == INFINITY)
            keep = x == INFINITY;
        else
            keep = exp((double)x - (double)m) >= (double)min_p;
        out[i] = keep ? x : -INFINITY;
    }
    return SAMPLER_OK;
}

/* ---- Repetition penalty ----------------------------------------------------------- */

static int ids_valid(const int32_t *ids, int n, int vocab)
{
    if (n < 0 || (n > 0 && !ids))
        return 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return 0;
    return 1;
}

static float penalise(float x, float penalty)
{
    return x > 0.0f ? x / penalty : x * penalty;
}

/* marks: (vocab) zeros on entry, zeros again on return. */
int sampler__repetition(const float *logits, float *out, int vocab, const int32_t *seen,
                        int n_seen, float penalty, int32_t *marks)
{
    if (out != logits)
        memcpy(out, logits, (size_t)vocab * sizeof *out);
    for (int i = 0; i < n_seen; i++) {
        int32_t id = seen[i];
        if (marks[id])
            continue;
        marks[id] = 1;
        out[id] = penalise(logits[id], penalty); /* once per id, so logits[id] is original */
    }
    for (int i = 0; i < n_seen; i++)
        marks[seen[i]] = 0;
    return SAMPLER_OK;
}

int sampler_apply_repetition_penalty(const float *logits, float *out, int vocab,
                                     const int32_t *seen, int n_seen, float penalty)
{
    if (!check_io(logits, out, vocab) || !isfinite(penalty) || !(penalty > 0.0f) ||
        !ids_valid(seen, n_seen, vocab))
        return SAMPLER_EINVAL;
    int32_t *marks = calloc((size_t)vocab, sizeof *marks);
    if (!marks)
        return SAMPLER_ENOMEM;
    int rc = sampler__repetition(logits, out, vocab, seen, n_seen, penalty, marks);
    free(marks);
    return rc;
}

/* ---- Logit bias ------------------------------------------------------------------- */

int sampler_apply_logit_bias(const float *logits, float *out, int vocab, const int32_t *ids,
                             const float *bias, int n)
{
    if (!check_io(logits, out, vocab) || !ids_valid(ids, n, vocab) || (n > 0 && !bias))
        return SAMPLER_EINVAL;
    for (int j = 0; j < n; j++) /* finite or -INFINITY (forbid) */
        if (isnan(bias[j]) || bias[j] == INFINITY)
            return SAMPLER_EINVAL;
    if (out != logits)
        memcpy(out, logits, (size_t)vocab * sizeof *out);
    for (int j = 0; j < n; j++) /* a repeated id gets each of its biases */
        out[ids[j]] += bias[j];
    return SAMPLER_OK;
}

/* ---- Presence / frequency penalties (OpenAI) -------------------------------------
 * l_i -= c_i * frequency + (c_i > 0) * presence, c_i = occurrences of i in seen,
 * computed in double and rounded once. */

/* counts: (vocab) zeros on entry, zeros again on return. */
int sampler__presence_frequency(const float *logits, float *out, int vocab,
                                const int32_t *seen, int n_seen, float presence,
                                float frequency, int32_t *counts)
{
    if (out != logits)
        memcpy(out, logits, (size_t)vocab * sizeof *out);
    for (int i = 0; i < n_seen; i++)
        counts[seen[i]]++;
    for (int i = 0; i < n_seen; i++) {
        int32_t id = seen[i];
        int32_t c = counts[id];
        if (c == 0)
            continue; /* already applied */
        double d = (double)c * (double)frequency + (double)presence;
        out[id] = (float)((double)logits[id] - d);
        counts[id] = 0;
    }
    return SAMPLER_OK;
}

int sampler_apply_presence_frequency(const float *logits, float *out, int vocab,
                                     const int32_t *seen, int n_seen, float presence,
                                     float frequency)
{
    if (!check_io(logits, out, vocab) || !ids_valid(seen, n_seen, vocab) ||
        !(presence >= -2.0f && presence <= 2.0f) || !(frequency >= -2.0f && frequency <= 2.0f))
        return SAMPLER_EINVAL;
    int32_t *counts = calloc((size_t)vocab, sizeof *counts);
    if (!counts)
        return SAMPLER_ENOMEM;
    int rc = sampler__presence_frequency(logits, out, vocab, seen, n_seen, presence,
                                         frequency, counts);
    free(counts);
    return rc;
}
