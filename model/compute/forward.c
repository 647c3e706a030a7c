/* forward.c -- the batched forward pass (llama architecture) and model_seq_eval.
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
#include "model/formats/formats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- Scratch ------------------------------------------------------------------ */

void forward_scratch_free(void *scratch)
{
    fwd_scratch *sc = scratch;
    if (!sc)
        return;
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
    if (!q)
        return MODEL_ENOMEM;
    free(*p);
    *p = q;
    return 0;
}

static int rope_dim_of(const model_info *in)
{
    int rd = in->rope_dim;
    if (rd <= 0 || rd > in->head_dim)
        rd = in->head_dim;
    return rd & ~1;
}

static int scratch_reserve(model *m, int n_rows, int n_items, size_t n_scores)
{
    const model_info *in = &m->info;
    if (!m->scratch) {
        m->scratch = calloc(1, sizeof(fwd_scratch));
        if (!m->scratch)
            return MODEL_ENOMEM;
    }
    fwd_scratch *sc = m->scratch;
    size_t qd = (size_t)in->n_heads * in->head_dim, kvd = (size_t)in->n_kv_heads * in->head_dim;
    size_t wide = qd > (size_t)in->dim ? qd : (size_t)in->dim;
    if (n_rows > sc->cap_rows) {
        int r = n_rows > 2 * sc->cap_rows ? n_rows : 2 * sc->cap_rows;
        sc->cap_rows = 0;
        if (grow(&sc->x, (size_t)r * in->dim, 4) || grow(&sc->xb, (size_t)r * wide, 4) ||
            grow(&sc->q, (size_t)r * qd, 4) || grow(&sc->k, (size_t)r * kvd, 4) ||
            grow(&sc->v, (size_t)r * kvd, 4) || grow(&sc->att, (size_t)r * qd, 4) ||
            grow(&sc->hb, (size_t)r * in->hidden_dim, 4) ||
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
        if (grow(&sc->scores, n_scores, 4))
            return MODEL_ENOMEM;
        sc->cap_scores = n_scores;
    }
    if (m->arch == ARCH_LLAMA && !sc->rope) {
        int half = rope_dim_of(in) / 2;
        float *t = malloc((size_t)in->ctx_len * (half ? half : 1) * 2 * sizeof(float));
        if (!t)
            return MODEL_ENOMEM;
        double theta = in->rope_theta > 0 ? in->rope_theta : 10000.0;
        for (int p = 0; p < in->ctx_len; p++)
            for (int i = 0; i < half; i++) {
                double freq = pow(theta, -2.0 * i / (2.0 * half));
                double a = (double)p * freq;
                t[((size_t)p * half + i) * 2] = (float)cos(a);
                t[((size_t)p * half + i) * 2 + 1] = (float)sin(a);
            }
        sc->rope = t;
        sc->rope_ctx = in->ctx_len;
    }
    return 0;
}

/* ---- Shared steps ---------------------------------------------------------------- */

void forward_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * scale);
}

/* Row r's k and v of kv head h into sequence s's cache at position pos. */
static void store_kv_head(const model_info *in, const fwd_scratch *sc, model_seq *s, int layer,
                          int r, int pos, int h)
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

