/* forward_gpt2.c -- the GPT-2 architecture's forward step (see forward.h): learned
 * positions, pre-norm LayerNorm with bias, biased MHA, GELU (erf, or tanh when
 * m->gelu_tanh), biased FFN, final LayerNorm; forward_logits adds the output bias.
 *
 * Per layer, for all T rows of the batch at once (each weight read once):
 *   xb = LN1(x); q, k, v = xb Wq^T + bq, ...; store k, v; att = causal MHA;
 *   x += att Wo^T + bo; xb = LN2(x); hb = GELU(xb W1^T + b1); x += hb W2^T + b2
 * then xb = LN_f(x).  Positions are absolute: row r adds pos_embd[pos[r]]. */
#include "model/compute/forward.h"
#include "model/compute/kernels.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void forward_layernorm(float *out, const float *x, const float *w, const float *bias, int n, float eps)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    float inv = (float)(1.0 / sqrt(var / n + eps)), mu = (float)mean;
    for (int i = 0; i < n; i++) out[i] = (x[i] - mu) * inv * w[i] + (bias ? bias[i] : 0.0f);
}

static void add_bias(float *y, const float *b, int rows, int n)
{
    if (!b) return;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++) y[(size_t)r * n + i] += b[i];
}

static float gelu(float x, int tanh_approx)
{
    if (tanh_approx) /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

void forward_gpt2(model *m, fwd_scratch *sc, const fwd_batch *b)
{
    const model_info *in = &m->info;
    int T = b->n_rows, dim = in->dim, hidden = in->hidden_dim;
    int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
    float eps = in->norm_eps;
    float *tmp = sc->xb; /* position row, reused below */

    for (int i = 0; i < b->n_items; i++)
        for (int r = b->row0[i]; r < b->row0[i + 1]; r++) {
            float *x = sc->x + (size_t)r * dim;
            mtensor_get_row(&m->tok_embd, b->items[i].tokens[r - b->row0[i]], x);
            mtensor_get_row(&m->pos_embd, b->pos[r], tmp);
            for (int e = 0; e < dim; e++) x[e] += tmp[e];
        }

    for (int l = 0; l < in->n_layers; l++) {
        const layer_weights *lw = &m->layers[l];
        for (int r = 0; r < T; r++)
            forward_layernorm(sc->xb + (size_t)r * dim, sc->x + (size_t)r * dim, lw->attn_norm, lw->attn_norm_b, dim,
                              eps);
        kernel_job qkv[3] = { { sc->q, &lw->wq }, { sc->k, &lw->wk }, { sc->v, &lw->wv } };
        kernel_matmul_multi(m->pool, qkv, 3, sc->xb, T);
        add_bias(sc->q, lw->bq, T, qd);
        add_bias(sc->k, lw->bk, T, kvd);
        add_bias(sc->v, lw->bv, T, kvd);
        forward_attention(m, sc, b, l, 0); /* KV store, attention (no RoPE) */
        kernel_matmul(m->pool, sc->xb, sc->att, T, &lw->wo);
        add_bias(sc->xb, lw->bo, T, dim);
        for (size_t e = 0; e < (size_t)T * dim; e++) sc->x[e] += sc->xb[e];

        for (int r = 0; r < T; r++)
            forward_layernorm(sc->xb + (size_t)r * dim, sc->x + (size_t)r * dim, lw->ffn_norm, lw->ffn_norm_b, dim,
                              eps);
        kernel_matmul(m->pool, sc->hb, sc->xb, T, &lw->w1);
        add_bias(sc->hb, lw->b1, T, hidden);
        for (size_t e = 0; e < (size_t)T * hidden; e++) sc->hb[e] = gelu(sc->hb[e], m->gelu_tanh);
        kernel_matmul(m->pool, sc->xb, sc->hb, T, &lw->w2);
        add_bias(sc->xb, lw->b2, T, dim);
        for (size_t e = 0; e < (size_t)T * dim; e++) sc->x[e] += sc->xb[e];
    }
    for (int r = 0; r < T; r++)
        forward_layernorm(sc->xb + (size_t)r * dim, sc->x + (size_t)r * dim, m->out_norm, m->out_norm_b, dim, eps);
}
