/* layers.c -- the forward pass's steps that every architecture shares: RMSNorm,
 * RoPE, the KV store with causal attention over the caches, and the classifier.
 * Each computes a row from that row's inputs with a fixed sequence of
 * operations (forward.c's design note), whatever the batch. */
#include "model/compute/forward.h"
#include "model/compute/kernels.h"

#include <math.h>
#include <string.h>

/* ggml's arithmetic (ggml-cpu/ops.cpp, rms_norm then mul), so that the activations
 * llama.cpp quantizes for the next matmul are the same bits: each square rounded to
 * float, summed in double, the mean rounded to float, scale = 1 / sqrtf(mean + eps)
 * in float, out = (x * scale) * w. */
void forward_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
    float mean = (float)(ss / n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* Rotate the pairs of each head of one row (n_heads heads) at position pos. */
static void rope_row(float *v, int n_heads, int hd, int rope_dim, int neox, const float *cs)
{
    int half = rope_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * hd;
        for (int i = 0; i < half; i++) {
            int a = neox ? i : 2 * i, bb = neox ? i + half : 2 * i + 1;
            float c = cs[2 * i], s = cs[2 * i + 1];
            float x0 = x[a], x1 = x[bb];
            x[a] = x0 * c - x1 * s;
            x[bb] = x0 * s + x1 * c;
        }
    }
}

/* Row r's k and v of kv head h into sequence s's cache at position pos. */
static void store_kv_head(const model_info *in, const fwd_scratch *sc, model_seq *s, int layer, int r, int pos, int h)
{
    int hd = in->head_dim, kvd = in->n_kv_heads * hd;
    const float *k = sc->k + (size_t)r * kvd + h * hd, *v = sc->v + (size_t)r * kvd + h * hd;
    if (s->kv_f16) {
        kernel_to_f16(seq_k(s, layer, h, pos), k, hd);
        kernel_to_f16(seq_v(s, layer, h, pos), v, hd);
    } else {
        memcpy(seq_k(s, layer, h, pos), k, hd * 4);
        memcpy(seq_v(s, layer, h, pos), v, hd * 4);
    }
}

typedef struct {
    model *m;
    fwd_scratch *sc;
    const fwd_batch *b;
    int layer;
    int rope; /* 1: RoPE on q and k first (llama); 0: none (gpt2) */
} attn_ctx;

/* One (item, kv head): (with c->rope, RoPE on the item's rows of that kv head's k
 * and of its q heads, then) k, v of those rows into the cache; then every query
 * row of the item for each of those q heads.  Doing the RoPE and the cache store
 * here instead of in a step of their own saves one pool barrier per layer; each
 * element gets the same operations either way. */
static void attn_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    const attn_ctx *c = arg;
    const model_info *in = &c->m->info;
    int nh = in->n_heads, nkv = in->n_kv_heads, hd = in->head_dim, group = nh / nkv;
    int item = task / nkv, kvh = task % nkv;
    const fwd_batch *b = c->b;
    model_seq *s = b->items[item].seq;
    fwd_scratch *sc = c->sc;
    float *sc_buf = sc->scores + (size_t)task * b->max_len;
    float inv = 1.0f / sqrtf((float)hd);
    size_t qd = (size_t)nh * hd, kvd = (size_t)nkv * hd;
    int rd = c->rope ? forward_rope_dim(in) : 0;
    for (int r = b->row0[item]; r < b->row0[item + 1]; r++) {
        if (c->rope) {
            const float *cs = sc->rope + (size_t)b->pos[r] * (rd / 2) * 2;
            for (int g = 0; g < group; g++)
                rope_row(sc->q + r * qd + (size_t)(kvh * group + g) * hd, 1, hd, rd, c->m->rope_neox, cs);
            rope_row(sc->k + r * kvd + (size_t)kvh * hd, 1, hd, rd, c->m->rope_neox, cs);
        }
        store_kv_head(in, sc, s, c->layer, r, b->pos[r], kvh);
    }
    const void *kbase = seq_k(s, c->layer, kvh, 0), *vbase = seq_v(s, c->layer, kvh, 0);
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int r = b->row0[item]; r < b->row0[item + 1]; r++) {
            const float *q = sc->q + r * qd + (size_t)h * hd;
            float *out = sc->att + r * qd + (size_t)h * hd;
            if (s->kv_f16)
                kernel_attend_f16(out, q, kbase, vbase, b->pos[r] + 1, hd, inv, sc_buf);
            else
                kernel_attend(out, q, kbase, vbase, b->pos[r] + 1, hd, inv, sc_buf);
        }
    }
}

void forward_attention(model *m, fwd_scratch *sc, const fwd_batch *b, int layer, int rope)
{
    attn_ctx c = { m, sc, b, layer, rope };
    model_pool_run(m->pool, attn_task, &c, b->n_items * m->info.n_kv_heads);
}

void forward_logits(model *m, fwd_scratch *sc, const fwd_batch *b)
{
    const model_info *in = &m->info;
    int dim = in->dim, V = in->vocab_size, n_last = 0;
    for (int i = 0; i < b->n_items; i++) {
        model_batch_item *it = &b->items[i];
        if (!it->logits) continue;
        if (it->all_logits) {
            int n = b->row0[i + 1] - b->row0[i];
            kernel_matmul(m->pool, it->logits, sc->xb + (size_t)b->row0[i] * dim, n, &m->output);
            if (m->output_bias)
                for (int r = 0; r < n; r++)
                    for (int j = 0; j < V; j++) it->logits[(size_t)r * V + j] += m->output_bias[j];
        } else {
            memcpy(sc->xl + (size_t)n_last * dim, sc->xb + (size_t)(b->row0[i + 1] - 1) * dim,
                   (size_t)dim * sizeof(float));
            n_last++;
        }
    }
    if (!n_last) return;
    /* When the callers' logits buffers are consecutive rows of one array (the
     * server's are), write them in place instead of copying 4 * V bytes each. */
    float *direct = NULL;
    int k = 0;
    for (int i = 0; i < b->n_items; i++) {
        model_batch_item *it = &b->items[i];
        if (!it->logits || it->all_logits) continue;
        if (k == 0)
            direct = it->logits;
        else if (it->logits != direct + (size_t)k * V)
            direct = NULL;
        if (!direct) break;
        k++;
    }
    if (direct && !m->output_bias) {
        kernel_matmul(m->pool, direct, sc->xl, n_last, &m->output);
        return;
    }
    kernel_matmul(m->pool, sc->logits, sc->xl, n_last, &m->output);
    k = 0;
    for (int i = 0; i < b->n_items; i++) {
        model_batch_item *it = &b->items[i];
        if (!it->logits || it->all_logits) continue;
        const float *src = sc->logits + (size_t)k++ * V;
        if (m->output_bias)
            for (int j = 0; j < V; j++) it->logits[j] = src[j] + m->output_bias[j];
        else
            memcpy(it->logits, src, (size_t)V * sizeof(float));
    }
}
