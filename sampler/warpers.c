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
 * select on an order-preserving 32-bit key of the logit: a histogram (count and
 * weight) of the top 11 key bits locates the crossing bucket, the bucket's members
 * are compacted, and the next 11, then the last 10 bits are examined -- three
 * passes over a shrinking set, O(vocab) in all, whatever the distribution.  The
 * final pass keeps every key above the crossing key (branch-free); ties at the
 * crossing value are settled by a rare extra pass in id order.
 */
#include "sampler/sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Weighted radix selection ---------------------------------------------------- */

/* key[0..n) and weight[0..n) are scratch filled by the caller (both are destroyed);
 * weight NULL means every weight is 1 (counting, for top-k).
 * Returns the key K such that, summing weights in decreasing key order,
 * above < target <= above + (weight at K), with above = total weight of keys > K
 * stored in *above and the number of elements with key K in *n_at.  If rounding
 * keeps the total below target, K is the smallest key present (everything kept).
 * Levels of 11, 11 and 10 key bits; the compaction is branch-free. */
static uint32_t radix_crossing(uint32_t *key, double *weight, int n, double target, double *above, int *n_at)
{
    static const int shifts[3] = { 21, 10, 0 }, widths[3] = { 11, 11, 10 };
    uint32_t prefix = 0;
    double acc_above = 0.0;
    for (int level = 0; level < 3; level++) {
        double mass[2048];
        int count[2048];
        int shift = shifts[level], nb = 1 << widths[level];
        uint32_t mask = (uint32_t)nb - 1;
        memset(mass, 0, (size_t)nb * sizeof mass[0]);
        memset(count, 0, (size_t)nb * sizeof count[0]);
        if (weight) {
            for (int i = 0; i < n; i++) {
                uint32_t b = (key[i] >> shift) & mask;
                mass[b] += weight[i];
                count[b]++;
            }
        } else {
            for (int i = 0; i < n; i++) count[(key[i] >> shift) & mask]++;
            for (int b = 0; b < nb; b++) mass[b] = (double)count[b];
        }
        double acc = 0.0;
        int chosen = -1, last = -1;
        for (int b = nb - 1; b >= 0; b--) {
            if (count[b] == 0) continue;
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
        if (level == 2) {
            m = count[chosen]; /* the last level only needs the tie count */
        } else if (weight) {
            for (int i = 0; i < n; i++) { /* keep the chosen bucket's members, in order */
                key[m] = key[i];
                weight[m] = weight[i];
                m += ((key[i] >> shift) & mask) == (uint32_t)chosen;
            }
        } else {
            for (int i = 0; i < n; i++) {
                key[m] = key[i];
                m += ((key[i] >> shift) & mask) == (uint32_t)chosen;
            }
        }
        n = m;
    }
    *above = acc_above;
    *n_at = n;
    return prefix;
}

/* Copy with NaN -> -INFINITY (the filters' "keep everything"). */
static void copy_drop_nan(const float *x, float *out, int n)
{
    for (int i = 0; i < n; i++) out[i] = isnan(x[i]) ? -INFINITY : x[i];
}

static int check_io(const float *logits, const float *out, int vocab) { return logits && out && vocab > 0; }

/* ---- Temperature ------------------------------------------------------------------ */

int sampler_apply_temperature(const float *logits, float *out, int vocab, float temperature)
{
    if (!check_io(logits, out, vocab) || !isfinite(temperature) || !(temperature > 0.0f)) return SAMPLER_EINVAL;
    for (int i = 0; i < vocab; i++) out[i] = logits[i] / temperature;
    return SAMPLER_OK;
}

/* ---- Top-k ------------------------------------------------------------------------ */

int sampler__top_k(const float *logits, float *out, int vocab, int k, uint32_t *key)
{
    if (k >= vocab) {
        copy_drop_nan(logits, out, vocab);
        return SAMPLER_OK;
    }
    for (int i = 0; i < vocab; i++) key[i] = sampler__key(logits[i]);
    double above;
    int n_at;
    uint32_t kth = radix_crossing(key, NULL, vocab, (double)k, &above, &n_at);
    /* Ties with the k-th value survive: keep every key >= kth (never NaN: key 0). */
    uint32_t lo = kth > 1u ? kth : 1u;
    for (int i = 0; i < vocab; i++) out[i] = sampler__key(logits[i]) >= lo ? logits[i] : -INFINITY;
    return SAMPLER_OK;
}

int sampler_top_k_filter(const float *logits, float *out, int vocab, int k)
{
    if (!check_io(logits, out, vocab) || k < 1) return SAMPLER_EINVAL;
    if (k >= vocab) return sampler__top_k(logits, out, vocab, k, NULL);
    uint32_t *key = malloc((size_t)vocab * sizeof *key);
    if (!key) return SAMPLER_ENOMEM;
    int rc = sampler__top_k(logits, out, vocab, k, key);
    free(key);
    return rc;
}

/* ---- Top-p (nucleus) ---------------------------------------------------------------
 * Mass is the softmax of the input logits: w_i = exp(l_i - max) (sampler__exp_neg), summed
 * in double; the kept set is the smallest prefix, in decreasing logit order, whose mass
 * reaches p * sum (the crossing token included).  Equal logits are ordered by
 * increasing index, so among ties at the crossing the lowest ids are kept first.
 * With a +INFINITY logit the mass sits uniformly on the +INFINITY entries. */

static double top_p_weight(float x, float m)
{
    if (m == INFINITY) return x == INFINITY ? 1.0 : 0.0;
    return (double)sampler__exp_neg(x - m); /* NaN and -INFINITY give 0 */
}

int sampler__top_p(const float *logits, float *out, int vocab, float p, uint32_t *key, double *weight)
{
    float m = sampler__max(logits, vocab);
    if (p >= 1.0f || m == -INFINITY) {
        /* p = 1 keeps every token with mass; with no finite logit there is no mass to
         * keep and the output is the input with NaN dropped (all -INFINITY). */
        copy_drop_nan(logits, out, vocab);
        return SAMPLER_OK;
    }
    for (int i = 0; i < vocab; i++) key[i] = sampler__key(logits[i]);
    if (m == INFINITY)
        for (int i = 0; i < vocab; i++) weight[i] = logits[i] == INFINITY ? 1.0 : 0.0;
    else
        for (int i = 0; i < vocab; i++) weight[i] = (double)sampler__exp_neg(logits[i] - m);
    double target = (double)p * sampler__sum_d(weight, vocab);
    double above;
    int n_at;
    uint32_t cross = radix_crossing(key, weight, vocab, target, &above, &n_at);
    /* Keep every key >= cross (branch-free), then, if several tokens share the
     * crossing value, drop those after the one where the mass reaches the target. */
    uint32_t lo = cross > 1u ? cross : 1u;
    for (int i = 0; i < vocab; i++) out[i] = sampler__key(logits[i]) >= lo ? logits[i] : -INFINITY;
    if (n_at > 1 && cross != 0) {
        double acc = above;
        for (int i = 0; i < vocab; i++) {
            if (sampler__key(logits[i]) != cross) continue;
            if (acc < target)
                acc += top_p_weight(logits[i], m); /* the value radix_crossing summed */
            else
                out[i] = -INFINITY;
        }
    }
    return SAMPLER_OK;
}

int sampler_top_p_filter(const float *logits, float *out, int vocab, float p)
{
    if (!check_io(logits, out, vocab) || !(p > 0.0f && p <= 1.0f)) return SAMPLER_EINVAL;
    if (p >= 1.0f) return sampler__top_p(logits, out, vocab, p, NULL, NULL);
    uint32_t *key = malloc((size_t)vocab * sizeof *key);
    double *weight = malloc((size_t)vocab * sizeof *weight);
    int rc = SAMPLER_ENOMEM;
    if (key && weight) rc = sampler__top_p(logits, out, vocab, p, key, weight);
    free(key);
    free(weight);
    return rc;
}

/* ---- Min-p -------------------------------------------------------------------------
 * Keep token i iff p_i >= min_p * p_max, i.e. l_i - max >= log(min_p) (in double). */

int sampler_min_p_filter(const float *logits, float *out, int vocab, float min_p)
{
    if (!check_io(logits, out, vocab) || !(min_p >= 0.0f && min_p <= 1.0f)) return SAMPLER_EINVAL;
    float m = sampler__max(logits, vocab);
    if (min_p == 0.0f || m == -INFINITY) {
        copy_drop_nan(logits, out, vocab);
        return SAMPLER_OK;
    }
    double cut = log((double)min_p);
    for (int i = 0; i < vocab; i++) {
        float x = logits[i];
        int keep;
        if (isnan(x))
            keep = 0;
        else if (m == INFINITY)
            keep = x == INFINITY;
        else
            keep = (double)x - (double)m >= cut;
        out[i] = keep ? x : -INFINITY;
    }
    return SAMPLER_OK;
}

/* ---- Repetition penalty ----------------------------------------------------------- */

static float penalise(float x, float penalty) { return x > 0.0f ? x / penalty : x * penalty; }

/* marks: (vocab) zeros on entry, zeros again on return. */
int sampler__repetition(const float *logits, float *out, int vocab, const int32_t *seen, int n_seen, float penalty,
                        int32_t *marks)
{
    if (out != logits) memcpy(out, logits, (size_t)vocab * sizeof *out);
    for (int i = 0; i < n_seen; i++) {
        int32_t id = seen[i];
        if (marks[id]) continue;
        marks[id] = 1;
        out[id] = penalise(logits[id], penalty); /* once per id, so logits[id] is original */
    }
    for (int i = 0; i < n_seen; i++) marks[seen[i]] = 0;
    return SAMPLER_OK;
}

int sampler_apply_repetition_penalty(const float *logits, float *out, int vocab, const int32_t *seen, int n_seen,
                                     float penalty)
{
    if (!check_io(logits, out, vocab) || !isfinite(penalty) || !(penalty > 0.0f) ||
        !sampler__ids_valid(seen, n_seen, vocab))
        return SAMPLER_EINVAL;
    int32_t *marks = calloc((size_t)vocab, sizeof *marks);
    if (!marks) return SAMPLER_ENOMEM;
    int rc = sampler__repetition(logits, out, vocab, seen, n_seen, penalty, marks);
    free(marks);
    return rc;
}

/* ---- Logit bias ------------------------------------------------------------------- */

int sampler_apply_logit_bias(const float *logits, float *out, int vocab, const int32_t *ids, const float *bias, int n)
{
    if (!check_io(logits, out, vocab) || !sampler__ids_valid(ids, n, vocab) || (n > 0 && !bias)) return SAMPLER_EINVAL;
    for (int j = 0; j < n; j++) /* finite or -INFINITY (forbid) */
        if (isnan(bias[j]) || bias[j] == INFINITY) return SAMPLER_EINVAL;
    if (out != logits) memcpy(out, logits, (size_t)vocab * sizeof *out);
    for (int j = 0; j < n; j++) /* a repeated id gets each of its biases */
        out[ids[j]] += bias[j];
    return SAMPLER_OK;
}

/* ---- Presence / frequency penalties (OpenAI) -------------------------------------
 * l_i -= c_i * frequency + (c_i > 0) * presence, c_i = occurrences of i in seen,
 * computed in double and rounded once. */

/* counts: (vocab) zeros on entry, zeros again on return. */
int sampler__presence_frequency(const float *logits, float *out, int vocab, const int32_t *seen, int n_seen,
                                float presence, float frequency, int32_t *counts)
{
    if (out != logits) memcpy(out, logits, (size_t)vocab * sizeof *out);
    for (int i = 0; i < n_seen; i++) counts[seen[i]]++;
    for (int i = 0; i < n_seen; i++) {
        int32_t id = seen[i];
        int32_t c = counts[id];
        if (c == 0) continue; /* already applied */
        double d = (double)c * (double)frequency + (double)presence;
        out[id] = (float)((double)logits[id] - d);
        counts[id] = 0;
    }
    return SAMPLER_OK;
}

int sampler_apply_presence_frequency(const float *logits, float *out, int vocab, const int32_t *seen, int n_seen,
                                     float presence, float frequency)
{
    if (!check_io(logits, out, vocab) || !sampler__ids_valid(seen, n_seen, vocab) ||
        !(presence >= -2.0f && presence <= 2.0f) || !(frequency >= -2.0f && frequency <= 2.0f))
        return SAMPLER_EINVAL;
    int32_t *counts = calloc((size_t)vocab, sizeof *counts);
    if (!counts) return SAMPLER_ENOMEM;
    int rc = sampler__presence_frequency(logits, out, vocab, seen, n_seen, presence, frequency, counts);
    free(counts);
    return rc;
}
