/* generate.c -- the whole decode loop (sampler_generate) over a sampler_lm callback.
 *
 * Every step: crop -- ctx = the last max_seq_len ids of the full sequence (never
 * more; or, as params->crop asks, the shifted window, or stop when the window is
 * full) -> next_logits (last position) -> sampler__choose (penalties over the full
 * sequence or its window, temperature, top-k, top-p, min-p, softmax, one draw)
 * -> append -> advance the constraint, if any, and stop when its text is complete
 * -> stop if the token is a stop id (it is kept) -> per-token callback
 * (which may cancel before the next model call).  The RNG is seeded
 * once, before the loop.  Everything is validated before the model is called.
 */
#include "sampler/sampler_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int sampler_crop_start(int policy, int start, int n, int W)
{
    if (policy == SAMPLER_CROP_STOP) return n < W ? 0 : -1;
    if (policy == SAMPLER_CROP_SHIFT) {
        int keep = W / 2 > 0 ? W / 2 : 1;
        return n - start > W ? n - keep : start;
    }
    return n > W ? n - W : 0;
}

int sampler_crop_parse(const char *name)
{
    static const char *const names[] = { "slide", "shift", "stop" };
    for (int i = 0; name && i < 3; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

const char *sampler_crop_name(int policy)
{
    return policy == SAMPLER_CROP_SHIFT ? "shift" : policy == SAMPLER_CROP_STOP ? "stop" : "slide";
}

static int is_stop(const sampler_params *p, int32_t t)
{
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] == t) return 1;
    return 0;
}

int sampler_generate(sampler_lm *lm, const int32_t *prompt, int n_prompt, int max_new_tokens,
                     const sampler_params *params, int32_t *out)
{
    if (!lm || !lm->next_logits || lm->vocab_size <= 0 || lm->max_seq_len <= 0 || !prompt || n_prompt <= 0 ||
        max_new_tokens < 0 || n_prompt > INT_MAX - max_new_tokens || !out)
        return SAMPLER_EINVAL;
    int vocab = lm->vocab_size;
    if (sampler_params_validate(params, vocab, NULL) != SAMPLER_OK) return SAMPLER_EINVAL;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= vocab) return SAMPLER_EINVAL;

    memmove(out, prompt, (size_t)n_prompt * sizeof *out);
    int len = n_prompt;
    if (max_new_tokens == 0) return len;

    sampler_scratch sc;
    float *logits = malloc((size_t)vocab * sizeof *logits); /* (vocab) */
    if (!logits) return SAMPLER_ENOMEM;
    if (sampler__scratch_init(&sc, vocab) != SAMPLER_OK) {
        free(logits);
        return SAMPLER_ENOMEM;
    }
    sampler_rng rng;
    sampler_rng_seed(&rng, params->seed);

    int rc = SAMPLER_OK, start = 0;
    for (int step = 0; step < max_new_tokens; step++) {
        start = sampler_crop_start(params->crop, start, len, lm->max_seq_len);
        if (start < 0) break; /* the window is full and the policy stops there */
        rc = lm->next_logits(lm, out + start, len - start, logits);
        if (rc != 0) {
            if (rc > 0) rc = SAMPLER_EINVAL; /* contract breach: a failure must be negative */
            break;
        }
        int32_t token;
        rc = sampler__choose(params, &sc, &rng, logits, out, len, len - n_prompt, NULL, &token);
        if (rc < 0) break;
        out[len++] = token;
        if (params->constraint) {
            rc = sampler_constraint_accept(params->constraint, token);
            int status = rc < 0 ? rc : sampler_constraint_status(params->constraint);
            if (status < 0) {
                rc = status;
                break;
            }
            rc = SAMPLER_OK;
            if (status == SAMPLER_CONSTRAINT_COMPLETE || status == SAMPLER_CONSTRAINT_STUCK)
                break; /* the text is whole (or cannot go on) */
        }
        if (is_stop(params, token)) break;
        if (params->on_token && params->on_token(params->on_token_user, token, len - n_prompt) != 0)
            break; /* cancelled by the caller between steps */
    }
    sampler__scratch_release(&sc);
    free(logits);
    return rc < 0 ? rc : len;
}
