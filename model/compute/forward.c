/* forward.c -- the batched forward pass's entry points: model_forward (checks,
 * memory, the architecture's compute function, the classifier) and model_seq_eval.
 *
 * Design
 * ------
 * All rows of all batch items travel together through the matmuls (one
 * kernel call per weight matrix per layer, Q/K/V and gate/up grouped into one
 * dispatch each; the SwiGLU gate runs inside the gate/up tasks), so every
 * weight is read once per call.  Attention is the only per-item step; it runs
 * as pool tasks over (item, kv head), each first applying RoPE to its heads
 * and storing the item's new K/V rows for its kv head.  A prefill chunk's row
 * t attends to positions [0, pos_t] of its own sequence, whose K/V for the
 * chunk were stored just before, so it is causal within the chunk and over
 * the cache.
 *
 * Batch independence: every per-row step (embedding, RMSNorm, RoPE, the
 * kernels, SwiGLU, attention for one query row, the classifier) computes a
 * row from that row's inputs with a fixed sequence of operations; nothing
 * sums across rows or depends on how rows are grouped or on thread count.
 * So one sequence's logits are bit-identical alone or inside any batch, and
 * a prefill chunk gives the same bits as the same tokens fed one at a time.
 *
 * Errors (bad token, full sequence, out of memory) are detected before any
 * sequence changes; the compute functions cannot fail.
 */
#include "model/compute/forward.h"
#include "model/compute/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Scratch ------------------------------------------------------------------ */

void forward_scratch_free(void *scratch)
{
    fwd_scratch *sc = scratch;
    if (!sc) return;
    free(sc->x);
    free(sc->xb);
    free(sc->q);
    free(sc->k);
    free(sc->v);
    free(sc->att);
    free(sc->hb);
    free(sc->hb2);
    free(sc->pos);
    free(sc->row0);
    free(sc->scores);
    free(sc->xl);
    free(sc->logits);
    free(sc->rope);
    free(sc);
}

static int grow(void *pp, size_t n, size_t size)
{
    void **p = pp;
    size_t bytes = n * size;
    void *q = malloc(bytes ? bytes : 1);
    if (!q) return MODEL_ENOMEM;
    free(*p);
    *p = q;
    return 0;
}

static int scratch_reserve(model *m, int n_rows, int n_items, size_t n_scores)
{
    const model_info *in = &m->info;
    if (!m->scratch) {
        m->scratch = calloc(1, sizeof(fwd_scratch));
        if (!m->scratch) return MODEL_ENOMEM;
    }
    fwd_scratch *sc = m->scratch;
    size_t qd = (size_t)in->n_heads * in->head_dim, kvd = (size_t)in->n_kv_heads * in->head_dim;
    size_t wide = qd > (size_t)in->dim ? qd : (size_t)in->dim;
    if (n_rows > sc->cap_rows) {
        int r = n_rows > 2 * sc->cap_rows ? n_rows : 2 * sc->cap_rows;
        sc->cap_rows = 0;
        if (grow(&sc->x, (size_t)r * in->dim, 4) || grow(&sc->xb, (size_t)r * wide, 4) ||
            grow(&sc->q, (size_t)r * qd, 4) || grow(&sc->k, (size_t)r * kvd, 4) || grow(&sc->v, (size_t)r * kvd, 4) ||
            grow(&sc->att, (size_t)r * qd, 4) || grow(&sc->hb, (size_t)r * in->hidden_dim, 4) ||
            grow(&sc->hb2, (size_t)r * in->hidden_dim, 4) || grow(&sc->pos, (size_t)r, sizeof(int)))
            return MODEL_ENOMEM;
        sc->cap_rows = r;
    }
    if (n_items > sc->cap_items) {
        int r = n_items > 2 * sc->cap_items ? n_items : 2 * sc->cap_items;
        sc->cap_items = 0;
        if (grow(&sc->row0, (size_t)r + 1, sizeof(int)) || grow(&sc->xl, (size_t)r * in->dim, 4) ||
            grow(&sc->logits, (size_t)r * in->vocab_size, 4))
            return MODEL_ENOMEM;
        sc->cap_items = r;
    }
    if (n_scores > sc->cap_scores) {
        sc->cap_scores = 0;
        if (grow(&sc->scores, n_scores, 4)) return MODEL_ENOMEM;
        sc->cap_scores = n_scores;
    }
    if (m->arch == ARCH_LLAMA && !sc->rope) {
        int half = forward_rope_dim(in) / 2;
        float *t = malloc((size_t)in->ctx_len * (half ? half : 1) * 2 * sizeof(float));
        if (!t) return MODEL_ENOMEM;
        /* ggml's arithmetic (ggml-cpu/ops.cpp, rope cache), in float: the angle of
         * pair i at position p starts at p and is multiplied by
         * powf(base, -2 / rope_dim) once per pair, then cosf / sinf. */
        float base = in->rope_theta > 0 ? in->rope_theta : 10000.0f;
        float step = powf(base, -2.0f / (float)(2 * half));
        for (int p = 0; p < in->ctx_len; p++) {
            float a = (float)p;
            for (int i = 0; i < half; i++) {
                t[((size_t)p * half + i) * 2] = cosf(a);
                t[((size_t)p * half + i) * 2 + 1] = sinf(a);
                a *= step;
            }
        }
        sc->rope = t;
        sc->rope_ctx = in->ctx_len;
    }
    return 0;
}

