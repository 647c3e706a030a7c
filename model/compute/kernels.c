/* kernels.c -- matrix x matrix products on F32, F16, BF16 and quantized weights.
 *
 * Design
 * ------
 * out (n_rows, W.rows) = x (n_rows, cols) W^T, W row-major (rows, cols) in its
 * file type.  Batched decoding wants each weight row read from memory once
 * per step for every sequence, so W rows are loaded into registers once and
 * dotted with several x rows at a time (register blocks of BLK_R x rows x
 * BLK_C W rows; decoding a single row streams BLK_C1 W rows at a time).
 * The pool splits the OUTPUT rows (W rows) into tasks; the reduction over cols
 * is never split.
 * Within a task, x is walked in blocks small enough to stay in L2 while the
 * task's W rows (also sized for L2) are reused for every block.
 *
 * Determinism: every output element out[r][j] has its own two 8-lane
 * accumulators fed in a fixed order over k (see DEF_BLOCK), reduced by one
 * fixed horizontal sum (hsum8), then the cols % 8 tail is added in order.
 * The register-block shape (1..4 x 1..4) only decides which elements are
 * computed side by side, never the operations of one element, so the result
 * is bit-identical for any n_rows, any position of the row in the batch and
 * any thread count.  kernel_attend and kernel_swiglu follow ggml's arithmetic
 * for one query row instead (their sections below say which).  (This file
 * relies on the ISO C default -ffp-contract=off: no silent a*b+c fusion in the
 * scalar tails.)
 *
 * The block-quantized types (Q8_0, Q4_K, ...; model/compute/quant.h) go to
 * quant_matmul_rows (quant_kern.c), with the activations quantized once per
 * call in every format the jobs need (ggml's formats, so the products equal
 * llama.cpp's bit for bit).
 *
 * The tunables below (prefetch distances, block shapes) change speed, never a
 * result; docs/TUNING.md has the measurements that chose their values.
 *
 * Built with AVX2+FMA+F16C when the compiler targets them (-march=native), and
 * with AVX-512 for the batched packed F32 product (zblock) and single-row F16 /
 * BF16 decoding where the compiler targets that too; otherwise a portable scalar
 * version (deterministic in the same sense).
 */
#include "model/compute/kernels.h"
#include "model/compute/quant.h"
#include "model/half.h"
#include "model/loader.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define KERNEL_AVX2 1
#include <immintrin.h>
/* AVX-512: decoding one row against F16 / BF16 weights converts 16 weights per
 * instruction (half_rows1 below); the arithmetic is block_f16's / block_bf16's. */
#if defined(__AVX512F__)
#define KERNEL_AVX512 1
#endif
#endif

/* Attention prefetches the K rows this many positions ahead, and the V rows of the
 * positions it scores (0: none).  A sequence's K and V for one head are contiguous
 * but short (hd floats per position), so the hardware prefetcher starts cold on
 * every head and page. */
#ifndef ATT_PF
#define ATT_PF 16
#endif
#define L2_BLOCK (128 * 1024) /* bytes of x (or of W) a task keeps hot */
#define MAX_JOBS KERNEL_MAX_JOBS

/* ---- Element access ---------------------------------------------------------- */

static uint16_t rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

void mtensor_get_row(const mtensor *w, int row, float *out)
{
    size_t rb = mtensor_row_bytes(w->type, w->cols);
    const uint8_t *p = (const uint8_t *)w->data + rb * (size_t)row;
    int n = w->cols;
    switch (w->type) {
    case MT_F32:
        if (w->panel && row < w->rows / KERNEL_PANEL * KERNEL_PANEL) {
            const float *pb =
                (const float *)w->data + (size_t)(row / KERNEL_PANEL) * KERNEL_PANEL * n + row % KERNEL_PANEL;
            for (int k = 0; k < n; k++) out[k] = pb[(size_t)k * KERNEL_PANEL];
        } else { /* row-major (the tail rows of a packed tensor sit at the same offset) */
            memcpy(out, p, (size_t)n * 4);
        }
        break;
    case MT_F16:
        for (int i = 0; i < n; i++) out[i] = model_f16_to_f32(rd16(p + 2 * i));
        break;
    case MT_BF16:
        for (int i = 0; i < n; i++) out[i] = model_bf16_to_f32(rd16(p + 2 * i));
        break;
    default: /* the block-quantized types, either layout (NaN for an unknown type) */
        if (quant_is_quantized(w->type))
            quant_get_row(w, row, out);
        else
            quant_dequantize_row(w->type, p, out, n);
    }
}

/* ---- Per-element dot products ------------------------------------------------ */

/* One element of a row of each type, as a float (the scalar tails and the portable build). */
static inline float load1_f32(const void *p, int k) { return ((const float *)p)[k]; }
static inline float load1_f16(const void *p, int k) { return model_f16_to_f32(((const uint16_t *)p)[k]); }
static inline float load1_bf16(const void *p, int k) { return model_bf16_to_f32(((const uint16_t *)p)[k]); }

#ifdef KERNEL_AVX2

static inline float hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

static inline __m256 load8_f32(const void *p, int k) { return _mm256_loadu_ps((const float *)p + k); }
static inline __m256 load8_f16(const void *p, int k)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k)));
}
static inline __m256 load8_bf16(const void *p, int k)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* R x rows times C W rows (R, C <= 4); out[r * ldo + c].  Each element has
 * NACC 8-lane accumulators: steps of 8 * NACC columns feed accumulator h with
 * k + 8h .. k + 8h + 7, leftover 8-column steps feed accumulator 0, then the
 * accumulators are added in order, hsum8, then the scalar tail -- the same
 * operations whatever R and C, so the block shape never changes a result.
 * (NACC is a build constant: changing it changes results, consistently.) */
