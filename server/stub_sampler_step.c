/* stub_sampler_step.c -- TEMPORARY: the step-wise half of sampler.h (sampler_new,
 * sampler_step, sampler_logprobs, sampler_free) so build/lmserve links before the
 * sampler branch is merged.  Greedy or plain temperature sampling plus logit_bias
 * only.  sampler_params_validate is weak here because cli/stub_sampler.c (also
 * temporary) defines it for the binary; the tests link this one.
 * Delete this file when sampler/ defines these functions (a duplicate-symbol link
 * error will also say so). */
#include "sampler/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

__attribute__((weak)) int sampler_params_validate(const sampler_params *p, int vocab, const char **name)
{
    (void)p; (void)vocab;
    if (name) *name = NULL;
    return SAMPLER_OK;
}

struct sampler {
    int vocab;
    float *bias;
    float temperature;
    uint64_t state;
    float *lp;
};

sampler *sampler_new(int vocab, const sampler_params *p)
{
    if (vocab <= 0 || !p || !(p->temperature >= 0)) return NULL;
    sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->lp = malloc(sizeof(float) * (size_t)vocab);
    if (!s->lp) {
        free(s);
        return NULL;
    }
    s->vocab = vocab;
    s->bias = calloc((size_t)vocab, sizeof(float));
    if (!s->bias) {
        free(s->lp);
        free(s);
        return NULL;
    }
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias_ids[i] >= 0 && p->bias_ids[i] < vocab) s->bias[p->bias_ids[i]] += p->bias_values[i];
    s->temperature = p->temperature;
    s->state = p->seed * 0x9E3779B97F4A7C15ull + 1;
    return s;
}

void sampler_free(sampler *s)
{
    if (!s) return;
    free(s->bias);
    free(s->lp);
    free(s);
}

static void log_softmax(const float *l, int n, float *out)
{
    float mx = l[0];
    for (int i = 1; i < n; i++)
        if (l[i] > mx) mx = l[i];
    double z = 0;
    for (int i = 0; i < n; i++) z += exp((double)(l[i] - mx));
    float lz = (float)log(z);
    for (int i = 0; i < n; i++) out[i] = l[i] - mx - lz;
}

static void fill_top(const float *lp, int n, int k, sampler_choice *c)
{
    if (k > SAMPLER_MAX_TOP) k = SAMPLER_MAX_TOP;
    if (k > n) k = n;
    c->n_top = k;
    for (int t = 0; t < k; t++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int used = 0;
            for (int u = 0; u < t; u++) used |= c->top[u].id == i;
            if (!used && (best < 0 || lp[i] > lp[best])) best = i;
        }
        c->top[t].id = best;
        c->top[t].logprob = lp[best];
    }
}

int sampler_logprobs(const float *logits, int vocab, int32_t token, int n_top, sampler_choice *out)
{
    if (!logits || vocab <= 0 || token < 0 || token >= vocab) return SAMPLER_EINVAL;
    float *lp = malloc(sizeof(float) * (size_t)vocab);
    if (!lp) return SAMPLER_ENOMEM;
    log_softmax(logits, vocab, lp);
    out->token = token;
    out->logprob = lp[token];
    fill_top(lp, vocab, n_top, out);
    free(lp);
    return SAMPLER_OK;
}

int sampler_step(sampler *s, const float *logits, const int32_t *ids, int n_ids,
                 int n_generated, int n_top, sampler_choice *out)
{
    (void)ids; (void)n_ids; (void)n_generated;
    log_softmax(logits, s->vocab, s->lp);
    int tok = 0;
    for (int i = 1; i < s->vocab; i++)
        if (logits[i] + s->bias[i] > logits[tok] + s->bias[tok]) tok = i;
    if (s->temperature > 0) {
        s->state ^= s->state << 13;
        s->state ^= s->state >> 7;
        s->state ^= s->state << 17;
        double u = (double)(s->state >> 11) / 9007199254740992.0, acc = 0, z = 0;
        for (int i = 0; i < s->vocab; i++) z += exp((double)(s->lp[i] + s->bias[i]) / s->temperature);
        for (int i = 0; i < s->vocab; i++) {
            acc += exp((double)(s->lp[i] + s->bias[i]) / s->temperature) / z;
            if (u < acc) {
                tok = i;
                break;
            }
        }
    }
    out->token = tok;
    out->logprob = s->lp[tok];
    fill_top(s->lp, s->vocab, n_top, out);
    return SAMPLER_OK;
}
