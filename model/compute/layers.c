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

/* (With c->rope, RoPE on) the k rows of item's kv head kvh, then those k and v rows
 * into the item's cache. */
static void attn_store(const attn_ctx *c, int item, int kvh)
{
    const model_info *in = &c->m->info;
    const fwd_batch *b = c->b;
    fwd_scratch *sc = c->sc;
    size_t kvd = (size_t)in->n_kv_heads * in->head_dim;
    int rd = c->rope ? forward_rope_dim(in) : 0;
    for (int r = b->row0[item]; r < b->row0[item + 1]; r++) {
        if (c->rope)
            rope_row(sc->k + r * kvd + (size_t)kvh * in->head_dim, 1, in->head_dim, rd, c->m->rope_neox,
                     sc->rope + (size_t)b->pos[r] * (rd / 2) * 2);
        store_kv_head(in, sc, b->items[item].seq, c->layer, r, b->pos[r], kvh);
    }
}

/* (With c->rope, RoPE on) q head h of item's rows, then each of those query rows
 * attends over the cache (whose new rows attn_store has stored); sc_buf: scores. */
static void attn_head(const attn_ctx *c, int item, int h, float *sc_buf)
{
    const model_info *in = &c->m->info;
    int hd = in->head_dim, kvh = h / (in->n_heads / in->n_kv_heads);
    const fwd_batch *b = c->b;
    model_seq *s = b->items[item].seq;
    fwd_scratch *sc = c->sc;
    float inv = 1.0f / sqrtf((float)hd);
    size_t qd = (size_t)in->n_heads * hd;
    int rd = c->rope ? forward_rope_dim(in) : 0;
    if (c->rope)
        for (int r = b->row0[item]; r < b->row0[item + 1]; r++)
            rope_row(sc->q + r * qd + (size_t)h * hd, 1, hd, rd, c->m->rope_neox,
                     sc->rope + (size_t)b->pos[r] * (rd / 2) * 2);
    const void *kbase = seq_k(s, c->layer, kvh, 0), *vbase = seq_v(s, c->layer, kvh, 0);
    for (int r = b->row0[item]; r < b->row0[item + 1]; r++) {
        const float *q = sc->q + r * qd + (size_t)h * hd;
        float *out = sc->att + r * qd + (size_t)h * hd;
        if (s->kv_f16)
            kernel_attend_f16(out, q, kbase, vbase, b->pos[r] + 1, hd, inv, sc_buf);
        else
            kernel_attend(out, q, kbase, vbase, b->pos[r] + 1, hd, inv, sc_buf);
    }
}

/* One (item, kv head): its K/V rows into the cache, then its q heads.  Doing the
 * RoPE and the cache store here instead of in a step of their own saves one pool
 * barrier per layer; each element gets the same operations either way. */
static void attn_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    const attn_ctx *c = arg;
    const model_info *in = &c->m->info;
    int nkv = in->n_kv_heads, group = in->n_heads / nkv;
    int item = task / nkv, kvh = task % nkv;
    attn_store(c, item, kvh);
    for (int g = 0; g < group; g++) attn_head(c, item, kvh * group + g, c->sc->scores + (size_t)task * c->b->max_len);
}

static void store_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    const attn_ctx *c = arg;
    attn_store(c, task / c->m->info.n_kv_heads, task % c->m->info.n_kv_heads);
}

static void head_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    const attn_ctx *c = arg;
    attn_head(c, task / c->m->info.n_heads, task % c->m->info.n_heads, c->sc->scores + (size_t)task * c->b->max_len);
}

void forward_attention(model *m, fwd_scratch *sc, const fwd_batch *b, int layer, int rope)
{
    attn_ctx c = { m, sc, b, layer, rope };
    int nkv = m->info.n_kv_heads, group = m->info.n_heads / nkv, nt = model_pool_size(m->pool);
    int n_kv_tasks = b->n_items * nkv;
    if (group == 1 || n_kv_tasks % nt == 0) {
        model_pool_run(m->pool, attn_task, &c, n_kv_tasks);
        return;
    }
    /* Grouped-query attention whose (item, kv head) tasks do not split evenly over
     * the threads (e.g. 5 kv heads of 3 q heads each on 2 threads: one thread would
     * run 9 heads, the other 6): the cache stores first, then a task per q head.
     * A single decoding row stores inline (a few hundred elements: cheaper than a
     * pool barrier); more rows take a dispatch of their own. */
    if (b->n_rows <= 2)
        for (int t = 0; t < n_kv_tasks; t++) store_task(&c, t, n_kv_tasks);
    else
        model_pool_run(m->pool, store_task, &c, n_kv_tasks);
    model_pool_run(m->pool, head_task, &c, b->n_items * m->info.n_heads);
}

/* Q, K, V projections and attention in one dispatch, a task per kv head: the task
 * makes that head's rows of q (its group of q heads), k and v for every row of the
 * batch, then stores and attends with them, so no task waits for another's and one
 * thread's attention overlaps the other's weight reads.  For batches of a few rows
 * (decoding) when the kv heads split evenly over the threads, at least 4 each (a
 * thread that starts late then costs at most a small task), and the heads' row
 * ranges are whole register blocks; else the matmul dispatch, then
 * forward_attention.  Each element's operations are the same either way. */
#define QKV_FUSE_ROWS 8

typedef struct {
    attn_ctx a;
    const kernel_mm *mm;
} qkv_ctx;

static void qkv_attn_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    const qkv_ctx *c = arg;
    const model_info *in = &c->a.m->info;
    int hd = in->head_dim, group = in->n_heads / in->n_kv_heads, kvh = task;
    kernel_mm_rows(c->mm, 0, kvh * group * hd, (kvh + 1) * group * hd);
    kernel_mm_rows(c->mm, 1, kvh * hd, (kvh + 1) * hd);
    kernel_mm_rows(c->mm, 2, kvh * hd, (kvh + 1) * hd);
    const fwd_batch *b = c->a.b;
    for (int item = 0; item < b->n_items; item++) {
        attn_store(&c->a, item, kvh);
        for (int g = 0; g < group; g++) {
            int h = kvh * group + g;
            attn_head(&c->a, item, h, c->a.sc->scores + ((size_t)item * in->n_heads + h) * b->max_len);
        }
    }
}

void forward_qkv_attention(model *m, fwd_scratch *sc, const fwd_batch *b, int layer, const kernel_job qkv[3])
{
    const model_info *in = &m->info;
    int hd = in->head_dim, group = in->n_heads / in->n_kv_heads, nkv = in->n_kv_heads;
    int nt = model_pool_size(m->pool);
    int fuse = b->n_rows <= QKV_FUSE_ROWS && nkv % nt == 0 && nkv >= 4 * nt;
    for (int i = 0; i < 3 && fuse; i++) {
        int unit = kernel_mm_unit(qkv[i].w), span = i == 0 ? group * hd : hd;
        fuse = span % unit == 0 && qkv[i].w->rows == nkv * span;
    }
    kernel_mm mm;
    if (fuse && kernel_mm_prepare(&mm, m->pool, qkv, 3, sc->xb, b->n_rows) == 0) {
        qkv_ctx c = { { m, sc, b, layer, 1 }, &mm };
        model_pool_run(m->pool, qkv_attn_task, &c, nkv);
        return;
    }
    kernel_matmul_multi(m->pool, qkv, 3, sc->xb, b->n_rows);
    forward_attention(m, sc, b, layer, 1);
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
