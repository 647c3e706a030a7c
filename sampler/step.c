/* step.c -- the step-wise sampler a server keeps per sequence.
 *
 * The server batches the model across sequences, then for each sequence calls
 * sampler_step with that sequence's logits; the per-token callback, stop checks
 * and cancellation live in the caller's loop, between steps.  A sampler owns a
 * copy of its params (bias and stop arrays included), its RNG (seeded once, in
 * sampler_new) and its scratch memory, so a step never allocates.  A sampler
 * that traces (sampler_trace_enable) also owns the recorder's rows (trace.c).
 */
#include "sampler/sampler_internal.h"

#include <math.h>

#include <stdlib.h>
#include <string.h>

struct sampler {
    sampler_params params; /* array fields point into the copies below */
    int32_t *stop_ids;     /* (n_stop_ids) */
    int32_t *bias_ids;     /* (n_bias) */
    float *bias_values;    /* (n_bias) */
    sampler_rng rng;
    sampler_scratch scratch;
    sampler_recorder rec; /* traced steps only: rec.block NULL until sampler_trace_enable */
};

sampler *sampler_new(int vocab, const sampler_params *params)
{
    if (sampler_params_validate(params, vocab, NULL) != SAMPLER_OK) return NULL;
    sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->params = *params;
    int ns = params->n_stop_ids, nb = params->n_bias;
    if (ns > 0) {
        s->stop_ids = malloc((size_t)ns * sizeof *s->stop_ids);
        if (!s->stop_ids) goto err;
        memcpy(s->stop_ids, params->stop_ids, (size_t)ns * sizeof *s->stop_ids);
    }
    if (nb > 0) {
        s->bias_ids = malloc((size_t)nb * sizeof *s->bias_ids);
        s->bias_values = malloc((size_t)nb * sizeof *s->bias_values);
        if (!s->bias_ids || !s->bias_values) goto err;
        memcpy(s->bias_ids, params->bias_ids, (size_t)nb * sizeof *s->bias_ids);
        memcpy(s->bias_values, params->bias_values, (size_t)nb * sizeof *s->bias_values);
    }
    s->params.stop_ids = s->stop_ids;
    s->params.bias_ids = s->bias_ids;
    s->params.bias_values = s->bias_values;
    if (sampler__scratch_init(&s->scratch, vocab) != SAMPLER_OK) goto err;
    sampler_rng_seed(&s->rng, params->seed);
    return s;
err:
    sampler_free(s);
    return NULL;
}

void sampler_free(sampler *s)
{
    if (!s) return;
    sampler__scratch_release(&s->scratch);
    sampler__recorder_release(&s->rec);
    free(s->stop_ids);
    free(s->bias_ids);
    free(s->bias_values);
    free(s);
}

int sampler_trace_enable(sampler *s, int n)
{
    if (!s || n < 1 || n > SAMPLER_TRACE_MAX) return SAMPLER_EINVAL;
    if (!s->rec.block) {
        sampler_recorder r;
        if (sampler__recorder_init(&r, s->scratch.vocab, n) != SAMPLER_OK) return SAMPLER_ENOMEM;
        s->rec = r;
    }
    s->rec.n = n;
    return SAMPLER_OK;
}

int sampler_step(sampler *s, const float *logits, const int32_t *ids, int n_ids, int n_generated, int n_top,
                 sampler_choice *out)
{
    return sampler_step_traced(s, logits, ids, n_ids, n_generated, n_top, out, NULL);
}

int sampler_step_traced(sampler *s, const float *logits, const int32_t *ids, int n_ids, int n_generated, int n_top,
                        sampler_choice *out, sampler_trace *trace)
{
    if (!s || !logits || !out || n_ids < 0 || (n_ids > 0 && !ids) || n_generated < 0 || n_generated > n_ids ||
        n_top < SAMPLER_TOKEN_ONLY || n_top > SAMPLER_MAX_TOP || (trace && !s->rec.block))
        return SAMPLER_EINVAL;
    int vocab = s->scratch.vocab;
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= vocab) return SAMPLER_EINVAL;
    int32_t token;
    sampler_recorder *rec = trace ? &s->rec : NULL;
    int rc = sampler__choose(&s->params, &s->scratch, &s->rng, logits, ids, n_ids, n_generated, rec, &token);
    if (rc < 0) return rc;
    if (rec) sampler__record_finish(rec, token, trace);
    int status = SAMPLER_CONSTRAINT_NONE;
    if (s->params.constraint) {
        rc = sampler_constraint_accept(s->params.constraint, token);
        if (rc >= 0) status = sampler_constraint_status(s->params.constraint);
        if (rc < 0 || status < 0) return rc < 0 ? rc : status;
    }
    if (n_top == SAMPLER_TOKEN_ONLY) {
        out->token = token;
        out->logprob = NAN;
        out->n_top = 0;
    } else {
        /* the raw logits: log-probabilities describe the model, not the warped row */
        rc = sampler_logprobs(logits, vocab, token, n_top, out);
        if (rc < 0) return rc;
    }
    out->constraint = status;
    return SAMPLER_OK;
}
