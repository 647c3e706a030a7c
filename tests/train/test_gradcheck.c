/* test_gradcheck.c -- every backward of train/layers.c and of the whole network
 * against central finite differences.
 *
 * The layers compute in float32, so the finite differences are taken on a
 * scalar loss L = sum_i r_i out_i (r fixed random, summed in double) with step
 * h = 1e-3 (2e-3 for the whole model).  Float rounding of L is about 1e-6, which
 * makes the difference quotient good to about 1e-3; the stated tolerance is
 * |fd - analytic| <= 3e-3 + 2e-2 |analytic| for every checked element.
 * Inputs are drawn at scale ~1 so that the nonlinearities are exercised. */
#include <criterion/criterion.h>

#include "train/train_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ATOL 3e-3
#define RTOL 2e-2

static uint64_t rs = 42;
static float rnd(void) /* uniform in [-1, 1) */
{
    return (float)((train_rng_next(&rs) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}
/* Test buffers, released after each test by the suite's fini. */
static void *blocks[64];
static int n_blocks;
static void *keep(void *p)
{
    if (n_blocks < 64) blocks[n_blocks++] = p;
    return p;
}
static void free_all(void)
{
    while (n_blocks) free(blocks[--n_blocks]);
}
TestSuite(gradcheck, .fini = free_all);

static float *rvec(int n, float scale)
{
    float *p = keep(malloc(sizeof(float) * n));
    for (int i = 0; i < n; i++) p[i] = scale * rnd();
    return p;
}
static float *zvec(int n) { return keep(calloc(n, sizeof(float))); }

/* A layer under test: fwd writes `out` from the current inputs. */
typedef struct {
    void (*fwd)(void *ctx);
    void *ctx;
    float *out;
    int n_out;
    float *r; /* random projection, n_out */
} probe;

static double probe_loss(const probe *p)
{
    p->fwd(p->ctx);
    double s = 0.0;
    for (int i = 0; i < p->n_out; i++) s += (double)p->r[i] * p->out[i];
    return s;
}

/* Compare grad (analytic d L / d x) with central differences for every x[i]. */
static void check_input(const probe *p, float *x, const float *grad, int n, const char *what)
{
    const float h = 1e-3f;
    int bad = 0;
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        float x0 = x[i];
        x[i] = x0 + h;
        double lp = probe_loss(p);
        x[i] = x0 - h;
        double lm = probe_loss(p);
        x[i] = x0;
        double fd = (lp - lm) / (2.0 * h);
        double err = fabs(fd - grad[i]);
        double lim = ATOL + RTOL * fabs(grad[i]);
        if (err / lim > worst) worst = err / lim;
        if (err > lim && bad++ < 5) cr_log_error("%s[%d]: analytic %.6g, finite difference %.6g", what, i, grad[i], fd);
    }
    probe_loss(p);
    cr_expect_eq(bad, 0, "%s: %d of %d elements outside tolerance (worst %.2f of the limit)", what, bad, n, worst);
}

/* ---- matmul ---- */
typedef struct {
    float *out, *x, *W;
    int T, I, O;
} mm_ctx;
static void mm_fwd(void *c)
{
    mm_ctx *m = c;
    matmul_forward(m->out, m->x, m->W, m->T, m->I, m->O);
}

Test(gradcheck, matmul)
{
    /* I = 19 exercises the scalar tail of the vector loops, O = 7 the row tail */
    int T = 5, I = 19, O = 7;
    mm_ctx m = { zvec(T * O), rvec(T * I, 1), rvec(O * I, 1), T, I, O };
    probe p = { mm_fwd, &m, m.out, T * O, rvec(T * O, 1) };
    float *dx = zvec(T * I), *dW = zvec(O * I);
    probe_loss(&p);
    matmul_backward(dx, dW, p.r, m.x, m.W, T, I, O);
    check_input(&p, m.x, dx, T * I, "matmul dx");
    check_input(&p, m.W, dW, O * I, "matmul dW");
}

Test(gradcheck, matmul_forward_values)
{
    /* exact small case: [1 2; 3 4] x [1 1; 0 1]^T */
    float x[4] = { 1, 2, 3, 4 }, W[4] = { 1, 1, 0, 1 }, out[4];
    matmul_forward(out, x, W, 2, 2, 2);
    cr_expect_float_eq(out[0], 3.0f, 0);
    cr_expect_float_eq(out[1], 2.0f, 0);
    cr_expect_float_eq(out[2], 7.0f, 0);
    cr_expect_float_eq(out[3], 4.0f, 0);
}

/* ---- embedding ---- */
typedef struct {
    float *out, *E;
    int32_t tok[6];
    int T, D;
} emb_ctx;
static void emb_fwd(void *c)
{
    emb_ctx *e = c;
    embed_forward(e->out, e->E, e->tok, e->T, e->D);
}

Test(gradcheck, embedding)
{
    emb_ctx e = { zvec(6 * 8), rvec(5 * 8, 1), { 3, 1, 3, 0, 4, 3 }, 6, 8 }; /* repeated token 3 */
    probe p = { emb_fwd, &e, e.out, 6 * 8, rvec(6 * 8, 1) };
    float *dE = zvec(5 * 8);
    probe_loss(&p);
    embed_backward(dE, p.r, e.tok, 6, 8);
    check_input(&p, e.E, dE, 5 * 8, "embedding dE");
}

/* ---- RMSNorm ---- */
typedef struct {
    float *out, *rstd, *x, *w;
    int T, D;
} rms_ctx;
static void rms_fwd(void *c)
{
    rms_ctx *r = c;
    rmsnorm_forward(r->out, r->rstd, r->x, r->w, r->T, r->D, 1e-5f);
}

Test(gradcheck, rmsnorm)
{
    int T = 4, D = 12;
    rms_ctx r = { zvec(T * D), zvec(T), rvec(T * D, 1), rvec(D, 1), T, D };
    probe p = { rms_fwd, &r, r.out, T * D, rvec(T * D, 1) };
    float *dx = zvec(T * D), *dw = zvec(D);
    probe_loss(&p);
    rmsnorm_backward(dx, dw, p.r, r.x, r.w, r.rstd, T, D);
    check_input(&p, r.x, dx, T * D, "rmsnorm dx");
    check_input(&p, r.w, dw, D, "rmsnorm dw");
}

/* ---- RoPE ---- */
typedef struct {
    float *out, *x;
    int T, H, E;
} rope_ctx;
static void rope_fwd(void *c)
{
    rope_ctx *r = c;
    memcpy(r->out, r->x, sizeof(float) * r->T * r->H * r->E);
    rope_forward(r->out, r->T, r->H, r->E, 10000.0f);
}

Test(gradcheck, rope)
{
    int T = 6, H = 2, E = 8;
    rope_ctx r = { zvec(T * H * E), rvec(T * H * E, 1), T, H, E };
    probe p = { rope_fwd, &r, r.out, T * H * E, rvec(T * H * E, 1) };
    float *dx = keep(malloc(sizeof(float) * T * H * E));
    memcpy(dx, p.r, sizeof(float) * T * H * E);
    probe_loss(&p);
    rope_backward(dx, T, H, E, 10000.0f);
    check_input(&p, r.x, dx, T * H * E, "rope dx");
    /* position 0 is not rotated; position 1, pair 0 turns by exactly 1 radian */
    cr_expect_float_eq(r.out[0], r.x[0], 0);
    float a = r.x[H * E], b = r.x[H * E + 1];
    cr_expect_float_eq(r.out[H * E], a * cosf(1.0f) - b * sinf(1.0f), 1e-6);
}

/* ---- attention (causal, GQA) ---- */
typedef struct {
    float *out, *p, *q, *k, *v;
    int T, H, K, E;
} att_ctx;
static void att_fwd(void *c)
{
    att_ctx *a = c;
    attention_forward(a->out, a->p, a->q, a->k, a->v, a->T, a->H, a->K, a->E);
}

static void attention_case(int H, int K)
{
    int T = 5, E = 4, Q = H * E, KV = K * E;
    att_ctx a = { zvec(T * Q), zvec(H * T * T), rvec(T * Q, 1.5f), rvec(T * KV, 1.5f), rvec(T * KV, 1), T, H, K, E };
    probe p = { att_fwd, &a, a.out, T * Q, rvec(T * Q, 1) };
    float *dq = zvec(T * Q), *dk = zvec(T * KV), *dv = zvec(T * KV);
    probe_loss(&p);
    attention_backward(dq, dk, dv, p.r, a.p, a.q, a.k, a.v, T, H, K, E);
    check_input(&p, a.q, dq, T * Q, "attention dq");
    check_input(&p, a.k, dk, T * KV, "attention dk");
    check_input(&p, a.v, dv, T * KV, "attention dv");
    /* causal: position 0 attends only to itself, so its output is v[0] of its kv head */
    for (int h = 0; h < H; h++)
        for (int e = 0; e < E; e++) cr_expect_float_eq(a.out[h * E + e], a.v[(h / (H / K)) * E + e], 1e-6);
    /* and the future never leaks: changing v at the last position leaves earlier outputs alone */
    float before = a.out[(T - 2) * Q];
    a.v[(T - 1) * KV] += 10.0f;
    att_fwd(&a);
    cr_expect_float_eq(a.out[(T - 2) * Q], before, 0);
}

Test(gradcheck, attention_mha) { attention_case(2, 2); }
Test(gradcheck, attention_gqa) { attention_case(4, 2); }
Test(gradcheck, attention_mqa) { attention_case(3, 1); }

/* ---- SwiGLU ---- */
typedef struct {
    float *out, *g, *u;
    int n;
} sw_ctx;
static void sw_fwd(void *c)
{
    sw_ctx *s = c;
    swiglu_forward(s->out, s->g, s->u, s->n);
}

Test(gradcheck, swiglu)
{
    int n = 24;
    sw_ctx s = { zvec(n), rvec(n, 3), rvec(n, 2), n };
    probe p = { sw_fwd, &s, s.out, n, rvec(n, 1) };
    float *dg = zvec(n), *du = zvec(n);
    probe_loss(&p);
    swiglu_backward(dg, du, p.r, s.g, s.u, n);
    check_input(&p, s.g, dg, n, "swiglu dg");
    check_input(&p, s.u, du, n, "swiglu du");
}

/* ---- cross-entropy ---- */
typedef struct {
    float *loss1, *probs, *logits;
    int32_t tgt[3];
    int T, V;
} ce_ctx;
static void ce_fwd(void *c)
{
    ce_ctx *e = c;
    e->loss1[0] = (float)crossentropy_forward(e->probs, e->logits, e->tgt, e->T, e->V);
}

Test(gradcheck, crossentropy)
{
    int T = 3, V = 11;
    ce_ctx e = { zvec(1), zvec(T * V), rvec(T * V, 3), { 0, 10, 4 }, T, V };
    float one = 1.0f;
    probe p = { ce_fwd, &e, e.loss1, 1, &one };
    float *dl = zvec(T * V);
    probe_loss(&p);
    crossentropy_backward(dl, e.probs, e.tgt, 1.0f, T, V);
    check_input(&p, e.logits, dl, T * V, "crossentropy dlogits");
    /* uniform logits give log V per position */
    float z[11] = { 0 }, pr[11];
    int32_t t0 = 5;
    cr_expect_float_eq(crossentropy_forward(pr, z, &t0, 1, 11), log(11.0), 1e-6);
}

/* ---- the whole network ---- */
static void whole_model(int tied, int K)
{
    train_shape s = { .dim = 16,
                      .n_layers = 2,
                      .n_heads = 4,
                      .n_kv_heads = K,
                      .hidden_dim = 24,
                      .ctx_len = 7,
                      .vocab_size = TRAIN_VOCAB,
                      .tied = tied,
                      .rope_theta = 10000.0f,
                      .norm_eps = 1e-5f };
    train_net *n;
    cr_assert_eq(train_net_new(&n, &s, 7), 0);
    /* larger weights than the initialisation so every path carries signal */
    for (size_t i = 0; i < n->n_params; i++) n->w[i] = 0.3f * rnd();
    for (int t = 0; t < n->n_tensors; t++)
        if (n->tensors[t].rows == 1)
            for (int j = 0; j < n->tensors[t].cols; j++) n->w[n->tensors[t].offset + j] = 1.0f + 0.2f * rnd();
    const int T = 7;
    int32_t tok[7] = { 1, 40, 80, 40, 100, 7, 200 }, tgt[7] = { 40, 80, 40, 100, 7, 200, 3 };
    train_act *a = train_act_new(&s, T);
    memset(n->g, 0, sizeof(float) * n->n_params);
    train_net_pass(n, a, tok, tgt, T, &n->pg, 1.0f, NULL);
    /* check, in every tensor, the 4 entries with the largest gradient and 4 random ones */
    const float h = 2e-3f;
    int bad = 0, checked = 0;
    for (int ti = 0; ti < n->n_tensors; ti++) {
        const train_tensor *t = &n->tensors[ti];
        size_t cnt = (size_t)t->rows * t->cols;
        size_t idx[8];
        float *gt = n->g + t->offset;
        for (int k = 0; k < 4; k++) {
            size_t best = 0;
            float bv = -1;
            for (size_t j = 0; j < cnt; j++) {
                int seen = 0;
                for (int q = 0; q < k; q++) seen |= idx[q] == j;
                if (!seen && fabsf(gt[j]) > bv) {
                    bv = fabsf(gt[j]);
                    best = j;
                }
            }
            idx[k] = best;
        }
        for (int k = 4; k < 8; k++) idx[k] = train_rng_next(&rs) % cnt;
        for (int k = 0; k < 8; k++) {
            float *w = n->w + t->offset + idx[k];
            float w0 = *w;
            *w = w0 + h;
            double lp = train_net_pass(n, a, tok, tgt, T, NULL, 0, NULL);
            *w = w0 - h;
            double lm = train_net_pass(n, a, tok, tgt, T, NULL, 0, NULL);
            *w = w0;
            double fd = (lp - lm) / (2.0 * h), an = gt[idx[k]];
            checked++;
            if (fabs(fd - an) > ATOL + RTOL * fabs(an)) {
                bad++;
                cr_log_error("%s[%zu]: analytic %.6g, finite difference %.6g", t->name, idx[k], an, fd);
            }
        }
    }
    cr_expect_eq(bad, 0, "whole model (tied=%d, kv=%d): %d of %d checks outside tolerance", tied, K, bad, checked);
    train_act_free(a);
    train_net_free(n);
}

Test(gradcheck, whole_model_tied_gqa) { whole_model(1, 2); }
Test(gradcheck, whole_model_untied_mha) { whole_model(0, 4); }
