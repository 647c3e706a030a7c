/* forward.h -- internals shared by the forward pass of each architecture.
 *
 * model_forward (forward.c) validates a batch, makes room in every sequence's
 * KV cache and in the scratch activations, calls the architecture's compute
 * function (forward_llama here; a GPT-2 one can live in its own file and be
 * added to the switch in model_forward), and only then appends the tokens.
 * Compute functions cannot fail: everything they need is allocated before.
 *
 * Row legend: T = total rows of the batch (sum of n_tokens), rows of item i
 * are [b->row0[i], b->row0[i + 1]), row r has position b->pos[r] in its
 * sequence.  Included only by the model module and its tests.
 */
#ifndef LMSERVE_MODEL_FORWARD_H
#define LMSERVE_MODEL_FORWARD_H

#include "model/model_internal.h"

#include <stddef.h>
#include <stdint.h>

/* KV cache of one sequence: K and V are (n_layers, n_kv_heads, cap, head_dim),
 * so the keys one head attends over are contiguous. */
struct model_seq {
    const model *m;
    int cap_max;         /* positions this sequence may hold */
    int cap;             /* positions allocated so far (grows on demand) */
    int len;             /* positions filled */
    int32_t *tokens;     /* (cap) */
    int kv_f16;          /* k and v hold IEEE halves (uint16_t), else floats */
    void *k, *v;         /* (n_layers, n_kv_heads, cap, head_dim) */
};

/* Bytes of one cached K or V element. */
static inline size_t seq_esz(const model_seq *s)
{
    return s->kv_f16 ? 2 : 4;
}

/* Make room for n positions (n <= cap_max); contents are kept.  0 or MODEL_ENOMEM. */
int seq_reserve(model_seq *s, int n);

/* Where (layer, kv head, position)'s head_dim elements start, in k or v. */
static inline void *seq_at(const model_seq *s, void *base, int layer, int kvh, int pos)
{
    const model_info *in = &s->m->info;
    return (char *)base +
           (((size_t)layer * in->n_kv_heads + kvh) * s->cap + pos) * in->head_dim * seq_esz(s);
}
static inline void *seq_k(const model_seq *s, int layer, int kvh, int pos)
{
    return seq_at(s, s->k, layer, kvh, pos);
}
static inline void *seq_v(const model_seq *s, int layer, int kvh, int pos)
{
    return seq_at(s, s->v, layer, kvh, pos);
}

typedef struct {
    int cap_rows;        /* rows the buffers below hold */
    int cap_items;
    float *x;            /* (T, dim) residual stream */
    float *xb;           /* (T, max(dim, q_dim)) normed input / projection output */
    float *q;            /* (T, n_heads * head_dim) */
    float *k, *v;        /* (T, n_kv_heads * head_dim) */
    float *att;          /* (T, n_heads * head_dim) attention output */
    float *hb, *hb2;     /* (T, hidden_dim) */
    int *pos;            /* (T) */
    int *row0;           /* (n_items + 1) */
    float *scores;       /* (n_items * n_heads, max positions) attention weights */
    size_t cap_scores;
    float *xl;           /* (n_items, dim) final rows whose last-position logits are wanted */
    float *logits;       /* (n_items, vocab) */
    float *rope;         /* (ctx_len, rope_dim / 2, 2): cos, sin per position and pair */
    int rope_ctx;
} fwd_scratch;

typedef struct {
    model_batch_item *items;
    int n_items;
    int n_rows;          /* T */
    const int *row0;     /* (n_items + 1) */
    const int *pos;      /* (T) */
    int max_len;         /* longest sequence after this call */
} fwd_batch;

/* Architecture compute functions: run every row through the layers, leave the
 * final-normalised rows in sc->xb (T, dim) for forward_logits. */
void forward_llama(model *m, fwd_scratch *sc, const fwd_batch *b);

/* Shared steps. */
void forward_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* (rope: RoPE on the rows' q and k first, then) rows' K and V (sc->k, sc->v) into
 * their sequences' caches for `layer`, then causal grouped-query attention of
 * sc->q over the caches -> sc->att. */
void forward_attention(model *m, fwd_scratch *sc, const fwd_batch *b, int layer, int rope);
/* Classifier on the final rows in sc->xb for the items that want logits. */
void forward_logits(model *m, fwd_scratch *sc, const fwd_batch *b);

#endif /* LMSERVE_MODEL_FORWARD_H */
