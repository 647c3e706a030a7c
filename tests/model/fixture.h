/* fixture.h -- random-weight llama models built in memory (no loader), the
 * test's own type conversions, and a slow double-precision reference forward.
 *
 * Header-only (static functions) so each test binary of tests/model can use it.
 * The reference recomputes everything from the token list, with no cache:
 *   x = embd[tok]; per layer: h = rmsnorm(x) * g; q,k,v = Wq h, Wk h, Wv h;
 *   rope(q, k) at the row's position; attention softmax(q.k / sqrt(hd)) v over
 *   positions <= p (GQA: head h reads kv head h / (n_heads / n_kv_heads));
 *   x += Wo att; h = rmsnorm(x) * g2; x += W2 (silu(W1 h) * W3 h);
 *   logits = Wout rmsnorm(x) * g_out.
 */
#ifndef TESTS_MODEL_FIXTURE_H
#define TESTS_MODEL_FIXTURE_H

#include "model/compute/forward.h"
#include "model/compute/kernels.h"
#include "model/model_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FX_UNUSED __attribute__((unused))

/* ---- RNG (splitmix64) ------------------------------------------------------- */
static FX_UNUSED uint64_t fx_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static FX_UNUSED double fx_unif(uint64_t *s) /* [-1, 1) */
{
    return (double)(fx_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* ---- Conversions written independently of the library ----------------------- */
static FX_UNUSED uint16_t fx_f32_to_f16(float f)
{
    /* round to nearest even, finite inputs of moderate size (weights) */
    if (f == 0.0f) return signbit(f) ? 0x8000 : 0;
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double a = fabs((double)f);
    int e;
    frexp(a, &e);  /* a = m * 2^e, m in [0.5, 1) */
    int E = e - 1; /* a = 1.x * 2^E */
    if (E < -14) { /* subnormal: units of 2^-24 */
        double u = nearbyint(a * 16777216.0);
        return (uint16_t)(sign | (uint16_t)u);
    }
    double mant = a / ldexp(1.0, E) - 1.0; /* [0, 1) */
    double mq = nearbyint(mant * 1024.0);
    if (mq >= 1024.0) {
        mq = 0;
        E++;
    }
    return (uint16_t)(sign | (uint16_t)((E + 15) << 10) | (uint16_t)mq);
}
static FX_UNUSED double fx_f16_to_f64(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}
static FX_UNUSED uint16_t fx_f32_to_bf16(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    b += 0x7fff + ((b >> 16) & 1); /* round to nearest even */
    return (uint16_t)(b >> 16);
}
static FX_UNUSED double fx_bf16_to_f64(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* A (rows, cols) matrix given as doubles, stored in `type`; *deq gets the values
 * the stored data represents (what a correct kernel multiplies by). */
static FX_UNUSED void *fx_pack(const double *src, int rows, int cols, int type, double *deq)
{
    size_t n = (size_t)rows * cols;
    if (type == MT_F32) {
        float *d = malloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            d[i] = (float)src[i];
            deq[i] = d[i];
        }
        return d;
    }
    if (type == MT_F16 || type == MT_BF16) {
        uint16_t *d = malloc(n * 2);
        for (size_t i = 0; i < n; i++) {
            d[i] = type == MT_F16 ? fx_f32_to_f16((float)src[i]) : fx_f32_to_bf16((float)src[i]);
            deq[i] = type == MT_F16 ? fx_f16_to_f64(d[i]) : fx_bf16_to_f64(d[i]);
        }
        return d;
    }
    /* Q8_0: per block of 32, d = max|x| / 127 stored as f16, q = round(x / d). */
    size_t nb = n / 32;
    uint8_t *d = malloc(nb * 34);
    for (size_t b = 0; b < nb; b++) {
        const double *x = src + b * 32;
        double amax = 0;
        for (int i = 0; i < 32; i++) amax = fmax(amax, fabs(x[i]));
        uint16_t hd = fx_f32_to_f16((float)(amax / 127.0));
        double dd = fx_f16_to_f64(hd);
        memcpy(d + b * 34, &hd, 2);
        for (int i = 0; i < 32; i++) {
            double q = dd > 0 ? nearbyint(x[i] / dd) : 0;
            if (q > 127) q = 127;
            if (q < -127) q = -127;
            d[b * 34 + 2 + i] = (uint8_t)(int8_t)q;
            deq[b * 32 + i] = dd * q;
        }
    }
    return d;
}

/* ---- A model in memory --------------------------------------------------------- */
typedef struct {
    int dim, hidden, layers, heads, kv_heads, vocab, ctx;
    int rope_dim; /* 0 = head_dim */
    int neox;
    int tied;
    float theta, eps;
} fx_shape;

typedef struct {
    double *embd, *out;      /* (vocab, dim) (out == embd when tied) */
    double *out_norm;        /* (dim) */
    double *an[16], *fn[16]; /* (dim) */
    double *wq[16], *wk[16], *wv[16], *wo[16], *w1[16], *w2[16], *w3[16];
} fx_ref;

typedef struct {
    model m;
    fx_shape sh;
    fx_ref ref; /* values the stored weights represent, as doubles */
    void *blocks[256];
    int n_blocks;
} fx_model;

static FX_UNUSED void *fx_keep(fx_model *f, void *p)
{
    f->blocks[f->n_blocks++] = p;
    return p;
}

static FX_UNUSED double *fx_rand(fx_model *f, size_t n, double scale, double offset, uint64_t *rng)
{
    double *d = fx_keep(f, malloc(n * sizeof(double)));
    for (size_t i = 0; i < n; i++) d[i] = offset + scale * fx_unif(rng);
    return d;
}

static FX_UNUSED mtensor fx_mat(fx_model *f, int rows, int cols, int type, uint64_t *rng, double **deq)
{
    double *src = malloc((size_t)rows * cols * sizeof(double));
    double a = sqrt(3.0 / cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++) src[i] = a * fx_unif(rng);
    *deq = fx_keep(f, malloc((size_t)rows * cols * sizeof(double)));
    void *data = fx_keep(f, fx_pack(src, rows, cols, type, *deq));
    free(src);
    return (mtensor){ .data = data, .type = type, .rows = rows, .cols = cols };
}

static FX_UNUSED float *fx_floats(fx_model *f, const double *d, size_t n)
{
    float *o = fx_keep(f, malloc(n * sizeof(float)));
    for (size_t i = 0; i < n; i++) o[i] = (float)d[i];
    return o;
}

/* Same seed and shape give the same underlying values whatever `type`. */
static FX_UNUSED fx_model *fx_model_new(const fx_shape *sh, int type, uint64_t seed, int n_threads)
{
    fx_model *f = calloc(1, sizeof *f);
    f->sh = *sh;
    model *m = &f->m;
    model_info *in = &m->info;
    in->arch = "llama";
    in->format = "test";
    in->weight_type = "?";
    in->dim = sh->dim;
    in->hidden_dim = sh->hidden;
    in->n_layers = sh->layers;
    in->n_heads = sh->heads;
    in->n_kv_heads = sh->kv_heads;
    in->head_dim = sh->dim / sh->heads;
    in->vocab_size = sh->vocab;
    in->ctx_len = sh->ctx;
    in->rope_dim = sh->rope_dim ? sh->rope_dim : in->head_dim;
    in->rope_theta = sh->theta;
    in->norm_eps = sh->eps;
    in->bos_id = 1;
    in->eos_id = 2;
    m->arch = ARCH_LLAMA;
    m->rope_neox = sh->neox;
    int hd = in->head_dim, qd = sh->heads * hd, kvd = sh->kv_heads * hd;
    uint64_t rng = seed;
    /* embeddings: the embedding table stays F32 for lookups unless tied */
    double *e = fx_rand(f, (size_t)sh->vocab * sh->dim, 1.0, 0.0, &rng);
    f->ref.embd = e;
    m->layers = fx_keep(f, calloc((size_t)sh->layers, sizeof(layer_weights)));
    for (int l = 0; l < sh->layers; l++) {
        layer_weights *lw = &m->layers[l];
        f->ref.an[l] = fx_rand(f, sh->dim, 0.1, 1.0, &rng);
        f->ref.fn[l] = fx_rand(f, sh->dim, 0.1, 1.0, &rng);
        lw->attn_norm = fx_floats(f, f->ref.an[l], sh->dim);
        lw->ffn_norm = fx_floats(f, f->ref.fn[l], sh->dim);
        lw->wq = fx_mat(f, qd, sh->dim, type, &rng, &f->ref.wq[l]);
        lw->wk = fx_mat(f, kvd, sh->dim, type, &rng, &f->ref.wk[l]);
        lw->wv = fx_mat(f, kvd, sh->dim, type, &rng, &f->ref.wv[l]);
        lw->wo = fx_mat(f, sh->dim, qd, type, &rng, &f->ref.wo[l]);
        lw->w1 = fx_mat(f, sh->hidden, sh->dim, type, &rng, &f->ref.w1[l]);
        lw->w2 = fx_mat(f, sh->dim, sh->hidden, type, &rng, &f->ref.w2[l]);
        lw->w3 = fx_mat(f, sh->hidden, sh->dim, type, &rng, &f->ref.w3[l]);
    }
    f->ref.out_norm = fx_rand(f, sh->dim, 0.1, 1.0, &rng);
    m->out_norm = fx_floats(f, f->ref.out_norm, sh->dim);
    if (sh->tied) {
        double *deq = fx_keep(f, malloc((size_t)sh->vocab * sh->dim * sizeof(double)));
        void *data = fx_keep(f, fx_pack(e, sh->vocab, sh->dim, type, deq));
        m->tok_embd = (mtensor){ .data = data, .type = type, .rows = sh->vocab, .cols = sh->dim };
        m->output = m->tok_embd;
        f->ref.embd = deq;
        f->ref.out = deq;
    } else {
        double *deq = fx_keep(f, malloc((size_t)sh->vocab * sh->dim * sizeof(double)));
        void *data = fx_keep(f, fx_pack(e, sh->vocab, sh->dim, MT_F32, deq));
        m->tok_embd = (mtensor){ .data = data, .type = MT_F32, .rows = sh->vocab, .cols = sh->dim };
        f->ref.embd = deq;
        m->output = fx_mat(f, sh->vocab, sh->dim, type, &rng, &f->ref.out);
    }
    m->pool = model_pool_new(n_threads);
    return f;
}

static FX_UNUSED void fx_model_free(fx_model *f)
{
    if (!f) return;
    model_pool_free(f->m.pool);
    forward_scratch_free(f->m.scratch);
    for (int i = 0; i < f->n_blocks; i++) free(f->blocks[i]);
    free(f);
}

/* ---- Reference forward (double, no cache) ------------------------------------- */
static FX_UNUSED void fx_matvec(double *y, const double *W, const double *x, int rows, int cols)
{
    for (int j = 0; j < rows; j++) {
        double s = 0;
        for (int k = 0; k < cols; k++) s += W[(size_t)j * cols + k] * x[k];
        y[j] = s;
    }
}
static FX_UNUSED void fx_rmsnorm(double *o, const double *x, const double *g, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double sc = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) o[i] = x[i] * sc * g[i];
}
static FX_UNUSED void fx_rope(double *v, int n_heads, int hd, int rd, int neox, int pos, double theta)
{
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < rd / 2; i++) {
            double ang = pos * pow(theta, -2.0 * i / rd);
            int a = neox ? i : 2 * i, b = neox ? i + rd / 2 : 2 * i + 1;
            double x0 = v[h * hd + a], x1 = v[h * hd + b];
            v[h * hd + a] = x0 * cos(ang) - x1 * sin(ang);
            v[h * hd + b] = x0 * sin(ang) + x1 * cos(ang);
        }
}

