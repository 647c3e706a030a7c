/* ref_forward.h -- slow double-precision reference forward passes (GPT-2 and
 * Hugging Face llama), written straight from the definitions, one position at a
 * time with a full recompute of every key/value.  Header-only, for the tests. */
#ifndef LMSERVE_TESTS_REF_FORWARD_H
#define LMSERVE_TESTS_REF_FORWARD_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* All matrices (out, in) row-major, doubles. */
typedef struct {
    double *ln1g, *ln1b, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *ln2g, *ln2b, *w1, *b1, *w2, *b2;
    double *w3; /* llama up */
} ref_layer;

typedef struct {
    int D, H, L, nh, nkv, V, T;
    double eps;
    int gelu_tanh; /* gpt2 */
    int llama;     /* 1: RMSNorm, rotate-halves RoPE, SwiGLU, no biases, no positions */
    double rope_theta;
    double *tok, *pos, *lnfg, *lnfb, *out, *outb;
    ref_layer *layers;
} ref_model;

static inline void ref_norm(double *o, const double *x, const double *g, const double *b, int n, double eps, int rms)
{
    double mean = 0, var = 0;
    if (!rms) {
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    for (int i = 0; i < n; i++) o[i] = (x[i] - mean) / sqrt(var + eps) * g[i] + (b ? b[i] : 0);
}

static inline void ref_mv(double *y, const double *W, const double *b, const double *x, int out, int in)
{
    for (int o = 0; o < out; o++) {
        double s = b ? b[o] : 0;
        for (int i = 0; i < in; i++) s += W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

static inline void ref_rope(double *v, int nheads, int hd, int pos, double theta)
{
    int half = hd / 2;
    for (int h = 0; h < nheads; h++)
        for (int i = 0; i < half; i++) {
            double f = pow(theta, -2.0 * i / hd), a = pos * f;
            double x0 = v[h * hd + i], x1 = v[h * hd + i + half];
            v[h * hd + i] = x0 * cos(a) - x1 * sin(a);
            v[h * hd + i + half] = x0 * sin(a) + x1 * cos(a);
        }
}

/* logits (n, V) for tokens[0..n) at positions 0..n-1. */
static inline void ref_forward(const ref_model *r, const int *tokens, int n, double *logits)
{
    int D = r->D, hd = D / r->nh, kvd = r->nkv * hd, H = r->H;
    double *x = calloc((size_t)n * D, sizeof *x), *xb = calloc(D, sizeof *xb);
    double *q = calloc((size_t)n * D, sizeof *q), *k = calloc((size_t)n * kvd, sizeof *k);
    double *v = calloc((size_t)n * kvd, sizeof *v), *att = calloc(D, sizeof *att), *tmp = calloc(D, sizeof *tmp);
    double *h1 = calloc(H, sizeof *h1), *h3 = calloc(H, sizeof *h3), *sc = calloc(n, sizeof *sc);
    for (int t = 0; t < n; t++)
        for (int e = 0; e < D; e++)
            x[(size_t)t * D + e] = r->tok[(size_t)tokens[t] * D + e] + (r->llama ? 0 : r->pos[(size_t)t * D + e]);
    for (int l = 0; l < r->L; l++) {
        const ref_layer *w = &r->layers[l];
        for (int t = 0; t < n; t++) {
            ref_norm(xb, x + (size_t)t * D, w->ln1g, w->ln1b, D, r->eps, r->llama);
            ref_mv(q + (size_t)t * D, w->wq, w->bq, xb, D, D);
            ref_mv(k + (size_t)t * kvd, w->wk, w->bk, xb, kvd, D);
            ref_mv(v + (size_t)t * kvd, w->wv, w->bv, xb, kvd, D);
            if (r->llama) {
                ref_rope(q + (size_t)t * D, r->nh, hd, t, r->rope_theta);
                ref_rope(k + (size_t)t * kvd, r->nkv, hd, t, r->rope_theta);
            }
        }
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < r->nh; h++) {
                int kh = h / (r->nh / r->nkv);
                double mx = -1e300, sum = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += q[(size_t)t * D + h * hd + i] * k[(size_t)s * kvd + kh * hd + i];
                    sc[s] = d / sqrt((double)hd);
                    if (sc[s] > mx) mx = sc[s];
                }
                for (int s = 0; s <= t; s++) {
                    sc[s] = exp(sc[s] - mx);
                    sum += sc[s];
                }
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int s = 0; s <= t; s++) a += sc[s] / sum * v[(size_t)s * kvd + kh * hd + i];
                    att[h * hd + i] = a;
                }
            }
            ref_mv(tmp, w->wo, w->bo, att, D, D);
            for (int e = 0; e < D; e++) x[(size_t)t * D + e] += tmp[e];
            ref_norm(xb, x + (size_t)t * D, w->ln2g, w->ln2b, D, r->eps, r->llama);
            ref_mv(h1, w->w1, w->b1, xb, H, D);
            if (r->llama) {
                ref_mv(h3, w->w3, NULL, xb, H, D);
                for (int i = 0; i < H; i++) h1[i] = h1[i] / (1 + exp(-h1[i])) * h3[i];
            } else {
                for (int i = 0; i < H; i++) {
                    double z = h1[i];
                    h1[i] = r->gelu_tanh ? 0.5 * z * (1 + tanh(sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)))
                                         : 0.5 * z * (1 + erf(z / sqrt(2.0)));
                }
            }
            ref_mv(tmp, w->w2, w->b2, h1, D, H);
            for (int e = 0; e < D; e++) x[(size_t)t * D + e] += tmp[e];
        }
    }
    for (int t = 0; t < n; t++) {
        ref_norm(xb, x + (size_t)t * D, r->lnfg, r->lnfb, D, r->eps, r->llama);
        ref_mv(logits + (size_t)t * r->V, r->out, r->outb, xb, r->V, D);
    }
    free(x);
    free(xb);
    free(q);
    free(k);
    free(v);
    free(att);
    free(tmp);
    free(h1);
    free(h3);
    free(sc);
}

/* Largest |a - b| over n, and the largest |b|. */
static inline double ref_maxdiff(const float *a, const double *b, size_t n, double *bmax)
{
    double m = 0, bm = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
        if (fabs(b[i]) > bm) bm = fabs(b[i]);
    }
    if (bmax) *bmax = bm;
    return m;
}

#endif
