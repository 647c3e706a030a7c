/* params.c -- validation of sampler_params and the per-sequence scratch memory. */
#include "sampler/sampler_internal.h"

#include <math.h>
#include <stdlib.h>

int sampler__ids_valid(const int32_t *ids, int n, int vocab)
{
    if (n < 0 || (n > 0 && !ids)) return 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) return 0;
    return 1;
}

int sampler_params_validate(const sampler_params *p, int vocab, const char **name)
{
    const char *bad = NULL;
    if (!p || vocab <= 0)
        bad = !p ? "params" : "vocab";
    else if (!isfinite(p->temperature) || p->temperature < 0.0f)
        bad = "temperature";
    else if (p->top_k < 0)
        bad = "top_k";
    else if (!(p->top_p == 0.0f || (p->top_p > 0.0f && p->top_p <= 1.0f)))
        bad = "top_p";
    else if (!(p->repetition_penalty == 0.0f || (p->repetition_penalty > 0.0f && isfinite(p->repetition_penalty))))
        bad = "repetition_penalty";
    else if (!sampler__ids_valid(p->stop_ids, p->n_stop_ids, vocab))
        bad = "stop_ids";
    else if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        bad = "min_p";
    else if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        bad = "presence_penalty";
    else if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        bad = "frequency_penalty";
    else if (p->penalty_last_n < 0)
        bad = "penalty_last_n";
    else if (p->crop < SAMPLER_CROP_SLIDE || p->crop > SAMPLER_CROP_STOP)
        bad = "crop";
    else if (!sampler__ids_valid(p->bias_ids, p->n_bias, vocab) || (p->n_bias > 0 && !p->bias_values))
        bad = "logit_bias";
    else if (p->constraint && sampler__constraint_vocab(p->constraint) != vocab)
        bad = "constraint";
    else
        for (int j = 0; j < p->n_bias; j++)
            if (isnan(p->bias_values[j]) || p->bias_values[j] == INFINITY) bad = "logit_bias";
    if (name) *name = bad;
    return bad ? SAMPLER_EINVAL : SAMPLER_OK;
}

int sampler__scratch_init(sampler_scratch *sc, int vocab)
{
    size_t n = (size_t)vocab;
    sc->vocab = vocab;
    sc->work = malloc(n * sizeof *sc->work);
    sc->probs = malloc(n * sizeof *sc->probs);
    sc->weight = malloc(n * sizeof *sc->weight);
    sc->key = malloc(n * sizeof *sc->key);
    sc->count = calloc(n, sizeof *sc->count);
    sc->idx = malloc(n * sizeof *sc->idx);
    if (!sc->work || !sc->probs || !sc->weight || !sc->key || !sc->count || !sc->idx) {
        sampler__scratch_release(sc);
        return SAMPLER_ENOMEM;
    }
    return SAMPLER_OK;
}

void sampler__scratch_release(sampler_scratch *sc)
{
    if (!sc) return;
    free(sc->work);
    free(sc->probs);
    free(sc->weight);
    free(sc->key);
    free(sc->count);
    free(sc->idx);
    *sc = (sampler_scratch){ 0 };
}