/* logits (n, vocab) for every position of toks[0..n). */
static FX_UNUSED void fx_reference(const fx_model *f, const int32_t *toks, int n, double *logits)
{
    const fx_shape *sh = &f->sh;
    int D = sh->dim, H = sh->hidden, hd = sh->dim / sh->heads, qd = sh->heads * hd, kvd = sh->kv_heads * hd,
        rd = sh->rope_dim ? sh->rope_dim : hd, grp = sh->heads / sh->kv_heads;
    double *x = calloc((size_t)n * D, 8), *h = malloc((size_t)D * 8), *q = malloc((size_t)n * qd * 8),
           *K = malloc((size_t)n * kvd * 8), *V = malloc((size_t)n * kvd * 8), *att = malloc((size_t)qd * 8),
           *o = malloc((size_t)D * 8), *g = malloc((size_t)H * 8), *u = malloc((size_t)H * 8),
           *w = malloc((size_t)n * 8);
    for (int p = 0; p < n; p++) memcpy(x + (size_t)p * D, f->ref.embd + (size_t)toks[p] * D, (size_t)D * 8);
    for (int l = 0; l < sh->layers; l++) {
        for (int p = 0; p < n; p++) {
            fx_rmsnorm(h, x + (size_t)p * D, f->ref.an[l], D, sh->eps);
            fx_matvec(q + (size_t)p * qd, f->ref.wq[l], h, qd, D);
            fx_matvec(K + (size_t)p * kvd, f->ref.wk[l], h, kvd, D);
            fx_matvec(V + (size_t)p * kvd, f->ref.wv[l], h, kvd, D);
            fx_rope(q + (size_t)p * qd, sh->heads, hd, rd, sh->neox, p, sh->theta);
            fx_rope(K + (size_t)p * kvd, sh->kv_heads, hd, rd, sh->neox, p, sh->theta);
        }
        for (int p = 0; p < n; p++) {
            for (int hh = 0; hh < sh->heads; hh++) {
                const double *qq = q + (size_t)p * qd + hh * hd;
                int kh = hh / grp;
                double mx = -INFINITY, sum = 0;
                for (int t = 0; t <= p; t++) {
                    double s = 0;
                    for (int i = 0; i < hd; i++) s += qq[i] * K[(size_t)t * kvd + kh * hd + i];
                    w[t] = s / sqrt((double)hd);
                    mx = fmax(mx, w[t]);
                }
                for (int t = 0; t <= p; t++) sum += (w[t] = exp(w[t] - mx));
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int t = 0; t <= p; t++) a += w[t] / sum * V[(size_t)t * kvd + kh * hd + i];
                    att[hh * hd + i] = a;
                }
            }
            fx_matvec(o, f->ref.wo[l], att, D, qd);
            for (int i = 0; i < D; i++) x[(size_t)p * D + i] += o[i];
            fx_rmsnorm(h, x + (size_t)p * D, f->ref.fn[l], D, sh->eps);
            fx_matvec(g, f->ref.w1[l], h, H, D);
            fx_matvec(u, f->ref.w3[l], h, H, D);
            for (int i = 0; i < H; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            fx_matvec(o, f->ref.w2[l], g, D, H);
            for (int i = 0; i < D; i++) x[(size_t)p * D + i] += o[i];
        }
    }
    for (int p = 0; p < n; p++) {
        fx_rmsnorm(h, x + (size_t)p * D, f->ref.out_norm, D, sh->eps);
        fx_matvec(logits + (size_t)p * sh->vocab, f->ref.out, h, sh->vocab, D);
    }
    free(x), free(h), free(q), free(K), free(V), free(att), free(o), free(g), free(u), free(w);
}

/* max |a - b| over n, and max |b| (the logit scale). */
static FX_UNUSED double fx_max_err(const float *a, const double *b, size_t n, double *scale)
{
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    if (scale) *scale = s;
    return e;
}

static FX_UNUSED void fx_tokens(int32_t *t, int n, int vocab, uint64_t seed)
{
    for (int i = 0; i < n; i++) t[i] = (int32_t)(fx_next(&seed) % (uint64_t)vocab);
}

#endif
