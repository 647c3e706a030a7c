/* net.c -- the parameter layout, initialisation, and the forward + backward
 * pass of the whole network over one sequence.
 *
 * Layout of the flat parameter buffer (floats, in this order):
 *   token_embd (V, D)
 *   per layer: attn_norm (D), attn_q (Q, D), attn_k (KV, D), attn_v (KV, D),
 *              attn_output (D, Q), ffn_norm (D), ffn_gate (F, D), ffn_down (D, F),
 *              ffn_up (F, D)
 *   output_norm (D), output (V, D) unless tied.
 */
#include "train/train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Shape and layout ----------------------------------------------------------- */

int train_shape_check(const train_shape *s, char *err, size_t errlen)
{
    const char *why = NULL;
    if (s->dim < 8 || s->dim > 8192 || s->dim % 8)
        why = "dim must be a multiple of 8 in [8, 8192]";
    else if (s->n_layers < 1 || s->n_layers > 256)
        why = "layers must be in [1, 256]";
    else if (s->n_heads < 1 || s->dim % s->n_heads)
        why = "heads must divide dim";
    else if ((s->dim / s->n_heads) % 2)
        why = "dim / heads (the head size) must be even";
    else if (s->n_kv_heads < 1 || s->n_heads % s->n_kv_heads)
        why = "kv-heads must divide heads";
    else if (s->hidden_dim < 8 || s->hidden_dim > 65536 || s->hidden_dim % 8)
        why = "hidden must be a multiple of 8 in [8, 65536]";
    else if (s->ctx_len < 2 || s->ctx_len > 8192)
        why = "ctx must be in [2, 8192]";
    else if (s->vocab_size != TRAIN_VOCAB)
        why = "vocabulary must be the 259 byte tokens";
    else if (!(s->rope_theta > 0.0f) || !(s->norm_eps > 0.0f))
        why = "rope theta and norm eps must be > 0";
    if (why) {
        if (err && errlen) snprintf(err, errlen, "%s", why);
        return TRAIN_EINVAL;
    }
    return 0;
}

static int layout_build(const train_shape *s, train_tensor *t, size_t *n_params)
{
    const int D = s->dim, E = D / s->n_heads, Q = s->n_heads * E, KV = s->n_kv_heads * E;
    const int F = s->hidden_dim, V = s->vocab_size;
    size_t off = 0;
    int n = 0;
#define ADD(nm, r, c, dec)                                   \
    do {                                                     \
        if (t) {                                             \
            snprintf(t[n].name, sizeof t[n].name, "%s", nm); \
            t[n].offset = off;                               \
            t[n].rows = (r);                                 \
            t[n].cols = (c);                                 \
            t[n].decay = (dec);                              \
        }                                                    \
        off += (size_t)(r) * (c);                            \
        n++;                                                 \
    } while (0)
    char nm[48];
    ADD("token_embd.weight", V, D, 1);
    for (int l = 0; l < s->n_layers; l++) {
        static const char *const names[9] = { "attn_norm", "attn_q",   "attn_k",   "attn_v", "attn_output",
                                              "ffn_norm",  "ffn_gate", "ffn_down", "ffn_up" };
        const int rows[9] = { 1, Q, KV, KV, D, 1, F, D, F };
        const int cols[9] = { D, D, D, D, Q, D, D, F, D };
        for (int j = 0; j < 9; j++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, names[j]);
            ADD(nm, rows[j], cols[j], rows[j] > 1);
        }
    }
    ADD("output_norm.weight", 1, D, 0);
    if (!s->tied) ADD("output.weight", V, D, 1);
#undef ADD
    if (n_params) *n_params = off;
    return n;
}

/* The next n floats of the parameter block at *c. */
static float *take(float **c, size_t n)
{
    float *p = *c;
    *c += n;
    return p;
}

