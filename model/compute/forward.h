/* forward.h -- internals shared by the forward pass of each architecture.
 *
 * model_forward (forward.c) validates a batch, makes room in every sequence's
 * KV cache and in the scratch activations, calls the architecture's compute
 * function (forward_llama.c, forward_gpt2.c; a new architecture adds a file and
 * a case to the switch in model_forward), and only then appends the tokens.
 * Compute functions cannot fail: everything they need is allocated before.
 * The steps the architectures share live in layers.c.
 *
 * Row legend: T = total rows of the batch (sum of n_tokens), rows of item i
 * are [b->row0[i], b->row0[i + 1]), row r has position b->pos[r] in its
 * sequence.  Included only by the model module and its tests.
 */
#ifndef LMSERVE_MODEL_FORWARD_H
#define LMSERVE_MODEL_FORWARD_H

#include "model/compute/kernels.h"
#include "model/compute/seq.h"
#include "model/model_internal.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int cap_rows; /* rows the buffers below hold */
    int cap_items;
    float *x;        /* (T, dim) residual stream */
    float *xb;       /* (T, max(dim, q_dim)) normed input / projection output */
    float *q;        /* (T, n_heads * head_dim) */
    float *k, *v;    /* (T, n_kv_heads * head_dim) */
    float *att;      /* (T, n_heads * head_dim) attention output */
    float *hb, *hb2; /* (T, hidden_dim) */
    int *pos;        /* (T) */
    int *row0;       /* (n_items + 1) */
    float *scores;   /* (n_items * n_heads, max positions) attention weights */
    size_t cap_scores;
    float *xl;     /* (n_items, dim) final rows whose last-position logits are wanted */
    float *logits; /* (n_items, vocab) */
    float *rope;   /* (ctx_len, rope_dim / 2, 2): cos, sin per position and pair */
    int rope_ctx;
} fwd_scratch;

typedef struct {
    model_batch_item *items;
    int n_items;
    int n_rows;      /* T */
    const int *row0; /* (n_items + 1) */
    const int *pos;  /* (T) */
    int max_len;     /* longest sequence after this call */
} fwd_batch;

/* Release the scratch activations (model_free). */
void forward_scratch_free(void *scratch);

/* Dimensions RoPE rotates per head: rope_dim, or head_dim when out of range; even. */
static inline int forward_rope_dim(const model_info *in)
{
    int rd = in->rope_dim;
    if (rd <= 0 || rd > in->head_dim) rd = in->head_dim;
    return rd & ~1;
}

/* Architecture compute functions: run every row through the layers, leave the
 * final-normalised rows in sc->xb (T, dim) for forward_logits. */
void forward_llama(model *m, fwd_scratch *sc, const fwd_batch *b); /* forward_llama.c */
void forward_gpt2(model *m, fwd_scratch *sc, const fwd_batch *b);  /* forward_gpt2.c */

/* ---- Shared steps (layers.c) ---- */

/* RMSNorm of one row: out = x / sqrt(mean(x^2) + eps) * w. */
void forward_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* LayerNorm of one row: out = (x - mean) / sqrt(var + eps) * w + bias, population variance. */
void forward_layernorm(float *out, const float *x, const float *w, const float *bias, int n, float eps);
/* (rope: RoPE on the rows' q and k first, then) rows' K and V (sc->k, sc->v) into
 * their sequences' caches for `layer`, then causal grouped-query attention of
 * sc->q over the caches -> sc->att. */
void forward_attention(model *m, fwd_scratch *sc, const fwd_batch *b, int layer, int rope);
/* kernel_matmul_multi of qkv (the q, k, v projections of sc->xb into sc->q, sc->k,
 * sc->v), then forward_attention with RoPE; for a few rows in one pool dispatch
 * (layers.c). */
void forward_qkv_attention(model *m, fwd_scratch *sc, const fwd_batch *b, int layer, const kernel_job qkv[3]);
/* Classifier on the final rows in sc->xb for the items that want logits. */
void forward_logits(model *m, fwd_scratch *sc, const fwd_batch *b);

#endif /* LMSERVE_MODEL_FORWARD_H */
