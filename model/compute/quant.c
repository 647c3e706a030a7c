/* quant.c -- block-quantized types: the type table, dequantization, activation
 * quantization and the portable statement of every dot product (quant.h).
 *
 * Block layouts (ggml-common.h; "d" and "m" are IEEE halves unless noted):
 *   Q4_0  18 B / 32: d, 16 B nibbles: weight i < 16 is the low nibble of byte i, weight
 *         i + 16 its high nibble; value q - 8
 *   Q4_1  20 B / 32: d, m, nibbles as Q4_0; value q * d + m
 *   Q5_0  22 B / 32: d, 32 high bits (bit i for weight i), nibbles; value q - 16
 *   Q5_1  24 B / 32: d, m, high bits, nibbles; value q * d + m
 *   Q8_0  34 B / 32: d, 32 int8
 *   Q2_K  84 B / 256: 16 bytes of (scale | min << 4) per 16 weights, 64 B of 2-bit
 *         quants, d, dmin; weight e: (qs[32 (e / 128) + e % 32] >> 2 ((e % 128) / 32)) & 3
 *   Q3_K 110 B / 256: 32 B high bits (weight e: hmask[e % 32] bit 4 (e / 128) + (e % 128) / 32,
 *         set means +4), 64 B 2-bit quants as Q2_K, 12 B of sixteen 6-bit scales (- 32),
 *         d; value (q + 4 h - 4) * scale
 *   Q4_K 144 B / 256: d, dmin, 12 B of eight 6-bit scales and eight 6-bit mins (one pair
 *         per 32), 128 B nibbles: weights 64 j .. 64 j + 31 are the low nibbles of bytes
 *         32 j .., the next 32 their high nibbles; value d sc q - dmin m
 *   Q5_K 176 B / 256: d, dmin, scales as Q4_K, 32 B high bits (weight e: qh[e % 32] bit
 *         e / 32), nibbles as Q4_K
 *   Q6_K 210 B / 256: 128 B low nibbles, 64 B 2-bit highs, 16 int8 scales (one per 16), d;
 *         value (q - 32) * scale * d (layout in q6k_weight)
 *
 * The dot-product formulas (quant.h's "lane" and "serial" arithmetic) are written out
 * in quant_dot_ref below, one type after another; quant_kern.c computes the same
 * operations with AVX2.
 */
#include "model/compute/quant.h"
#include "model/half.h"

#include <math.h>
#include <string.h>
#include <strings.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QUANT_AVX2 1
#include <immintrin.h>
#endif

/* ---- Type table ------------------------------------------------------------------- */

typedef struct {
    int type;
    const char *name;
    int elems; /* weights per block */
    int bytes; /* bytes per block */
    int act;   /* QACT_* */
} qtype;

static const qtype qtypes[] = {
    { MT_F32, "F32", 1, 4, QACT_NONE },       { MT_F16, "F16", 1, 2, QACT_F16 },
    { MT_BF16, "BF16", 1, 2, QACT_BF16 },     { MT_Q4_0, "Q4_0", 32, 18, QACT_Q8_0 },
    { MT_Q4_1, "Q4_1", 32, 20, QACT_Q8_1 },   { MT_Q5_0, "Q5_0", 32, 22, QACT_Q8_0 },
    { MT_Q5_1, "Q5_1", 32, 24, QACT_Q8_1 },   { MT_Q8_0, "Q8_0", 32, 34, QACT_Q8_0 },
    { MT_Q2_K, "Q2_K", 256, 84, QACT_Q8_K },  { MT_Q3_K, "Q3_K", 256, 110, QACT_Q8_K },
    { MT_Q4_K, "Q4_K", 256, 144, QACT_Q8_K }, { MT_Q5_K, "Q5_K", 256, 176, QACT_Q8_K },
    { MT_Q6_K, "Q6_K", 256, 210, QACT_Q8_K },
};