/* ---- Entry points ------------------------------------------------------------------ */

int model_forward(model *m, model_batch_item *items, int n_items)
{
    if (!m || !items || n_items <= 0) return MODEL_EINVAL;
    const model_info *in = &m->info;
    if (in->n_heads <= 0 || in->n_kv_heads <= 0 || in->n_heads % in->n_kv_heads) return MODEL_EINVAL;
    int T = 0, max_len = 0;
    for (int i = 0; i < n_items; i++) {
        const model_batch_item *it = &items[i];
        if (!it->seq || it->seq->m != m || !it->tokens || it->n_tokens <= 0) return MODEL_EINVAL;
        for (int j = 0; j < i; j++)
            if (items[j].seq == it->seq) return MODEL_EINVAL;
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= in->vocab_size) return MODEL_EINVAL;
        if (it->n_tokens > it->seq->cap_max - it->seq->len) return MODEL_ERANGE;
        if (it->n_tokens > (1 << 28) - T) return MODEL_EINVAL;
        T += it->n_tokens;
        if (it->seq->len + it->n_tokens > max_len) max_len = it->seq->len + it->n_tokens;
    }
    for (int i = 0; i < n_items; i++) {
        int rc = seq_reserve(items[i].seq, items[i].seq->len + items[i].n_tokens);
        if (rc) return rc;
    }
    int rc = scratch_reserve(m, T, n_items, (size_t)n_items * in->n_heads * max_len);
    if (rc) return rc;
    fwd_scratch *sc = m->scratch;
    sc->row0[0] = 0;
    for (int i = 0; i < n_items; i++) {
        sc->row0[i + 1] = sc->row0[i] + items[i].n_tokens;
        for (int t = 0; t < items[i].n_tokens; t++) sc->pos[sc->row0[i] + t] = items[i].seq->len + t;
    }
    fwd_batch b = { items, n_items, T, sc->row0, sc->pos, max_len };

    switch (m->arch) {
    case ARCH_LLAMA: forward_llama(m, sc, &b); break;
    case ARCH_GPT2:
        forward_gpt2(m, sc, &b); /* model/compute/forward_gpt2.c */
        break;
    default: return MODEL_EINVAL;
    }
    forward_logits(m, sc, &b);

    for (int i = 0; i < n_items; i++) {
        model_seq *s = items[i].seq;
        memcpy(s->tokens + s->len, items[i].tokens, (size_t)items[i].n_tokens * sizeof(int32_t));
        s->len += items[i].n_tokens;
    }
    return 0;
}

int model_seq_eval(model *m, model_seq *s, const int32_t *ctx, int n_ctx, float *logits)
{
    if (!m || !s || !ctx || n_ctx <= 0 || !logits || s->m != m) return MODEL_EINVAL;
    if (n_ctx > s->cap_max) return MODEL_ERANGE;
    int p = 0;
    while (p < s->len && p < n_ctx - 1 && s->tokens[p] == ctx[p]) p++;
    int old = s->len;
    model_seq_truncate(s, p);
    model_batch_item it = { .seq = s, .tokens = ctx + p, .n_tokens = n_ctx - p, .logits = logits };
    int rc = model_forward(m, &it, 1);
    if (rc && s->len == p && old > p) {
        /* The cache beyond p is intact after a failed call: the positions were
         * only forgotten, so restore them when they still match. */
        s->len = old;
    }
    return rc;
}
