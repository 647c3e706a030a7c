/* toy_lm.h -- deterministic toy language models for the sampler tests (header-only).
 *
 * toy_lm wraps sampler_lm and records every call: how many, the largest context,
 * and a copy of each context so tests can check the exact crop.
 */
#ifndef LMSERVE_TESTS_TOY_LM_H
#define LMSERVE_TESTS_TOY_LM_H

#include "sampler/sampler.h"

#include <math.h>
#include <string.h>

enum { TOY_MAX_CALLS = 512, TOY_MAX_CTX = 64 };

typedef enum {
    TOY_WAVE,     /* broad, context-dependent distribution */
    TOY_REPEATER, /* token 5 is best (2.0), the rest 1 + 0.01 v (all positive) */
} toy_kind;

typedef struct {
    sampler_lm lm; /* first member: the callback gets &toy->lm */
    toy_kind kind;
    int calls;
    int max_ctx_seen;
    int fail_at_call; /* > 0: return -5 on that call (1-based) */
    int n_ctx[TOY_MAX_CALLS];
    int32_t ctx[TOY_MAX_CALLS][TOY_MAX_CTX];
} toy_lm;

static inline void toy_logits(toy_kind kind, const int32_t *ctx, int n_ctx, int vocab, float *out)
{
    int32_t last = ctx[n_ctx - 1];
    uint32_t h = 2166136261u; /* FNV-1a over the context */
    for (int i = 0; i < n_ctx; i++) h = (h ^ (uint32_t)ctx[i]) * 16777619u;
    for (int v = 0; v < vocab; v++) {
        if (kind == TOY_REPEATER)
            out[v] = v == 5 ? 2.0f : 1.0f + 0.01f * (float)v;
        else
            out[v] = 2.0f * sinf(0.9f * (float)v + 0.37f * (float)last + (float)(h % 97) * 0.05f);
    }
}

static inline int toy_next_logits(sampler_lm *lm, const int32_t *ctx, int n_ctx, float *logits)
{
    toy_lm *t = (toy_lm *)lm;
    if (t->calls < TOY_MAX_CALLS) {
        t->n_ctx[t->calls] = n_ctx;
        memcpy(t->ctx[t->calls], ctx, (size_t)(n_ctx < TOY_MAX_CTX ? n_ctx : TOY_MAX_CTX) * sizeof *ctx);
    }
    t->calls++;
    if (n_ctx > t->max_ctx_seen) t->max_ctx_seen = n_ctx;
    if (t->fail_at_call > 0 && t->calls == t->fail_at_call) return -5;
    toy_logits(t->kind, ctx, n_ctx, lm->vocab_size, logits);
    return 0;
}

static inline void toy_init(toy_lm *t, toy_kind kind, int vocab, int max_seq_len)
{
    memset(t, 0, sizeof *t);
    t->lm.vocab_size = vocab;
    t->lm.max_seq_len = max_seq_len;
    t->lm.next_logits = toy_next_logits;
    t->kind = kind;
}

#endif /* LMSERVE_TESTS_TOY_LM_H */