static const qtype *qt(int type)
{
    for (size_t i = 0; i < sizeof qtypes / sizeof qtypes[0]; i++)
        if (qtypes[i].type == type) return &qtypes[i];
    return NULL;
}

int quant_block_elems(int type)
{
    const qtype *t = qt(type);
    return t ? t->elems : 0;
}

size_t quant_block_bytes(int type)
{
    const qtype *t = qt(type);
    return t ? (size_t)t->bytes : 0;
}

int quant_is_quantized(int type)
{
    const qtype *t = qt(type);
    return t && t->elems > 1;
}

const char *quant_type_name(int type)
{
    const qtype *t = qt(type);
    return t ? t->name : NULL;
}

int quant_type_from_name(const char *name)
{
    for (size_t i = 0; name && i < sizeof qtypes / sizeof qtypes[0]; i++)
        if (!strcasecmp(name, qtypes[i].name)) return qtypes[i].type;
    return -1;
}

size_t quant_bytes(int type, uint64_t n, int *ok)
{
    const qtype *t = qt(type);
    uint64_t r;
    int good = t && n % (uint64_t)t->elems == 0 &&
               !__builtin_mul_overflow(n / (uint64_t)t->elems, (uint64_t)t->bytes, &r) && r <= (uint64_t)SIZE_MAX;
    if (ok) *ok = good;
    return good ? (size_t)r : 0;
}

int quant_act_format(int type)
{
    const qtype *t = qt(type);
    return t ? t->act : QACT_NONE;
}

int quant_is_serial(int type, int rows) { return (type == MT_Q4_0 || type == MT_Q4_K) && rows % 8 == 0; }

/* ---- Small helpers ------------------------------------------------------------------ */

static inline float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return model_f16_to_f32(h);
}

static inline float half_round(float f) { return model_f16_to_f32(model_f32_to_f16(f)); }