void train_params_view(const train_shape *s, float *base, train_params *p, train_layer *layers)
{
    const size_t D = (size_t)s->dim, E = D / (size_t)s->n_heads, Q = (size_t)s->n_heads * E,
                 KV = (size_t)s->n_kv_heads * E;
    const size_t F = (size_t)s->hidden_dim, V = (size_t)s->vocab_size;
    float *c = base;
    p->tok_embd = take(&c, V * D);
    p->layers = layers;
    for (int l = 0; l < s->n_layers; l++) {
        train_layer *L = &layers[l];
        L->attn_norm = take(&c, D);
        L->wq = take(&c, Q * D);
        L->wk = take(&c, KV * D);
        L->wv = take(&c, KV * D);
        L->wo = take(&c, D * Q);
        L->ffn_norm = take(&c, D);
        L->w1 = take(&c, F * D);
        L->w2 = take(&c, D * F);
        L->w3 = take(&c, F * D);
    }
    p->out_norm = take(&c, D);
    p->output = s->tied ? p->tok_embd : c;
}

/* ---- Model state ------------------------------------------------------------------ */

uint64_t train_rng_next(uint64_t *s)
{
    /* splitmix64 (Steele, Lea, Flood 2014): one add and a mixing function. */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s) /* (0, 1) */
{
    return ((train_rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float rng_normal(uint64_t *s)
{
    double u1 = rng_uniform(s), u2 = rng_uniform(s);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void train_net_free(train_net *n)
{
    if (!n) return;
    free(n->w);
    free(n->g);
    free(n->m);
    free(n->v);
    free(n->pw.layers);
    free(n->pg.layers);
    free(n->tensors);
    free(n);
}

static int net_alloc(train_net **out, const train_shape *s)
{
    *out = NULL;
    if (train_shape_check(s, NULL, 0)) return TRAIN_EINVAL;
    train_net *n = calloc(1, sizeof *n);
    if (!n) return TRAIN_ENOMEM;
    n->shape = *s;
    n->n_tensors = layout_build(s, NULL, &n->n_params);
    n->tensors = calloc(n->n_tensors, sizeof *n->tensors);
    n->w = calloc(n->n_params, sizeof(float));
    n->g = calloc(n->n_params, sizeof(float));
    n->m = calloc(n->n_params, sizeof(float));
    n->v = calloc(n->n_params, sizeof(float));
    train_layer *lw = calloc(s->n_layers, sizeof *lw), *lg = calloc(s->n_layers, sizeof *lg);
    n->pw.layers = lw;
    n->pg.layers = lg;
    if (!n->tensors || !n->w || !n->g || !n->m || !n->v || !lw || !lg) {
        train_net_free(n);
        return TRAIN_ENOMEM;
    }
    layout_build(s, n->tensors, NULL);
    train_params_view(s, n->w, &n->pw, lw);
    train_params_view(s, n->g, &n->pg, lg);
    *out = n;
    return 0;
}

int train_net_new(train_net **out, const train_shape *s, uint64_t seed)
{
    int rc = net_alloc(out, s);
    if (rc) return rc;
    train_net *n = *out;
    uint64_t rng = seed ^ 0x5DEECE66Dull;
    /* GPT-2 style: N(0, 0.02) for matrices, residual projections scaled by
     * 1/sqrt(2 * layers), norms at 1. */
    const float std = 0.02f, std_res = 0.02f / sqrtf(2.0f * s->n_layers);
    for (int i = 0; i < n->n_tensors; i++) {
        const train_tensor *t = &n->tensors[i];
        float *p = n->w + t->offset;
        size_t cnt = (size_t)t->rows * t->cols;
        if (t->rows == 1) {
            for (size_t j = 0; j < cnt; j++) p[j] = 1.0f;
            continue;
        }
        float sd = (strstr(t->name, "attn_output") || strstr(t->name, "ffn_down")) ? std_res : std;
        for (size_t j = 0; j < cnt; j++) p[j] = sd * rng_normal(&rng);
    }
    n->rng = seed;
    n->step = 0;
    return 0;
}

const train_tensor *train_net_find(const train_net *n, const char *name)
{
    for (int i = 0; i < n->n_tensors; i++)
        if (!strcmp(n->tensors[i].name, name)) return &n->tensors[i];
    return NULL;
}

/* ---- Activations ---------------------------------------------------------------------- */

typedef struct {
    float *x, *xn1, *r1, *q, *k, *v, *p, *ao, *xm, *xn2, *r2, *g, *u, *a;
} act_layer;

struct train_act {
    int T;
    act_layer *L;
    float *xf, *xnf, *rf, *logits, *probs;
    float *dx, *dxn, *dq, *dk, *dv, *dao, *dg, *du, *da, *dlogits;
    float *mem;
};

void train_act_free(train_act *a)
{
    if (!a) return;
    free(a->L);
    free(a->mem);
    free(a);
}

train_act *train_act_new(const train_shape *s, int T)
{
    const size_t D = s->dim, H = s->n_heads, E = D / H, Q = H * E, KV = s->n_kv_heads * E;
    const size_t F = s->hidden_dim, V = s->vocab_size, t = T;
    size_t per_layer = t * (D * 4 + 2 + Q * 2 + KV * 2 + F * 3) + H * t * t;
    size_t total = per_layer * s->n_layers + t * (D * 2 + 1 + V * 2) + t * (D * 2 + Q * 2 + KV * 2 + F * 3 + V);
    train_act *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->T = T;
    a->L = calloc(s->n_layers, sizeof *a->L);
    a->mem = calloc(total, sizeof(float));
    if (!a->L || !a->mem) {
        train_act_free(a);
        return NULL;
    }
    float *c = a->mem;
#define TAKE(ptr, cnt) \
    do {               \
        (ptr) = c;     \
        c += (cnt);    \
    } while (0)
    for (int l = 0; l < s->n_layers; l++) {
        act_layer *L = &a->L[l];
        TAKE(L->x, t * D);
        TAKE(L->xn1, t * D);
        TAKE(L->r1, t);
        TAKE(L->q, t * Q);
        TAKE(L->k, t * KV);
        TAKE(L->v, t * KV);
        TAKE(L->p, H * t * t);
        TAKE(L->ao, t * Q);
        TAKE(L->xm, t * D);
        TAKE(L->xn2, t * D);
        TAKE(L->r2, t);
        TAKE(L->g, t * F);
        TAKE(L->u, t * F);
        TAKE(L->a, t * F);
    }
    TAKE(a->xf, t * D);
    TAKE(a->xnf, t * D);
    TAKE(a->rf, t);
    TAKE(a->logits, t * V);
    TAKE(a->probs, t * V);
    TAKE(a->dx, t * D);
    TAKE(a->dxn, t * D);
    TAKE(a->dq, t * Q);
    TAKE(a->dk, t * KV);
    TAKE(a->dv, t * KV);
    TAKE(a->dao, t * Q);
    TAKE(a->dg, t * F);
    TAKE(a->du, t * F);
    TAKE(a->da, t * F);
    TAKE(a->dlogits, t * V);
#undef TAKE
    return a;
}

/* ---- The pass --------------------------------------------------------------------------- */

#define ZERO(p, cnt) memset((p), 0, sizeof(float) * (size_t)(cnt))

double train_net_pass(const train_net *n, train_act *a, const int32_t *tokens, const int32_t *targets, int T,
                      train_params *grads, float scale, float *logits)
{
    const train_shape *s = &n->shape;
    const int D = s->dim, H = s->n_heads, K = s->n_kv_heads, E = D / H, Q = H * E, KV = K * E;
    const int F = s->hidden_dim, V = s->vocab_size, NL = s->n_layers;
    const train_params *w = &n->pw;

    /* forward */
    embed_forward(a->L[0].x, w->tok_embd, tokens, T, D);
    for (int l = 0; l < NL; l++) {
        act_layer *L = &a->L[l];
        const train_layer *W = &w->layers[l];
        float *xnext = l + 1 < NL ? a->L[l + 1].x : a->xf;
        rmsnorm_forward(L->xn1, L->r1, L->x, W->attn_norm, T, D, s->norm_eps);
        matmul_forward(L->q, L->xn1, W->wq, T, D, Q);
        matmul_forward(L->k, L->xn1, W->wk, T, D, KV);
        matmul_forward(L->v, L->xn1, W->wv, T, D, KV);
        rope_forward(L->q, T, H, E, s->rope_theta);
        rope_forward(L->k, T, K, E, s->rope_theta);
        attention_forward(L->ao, L->p, L->q, L->k, L->v, T, H, K, E);
        matmul_forward(L->xm, L->ao, W->wo, T, Q, D);
        for (size_t i = 0; i < (size_t)T * D; i++) L->xm[i] += L->x[i];
        rmsnorm_forward(L->xn2, L->r2, L->xm, W->ffn_norm, T, D, s->norm_eps);
        matmul_forward(L->g, L->xn2, W->w1, T, D, F);
        matmul_forward(L->u, L->xn2, W->w3, T, D, F);
        swiglu_forward(L->a, L->g, L->u, T * F);
        matmul_forward(xnext, L->a, W->w2, T, F, D);
        for (size_t i = 0; i < (size_t)T * D; i++) xnext[i] += L->xm[i];
    }
    rmsnorm_forward(a->xnf, a->rf, a->xf, w->out_norm, T, D, s->norm_eps);
    matmul_forward(a->logits, a->xnf, w->output, T, D, V);
    if (logits) memcpy(logits, a->logits, sizeof(float) * (size_t)T * V);
    if (!targets) return 0.0;
    double loss = crossentropy_forward(a->probs, a->logits, targets, T, V);
    if (!grads) return loss;

    /* backward */
    ZERO(a->dlogits, (size_t)T * V);
    crossentropy_backward(a->dlogits, a->probs, targets, scale, T, V);
    ZERO(a->dxn, (size_t)T * D);
    matmul_backward(a->dxn, grads->output, a->dlogits, a->xnf, w->output, T, D, V);
    ZERO(a->dx, (size_t)T * D);
    rmsnorm_backward(a->dx, grads->out_norm, a->dxn, a->xf, w->out_norm, a->rf, T, D);
    for (int l = NL - 1; l >= 0; l--) {
        act_layer *L = &a->L[l];
        const train_layer *W = &w->layers[l];
        train_layer *G = &grads->layers[l];
        /* a->dx holds d(layer output) = d(xm) through the residual */
        ZERO(a->da, (size_t)T * F);
        matmul_backward(a->da, G->w2, a->dx, L->a, W->w2, T, F, D);
        ZERO(a->dg, (size_t)T * F);
        ZERO(a->du, (size_t)T * F);
        swiglu_backward(a->dg, a->du, a->da, L->g, L->u, T * F);
        ZERO(a->dxn, (size_t)T * D);
        matmul_backward(a->dxn, G->w1, a->dg, L->xn2, W->w1, T, D, F);
        matmul_backward(a->dxn, G->w3, a->du, L->xn2, W->w3, T, D, F);
        rmsnorm_backward(a->dx, G->ffn_norm, a->dxn, L->xm, W->ffn_norm, L->r2, T, D);
        /* a->dx = d(xm) = d(x) through the residual */
        ZERO(a->dao, (size_t)T * Q);
        matmul_backward(a->dao, G->wo, a->dx, L->ao, W->wo, T, Q, D);
        ZERO(a->dq, (size_t)T * Q);
        ZERO(a->dk, (size_t)T * KV);
        ZERO(a->dv, (size_t)T * KV);
        attention_backward(a->dq, a->dk, a->dv, a->dao, L->p, L->q, L->k, L->v, T, H, K, E);
        rope_backward(a->dq, T, H, E, s->rope_theta);
        rope_backward(a->dk, T, K, E, s->rope_theta);
        ZERO(a->dxn, (size_t)T * D);
        matmul_backward(a->dxn, G->wq, a->dq, L->xn1, W->wq, T, D, Q);
        matmul_backward(a->dxn, G->wk, a->dk, L->xn1, W->wk, T, D, KV);
        matmul_backward(a->dxn, G->wv, a->dv, L->xn1, W->wv, T, D, KV);
        rmsnorm_backward(a->dx, G->attn_norm, a->dxn, L->x, W->attn_norm, L->r1, T, D);
    }
    embed_backward(grads->tok_embd, a->dx, tokens, T, D);
    return loss;
}