#ifndef NACC
#define NACC 2
#endif
#define ESZ_f32  4
#define ESZ_f16  2
#define ESZ_bf16 2
#define DEF_BLOCK(TY)                                                                                                 \
    static inline __attribute__((always_inline)) void block_##TY(float *out, size_t ldo, const float *x, size_t ldx,  \
                                                                 const uint8_t *w, size_t ldw, int cols, const int R, \
                                                                 const int C, const uint8_t *pf)                      \
    {                                                                                                                 \
        __m256 acc[4][4][NACC];                                                                                       \
        for (int r = 0; r < R; r++)                                                                                   \
            for (int c = 0; c < C; c++)                                                                               \
                for (int h = 0; h < NACC; h++) acc[r][c][h] = _mm256_setzero_ps();                                    \
        int k = 0;                                                                                                    \
        for (; k + 8 * NACC <= cols; k += 8 * NACC) {                                                                 \
            if (pf)                                                                                                   \
                for (int c = 0; c < C; c++)                                                                           \
                    _mm_prefetch((const char *)pf + (size_t)c * ldw + (size_t)k * ESZ_##TY, _MM_HINT_T0);             \
            for (int h = 0; h < NACC; h++) {                                                                          \
                __m256 wv[4];                                                                                         \
                for (int c = 0; c < C; c++) wv[c] = load8_##TY(w + (size_t)c * ldw, k + 8 * h);                       \
                for (int r = 0; r < R; r++) {                                                                         \
                    __m256 xv = _mm256_loadu_ps(x + (size_t)r * ldx + k + 8 * h);                                     \
                    for (int c = 0; c < C; c++) acc[r][c][h] = _mm256_fmadd_ps(xv, wv[c], acc[r][c][h]);              \
                }                                                                                                     \
            }                                                                                                         \
        }                                                                                                             \
        for (; k + 8 <= cols; k += 8) {                                                                               \
            __m256 wv[4];                                                                                             \
            for (int c = 0; c < C; c++) wv[c] = load8_##TY(w + (size_t)c * ldw, k);                                   \
            for (int r = 0; r < R; r++) {                                                                             \
                __m256 xv = _mm256_loadu_ps(x + (size_t)r * ldx + k);                                                 \
                for (int c = 0; c < C; c++) acc[r][c][0] = _mm256_fmadd_ps(xv, wv[c], acc[r][c][0]);                  \
            }                                                                                                         \
        }                                                                                                             \
        for (int r = 0; r < R; r++)                                                                                   \
            for (int c = 0; c < C; c++) {                                                                             \
                __m256 a = acc[r][c][0];                                                                              \
                for (int h = 1; h < NACC; h++) a = _mm256_add_ps(a, acc[r][c][h]);                                    \
                float s = hsum8(a);                                                                                   \
                for (int kk = k; kk < cols; kk++) s += x[(size_t)r * ldx + kk] * load1_##TY(w + (size_t)c * ldw, kk); \
                out[(size_t)r * ldo + c] = s;                                                                         \
            }                                                                                                         \
    }
DEF_BLOCK(f32)
DEF_BLOCK(f16)
DEF_BLOCK(bf16)

float kernel_dot(const float *a, const float *b, int n)
{
    float s;
    block_f32(&s, 1, a, 0, (const uint8_t *)b, 0, n, 1, 1, NULL);
    return s;
}

void kernel_axpy(float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

#else /* portable scalar version */


#define DEF_BLOCK(TY)                                                                                               \
    static inline void block_##TY(float *out, size_t ldo, const float *x, size_t ldx, const uint8_t *w, size_t ldw, \
                                  int cols, const int R, const int C, const uint8_t *pf)                            \
    {                                                                                                               \
        (void)pf;                                                                                                   \
        for (int r = 0; r < R; r++)                                                                                 \
            for (int c = 0; c < C; c++) {                                                                           \
                float s = 0.0f;                                                                                     \
                for (int k = 0; k < cols; k++) s += x[(size_t)r * ldx + k] * load1_##TY(w + (size_t)c * ldw, k);    \
                out[(size_t)r * ldo + c] = s;                                                                       \
            }                                                                                                       \
    }
DEF_BLOCK(f32)
DEF_BLOCK(f16)
DEF_BLOCK(bf16)

float kernel_dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void kernel_axpy(float *y, float a, const float *x, int n)
{
    for (int i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

#endif

/* ---- exp as ggml's vectorized CPU ops compute it ------------------------------- */

/* llama.cpp's CPU backend takes the exponentials of its softmax and SiLU with its
 * own vectorized exp (ggml-cpu/vec.h, ggml_v_expf, after Arm's optimized-routines
 * expf), not libm's; a last-bit difference there moves the activations that are
 * quantized for the next matmul.  The arithmetic, per lane (the AVX-512 build's,
 * which the other widths share for results that are normal floats):
 *   n = round(x * log2(e)) by adding and subtracting 1.5 * 2^23 (fma for the add),
 *   b = x - n * ln2_hi - n * ln2_lo (two fmas),
 *   p = ((c5 b + c4) b^2 + (c3 b + c2)) b^2 + (c1 b + 1) (fmas, b^2 rounded),
 *   exp = p * 2^n (one rounding), 0 for n < -192, inf for n > 192.
 * The constants are ggml's (numbers, in C99 hex-float notation). */
#define GEXP_SHIFT 0x1.8p23f
#define GEXP_LOG2E 0x1.715476p+0f
#define GEXP_LN2HI 0x1.62e4p-1f
#define GEXP_LN2LO 0x1.7f7d1cp-20f
#define GEXP_C5    0x1.0e4020p-7f
#define GEXP_C4    0x1.573e2ep-5f
#define GEXP_C3    0x1.555e66p-3f
#define GEXP_C2    0x1.fffdb6p-2f
#define GEXP_C1    0x1.ffffecp-1f

float kernel_expf_ggml(float x)
{
    float n = fmaf(x, GEXP_LOG2E, GEXP_SHIFT) - GEXP_SHIFT;
    float b = fmaf(-n, GEXP_LN2LO, fmaf(-n, GEXP_LN2HI, x));
    float u = b * b;
    float p = fmaf(fmaf(fmaf(GEXP_C5, b, GEXP_C4), u, fmaf(GEXP_C3, b, GEXP_C2)), u, fmaf(GEXP_C1, b, 1.0f));
    if (isnan(n)) return p; /* x NaN: p is NaN */
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    return ldexpf(p, (int)n); /* p * 2^n, rounded once (as AVX-512's scalef) */
}

#ifdef KERNEL_AVX2
/* kernel_expf_ggml on 8 lanes: 2^n built in the exponent bits when every |n| <= 126
 * (then p * 2^n is one correctly rounded multiply); otherwise lane by lane. */
static inline __m256 expf8_ggml(__m256 x)
{
    __m256 shift = _mm256_set1_ps(GEXP_SHIFT);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(GEXP_LOG2E), shift), shift);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(GEXP_LN2LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(GEXP_LN2HI), x));
    __m256 u = _mm256_mul_ps(b, b);
    __m256 p = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(GEXP_C5), b, _mm256_set1_ps(GEXP_C4)), u,
                                               _mm256_fmadd_ps(_mm256_set1_ps(GEXP_C3), b, _mm256_set1_ps(GEXP_C2))),
                               u, _mm256_fmadd_ps(_mm256_set1_ps(GEXP_C1), b, _mm256_set1_ps(1.0f)));
    __m256 an = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    if (_mm256_movemask_ps(_mm256_cmp_ps(an, _mm256_set1_ps(126.0f), _CMP_LE_OQ)) == 0xff) {
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    }
    float xs[8];
    _mm256_storeu_ps(xs, x);
    for (int i = 0; i < 8; i++) xs[i] = kernel_expf_ggml(xs[i]);
    return _mm256_loadu_ps(xs);
}
#endif

/* ggml's sum of 16 floats (AVX-512's horizontal add): a[i] + a[i + 8], then those
 * 8 pairwise with the element 4 after, then 2 after, then the last two. */
static inline float sum16_ggml(const float *a)
{
    float h[8];
    for (int i = 0; i < 8; i++) h[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) h[i] = h[i] + h[i + 4];
    return (h[0] + h[2]) + (h[1] + h[3]);
}

/* Softmax of x[0..n) in place, as ggml's CPU soft_max computes it: e = exp(x - max)
 * by kernel_expf_ggml; the sum of each 16 consecutive e (a missing one counts 0:
 * llama.cpp's rows are padded with masked positions) by sum16_ggml, added up in
 * double; every e times (float)(1 / sum). */
static void softmax_ggml(float *x, int n)
{
    float mx = -INFINITY;
    for (int t = 0; t < n; t++)
        if (x[t] > mx) mx = x[t];
    double sum = 0.0;
    int t = 0;
#ifdef KERNEL_AVX2
    __m256 vm = _mm256_set1_ps(mx);
    for (; t + 16 <= n; t += 16) {
        __m256 lo = expf8_ggml(_mm256_sub_ps(_mm256_loadu_ps(x + t), vm));
        __m256 hi = expf8_ggml(_mm256_sub_ps(_mm256_loadu_ps(x + t + 8), vm));
        _mm256_storeu_ps(x + t, lo);
        _mm256_storeu_ps(x + t + 8, hi);
        sum += hsum8(_mm256_add_ps(lo, hi)); /* = sum16_ggml */
    }
#endif
    for (; t < n; t += 16) {
        float a[16] = { 0 };
        for (int j = 0; j < 16 && t + j < n; j++) a[j] = x[t + j] = kernel_expf_ggml(x[t + j] - mx);
        sum += sum16_ggml(a);
    }
    float inv = (float)(1.0 / sum);
    for (t = 0; t < n; t++) x[t] *= inv;
}

/* ---- Attention for one query row ------------------------------------------------ */

/* The cache holds F32 or F16 (IEEE half) elements; both paths below do the same
 * float operations on the element values, so F16 K/V give exactly what F32 K/V
 * holding the same (converted) values give. */