/* Q4_K / Q5_K: scale and min of sub-block j (0..7), 6 bits each (ggml's get_scale_min_k4). */
static inline void k4_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q3_K: scale j (0..15) as a signed value (6 bits - 32). */
static inline int q3k_scale(const uint8_t *s, int j)
{
    int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

/* The integer value of weight e (0..255) of a K-quant super-block, without scales:
 * Q2_K 0..3, Q3_K -4..3, Q4_K 0..15, Q5_K 0..31, Q6_K 0..63 (the - 32 is applied
 * separately, as the kernels do). */
static inline int k_weight(int type, const uint8_t *b, int e)
{
    int n = e / 128, j = (e % 128) / 32, l = e % 32;
    switch (type) {
    case MT_Q2_K: return (b[16 + 32 * n + l] >> (2 * j)) & 3;
    case MT_Q3_K: {
        int q = (b[32 + 32 * n + l] >> (2 * j)) & 3;
        return q - ((b[l] >> (4 * n + j)) & 1 ? 0 : 4);
    }
    case MT_Q4_K: {
        const uint8_t *q = b + 16 + 32 * (e / 64);
        return e % 64 < 32 ? q[l] & 0xF : q[l] >> 4;
    }
    case MT_Q5_K: {
        const uint8_t *q = b + 48 + 32 * (e / 64);
        int lo = e % 64 < 32 ? q[l] & 0xF : q[l] >> 4;
        return lo | ((b[16 + l] >> (e / 32)) & 1) << 4;
    }
    case MT_Q6_K: {
        /* ql: 128 B, qh: 64 B; per 128 weights (n): 64 B of ql and 32 B of qh; weight
         * group j of 32 takes low (j = 0, 1) or high (j = 2, 3) nibbles of ql[64 n + 32 (j % 2) + l]
         * and bits 2 j, 2 j + 1 of qh[32 n + l] */
        int lo = b[64 * n + 32 * (j % 2) + l];
        lo = j < 2 ? lo & 0xF : lo >> 4;
        return lo | ((b[128 + 32 * n + l] >> (2 * j)) & 3) << 4;
    }
    default: return 0;
    }
}

/* The integer value of weight i (0..31) of a 32-weight block (Q4_0 -8..7, Q5_0 -16..15,
 * Q4_1 0..15, Q5_1 0..31, Q8_0 -128..127). */
static inline int b32_weight(int type, const uint8_t *b, int i)
{
    int nib;
    uint32_t qh;
    switch (type) {
    case MT_Q4_0: nib = i < 16 ? b[2 + i] & 0xF : b[2 + i - 16] >> 4; return nib - 8;
    case MT_Q4_1: return i < 16 ? b[4 + i] & 0xF : b[4 + i - 16] >> 4;
    case MT_Q5_0:
        memcpy(&qh, b + 2, 4);
        nib = i < 16 ? b[6 + i] & 0xF : b[6 + i - 16] >> 4;
        return (nib | ((qh >> i) & 1) << 4) - 16;
    case MT_Q5_1:
        memcpy(&qh, b + 4, 4);
        nib = i < 16 ? b[8 + i] & 0xF : b[8 + i - 16] >> 4;
        return nib | ((qh >> i) & 1) << 4;
    case MT_Q8_0: return (int8_t)b[2 + i];
    default: return 0;
    }
}

/* ---- Dequantization (ggml's dequantize_row_* operations) ----------------------------- */

void quant_dequantize_row(int type, const void *src, float *dst, int n)
{
    const qtype *t = qt(type);
    if (!t || t->elems <= 1 || n % t->elems) {
        for (int i = 0; i < n; i++) dst[i] = NAN;
        return;
    }
    const uint8_t *b = src;
    for (int blk = 0; blk < n / t->elems; blk++, b += t->bytes, dst += t->elems) {
        switch (type) {
        case MT_Q4_0:
        case MT_Q5_0:
        case MT_Q8_0: {
            float d = h2f(b);
            for (int i = 0; i < 32; i++) dst[i] = (float)b32_weight(type, b, i) * d;
            break;
        }
        case MT_Q4_1:
        case MT_Q5_1: {
            float d = h2f(b), m = h2f(b + 2);
            for (int i = 0; i < 32; i++) dst[i] = (float)b32_weight(type, b, i) * d + m;
            break;
        }
        case MT_Q2_K: {
            float d = h2f(b + 80), dmin = h2f(b + 82);
            for (int e = 0; e < 256; e++) {
                int sc = b[e / 16];
                float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
                dst[e] = dl * (float)k_weight(type, b, e) - ml;
            }
            break;
        }
        case MT_Q3_K: {
            float d = h2f(b + 108);
            for (int e = 0; e < 256; e++) {
                float dl = d * (float)q3k_scale(b + 96, e / 16);
                dst[e] = dl * (float)k_weight(type, b, e);
            }
            break;
        }
        case MT_Q4_K:
        case MT_Q5_K: {
            float d = h2f(b), dmin = h2f(b + 2);
            for (int e = 0; e < 256; e++) {
                int sc, m;
                k4_scale_min(b + 4, e / 32, &sc, &m);
                float d1 = d * (float)sc, m1 = dmin * (float)m;
                dst[e] = d1 * (float)k_weight(type, b, e) - m1;
            }
            break;
        }
        case MT_Q6_K: {
            float d = h2f(b + 208);
            for (int e = 0; e < 256; e++)
                dst[e] = d * (float)(int8_t)b[192 + e / 16] * (float)(k_weight(type, b, e) - 32);
            break;
        }
        }
    }
}

/* ---- Layouts ------------------------------------------------------------------------------ */

const uint8_t *quant_row_blocks(const mtensor *w, int j, size_t *stride)
{
    size_t bb = quant_block_bytes(w->type), rb = quant_bytes(w->type, (uint64_t)w->cols, NULL);
    const uint8_t *d = w->data;
    int full = w->panel ? w->rows / QUANT_PANEL * QUANT_PANEL : 0;
    if (j < full) {
        *stride = bb * QUANT_PANEL;
        return d + (size_t)(j / QUANT_PANEL) * QUANT_PANEL * rb + (size_t)(j % QUANT_PANEL) * bb;
    }
    *stride = bb;
    return d + (size_t)j * rb; /* row-major (the tail rows of a packed matrix too) */
}

void quant_get_row(const mtensor *w, int j, float *out)
{
    size_t stride;
    const uint8_t *p = quant_row_blocks(w, j, &stride);
    int blk = quant_block_elems(w->type);
    if (blk <= 1 || w->cols % blk) {
        quant_dequantize_row(w->type, p, out, w->cols);
        return;
    }
    for (int b = 0; b < w->cols / blk; b++)
        quant_dequantize_row(w->type, p + (size_t)b * stride, out + (size_t)b * blk, blk);
}

void quant_pack(const mtensor *w, void *dst, mtensor *out)
{
    size_t bb = quant_block_bytes(w->type), rb = quant_bytes(w->type, (uint64_t)w->cols, NULL);
    int nb = (int)(rb / bb), full = w->rows / QUANT_PANEL;
    const uint8_t *src = w->data;
    uint8_t *d = dst;
    for (int p = 0; p < full; p++)
        for (int c = 0; c < QUANT_PANEL; c++)
            for (int b = 0; b < nb; b++)
                memcpy(d + (size_t)p * QUANT_PANEL * rb + ((size_t)b * QUANT_PANEL + c) * bb,
                       src + ((size_t)p * QUANT_PANEL + c) * rb + (size_t)b * bb, bb);
    size_t done = (size_t)full * QUANT_PANEL * rb;
    memcpy(d + done, src + done, (size_t)w->rows * rb - done);
    mtensor t = *w;
    t.data = dst;
    t.panel = QUANT_PANEL;
    *out = t;
}

/* ---- Activations ------------------------------------------------------------------------ */

static size_t up16(size_t n) { return (n + 15) & ~(size_t)15; }

size_t quant_act_bytes(int fmt, int cols, int n_rows)
{
    int blk = fmt == QACT_Q8_K ? QK_K : 32;
    if ((fmt == QACT_F16 || fmt == QACT_BF16) && cols > 0 && n_rows >= 0)
        return up16((size_t)n_rows * (size_t)cols * sizeof(float));
    if (fmt <= QACT_NONE || fmt >= QACT_COUNT || cols <= 0 || cols % blk || n_rows < 0) return 0;
    size_t n = (size_t)n_rows, nb = (size_t)(cols / blk), nb32 = (size_t)(cols / 32);
    size_t bytes = up16(n * cols) + up16(n * nb * 4) + up16(n * nb32 * 4);
    if (fmt == QACT_Q8_1) bytes += up16(n * nb * 4);
    if (fmt == QACT_Q8_K) bytes += up16(n * (size_t)(cols / 16) * 2);
    return bytes;
}

void quant_act_init(quant_act *a, int fmt, int cols, int n_rows, void *buf)
{
    int blk = fmt == QACT_Q8_K ? QK_K : 32;
    size_t n = (size_t)n_rows, nb = (size_t)(cols / blk), nb32 = (size_t)(cols / 32);
    uint8_t *p = buf;
    memset(a, 0, sizeof *a);
    a->fmt = fmt;
    a->cols = cols;
    if (fmt == QACT_F16 || fmt == QACT_BF16) {
        a->xr = (float *)p;
        return;
    }
    a->q = (int8_t *)p;
    p += up16(n * cols);
    a->d = (float *)p;
    p += up16(n * nb * 4);
    a->x32 = (int32_t *)p;
    p += up16(n * nb32 * 4);
    if (fmt == QACT_Q8_1) {
        a->s = (float *)p;
        p += up16(n * nb * 4);
    }
    if (fmt == QACT_Q8_K) a->bs = (int16_t *)p;
}

/* One row to Q8_0 / Q8_1 (ggml's AVX2 quantize_row_q8_0 / q8_1: multiplier 127 / amax,
 * round to nearest even, scale amax / 127 kept as a half; Q8_1's s is the half of
 * (amax / 127, unrounded) * sum q). */
static void act_row_q8(int8_t *q, float *d, float *s, int32_t *x32, const float *x, int cols)
{
    for (int b = 0; b < cols / 32; b++) {
        const float *xb = x + 32 * b;
        int8_t *qb = q + 32 * b;
        float amax = 0.0f;
#ifdef QUANT_AVX2
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 v[4], mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        amax = _mm_cvtss_f32(m4);
#else
        for (int i = 0; i < 32; i++) {
            float a = fabsf(xb[i]);
            if (a > amax) amax = a;
        }
#endif
        float dd = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = half_round(dd);
        int32_t sum = 0;
#ifdef QUANT_AVX2
        __m256 mul = _mm256_set1_ps(id);
        __m256i iv[4];
        for (int k = 0; k < 4; k++)
            iv[k] = _mm256_cvtps_epi32(
                _mm256_round_ps(_mm256_mul_ps(v[k], mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i p0 = _mm256_packs_epi32(iv[0], iv[1]), p2 = _mm256_packs_epi32(iv[2], iv[3]);
        __m256i p = _mm256_packs_epi16(p0, p2);
        /* the sum of the saturated int8 values (a NaN or inf converts to INT_MIN before the
         * packs saturate it, so summing the int32 lanes would not give sum q) */
        __m256i s01 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s01), _mm256_extracti128_si256(s01, 1));
        s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
        sum = _mm_cvtsi128_si32(s4);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)qb, p);
#else
        for (int i = 0; i < 32; i++) { /* a NaN gives -128, as cvtps2dq + saturating packs do */
            float r = rintf(xb[i] * id);
            qb[i] = (int8_t)(r >= 127.0f ? 127 : r > -128.0f ? (int)r : -128);
            sum += qb[i];
        }
#endif
        x32[b] = sum;
        if (s) s[b] = half_round(dd * (float)sum);
    }
}

