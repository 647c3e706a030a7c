/* choose.c -- the one "warp + draw" step shared by sampler_generate and sampler_step.
 *
 * Order (sampler.h): [constraint ->] logit_bias -> repetition penalty (window of the last
 * penalty_last_n ids, or all) -> presence/frequency (generated ids) ->
 * temperature (0: argmax, stop here) -> top-k -> top-p -> min-p -> softmax ->
 * one draw.  Warpers that are off are skipped (each is the identity when off).
 * A traced step (sampler_step_traced) passes a recorder that copies the row each
 * stage leaves; an untraced one passes NULL and pays one test per stage.
 * Params and ids are validated by the callers; nothing here allocates.
 *
 * After a filter (top-k, top-p) the survivors are compacted, in id order, into
 * (value, id) arrays, and the later stages run on that short list: the warpers
 * are pure functions of a row, the dropped entries are -INFINITY (no mass, never
 * drawn) and equal values still rank by id, so the result is the same as on the
 * full row up to the order of floating-point sums.
 */
#include "sampler/sampler_internal.h"

#include <math.h>
#include <string.h>

/* Move the entries of x[0..n) that are not -INFINITY to the front, in order, and
 * their ids (id_in[i], or i when id_in is NULL) to id_out (may equal id_in).
 * Returns how many.  Branch-free. */
static int compact(float *x, int n, const int32_t *id_in, int32_t *id_out)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = x[i];
        x[m] = v;
        id_out[m] = id_in ? id_in[i] : i;
        m += v != -INFINITY;
    }
    return m;
}

int sampler__choose(const sampler_params *p, sampler_scratch *sc, sampler_rng *rng, const float *logits,
                    const int32_t *ids, int n_ids, int n_generated, sampler_recorder *rec, int32_t *token)
{
    int vocab = sc->vocab;
    /* Each warper reads src and writes the scratch row x; src is the caller's
     * logits until the first warper runs (no copy of the row when none does).
     * A traced step hands each stage's output row to rec right after the stage. */
    float *x = sc->work;
    const float *src = logits;
    if (rec) {
        sampler__record_begin(rec);
        sampler__record(rec, SAMPLER_STAGE_LOGITS, logits, vocab, NULL);
    }

    if (p->constraint) { /* first: every later stage sees only the allowed tokens */
        int rc = sampler_constraint_apply(p->constraint, src, x, vocab);
        if (rc < 0) return rc;
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_CONSTRAINT, x, vocab, NULL);
    }
    if (p->n_bias > 0) {
        sampler_apply_logit_bias(src, x, vocab, p->bias_ids, p->bias_values, p->n_bias);
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_LOGIT_BIAS, x, vocab, NULL);
    }
    if (p->repetition_penalty != 0.0f && p->repetition_penalty != 1.0f) {
        int start = (p->penalty_last_n > 0 && n_ids > p->penalty_last_n) ? n_ids - p->penalty_last_n : 0;
        sampler__repetition(src, x, vocab, ids + start, n_ids - start, p->repetition_penalty, sc->count);
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_REPETITION_PENALTY, x, vocab, NULL);
    }
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
        sampler__presence_frequency(src, x, vocab, ids + (n_ids - n_generated), n_generated, p->presence_penalty,
                                    p->frequency_penalty, sc->count);
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_PRESENCE_FREQUENCY, x, vocab, NULL);
    }

    if (p->temperature == 0.0f) {
        int a = sampler_argmax(src, vocab);
        if (a < 0 || src[a] == -INFINITY) return SAMPLER_EINVAL; /* every token forbidden or NaN */
        if (rec) rec->greedy = 1;
        *token = a;
        return SAMPLER_OK;
    }
    if (p->temperature != 1.0f) {
        sampler_apply_temperature(src, x, vocab, p->temperature);
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_TEMPERATURE, x, vocab, NULL);
    }
    int n = vocab;            /* src[0..n) are the candidates */
    const int32_t *id = NULL; /* their ids (NULL: the full row) */
    if (p->top_k > 0 && p->top_k < n) {
        sampler__top_k(src, x, n, p->top_k, sc->key);
        n = compact(x, n, id, sc->idx);
        id = sc->idx;
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_TOP_K, x, n, id);
    }
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        sampler__top_p(src, x, n, p->top_p, sc->key, sc->weight);
        n = compact(x, n, id, sc->idx);
        id = sc->idx;
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_TOP_P, x, n, id);
    }
    if (p->min_p > 0.0f) {
        sampler_min_p_filter(src, x, n, p->min_p);
        src = x;
        if (rec) sampler__record(rec, SAMPLER_STAGE_MIN_P, x, n, id);
    }
    if (n == 0) return SAMPLER_EINVAL;
    double scale;
    int rc = sampler__softmax_scaled(src, sc->probs, n, &scale);
    if (rc < 0) return rc;
    if (rec) sampler__record_softmax(rec, sc->probs, scale, n, id);
    float coin = sampler_rng_uniform(rng);
    if (rec) rec->coin = coin;
    rc = sampler__draw_scaled(sc->probs, scale, n, coin);
    if (rc < 0) return rc;
    *token = id ? id[rc] : rc;
    return SAMPLER_OK;
}