static inline float kv_load1(const void *p, size_t i, const int F16)
{
    return F16 ? model_f16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* llama.cpp's attention without flash attention is two F32 matmuls, and in an
 * AVX-512 build ggml takes both through ggml_vec_dot_f32 (ggml-cpu/vec.cpp; checked
 * against its tensors for head sizes 8 and 64, one query row or a prompt): a dot
 * product of n elements runs 4 accumulators x 16 lanes by fma over steps of 64
 * (element e feeds accumulator (e / 16) % 4, lane e % 16), adds the accumulators
 * lane-wise as (0 + 2) + (1 + 3), sums the 16 lanes by sum16_ggml, then adds the
 * n % 64 elements left: products rounded then added in order, except the last
 * (n % 64) % 8, which its compiled loop adds by fma.  dot_ggml is that for q . k_t
 * over the head's elements; attend_v for the probabilities . V over the positions,
 * where llama.cpp's cache rows are a multiple of 64 positions long (the unused ones
 * with probability 0), so there are no elements left over. */
static inline __attribute__((always_inline)) float dot_ggml(const float *q, const void *k, int hd, const int F16)
{
    int np = hd & ~63, i = 0;
    float s = 0.0f;
    if (np) {
#ifdef KERNEL_AVX2
        __m256 acc[8]; /* accumulator a's lanes 0-7 in acc[2a], 8-15 in acc[2a + 1] */
        for (int a = 0; a < 8; a++) acc[a] = _mm256_setzero_ps();
        for (; i < np; i += 64)
            for (int a = 0; a < 8; a++) {
                __m256 kv = F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)k + i + 8 * a)))
                                : _mm256_loadu_ps((const float *)k + i + 8 * a);
                acc[a] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8 * a), kv, acc[a]);
            }
        __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        s = hsum8(_mm256_add_ps(lo, hi)); /* = sum16_ggml */
#else
        float acc[4][16] = { { 0 } };
        for (; i < np; i += 64)
            for (int a = 0; a < 4; a++)
                for (int l = 0; l < 16; l++)
                    acc[a][l] = fmaf(q[i + 16 * a + l], kv_load1(k, (size_t)i + 16 * a + l, F16), acc[a][l]);
        for (int l = 0; l < 16; l++) acc[0][l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        s = sum16_ggml(acc[0]);
#endif
    }
    int rest = hd - np, nr = np + rest - rest % 8;
    for (; i < nr; i++) s += q[i] * kv_load1(k, (size_t)i, F16);
    for (; i < hd; i++) s = fmaf(q[i], kv_load1(k, (size_t)i, F16), s);
    return s;
}

/* out = sum_t p[t] v_t in dot_ggml's order over the positions: position t feeds
 * chain t % 64 of each output element by fma in t order from 0; then lane l is
 * (c[l] + c[l + 32]) + (c[l + 16] + c[l + 48]) and the 16 lanes go through
 * sum16_ggml.  The 64 chains live in a buffer (64 x hd floats, L1-resident for the
 * usual head sizes) so that V is still read in position order. */
#define ATT_CHAIN_HD 128 /* head sizes up to this (multiples of 8) take the vector path */
#ifdef KERNEL_AVX2
static const float att_zero[ATT_CHAIN_HD] __attribute__((aligned(32)));
/* a[0..hd) = fma(pt, v_t, FIRST ? 0 : a) (one position into its chain). */
static inline __attribute__((always_inline)) void chain_step(float *a, float pt, const void *v, int t, int hd,
                                                             const int F16, const int FIRST)
{
    __m256 pv = _mm256_set1_ps(pt);
    for (int i = 0; i < hd; i += 8) {
        size_t e = (size_t)t * hd + i;
        __m256 vv = F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)v + e)))
                        : _mm256_loadu_ps((const float *)v + e);
        _mm256_store_ps(a + i, _mm256_fmadd_ps(pv, vv, FIRST ? _mm256_setzero_ps() : _mm256_load_ps(a + i)));
    }
}
#endif
static inline __attribute__((always_inline)) void attend_v(float *out, const float *p, const void *v, int n, int hd,
                                                           const int F16)
{
#ifdef KERNEL_AVX2
    if (hd % 8 == 0 && hd <= ATT_CHAIN_HD) {
        float c[64 * ATT_CHAIN_HD] __attribute__((aligned(32)));
        int used = n < 64 ? n : 64; /* chains that get a position */
        /* A chain's first position is fma(p, v, 0), written without reading the chain
         * (so the chains need no zeroing); later ones add to what is there. */
        int t = 0;
        for (; t < used; t++) chain_step(c + (size_t)t * hd, p[t], v, t, hd, F16, 1);
        for (; t < n; t++) chain_step(c + (size_t)(t & 63) * hd, p[t], v, t, hd, F16, 0);
        /* chains no position reached (a context shorter than 64) are read as zeros
         * from att_zero instead: the same +0 operands without zeroing them */
        const float *ch[64];
        for (int l = 0; l < 64; l++) ch[l] = l < used ? c + (size_t)l * hd : att_zero;
        for (int i = 0; i < hd; i += 8) { /* 8 output elements at once */
            __m256 h[8];
            for (int l = 0; l < 8; l++) {
                __m256 lo =
                    _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(ch[l] + i), _mm256_load_ps(ch[l + 32] + i)),
                                  _mm256_add_ps(_mm256_load_ps(ch[l + 16] + i), _mm256_load_ps(ch[l + 48] + i)));
                __m256 hi =
                    _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(ch[l + 8] + i), _mm256_load_ps(ch[l + 40] + i)),
                                  _mm256_add_ps(_mm256_load_ps(ch[l + 24] + i), _mm256_load_ps(ch[l + 56] + i)));
                h[l] = _mm256_add_ps(lo, hi); /* sum16_ggml's first step: lane l + lane l + 8 */
            }
            for (int l = 0; l < 4; l++) h[l] = _mm256_add_ps(h[l], h[l + 4]);
            _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_add_ps(h[0], h[2]), _mm256_add_ps(h[1], h[3])));
        }
        return;
    }
#endif
    for (int i = 0; i < hd; i++) {
        float c[64] = { 0 }, lane[16];
        for (int t = 0; t < n; t++) c[t & 63] = fmaf(p[t], kv_load1(v, (size_t)t * hd + i, F16), c[t & 63]);
        for (int l = 0; l < 16; l++) lane[l] = (c[l] + c[l + 32]) + (c[l + 16] + c[l + 48]);
        out[i] = sum16_ggml(lane);
    }
}

#ifdef KERNEL_AVX2
/* r[e] = column e of the 8 x 8 block whose rows are r[0..7] (in registers). */
static inline __attribute__((always_inline)) void transpose8x8(__m256 r[8])
{
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; i++) r[i] = t[i];
}

/* dot_ggml for 8 consecutive cached positions at once (lanes = positions): the
 * 64-element steps per position as dot_ggml does them, then the rest of every
 * position's sum in the same order, element by element across the 8 lanes (the
 * sequential adds that dominate short heads, e.g. 48 or 32 elements, no longer wait
 * on each other). */
static inline __attribute__((always_inline)) void dot_ggml8(float *s8, const float *q, const uint8_t *kb, size_t row,
                                                            int hd, const int F16)
{
    int np = hd & ~63, rest = hd - np, nr = np + rest - rest % 8;
    __m256 s = _mm256_setzero_ps();
    if (np) {
        float head[8];
        for (int j = 0; j < 8; j++) head[j] = dot_ggml(q, kb + (size_t)j * row, np, F16);
        s = _mm256_loadu_ps(head);
    }
    for (int i0 = np; i0 < nr; i0 += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; j++) {
            const uint8_t *kr = kb + (size_t)j * row;
            r[j] = F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)kr + i0)))
                       : _mm256_loadu_ps((const float *)kr + i0);
        }
        transpose8x8(r);
        for (int e = 0; e < 8; e++) s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_set1_ps(q[i0 + e]), r[e]));
    }
    for (int i = nr; i < hd; i++) {
        float c[8];
        for (int j = 0; j < 8; j++) c[j] = kv_load1(kb + (size_t)j * row, (size_t)i, F16);
        s = _mm256_fmadd_ps(_mm256_set1_ps(q[i]), _mm256_loadu_ps(c), s);
    }
    _mm256_storeu_ps(s8, s);
}
#endif

