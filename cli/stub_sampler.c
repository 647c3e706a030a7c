/* stub_sampler.c -- TEMPORARY: lets build/lmserve link before the sampler
 * branch is merged.  It samples nothing: generate reports an error.  Delete
 * this file when sampler/ defines these functions (a duplicate-symbol link
 * error will also say so). */
#include "sampler/sampler.h"

#include <stdio.h>

int sampler_params_validate(const sampler_params *p, int vocab, const char **name)
{
    (void)p; (void)vocab;
    if (name) *name = NULL;
    return SAMPLER_OK;
}

int sampler_generate(sampler_lm *lm, const int32_t *prompt, int n_prompt, int max_new_tokens,
                     const sampler_params *params, int32_t *out)
{
    (void)lm; (void)prompt; (void)n_prompt; (void)max_new_tokens; (void)params; (void)out;
    fprintf(stderr, "lmserve: this build has no sampler yet (cli/stub_sampler.c)\n");
    return SAMPLER_EINVAL;
}