/* One row to Q8_K (ggml's quantize_row_q8_K_ref: max is the first element of largest
 * magnitude, with its sign; iscale = -127 / max; q = min(127, nearest(iscale * x));
 * d = 1 / iscale; an all-zero block gets d = 0, q = 0 and zero sums). */
static void act_row_q8k(int8_t *q, float *d, int16_t *bs, int32_t *x32, const float *x, int cols)
{
    for (int b = 0; b < cols / QK_K; b++) {
        const float *xb = x + QK_K * b;
        int8_t *qb = q + QK_K * b;
        float max = quant_signed_max(xb, QK_K);
        if (max == 0.0f) {
            d[b] = 0.0f;
            memset(qb, 0, QK_K);
            memset(bs + 16 * b, 0, 16 * sizeof *bs);
            for (int k = 0; k < 8; k++) x32[8 * b + k] = 0;
            continue;
        }
        float iscale = -127.0f / max;
#ifdef QUANT_AVX2
        __m256 mul = _mm256_set1_ps(iscale), lim = _mm256_set1_ps(127.0f);
        for (int i = 0; i < QK_K; i += 32) {
            __m256i iv[4];
            for (int k = 0; k < 4; k++) {
                __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 8 * k), mul),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                iv[k] = _mm256_cvtps_epi32(_mm256_min_ps(r, lim));
            }
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(qb + i), p);
        }
