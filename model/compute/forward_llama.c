/* forward_llama.c -- the llama architecture's forward step: per layer, for all
 * T rows of the batch at once (each weight read once):
 *   xb = rmsnorm(x) * attn_norm; q, k, v = xb Wq^T, xb Wk^T, xb Wv^T;
 *   RoPE, KV store, attention (layers.c); x += att Wo^T;
 *   xb = rmsnorm(x) * ffn_norm; x += (silu(xb W1^T) * xb W3^T) W2^T
 * then xb = rmsnorm(x) * out_norm for the classifier. */
#include "model/compute/forward.h"
#include "model/compute/kernels.h"

#include <stddef.h>

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
        for (int e = 0; e < dim; e++) x[e] += xb[e];
        if (w) forward_rmsnorm(xb, x, w, dim, eps);
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
        kernel_job qkv[3] = { { sc->q, &lw->wq }, { sc->k, &lw->wk }, { sc->v, &lw->wv } };
        forward_qkv_attention(m, sc, b, l, qkv); /* the projections, RoPE, KV store, attention */
        kernel_matmul(m->pool, sc->xb, sc->att, T, &lw->wo);
        elem_ctx ec = { sc, T, dim, lw->ffn_norm, eps };
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