static inline __attribute__((always_inline)) void attend(float *out, const float *q, const void *k, const void *v,
                                                         int n, int hd, float scale, float *scores, const int F16)
{
    const size_t row = (size_t)hd * (F16 ? 2 : 4);
    const uint8_t *kb = k;
    int t = 0;
#ifdef KERNEL_AVX2
    if (hd % 64) /* a sequential rest in every position: 8 positions side by side */
        for (; t + 8 <= n; t += 8) {
            if (ATT_PF) { /* as below */
                const char *kp = (const char *)kb + (size_t)(t + ATT_PF) * row;
                const char *vp = (const char *)v + (size_t)t * row;
                int kin = t + ATT_PF + 8 <= n;
                for (size_t o = 0; o < 8 * row; o += 64) {
                    if (kin) _mm_prefetch(kp + o, _MM_HINT_T0);
                    _mm_prefetch(vp + o, _MM_HINT_T0);
                }
            }
            dot_ggml8(scores + t, q, kb + (size_t)t * row, row, hd, F16);
        }
#endif
    for (; t < n; t++) {
#ifdef KERNEL_AVX2
        if (ATT_PF && (t & 3) == 0) {
            /* the K rows ATT_PF positions ahead, and the V rows of these positions
             * (read after the softmax) */
            const char *kp = (const char *)kb + (size_t)(t + ATT_PF) * row;
            const char *vp = (const char *)v + (size_t)t * row;
            int kin = t + ATT_PF + 4 <= n, vin = t + 4 <= n;
            for (size_t o = 0; o < 4 * row; o += 64) {
                if (kin) _mm_prefetch(kp + o, _MM_HINT_T0);
                if (vin) _mm_prefetch(vp + o, _MM_HINT_T0);
            }
        }
#endif
        scores[t] = dot_ggml(q, kb + (size_t)t * row, hd, F16);
    }
    for (t = 0; t < n; t++) scores[t] *= scale;
    softmax_ggml(scores, n);
    attend_v(out, scores, v, n, hd, F16);
}

void kernel_attend(float *out, const float *q, const float *k, const float *v, int n, int hd, float scale,
                   float *scores)
{
    attend(out, q, k, v, n, hd, scale, scores, 0);
}

void kernel_attend_f16(float *out, const float *q, const uint16_t *k, const uint16_t *v, int n, int hd, float scale,
                       float *scores)
{
    attend(out, q, k, v, n, hd, scale, scores, 1);
}

void kernel_to_f16(uint16_t *dst, const float *src, int n)
{
    int i = 0;
#ifdef KERNEL_AVX2
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) dst[i] = model_f32_to_f16(src[i]);
}

/* ---- Row-range drivers ------------------------------------------------------- */

/* Dispatch a (R, C) block with compile-time shapes. */
#define BLOCK_SWITCH(CALL)             \
    switch (R * 8 + C) {               \
    case 4 * 8 + 4: CALL(4, 4); break; \
    case 4 * 8 + 3: CALL(4, 3); break; \
    case 4 * 8 + 2: CALL(4, 2); break; \
    case 4 * 8 + 1: CALL(4, 1); break; \
    case 3 * 8 + 4: CALL(3, 4); break; \
    case 3 * 8 + 3: CALL(3, 3); break; \
    case 3 * 8 + 2: CALL(3, 2); break; \
    case 3 * 8 + 1: CALL(3, 1); break; \
    case 2 * 8 + 4: CALL(2, 4); break; \
    case 2 * 8 + 3: CALL(2, 3); break; \
    case 2 * 8 + 2: CALL(2, 2); break; \
    case 2 * 8 + 1: CALL(2, 1); break; \
    case 1 * 8 + 4: CALL(1, 4); break; \
    case 1 * 8 + 3: CALL(1, 3); break; \
    case 1 * 8 + 2: CALL(1, 2); break; \
    default: CALL(1, 1); break;        \
    }

/* Register-block shape (compile-time tunables; none changes a result):
 * BLK_R x rows by BLK_C W rows when batched, BLK_C1 W rows when decoding one
 * row.  Batched matmuls are bound by streaming W from memory, so larger blocks
 * do not pay; single-row decoding needs two accumulators per element to hide
 * the fma latency (the shapes tried: docs/TUNING.md). */
#ifndef PF_AHEAD
#define PF_AHEAD 2 /* prefetch the W rows this many blocks ahead while the first x block runs */
#endif
#ifndef BLK_R
#define BLK_R 2
#endif
#ifndef BLK_C
#define BLK_C 2
#endif
#ifndef BLK_C1
#define BLK_C1 1
#endif
/* W rows per register block. */
static inline int block_cols(int x_rows) { return x_rows == 1 ? BLK_C1 : BLK_C; }

/* x rows per L2 block (a multiple of 4, at least 4). */
static int x_block_rows(size_t row_bytes)
{
    size_t n = L2_BLOCK / (row_bytes ? row_bytes : 1);
    n &= ~(size_t)3;
    return n < 4 ? 4 : n > 1024 ? 1024 : (int)n;
}

#define DEF_ROWS(TY)                                                                                                   \
    static void rows_##TY(float *out, int ldo, const float *x, int n_rows, int cols, const mtensor *w, int j0, int j1) \
    {                                                                                                                  \
        size_t ldw = mtensor_row_bytes(w->type, cols);                                                                 \
        const uint8_t *wd = (const uint8_t *)w->data;                                                                  \
        int xb = x_block_rows((size_t)cols * 4);                                                                       \
        for (int rb = 0; rb < n_rows; rb += xb) {                                                                      \
            int re = rb + xb < n_rows ? rb + xb : n_rows;                                                              \
            int cm = block_cols(re - rb);                                                                              \
            for (int j = j0; j < j1; j += cm) {                                                                        \
                int C = j1 - j >= cm ? cm : j1 - j;                                                                    \
                for (int r = rb; r < re; r += BLK_R) {                                                                 \
                    int R = re - r >= BLK_R ? BLK_R : re - r;                                                          \
                    float *o = out + (size_t)r * ldo + j;                                                              \
                    const float *xr = x + (size_t)r * cols;                                                            \
                    const uint8_t *wr = wd + (size_t)j * ldw;                                                          \
                    const uint8_t *pf = r == rb && PF_AHEAD && j + (PF_AHEAD + 1) * cm <= w->rows                      \
                                            ? wr + (size_t)PF_AHEAD * cm * ldw                                         \
                                            : NULL;                                                                    \
                    BLOCK_SWITCH(CALL_##TY)                                                                            \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
    }
#define CALL_f32(RR, CC)  block_f32(o, ldo, xr, cols, wr, ldw, cols, RR, CC, pf)
#define CALL_f16(RR, CC)  block_f16(o, ldo, xr, cols, wr, ldw, cols, RR, CC, pf)
#define CALL_bf16(RR, CC) block_bf16(o, ldo, xr, cols, wr, ldw, cols, RR, CC, pf)
DEF_ROWS(f32)
DEF_ROWS(f16)
DEF_ROWS(bf16)

#ifdef KERNEL_AVX512
/* One x row against C (<= 4) consecutive rows of F16 (BF = 0) or BF16 (BF = 1) weights,
 * out[c]: per element the operations of block_f16 / block_bf16 with NACC 2 (checked
 * below), since a 512-bit accumulator is exactly their pair: columns k..k+7 of each
 * 16-column step in its low half (accumulator 0), k+8..k+15 in its high half
 * (accumulator 1).  The leftover 8-column step goes to the low half, then low + high,
 * hsum8 and the scalar tail, as there.  pf (or NULL): the same rows further on, to
 * prefetch. */
#if NACC != 2
#error "half_rows1 restates block_f16 / block_bf16 with NACC 2"
#endif
static inline __attribute__((always_inline)) void half_block1(float *out, const float *x, const uint8_t *w,
                                                              size_t ldw, int cols, const int C, const int BF,
                                                              const uint8_t *pf)
{
    __m512 acc[4];
    for (int c = 0; c < C; c++) acc[c] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= cols; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
        if (pf && (k & 31) == 0)
            for (int c = 0; c < C; c++) _mm_prefetch((const char *)pf + (size_t)c * ldw + (size_t)k * 2, _MM_HINT_T0);
        for (int c = 0; c < C; c++) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(w + (size_t)c * ldw + (size_t)k * 2));
            __m512 wv = BF ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
            acc[c] = _mm512_fmadd_ps(xv, wv, acc[c]);
        }
    }
    for (int c = 0; c < C; c++) {
        const uint8_t *wc = w + (size_t)c * ldw;
        __m256 a0 = _mm512_castps512_ps256(acc[c]);
        __m256 a1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[c]), 1));
        int kk = k;
        for (; kk + 8 <= cols; kk += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk), BF ? load8_bf16(wc, kk) : load8_f16(wc, kk), a0);
        float s = hsum8(_mm256_add_ps(a0, a1));
        for (; kk < cols; kk++) s += x[kk] * (BF ? load1_bf16(wc, kk) : load1_f16(wc, kk));
        out[c] = s;
    }
}

