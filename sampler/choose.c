/* choose.c -- the one "warp + draw" step shared by sampler_generate and sampler_step.
 *
 * Order (sampler.h): logit_bias -> repetition penalty (window of the last
 * penalty_last_n ids, or all) -> presence/frequency (generated ids) ->
 * temperature (0: argmax, stop here) -> top-k -> top-p -> min-p -> softmax ->
 * one draw.  Warpers that are off are skipped (each is the identity when off).
 * Params and ids are validated by the callers; nothing here allocates.
 */
#include "sampler/sampler_internal.h"

#include <math.h>
#include <string.h>

int sampler__choose(const sampler_params *p, sampler_scratch *sc, sampler_rng *rng,
                    const float *logits, const int32_t *ids, int n_ids, int n_generated,
                    int32_t *token)
{
    int vocab = sc->vocab;
    float *x = sc->work;
    memcpy(x, logits, (size_t)vocab * sizeof *x);

    if (p->n_bias > 0)
        sampler_apply_logit_bias(x, x, vocab, p->bias_ids, p->bias_values, p->n_bias);
    if (p->repetition_penalty != 0.0f && p->repetition_penalty != 1.0f) {
        int start = (p->penalty_last_n > 0 && n_ids > p->penalty_last_n)
                        ? n_ids - p->penalty_last_n : 0;
        sampler__repetition(x, x, vocab, ids + start, n_ids - start, p->repetition_penalty,
                            sc->count);
    }
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f)
        sampler__presence_frequency(x, x, vocab, ids + (n_ids - n_generated), n_generated,
                                    p->presence_penalty, p->frequency_penalty, sc->count);

    if (p->temperature == 0.0f) {
        int a = sampler_argmax(x, vocab);
        if (a < 0 || x[a] == -INFINITY)
            return SAMPLER_EINVAL; /* every token forbidden or NaN */
        *token = a;
        return SAMPLER_OK;
    }
    if (p->temperature != 1.0f)
        sampler_apply_temperature(x, x, vocab, p->temperature);
    if (p->top_k > 0 && p->top_k < vocab)
        sampler__top_k(x, x, vocab, p->top_k, sc->key, sc->weight);
    if (p->top_p > 0.0f && p->top_p < 1.0f)
        sampler__top_p(x, x, vocab, p->top_p, sc->key, sc->weight);
    if (p->min_p > 0.0f)
        sampler_min_p_filter(x, x, vocab, p->min_p);
    int rc = sampler_softmax(x, sc->probs, vocab);
    if (rc < 0)
        return rc;
    float coin = sampler_rng_uniform(rng);
    rc = sampler_draw(sc->probs, vocab, coin);
    if (rc < 0)
        return rc;
    *token = rc;
    return SAMPLER_OK;
}
