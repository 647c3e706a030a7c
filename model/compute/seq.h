/* seq.h -- a sequence's KV cache (seq.c), as the forward pass reads and fills it.
 * Internal to model/. */
#ifndef LMSERVE_MODEL_SEQ_H
#define LMSERVE_MODEL_SEQ_H

#include "model/model_internal.h"

#include <stddef.h>
#include <stdint.h>

/* KV cache of one sequence: K and V are (n_layers, n_kv_heads, cap, head_dim),
 * so the keys one head attends over are contiguous. */
struct model_seq {
    const model *m;
    int cap_max;     /* positions this sequence may hold */
    int cap;         /* positions allocated so far (grows on demand) */
    int len;         /* positions filled */
    int32_t *tokens; /* (cap) */
    int kv_f16;      /* k and v hold IEEE halves (uint16_t), else floats */
    void *k, *v;     /* (n_layers, n_kv_heads, cap, head_dim) */
};

/* Bytes of one cached K or V element. */
static inline size_t seq_esz(const model_seq *s) { return s->kv_f16 ? 2 : 4; }

/* Make room for n positions (n <= cap_max); contents are kept.  0 or MODEL_ENOMEM. */
int seq_reserve(model_seq *s, int n);

/* Where (layer, kv head, position)'s head_dim elements start, in k or v. */
static inline void *seq_at(const model_seq *s, void *base, int layer, int kvh, int pos)
{
    const model_info *in = &s->m->info;
    return (char *)base + (((size_t)layer * in->n_kv_heads + kvh) * s->cap + pos) * in->head_dim * seq_esz(s);
}
static inline void *seq_k(const model_seq *s, int layer, int kvh, int pos) { return seq_at(s, s->k, layer, kvh, pos); }
static inline void *seq_v(const model_seq *s, int layer, int kvh, int pos) { return seq_at(s, s->v, layer, kvh, pos); }

#endif /* LMSERVE_MODEL_SEQ_H */