#else
        for (int i = 0; i < QK_K; i++) { /* a NaN gives 127, as minps(NaN, 127) does */
            float r = rintf(iscale * xb[i]);
            qb[i] = (int8_t)(r < 127.0f ? (int)r : 127);
        }
#endif
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += qb[16 * j + i];
            bs[16 * b + j] = (int16_t)sum;
        }
        for (int k = 0; k < 8; k++) x32[8 * b + k] = bs[16 * b + 2 * k] + bs[16 * b + 2 * k + 1];
        d[b] = 1.0f / iscale;
    }
}

/* x rounded to half or bfloat16 (to nearest even), kept as floats. */
static void act_row_round(float *xr, const float *x, int cols, int bf16)
{
    int i = 0;
#ifdef QUANT_AVX2
    if (!bf16)
        for (; i + 8 <= cols; i += 8)
            _mm256_storeu_ps(xr + i,
                             _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; i < cols; i++) {
        if (!bf16) {
            xr[i] = half_round(x[i]);
            continue;
        }
        uint32_t b;
        memcpy(&b, &x[i], 4);
        b = (b & 0x7fffffff) > 0x7f800000 ? (b | 0x400000) & 0xffff0000u /* NaN stays NaN */
                                          : ((b + 0x7fff + ((b >> 16) & 1)) & 0xffff0000u);
        memcpy(&xr[i], &b, 4);
    }
}