/* out[j] for j in [j0, j1): one x row against F16 / BF16 rows, four at a time. */
static void half_rows1(float *out, const float *x, int cols, const mtensor *w, int j0, int j1)
{
    size_t ldw = mtensor_row_bytes(w->type, cols);
    const uint8_t *wd = (const uint8_t *)w->data;
    int bf = w->type == MT_BF16;
    int j = j0;
    for (; j + 4 <= j1; j += 4) {
        const uint8_t *wr = wd + (size_t)j * ldw;
        const uint8_t *pf = j + 8 <= w->rows ? wr + 4 * ldw : NULL;
        if (bf)
            half_block1(out + j, x, wr, ldw, cols, 4, 1, pf);
        else
            half_block1(out + j, x, wr, ldw, cols, 4, 0, pf);
    }
    for (; j < j1; j++) {
        if (bf)
            half_block1(out + j, x, wd + (size_t)j * ldw, ldw, cols, 1, 1, NULL);
        else
            half_block1(out + j, x, wd + (size_t)j * ldw, ldw, cols, 1, 0, NULL);
    }
}
#endif

/* ---- Packed layouts: F32 in 16-row panels, block types in 8-row panels (kernels.h) */

int kernel_can_pack(int type)
{
#ifdef KERNEL_AVX2
    return type == MT_F32 || quant_is_quantized(type);
#else
    return 0;
#endif
}

int kernel_pack_rows(int type)
{
    if (!kernel_can_pack(type)) return 0;
    return type == MT_F32 ? KERNEL_PANEL : QUANT_PANEL;
}

void kernel_pack(const mtensor *w, void *dst, mtensor *out)
{
    if (w->type == MT_F32)
        kernel_pack_f32(w, dst, out);
    else
        quant_pack(w, dst, out);
}

#ifdef KERNEL_AVX2
/* dp[k * 16 + i] = sp[i * cols + k] for i in [i0, i0 + 8), k in [k0, k0 + 8): an 8x8
 * transpose in registers. */