static void rope_row(float *v, int n_heads, int hd, int rope_dim, int neox, const float *cs);

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
    int rd = c->rope ? rope_dim_of(in) : 0;
    for (int r = b->row0[item]; r < b->row0[item + 1]; r++) {
        if (c->rope) {
            const float *cs = sc->rope + (size_t)b->pos[r] * (rd / 2) * 2;
            for (int g = 0; g < group; g++)
                rope_row(sc->q + r * qd + (size_t)(kvh * group + g) * hd, 1, hd, rd,
                         c->m->rope_neox, cs);
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
    attn_ctx c = {m, sc, b, layer, rope};
    model_pool_run(m->pool, attn_task, &c, b->n_items * m->info.n_kv_heads);
}

void forward_logits(model *m, fwd_scratch *sc, const fwd_batch *b)
{
    const model_info *in = &m->info;
    int dim = in->dim, V = in->vocab_size, n_last = 0;
    for (int i = 0; i < b->n_items; i++) {
        model_batch_item *it = &b->items[i];
        if (!it->logits)
            continue;
        if (it->all_logits) {
            int n = b->row0[i + 1] - b->row0[i];
            kernel_matmul(m->pool, it->logits, sc->xb + (size_t)b->row0[i] * dim, n, &m->output);
            if (m->output_bias)
                for (int r = 0; r < n; r++)
                    for (int j = 0; j < V; j++)
                        it->logits[(size_t)r * V + j] += m->output_bias[j];
        } else {
            memcpy(sc->xl + (size_t)n_last * dim, sc->xb + (size_t)(b->row0[i + 1] - 1) * dim,
                   (size_t)dim * sizeof(float));
            n_last++;
        }
    }
    if (!n_last)
        return;
    /* When the callers' logits buffers are consecutive rows of one array (the
     * server's are), write them in place instead of copying 4 * V bytes each. */
    float *direct = NULL;
    int k = 0;
    for (int i = 0; i < b->n_items; i++) {
        model_batch_item *it = &b->items[i];
        if (!it->logits || it->all_logits)
            continue;
        if (k == 0)
            direct = it->logits;
        else if (it->logits != direct + (size_t)k * V)
            direct = NULL;
        if (!direct)
            break;
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
        if (!it->logits || it->all_logits)
            continue;
        const float *src = sc->logits + (size_t)k++ * V;
        if (m->output_bias)
            for (int j = 0; j < V; j++)
                it->logits[j] = src[j] + m->output_bias[j];
        else
            memcpy(it->logits, src, (size_t)V * sizeof(float));
    }
}

/* ---- Llama ----------------------------------------------------------------------- */

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

/* The element-wise steps between the matmuls, split over the pool by rows when a
 * step has enough rows to be worth a dispatch (each row's arithmetic is the same
 * either way: the results do not depend on the split). */
#define ROWS_PAR_MIN 4

static void row_span(int T, int task, int n_tasks, int *r0, int *r1)
{
    *r0 = (int)((long)T * task / n_tasks);
    *r1 = (int)((long)T * (task + 1) / n_tasks);
}

/* rows [r0, r1): x += xb (the sublayer's output), then xb = rmsnorm(x) * w
 * (w NULL: the residual add alone) */
static void residual_norm_rows(fwd_scratch *sc, int dim, const float *w, float eps, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        float *x = sc->x + (size_t)r * dim, *xb = sc->xb + (size_t)r * dim;
        for (int e = 0; e < dim; e++)
            x[e] += xb[e];
        if (w)
            forward_rmsnorm(xb, x, w, dim, eps);
    }
}

typedef struct {
    fwd_scratch *sc;
    int T, dim;
    const float *w;
    float eps;
} elem_ctx;

static void residual_norm_task(void *arg, int task, int n_tasks)
{
    const elem_ctx *c = arg;
    int r0, r1;
    row_span(c->T, task, n_tasks, &r0, &r1);
    residual_norm_rows(c->sc, c->dim, c->w, c->eps, r0, r1);
}

/* Run task over the rows on the pool (enough rows) or inline. */
static void run_rows(model *m, int T, model_pool_fn fn, void *ctx)
{
    int nt = model_pool_size(m->pool);
    if (T >= ROWS_PAR_MIN && nt > 1)
        model_pool_run(m->pool, fn, ctx, nt < T ? nt : T);
    else
        fn(ctx, 0, 1);
}