void quant_act_rows(quant_act *a, const float *x, int r0, int r1)
{
    if (a->fmt == QACT_F16 || a->fmt == QACT_BF16) {
        for (int r = r0; r < r1; r++)
            act_row_round(a->xr + (size_t)r * a->cols, x + (size_t)r * a->cols, a->cols, a->fmt == QACT_BF16);
        return;
    }
    int cols = a->cols, blk = a->fmt == QACT_Q8_K ? QK_K : 32;
    size_t nb = (size_t)(cols / blk), nb32 = (size_t)(cols / 32);
    for (int r = r0; r < r1; r++) {
        int8_t *q = a->q + (size_t)r * cols;
        const float *xr = x + (size_t)r * cols;
        if (a->fmt == QACT_Q8_K)
            act_row_q8k(q, a->d + r * nb, a->bs + (size_t)r * (cols / 16), a->x32 + r * nb32, xr, cols);
        else
            act_row_q8(q, a->d + r * nb, a->s ? a->s + r * nb : NULL, a->x32 + r * nb32, xr, cols);
    }
}

/* ---- The formulas, in portable code ---------------------------------------------------- */

/* ggml's hsum_float_8: (lanes 0..3 + lanes 4..7), then (0 + 2) + (1 + 3) */
static inline float hsum8_ref(const float *v)
{
    float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

float quant_dot_ref(const quant_act *a, int r, const mtensor *w, int j)
{
    const qtype *t = qt(w->type);
    int cols = w->cols, nb = cols / t->elems;
    size_t bstride;
    const uint8_t *row = quant_row_blocks(w, j, &bstride);
    const int8_t *xq = a->q + (size_t)r * cols;
    const float *xd = a->d + (size_t)r * nb;
    float acc[8] = { 0 };

    if (t->elems == 32) {
        if (quant_is_serial(w->type, w->rows)) { /* Q4_0, rows % 8 == 0 */
            float s = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * bstride;
                int32_t isum = 0;
                for (int i = 0; i < 32; i++) isum += b32_weight(w->type, blk, i) * xq[32 * b + i];
                s = fmaf((float)isum, h2f(blk) * xd[b], s);
            }
            return s;
        }
        float summs = 0.0f;
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + (size_t)b * bstride;
            float d = h2f(blk) * xd[b];
            for (int u = 0; u < 8; u++) {
                int32_t lane = 0;
                for (int i = 4 * u; i < 4 * u + 4; i++) lane += b32_weight(w->type, blk, i) * xq[32 * b + i];
                acc[u] = fmaf(d, (float)lane, acc[u]);
            }
            if (w->type == MT_Q4_1 || w->type == MT_Q5_1) summs = fmaf(h2f(blk + 2), a->s[(size_t)r * nb + b], summs);
        }
        float s = hsum8_ref(acc);
        return w->type == MT_Q4_1 || w->type == MT_Q5_1 ? s + summs : s;
    }

    /* K-quants: per super-block, lane u gathers sc(e) * q(e) * x(e) over the weights e
     * with (e % 32) / 4 == u (exact integers) */
    const int16_t *bs = a->bs + (size_t)r * (cols / 16);
    float accm[4] = { 0 }, summs = 0.0f, serial = 0.0f, serial_m = 0.0f;
    int ser = quant_is_serial(w->type, w->rows);
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * bstride;
        const int8_t *x = xq + QK_K * b;
        const int16_t *bsb = bs + 16 * b;
        int32_t lane[8] = { 0 }, sc[16], mn[16];
        for (int e = 0; e < 16; e++) {
            switch (w->type) {
            case MT_Q2_K:
                sc[e] = blk[e] & 0xF;
                mn[e] = blk[e] >> 4;
                break;
            case MT_Q3_K:
                sc[e] = q3k_scale(blk + 96, e);
                mn[e] = 0;
                break;
            case MT_Q6_K:
                sc[e] = (int8_t)blk[192 + e];
                mn[e] = 0;
                break;
            default: k4_scale_min(blk + 4, e / 2, &sc[e], &mn[e]); break; /* per 32: pairs */
            }
        }
        for (int e = 0; e < QK_K; e++) lane[(e % 32) / 4] += sc[e / 16] * k_weight(w->type, blk, e) * x[e];
        switch (w->type) {
        case MT_Q2_K: {
            float d = xd[b] * h2f(blk + 80), dmin = -xd[b] * h2f(blk + 82);
            for (int u = 0; u < 8; u++) {
                int32_t prod = mn[2 * u] * bsb[2 * u] + mn[2 * u + 1] * bsb[2 * u + 1];
                acc[u] = fmaf(dmin, (float)prod, acc[u]);
                acc[u] = fmaf(d, (float)lane[u], acc[u]);
            }
            break;
        }
        case MT_Q3_K: {
            float d = xd[b] * h2f(blk + 108);
            for (int u = 0; u < 8; u++) acc[u] = fmaf(d, (float)lane[u], acc[u]);
            break;
        }
        case MT_Q6_K: {
            float d = xd[b] * h2f(blk + 208);
            for (int u = 0; u < 8; u++) {
                int32_t sub = sc[2 * u] * bsb[2 * u] + sc[2 * u + 1] * bsb[2 * u + 1];
                acc[u] = fmaf(d, (float)(lane[u] - 32 * sub), acc[u]);
            }
            break;
        }
        case MT_Q4_K:
        case MT_Q5_K: {
            int32_t m32[8], imin = 0;
            for (int k = 0; k < 8; k++) {
                m32[k] = mn[2 * k] * (bsb[2 * k] + bsb[2 * k + 1]);
                imin += m32[k];
            }
            if (ser) { /* Q4_K, rows % 8 == 0 */
                int32_t isum = 0;
                for (int u = 0; u < 8; u++) isum += lane[u];
                serial = fmaf((float)isum, h2f(blk) * xd[b], serial);
                serial_m = fmaf((float)imin, h2f(blk + 2) * xd[b], serial_m);
                break;
            }
            float d = xd[b] * h2f(blk), dmin = -xd[b] * h2f(blk + 2);
            if (w->type == MT_Q4_K) {
                for (int k = 0; k < 4; k++) accm[k] = fmaf(dmin, (float)(m32[2 * k] + m32[2 * k + 1]), accm[k]);
            } else {
                summs = fmaf((float)imin, dmin, summs);
            }
            for (int u = 0; u < 8; u++) acc[u] = fmaf(d, (float)lane[u], acc[u]);
            break;
        }
        }
    }
    if (ser) return serial - serial_m;
    float s = hsum8_ref(acc);
    if (w->type == MT_Q4_K) return s + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
    if (w->type == MT_Q5_K) return s + summs;
    return s;
}