static void transpose8(float *dp, const float *sp, int cols, int i0, int k0)
{
    __m256 r[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(sp + (size_t)(i0 + i) * cols + k0);
    transpose8x8(r);
    for (int k = 0; k < 8; k++) _mm256_storeu_ps(dp + (size_t)(k0 + k) * KERNEL_PANEL + i0, r[k]);
}
#endif

void kernel_pack_f32(const mtensor *w, float *dst, mtensor *out)
{
    const float *src = w->data;
    int cols = w->cols, full = w->rows / KERNEL_PANEL;
    for (int p = 0; p < full; p++) {
        const float *sp = src + (size_t)p * KERNEL_PANEL * cols;
        float *dp = dst + (size_t)p * KERNEL_PANEL * cols;
        int k0 = 0;
#ifdef KERNEL_AVX2
        for (; k0 + 8 <= cols; k0 += 8) {
            transpose8(dp, sp, cols, 0, k0);
            transpose8(dp, sp, cols, 8, k0);
        }
#endif
        for (int k = k0; k < cols; k++)
            for (int i = 0; i < KERNEL_PANEL; i++) dp[(size_t)k * KERNEL_PANEL + i] = sp[(size_t)i * cols + k];
    }
    size_t done = (size_t)full * KERNEL_PANEL * cols;
    memcpy(dst + done, src + done, ((size_t)w->rows * cols - done) * sizeof(float));
    mtensor t = *w;
    t.data = dst;
    t.panel = KERNEL_PANEL;
    *out = t;
}

/* Rows of the tail (row-major): the same per-element sequence as one lane of a
 * panel accumulator -- fmaf in k order from 0. */
static void rows_f32_tail(float *out, int ldo, const float *x, int n_rows, int cols, const float *w, int j0, int j1)
{
    for (int r = 0; r < n_rows; r++)
        for (int j = j0; j < j1; j++) {
            const float *xr = x + (size_t)r * cols, *wr = w + (size_t)j * cols;
            float s = 0.0f;
            for (int k = 0; k < cols; k++) s = fmaf(xr[k], wr[k], s);
            out[(size_t)r * ldo + j] = s;
        }
}

#ifndef PNP
#define PNP 2 /* panels per block when decoding one row */
#endif
#ifndef PPF
/* batched: prefetch the panel this many ahead, spread over the current panel's x
 * blocks, so that W streams from memory during all of them (a prefetch issued in
 * the first block only leaves the later ones with nothing in flight).  One panel
 * ahead: a panel of a small model is already 18 KiB, so two would not fit L1
 * beside the current one. */
#define PPF 1
#endif
#ifdef KERNEL_AVX2
/* R x rows times NP panels (16 * NP W rows): acc[r][v] holds 8 outputs; per
 * column k, the panels' 2 * NP vectors are loaded once and x[r][k] broadcast.
 * 6 x 1 uses 12 accumulators + 2 W vectors + 1 broadcast; 1 x 2 (decoding)
 * gives 4 independent chains over two sequential streams. */
static inline __attribute__((always_inline)) void pblock(float *out, size_t ldo, const float *x, size_t ldx,
                                                         const float *wp, size_t pstride, int cols, const int R,
                                                         const int NP, const float *pf, int pf_every)
{
    __m256 acc[6][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < 2 * NP; v++) acc[r][v] = _mm256_setzero_ps();
    int pf_left = pf_every;
    for (int k = 0; k < cols; k++) {
        __m256 wv[4];
        if (pf && --pf_left == 0) { /* one 64-byte line of a later panel every pf_every columns */
            _mm_prefetch((const char *)pf, _MM_HINT_T0);
            pf += KERNEL_PANEL;
            pf_left = pf_every;
        }
        for (int p = 0; p < NP; p++) {
            wv[2 * p] = _mm256_load_ps(wp + (size_t)p * pstride + (size_t)k * KERNEL_PANEL);
            wv[2 * p + 1] = _mm256_load_ps(wp + (size_t)p * pstride + (size_t)k * KERNEL_PANEL + 8);
        }
        for (int r = 0; r < R; r++) {
            __m256 xb = _mm256_broadcast_ss(x + (size_t)r * ldx + k);
            for (int v = 0; v < 2 * NP; v++) acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < 2 * NP; v++) _mm256_storeu_ps(out + (size_t)r * ldo + 8 * v, acc[r][v]);
}

#ifdef KERNEL_AVX512
/* Batched packed F32 on AVX-512: R x rows times NP panels, one 16-lane vector
 * acc[r][p] per (x row, panel), i.e. one lane per output element.  Per column k
 * the NP panel vectors are loaded once, x[r][k] broadcast and fused-multiply-added
 * into each: every output is the same single fmaf chain over k from 0 as
 * rows_f32_tail and the AVX2 pblock, so the block shape never changes a bit.
 * ZBLK_R x ZBLK_NP accumulators (at most 28) + NP panel vectors + a broadcast fit
 * the 32 vector registers.
 * pf, if not NULL: NP lines of a later panel group are prefetched every pf_every
 * columns (see rows_f32p). */
#ifndef ZBLK_R
#define ZBLK_R 8 /* x rows per block, at most */
#endif
#ifndef ZBLK_NP
#define ZBLK_NP 2 /* panels per block, at most (row ranges come in pairs of panels: kernel_mm_unit) */
#endif
#ifndef ZPF
#define ZPF 1 /* prefetch the panel group this many groups ahead */
#endif
#ifndef ZPF_HINT
#define ZPF_HINT _MM_HINT_T0
#endif
_Static_assert(ZBLK_R * ZBLK_NP <= 28 && ZBLK_NP <= 4 && ZBLK_R <= 16, "ZBLK_R x ZBLK_NP must fit the registers");
static inline __attribute__((always_inline)) void zblock(float *out, size_t ldo, const float *x, size_t ldx,
                                                         const float *wp, size_t pstride, int cols, const int R,
                                                         const int NP, const float *pf, int pf_every)
{
    __m512 acc[ZBLK_R][ZBLK_NP];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_ps();
    int pf_left = pf_every;
    for (int k = 0; k < cols; k++) {
        __m512 wv[ZBLK_NP];
        if (pf && --pf_left == 0) {
            for (int p = 0; p < NP; p++) _mm_prefetch((const char *)(pf + (size_t)p * KERNEL_PANEL), ZPF_HINT);
            pf += (size_t)NP * KERNEL_PANEL;
            pf_left = pf_every;
        }
        for (int p = 0; p < NP; p++) wv[p] = _mm512_loadu_ps(wp + (size_t)p * pstride + (size_t)k * KERNEL_PANEL);
        for (int r = 0; r < R; r++) {
            __m512 xb = _mm512_set1_ps(x[(size_t)r * ldx + k]);
            for (int p = 0; p < NP; p++) acc[r][p] = _mm512_fmadd_ps(xb, wv[p], acc[r][p]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) _mm512_storeu_ps(out + (size_t)r * ldo + (size_t)p * KERNEL_PANEL, acc[r][p]);
}

/* One case of the block height RR (a constant), np panels (rows_f32p_z's locals);
 * heights above ZBLK_R and widths above ZBLK_NP never occur, and map to 1 so that
 * they are not compiled. */
#define ZCALL(RR, NN) \
    zblock(o, ldo, xr, cols, wp, ps, cols, (RR) <= ZBLK_R ? (RR) : 1, ZBLK_NP >= (NN) ? (NN) : 1, pf, nxb)
#define ZCASE(RR)                 \
    case RR:                      \
        if (np == 4)              \
            ZCALL(RR, 4);         \
        else if (np == 3)         \
            ZCALL(RR, 3);         \
        else if (np == 2)         \
            ZCALL(RR, 2);         \
        else                      \
            ZCALL(RR, 1);         \
        break;

/* x rows [rb, re) (at least 2) against the full panels of W rows [j0, jp): groups of
 * up to ZBLK_NP panels, each swept by near-equal blocks of at most ZBLK_R x rows. */
static void rows_f32p_z(float *out, size_t ldo, const float *x, int rb, int re, int cols, const float *d, int j0,
                        int jp, int full)
{
    size_t ps = (size_t)KERNEL_PANEL * cols;
    int n = re - rb, nxb = (n + ZBLK_R - 1) / ZBLK_R, bsz = 0;
    for (int j = j0; j < jp;) {
        int np = (jp - j) / KERNEL_PANEL < ZBLK_NP ? (jp - j) / KERNEL_PANEL : ZBLK_NP;
        const float *wp = d + (size_t)(j / KERNEL_PANEL) * ps;
        /* The next group's np panels (contiguous) are prefetched while this group
         * runs, split evenly over its x blocks: each block issues np lines every nxb
         * columns, so W streams from memory during all of the group's arithmetic. */
        const float *ahead =
            PPF && j + (ZPF + 1) * np * KERNEL_PANEL <= full ? wp + (size_t)ZPF * np * ps : NULL;
        size_t share = (size_t)(cols / nxb) * np * KERNEL_PANEL;
        for (int r = rb, bi = 0; r < re; r += bsz, bi++) {
            float *o = out + (size_t)r * ldo + j;
            const float *xr = x + (size_t)r * cols;
            const float *pf = ahead ? ahead + (size_t)bi * share : NULL;
            bsz = n / nxb + (bi < n % nxb);
            switch (bsz) {
                ZCASE(16)
                ZCASE(15)
                ZCASE(14)
                ZCASE(13)
                ZCASE(12)
                ZCASE(11)
                ZCASE(10)
                ZCASE(9)
                ZCASE(8)
                ZCASE(7)
                ZCASE(6)
                ZCASE(5)
                ZCASE(4)
                ZCASE(3)
                ZCASE(2)
            default: ZCALL(1, 1); break;
            }
        }
        j += np * KERNEL_PANEL;
    }
}
#endif

static void rows_f32p(float *out, int ldo, const float *x, int n_rows, int cols, const mtensor *w, int j0, int j1)
{
    const float *d = w->data;
    int full = w->rows / KERNEL_PANEL * KERNEL_PANEL;
    int jp = j1 < full ? j1 : full; /* packed part: [j0, jp), j0 a multiple of 16 */
    size_t ps = (size_t)KERNEL_PANEL * cols;
    int xb = x_block_rows((size_t)cols * 4);
    for (int rb = 0; rb < n_rows; rb += xb) {
        int re = rb + xb < n_rows ? rb + xb : n_rows;
        if (re - rb == 1) {
            int j = j0;
            for (; PNP == 2 && j + 2 * KERNEL_PANEL <= jp; j += 2 * KERNEL_PANEL)
                pblock(out + (size_t)rb * ldo + j, ldo, x + (size_t)rb * cols, cols,
                       d + (size_t)(j / KERNEL_PANEL) * ps, ps, cols, 1, 2, NULL, 0);
            for (; PNP == 1 && j + KERNEL_PANEL <= jp; j += KERNEL_PANEL)
                pblock(out + (size_t)rb * ldo + j, ldo, x + (size_t)rb * cols, cols,
                       d + (size_t)(j / KERNEL_PANEL) * ps, ps, cols, 1, 1, NULL, 0);
            if (j < jp)
                pblock(out + (size_t)rb * ldo + j, ldo, x + (size_t)rb * cols, cols,
                       d + (size_t)(j / KERNEL_PANEL) * ps, ps, cols, 1, 1, NULL, 0);
            continue;
        }
#ifdef KERNEL_AVX512
        rows_f32p_z(out, (size_t)ldo, x, rb, re, cols, d, j0, jp, full);
#else
        /* The panel PPF ahead is prefetched while this one is used, spread evenly
         * over its x blocks (one line every nxb columns, each block its share), so
         * W streams from memory during all of the panel's arithmetic.
         * The rows are split into nxb blocks of near-equal size (16 = 6 + 5 + 5,
         * not 6 + 6 + 4): a block of R rows has 2R independent fma chains and the
         * fma latency (about 5 cycles on 2 pipes on current x86 cores) needs about
         * 10 to keep both pipes busy (docs/TUNING.md). */
        int nxb = (re - rb + 5) / 6, share = (cols + nxb - 1) / nxb, bsz = 0;
        for (int j = j0; j < jp; j += KERNEL_PANEL) {
            const float *wp = d + (size_t)(j / KERNEL_PANEL) * ps;
            const float *ahead = PPF && j + (PPF + 1) * KERNEL_PANEL <= full ? wp + PPF * ps : NULL;
            for (int r = rb, bi = 0; r < re; r += bsz, bi++) {
                float *o = out + (size_t)r * ldo + j;
                const float *xr = x + (size_t)r * cols;
                const float *pf = ahead ? ahead + (size_t)bi * share * KERNEL_PANEL : NULL;
                bsz = (re - rb) / nxb + (bi < (re - rb) % nxb);
                switch (bsz) {
                case 6: pblock(o, ldo, xr, cols, wp, ps, cols, 6, 1, pf, nxb); break;
                case 5: pblock(o, ldo, xr, cols, wp, ps, cols, 5, 1, pf, nxb); break;
                case 4: pblock(o, ldo, xr, cols, wp, ps, cols, 4, 1, pf, nxb); break;
                case 3: pblock(o, ldo, xr, cols, wp, ps, cols, 3, 1, pf, nxb); break;
                case 2: pblock(o, ldo, xr, cols, wp, ps, cols, 2, 1, pf, nxb); break;
                default: pblock(o, ldo, xr, cols, wp, ps, cols, 1, 1, pf, nxb); break;
                }
            }
        }
#endif
    }
    int jt = j0 > full ? j0 : full;
    if (jt < j1) rows_f32_tail(out, ldo, x, n_rows, cols, d, jt, j1);
}
#else
static void rows_f32p(float *out, int ldo, const float *x, int n_rows, int cols, const mtensor *w, int j0, int j1)
{ /* never packed in this build (kernel_can_pack), but keep it correct anyway */
    (void)out, (void)ldo, (void)x, (void)n_rows, (void)cols, (void)w, (void)j0, (void)j1;
    abort();
}
#endif

/* ---- Pool dispatch ----------------------------------------------------------- */

typedef kernel_mm mm_ctx; /* kernels.h */

/* x . w for an F16 row whose length is not a multiple of 16, as ggml's
 * ggml_vec_dot_f16 computes it in an AVX-512 build (llama.cpp's path there: its
 * tinyBLAS takes only multiples of 16, which kernel_dot's order already matches):
 * steps of 64 into 4 x 16 lanes by fma, those added (0 + 2, 1 + 3, then the two)
 * and summed by sum16_ggml into a double; the rest as float products added in
 * double; the result rounded to float.  (x holds half-rounded values: every
 * product is exact.) */
static float dot_f16_ggml(const float *x, const uint16_t *w, int n)
{
    int np = n & ~63, i = 0;
    double s = 0.0;
    if (np) {
        float acc[4][16] = { { 0 } };
        for (; i < np; i += 64)
            for (int a = 0; a < 4; a++)
                for (int l = 0; l < 16; l++)
                    acc[a][l] = fmaf(x[i + 16 * a + l], model_f16_to_f32(w[i + 16 * a + l]), acc[a][l]);
        for (int l = 0; l < 16; l++) acc[0][l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        s = sum16_ggml(acc[0]);
    }
    for (; i < n; i++) s += (double)(x[i] * model_f16_to_f32(w[i]));
    return (float)s;
}

static void rows_f16_ggml(float *out, int ldo, const float *x, int n_rows, int cols, const mtensor *w, int j0, int j1)
{
    const uint16_t *wd = w->data;
    for (int r = 0; r < n_rows; r++)
        for (int j = j0; j < j1; j++)
            out[(size_t)r * ldo + j] = dot_f16_ggml(x + (size_t)r * cols, wd + (size_t)j * cols, cols);
}

static void mm_rows(const mm_ctx *c, const kernel_job *job, int j0, int j1)
{
    const mtensor *w = job->w;
    const quant_act *a = &c->act[quant_act_format(w->type)];
    switch (w->type) {
    case MT_F32:
        if (w->panel)
            rows_f32p(job->out, w->rows, c->x, c->n_rows, c->cols, w, j0, j1);
        else
            rows_f32(job->out, w->rows, c->x, c->n_rows, c->cols, w, j0, j1);
        break;
    /* F16 / BF16: x rounded to the weights' type first, as ggml does */
    case MT_F16:
    case MT_BF16:
        /* F16 rows not a multiple of 16: ggml_vec_dot_f16's order (rows_f16_ggml) */
        if (w->type == MT_F16 && c->cols % 16) {
            rows_f16_ggml(job->out, w->rows, a->xr ? a->xr : c->x, c->n_rows, c->cols, w, j0, j1);
            break;
        }
#ifdef KERNEL_AVX512
        if (c->n_rows == 1) {
            half_rows1(job->out, a->xr ? a->xr : c->x, c->cols, w, j0, j1);
            break;
        }
#endif
        if (w->type == MT_F16)
            rows_f16(job->out, w->rows, a->xr ? a->xr : c->x, c->n_rows, c->cols, w, j0, j1);
        else
            rows_bf16(job->out, w->rows, a->xr ? a->xr : c->x, c->n_rows, c->cols, w, j0, j1);
        break;
    default:
        if (quant_is_quantized(w->type) && a->q) {
            quant_matmul_rows(job->out, (size_t)w->rows, a, c->n_rows, w, j0, j1);
            break;
        }
        for (int r = 0; r < c->n_rows; r++)
            for (int j = j0; j < j1; j++) job->out[(size_t)r * w->rows + j] = NAN;
    }
}

/* Elements [j0, j1) of a gate row of n: g = silu(g) * u as ggml's CPU swiglu computes
 * it (ggml-cpu/vec.cpp): g / (1 + exp(0 - g)) * u, the exp by kernel_expf_ggml for
 * the row's first n - n % 16 elements (its vector loop) and by libm's expf for the
 * rest (its scalar tail).  Elementwise, so any split of the row gives the same bits. */
static void swiglu_range(float *g, const float *u, int j0, int j1, int n)
{
    int nv = n - n % 16, i = j0, iv = j1 < nv ? j1 : nv;
#ifdef KERNEL_AVX2
    __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= iv; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = expf8_ggml(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < iv; i++) g[i] = g[i] / (1.0f + kernel_expf_ggml(0.0f - g[i])) * u[i];
    for (; i < j1; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void kernel_swiglu(float *g, const float *u, int n) { swiglu_range(g, u, 0, n, n); }

static void mm_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    const mm_ctx *c = arg;
    int jb = 0;
    while (task >= c->first[jb + 1]) jb++;
    const kernel_job *job = &c->jobs[jb];
    int rows = job->w->rows;
    /* the job's units (of unit rows, the last maybe partial) split as evenly as whole
     * units allow over its tasks */
    long u = c->unit[jb], nu = (rows + u - 1) / u, k = task - c->first[jb], nk = c->first[jb + 1] - c->first[jb];
    int j0 = (int)(u * (k * nu / nk));
    int j1 = (int)(u * ((k + 1) * nu / nk));
    if (j1 > rows) j1 = rows;
    mm_rows(c, job, j0, j1);
    if (c->swiglu) { /* the same rows of w3, then g = silu(g) * u on them, in every x row */
        mm_rows(c, &c->jobs[1], j0, j1);
        for (int r = 0; r < c->n_rows; r++)
            swiglu_range(job->out + (size_t)r * rows, c->jobs[1].out + (size_t)r * rows, j0, j1, rows);
    }
}

/* Task t of n quantizes every format's rows t, t + n, ... */
static void quantize_task(void *arg, int task, int n_tasks)
{
    mm_ctx *c = arg;
    for (int f = 1; f < QACT_COUNT; f++)
        if (c->act[f].q || c->act[f].xr)
            for (int r = task; r < c->n_rows; r += n_tasks) quant_act_rows(&c->act[f], c->x, r, r + 1);
}

int kernel_mm_unit(const mtensor *w) { return w->panel == KERNEL_PANEL ? 2 * KERNEL_PANEL : 8; }

/* c's jobs, x and shape set; fmt_buf[f]: a buffer for format f (quant_act_bytes) or
 * NULL if no job needs it: x converted into each. */
static void mm_convert_x(mm_ctx *c, model_pool *pool, void *const fmt_buf[QACT_COUNT])
{
    int nt = model_pool_size(pool), any = 0;
    for (int f = 1; f < QACT_COUNT; f++)
        if (fmt_buf[f]) {
            quant_act_init(&c->act[f], f, c->cols, c->n_rows, fmt_buf[f]);
            any = 1;
        }
    if (any) {
        int qt = c->n_rows >= 8 * nt ? nt : 1;
        model_pool_run(pool, quantize_task, c, qt);
    }
}

/* Bytes of each activation format the jobs need (fmt_bytes[f], 0 if none); returns their sum. */
static size_t mm_formats(const kernel_job *jobs, int n_jobs, int n_rows, size_t fmt_bytes[QACT_COUNT])
{
    size_t need = 0;
    for (int f = 0; f < QACT_COUNT; f++) fmt_bytes[f] = 0;
    for (int i = 0; i < n_jobs; i++) {
        int f = quant_act_format(jobs[i].w->type);
        if (f != QACT_NONE && !fmt_bytes[f]) need += fmt_bytes[f] = quant_act_bytes(f, jobs[0].w->cols, n_rows);
    }
    return need;
}

/* buf (need bytes) cut into the formats' buffers, in format order. */
static void mm_cut(void *buf, const size_t fmt_bytes[QACT_COUNT], void *fmt_buf[QACT_COUNT])
{
    size_t off = 0;
    for (int f = 0; f < QACT_COUNT; f++) {
        fmt_buf[f] = NULL;
        if (f != QACT_NONE && fmt_bytes[f]) {
            fmt_buf[f] = (char *)buf + off;
            off += fmt_bytes[f];
        }
    }
}

int kernel_mm_prepare(kernel_mm *c, model_pool *pool, const kernel_job *jobs, int n_jobs, const float *x, int n_rows)
{
    if (n_jobs <= 0 || n_jobs > MAX_JOBS || n_rows <= 0) return -1;
    size_t fmt_bytes[QACT_COUNT];
    size_t need = mm_formats(jobs, n_jobs, n_rows, fmt_bytes);
    void *buf = need ? model_pool_scratch(pool, need) : NULL, *fmt_buf[QACT_COUNT];
    if (need && !buf) return -1;
    mm_cut(buf, fmt_bytes, fmt_buf);
    *c = (kernel_mm){ .jobs = jobs, .n_jobs = n_jobs, .x = x, .n_rows = n_rows, .cols = jobs[0].w->cols };
    mm_convert_x(c, pool, fmt_buf);
    return 0;
}

void kernel_mm_rows(const kernel_mm *c, int i, int j0, int j1) { mm_rows(c, &c->jobs[i], j0, j1); }

/* fmt_buf[f]: a buffer for format f (quant_act_bytes) or NULL if no job needs it. */
static void matmul_group(model_pool *pool, const kernel_job *jobs, int n_jobs, const float *x, int n_rows,
                         void *const fmt_buf[QACT_COUNT], int swiglu)
{
    mm_ctx c = { .jobs = jobs, .n_jobs = n_jobs, .x = x, .n_rows = n_rows, .cols = jobs[0].w->cols, .swiglu = swiglu };
    int nt = model_pool_size(pool);
    mm_convert_x(&c, pool, fmt_buf);
    c.first[0] = 0;
    for (int i = 0; i < n_jobs; i++) {
        const mtensor *w = jobs[i].w;
        size_t rb = mtensor_row_bytes(w->type, w->cols);
        /* W rows per task: fit L2, and give every thread several tasks. */
        size_t by_cache = L2_BLOCK / (rb ? rb : 1);
        size_t by_share = ((size_t)w->rows + (size_t)4 * nt - 1) / ((size_t)4 * nt);
        size_t ch = by_cache < by_share ? by_cache : by_share;
        if (ch < 8) ch = 8;
        /* whole register blocks: pairs of 16-row panels, or 8 rows (the quantized
         * kernels take weight rows 8 at a time) */
        size_t unit = (size_t)kernel_mm_unit(w);
        ch = (ch + unit - 1) / unit * unit;
        /* as many tasks as chunks of that size, rounded up to a multiple of the
         * threads and spread evenly (mm_task): equal tasks end together, where
         * uneven ones leave a thread idle at the dispatch's end (e.g. 13 tasks of a
         * gate/up pair on 2 threads) */
        size_t nu = ((size_t)w->rows + unit - 1) / unit, ntask = ((size_t)w->rows + ch - 1) / ch;
        if (nt > 1) ntask = (ntask + nt - 1) / nt * nt;
        if (ntask > nu) ntask = nu;
        c.unit[i] = (int)unit;
        c.first[i + 1] = c.first[i] + (int)ntask;
    }
    /* swiglu: the tasks of the first job also run the second's same rows */
    model_pool_run(pool, mm_task, &c, c.first[swiglu ? 1 : n_jobs]);
}

static void matmul_jobs(model_pool *pool, const kernel_job *jobs, int n_jobs, const float *x, int n_rows, int swiglu)
{
    if (n_rows <= 0 || n_jobs <= 0) return;
    if (n_jobs > MAX_JOBS) {
        for (int i = 0; i < n_jobs; i += MAX_JOBS)
            kernel_matmul_multi(pool, jobs + i, n_jobs - i < MAX_JOBS ? n_jobs - i : MAX_JOBS, x, n_rows);
        return;
    }
    /* The activation formats the jobs' types need (quant.h), each a quantized copy of
     * x in pool scratch, else malloc, else row chunks on the stack. */
    int cols = jobs[0].w->cols;
    size_t fmt_bytes[QACT_COUNT];
    size_t need = mm_formats(jobs, n_jobs, n_rows, fmt_bytes);
    void *fmt_buf[QACT_COUNT] = { NULL };
    if (!need) {
        matmul_group(pool, jobs, n_jobs, x, n_rows, fmt_buf, swiglu);
        return;
    }
    void *buf = model_pool_scratch(pool, need), *own = NULL;
    if (!buf) buf = own = malloc(need);
    if (buf) {
        mm_cut(buf, fmt_bytes, fmt_buf);
        matmul_group(pool, jobs, n_jobs, x, n_rows, fmt_buf, swiglu);
        free(own);
        return;
    }
    /* Out of memory: same arithmetic, one job and fewer rows at a time (a swiglu pair
     * then runs as two matmuls and the gate; each element's operations are unchanged). */
    _Alignas(32) uint8_t qs[32768];
    for (int i = 0; i < n_jobs; i++) {
        int f = quant_act_format(jobs[i].w->type);
        size_t row = quant_act_bytes(f, cols, 1) + 64;
        int per = f == QACT_NONE ? n_rows : (int)(sizeof qs / row);
        if (per < 1) {
            for (size_t e = 0; e < (size_t)n_rows * jobs[i].w->rows; e++) jobs[i].out[e] = NAN;
            continue;
        }
        for (int r = 0; r < n_rows; r += per) {
            int n = n_rows - r < per ? n_rows - r : per;
            /* the sub-job writes rows r.. of out: out stride stays w->rows */
            kernel_job sub = { jobs[i].out + (size_t)r * jobs[i].w->rows, jobs[i].w };
            void *one[QACT_COUNT] = { NULL };
            if (f != QACT_NONE) one[f] = qs;
            matmul_group(NULL, &sub, 1, x + (size_t)r * cols, n, one, 0);
        }
    }
    if (swiglu)
        for (int r = 0; r < n_rows; r++)
            kernel_swiglu(jobs[0].out + (size_t)r * jobs[0].w->rows, jobs[1].out + (size_t)r * jobs[1].w->rows,
                          jobs[0].w->rows);
}

void kernel_matmul_multi(model_pool *pool, const kernel_job *jobs, int n_jobs, const float *x, int n_rows)
{
    matmul_jobs(pool, jobs, n_jobs, x, n_rows, 0);
}

void kernel_matmul_swiglu(model_pool *pool, float *g, float *u, const float *x, int n_rows, const mtensor *w1,
                          const mtensor *w3)
{
    kernel_job jobs[2] = { { g, w1 }, { u, w3 } };
    if (w1->rows != w3->rows || w1->cols != w3->cols || w1->type != w3->type ||
        w1->panel != w3->panel) { /* not the same shape and layout: one after the other */
        matmul_jobs(pool, jobs, 2, x, n_rows, 0);
        for (int r = 0; r < n_rows; r++) kernel_swiglu(g + (size_t)r * w1->rows, u + (size_t)r * w1->rows, w1->rows);
        return;
    }
    matmul_jobs(pool, jobs, 2, x, n_rows, 1);
}

void kernel_matmul(model_pool *pool, float *out, const float *x, int n_rows, const mtensor *w)
{
    kernel_job job = { out, w };
    kernel_matmul_multi(pool, &job, 1, x, n_rows);
}