void forward_llama(model *m, fwd_scratch *sc, const fwd_batch *b)
{
    const model_info *in = &m->info;
    int T = b->n_rows, dim = in->dim;
    float eps = in->norm_eps;

    for (int i = 0; i < b->n_items; i++)
        for (int r = b->row0[i]; r < b->row0[i + 1]; r++)
            mtensor_get_row(&m->tok_embd, b->items[i].tokens[r - b->row0[i]], sc->x + (size_t)r * dim);

    for (int r = 0; r < T && in->n_layers > 0; r++)
        forward_rmsnorm(sc->xb + (size_t)r * dim, sc->x + (size_t)r * dim, m->layers[0].attn_norm, dim, eps);
    for (int l = 0; l < in->n_layers; l++) {
        const layer_weights *lw = &m->layers[l];
        kernel_job qkv[3] = {{sc->q, &lw->wq}, {sc->k, &lw->wk}, {sc->v, &lw->wv}};
        kernel_matmul_multi(m->pool, qkv, 3, sc->xb, T);
        forward_attention(m, sc, b, l, 1); /* RoPE, KV store, attention */
        kernel_matmul(m->pool, sc->xb, sc->att, T, &lw->wo);
        elem_ctx ec = {sc, T, dim, lw->ffn_norm, eps};
        run_rows(m, T, residual_norm_task, &ec); /* x += attention out; xb = ffn_norm(x) */

        kernel_matmul_swiglu(m->pool, sc->hb, sc->hb2, sc->xb, T, &lw->w1, &lw->w3);
        kernel_matmul(m->pool, sc->xb, sc->hb, T, &lw->w2);
        /* x += ffn out; then the next layer's attn_norm (or none after the last) */
        ec.w = l + 1 < in->n_layers ? m->layers[l + 1].attn_norm : NULL;
        run_rows(m, T, residual_norm_task, &ec);
    }
    for (int r = 0; r < T; r++)
        forward_rmsnorm(sc->xb + (size_t)r * dim, sc->x + (size_t)r * dim, m->out_norm, dim, eps);
}

/* ---- Entry points ------------------------------------------------------------------ */

int model_forward(model *m, model_batch_item *items, int n_items)
{
    if (!m || !items || n_items <= 0)
        return MODEL_EINVAL;
    const model_info *in = &m->info;
    if (in->n_heads <= 0 || in->n_kv_heads <= 0 || in->n_heads % in->n_kv_heads)
        return MODEL_EINVAL;
    int T = 0, max_len = 0;
    for (int i = 0; i < n_items; i++) {
        const model_batch_item *it = &items[i];
        if (!it->seq || it->seq->m != m || !it->tokens || it->n_tokens <= 0)
            return MODEL_EINVAL;
        for (int j = 0; j < i; j++)
            if (items[j].seq == it->seq)
                return MODEL_EINVAL;
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= in->vocab_size)
                return MODEL_EINVAL;
        if (it->n_tokens > it->seq->cap_max - it->seq->len)
            return MODEL_ERANGE;
        if (it->n_tokens > (1 << 28) - T)
            return MODEL_EINVAL;
        T += it->n_tokens;
        if (it->seq->len + it->n_tokens > max_len)
            max_len = it->seq->len + it->n_tokens;
    }
    for (int i = 0; i < n_items; i++) {
        int rc = seq_reserve(items[i].seq, items[i].seq->len + items[i].n_tokens);
        if (rc)
            return rc;
    }
    int rc = scratch_reserve(m, T, n_items, (size_t)n_items * in->n_heads * max_len);
    if (rc)
        return rc;
    fwd_scratch *sc = m->scratch;
    sc->row0[0] = 0;
    for (int i = 0; i < n_items; i++) {
        sc->row0[i + 1] = sc->row0[i] + items[i].n_tokens;
        for (int t = 0; t < items[i].n_tokens; t++)
            sc->pos[sc->row0[i] + t] = items[i].seq->len + t;
    }
    fwd_batch b = {items, n_items, T, sc->row0, sc->pos, max_len};

    switch (m->arch) {
    case ARCH_LLAMA:
        forward_llama(m, sc, &b);
        break;
    case ARCH_GPT2:
        forward_gpt2(m, sc, &b); /* model/compute/forward_gpt2.c */
        break;
    default:
        return MODEL_EINVAL;
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
    if (!m || !s || !ctx || n_ctx <= 0 || !logits || s->m != m)
        return MODEL_EINVAL;
    if (n_ctx > s->cap_max)
        return MODEL_ERANGE;
    int p = 0;
    while (p < s->len && p < n_ctx - 1 && s->tokens[p] == ctx[p])
        p++;
    int old = s->len;
    model_seq_truncate(s, p);
    model_batch_item it = {.seq = s, .tokens = ctx + p, .n_tokens = n_ctx - p, .logits = logits};
    int rc = model_forward(m, &it, 1);
    if (rc && s->len == p && old > p) {
        /* The cache beyond p is intact after a failed call: the positions were
         * only forgotten, so restore them when they still match. */
        s->len = old;
    }
    return rc;
}
