/* sampler_internal.h -- shared between the sampler's own sources; never included elsewhere.
 *
 * The warpers that need working memory come in two forms: the public one
 * (allocates, may return SAMPLER_ENOMEM) and a sampler__ one taking caller
 * scratch, which the per-token pipeline uses so a step never allocates.
 * sampler__choose is the single "warp + draw" used by both sampler_generate
 * and sampler_step, so the two can never drift apart.
 */
#ifndef LMSERVE_SAMPLER_INTERNAL_H
#define LMSERVE_SAMPLER_INTERNAL_H

#include "sampler/sampler.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Order-preserving map float -> uint32: a > b (as numbers) iff key(a) > key(b).
 * -0 maps like +0 (they compare equal), NaN maps to 0, below -INFINITY. */
static inline uint32_t sampler__key(float x)
{
    if (isnan(x))
        return 0;
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    if (b == 0x80000000u)
        b = 0;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Working memory for one sequence's steps (vocab entries each). */
typedef struct {
    int vocab;
    float *work;      /* (vocab) logits being warped */
    float *probs;     /* (vocab) softmax of the survivors */
    double *weight;   /* (vocab) selection weights (exp of shifted logits or 1) */
    uint32_t *key;    /* (vocab) selection keys */
    int32_t *count;   /* (vocab) per-id counts/marks, all zero between calls */
} sampler_scratch;

int sampler__scratch_init(sampler_scratch *sc, int vocab);
void sampler__scratch_release(sampler_scratch *sc);

/* Scratch forms of the warpers (same contracts as the public ones). */
int sampler__top_k(const float *logits, float *out, int vocab, int k,
                   uint32_t *key, double *weight);
int sampler__top_p(const float *logits, float *out, int vocab, float p,
                   uint32_t *key, double *weight);
int sampler__repetition(const float *logits, float *out, int vocab, const int32_t *seen,
                        int n_seen, float penalty, int32_t *marks);
int sampler__presence_frequency(const float *logits, float *out, int vocab,
                                const int32_t *seen, int n_seen, float presence,
                                float frequency, int32_t *counts);

/* One step: copy logits into scratch, apply every enabled warper in the documented
 * order, and pick a token (argmax at temperature 0, else one draw from rng).
 * ids[0..n_ids) is the sequence so far, the last n_generated of which were generated.
 * SAMPLER_EINVAL if no token can be chosen (every logit -INFINITY or NaN). */
int sampler__choose(const sampler_params *p, sampler_scratch *sc, sampler_rng *rng,
                    const float *logits, const int32_t *ids, int n_ids, int n_generated,
                    int32_t *token);

#endif /* LMSERVE_SAMPLER_INTERNAL_H */
