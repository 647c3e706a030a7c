/* quant_kern.c -- products of quantized weight matrices with quantized activation
 * rows: quant_matmul_rows (quant.h), with AVX2 kernels and a portable fallback.
 *
 * Every kernel computes each output element with exactly the operations of
 * quant_dot_ref (quant.c), which states ggml's arithmetic: the integer parts are
 * exact, so any instruction sequence that forms the same per-lane integers will do;
 * the float parts (one fused multiply-add per block and lane, the final lane tree)
 * are done in the same order.  Register blocks of R activation rows x C weight rows
 * decide only which elements are computed side by side.
 *
 * Weight rows are read straight from the file's layout, one block at a time.  When
 * decoding (one activation row) "lane" types read one or two weight rows at a time
 * and "serial" types (quant.h) eight, their integer sums reduced across the eight rows
 * into one vector so that the eight outputs share one vector of accumulators, as the
 * repacked kernels of llama.cpp do.
 */
#include "model/compute/quant.h"
#include "model/half.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QUANT_AVX2 1
#include <immintrin.h>
#endif

/* Prefetch distance for the weight rows, in bytes ahead of the block being read (the
 * hardware prefetcher stops at 4 KiB page boundaries). */
#ifndef QPF
#define QPF 2048
#endif

static inline float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return model_f16_to_f32(h);
}

#ifdef QUANT_AVX2

static inline float hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* Eight int32x8 vectors -> one vector whose lane c is the sum of p[c]'s lanes. */
static inline __m256i reduce8(const __m256i p[8])
{
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles in bytes 0..15, high in 16..31. */
static inline __m256i nibbles32(const uint8_t *p)
{
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set. */
static inline __m256i bits32(const uint8_t *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* ---- 32-weight blocks, lane arithmetic ------------------------------------------------ */

/* The block's 32 weights as bytes: signed (Q4_0, Q5_0, Q8_0) or unsigned (Q4_1, Q5_1). */
static inline __attribute__((always_inline)) __m256i b32_bytes(const int type, const uint8_t *b)
{
    switch (type) {
    case MT_Q4_0: return _mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8));
    case MT_Q4_1: return nibbles32(b + 4);
    case MT_Q5_0:
        return _mm256_or_si256(nibbles32(b + 6),
                               _mm256_andnot_si256(bits32(b + 2), _mm256_set1_epi8((char)0xF0)));
    case MT_Q5_1:
        return _mm256_or_si256(nibbles32(b + 8), _mm256_and_si256(bits32(b + 4), _mm256_set1_epi8(0x10)));
    default: return _mm256_loadu_si256((const __m256i *)(b + 2)); /* Q8_0 */
    }
}

static inline __attribute__((always_inline)) int b32_signed(const int type)
{
    return type == MT_Q4_0 || type == MT_Q5_0 || type == MT_Q8_0;
}

/* R activation rows x C weight rows of a lane type; out[r * ldo + c]. */
static inline __attribute__((always_inline)) void lane32(const int type, float *out, size_t ldo,
                                                          const quant_act *a, int r0, const uint8_t *w,
                                                          size_t ldw, int nb, const int R, const int C)
{
    const int bytes = type == MT_Q4_0 ? 18 : type == MT_Q4_1 ? 20 : type == MT_Q5_0 ? 22
                    : type == MT_Q5_1 ? 24 : 34;
    const int mins = type == MT_Q4_1 || type == MT_Q5_1;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][4];
    float summs[4][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            summs[r][c] = 0.0f;
        }
    const int8_t *xq = a->q + (size_t)r0 * a->cols;
    const float *xd = a->d + (size_t)r0 * nb;
    for (int b = 0; b < nb; b++) {
        __m256i wv[4], wa[4];
        float dw[4], mw[4];
        for (int c = 0; c < C; c++) {
            const uint8_t *blk = w + (size_t)c * ldw + (size_t)b * bytes;
            if (QPF)
                _mm_prefetch((const char *)blk + QPF, _MM_HINT_T0);
            dw[c] = h2f(blk);
            if (mins)
                mw[c] = h2f(blk + 2);
            wv[c] = b32_bytes(type, blk);
            if (b32_signed(type))
                wa[c] = _mm256_sign_epi8(wv[c], wv[c]);
        }
        for (int r = 0; r < R; r++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + (size_t)r * a->cols + 32 * (size_t)b));
            float dx = xd[(size_t)r * nb + b];
            for (int c = 0; c < C; c++) {
                __m256i p16 = b32_signed(type) ? _mm256_maddubs_epi16(wa[c], _mm256_sign_epi8(xv, wv[c]))
                                               : _mm256_maddubs_epi16(wv[c], xv);
                __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw[c] * dx), p, acc[r][c]);
                if (mins)
                    summs[r][c] = fmaf(mw[c], a->s[(size_t)(r0 + r) * nb + b], summs[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float s = hsum8(acc[r][c]);
            out[(size_t)r * ldo + c] = mins ? s + summs[r][c] : s;
        }
}

/* ---- Q4_0 serial: 8 weight rows per vector of outputs ------------------------------- */

/* R activation rows x 8 weight rows.  Per block and row: isum = sum nibble * x - 8 sum x,
 * then acc = fma(isum, d_w * d_x, acc), lane c holding weight row c. */
static inline __attribute__((always_inline)) void serial_q4_0(float *out, size_t ldo, const quant_act *a,
                                                              int r0, const uint8_t *w, size_t ldw,
                                                              int nb, const int R)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int r = 0; r < R; r++)
        acc[r] = _mm256_setzero_ps();
    const int8_t *xq = a->q + (size_t)r0 * a->cols;
    const float *xd = a->d + (size_t)r0 * nb;
    const int32_t *xs = a->x32 + (size_t)r0 * nb;
    for (int b = 0; b < nb; b++) {
        __m256i wv[8];
        uint16_t dh[8];
        for (int c = 0; c < 8; c++) {
            const uint8_t *blk = w + (size_t)c * ldw + (size_t)b * 18;
            if (QPF)
                _mm_prefetch((const char *)blk + QPF, _MM_HINT_T0);
            memcpy(&dh[c], blk, 2);
            wv[c] = nibbles32(blk + 2);
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh));
        for (int r = 0; r < R; r++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + (size_t)r * a->cols + 32 * (size_t)b));
            __m256i p[8];
            for (int c = 0; c < 8; c++)
                p[c] = _mm256_madd_epi16(_mm256_maddubs_epi16(wv[c], xv), ones);
            __m256i is = _mm256_sub_epi32(reduce8(p), _mm256_set1_epi32(8 * xs[(size_t)r * nb + b]));
            __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(xd[(size_t)r * nb + b]));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), d, acc[r]);
        }
    }
    for (int r = 0; r < R; r++)
        _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

/* ---- K-quants -------------------------------------------------------------------------- */

/* Scales and mins of a Q4_K / Q5_K super-block, as 8 + 8 bytes. */
static inline void k4_unpack(const uint8_t *s, uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

static inline void q3k_unpack(const uint8_t *s, int8_t sc[16])
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
        int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (int8_t)((lo | hi << 4) - 32);
    }
}

/* int16 vector: scale lo in the low 128 bits, hi in the high 128 bits. */
static inline __m256i sc16(int lo, int hi)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)lo)),
                                   _mm_set1_epi16((short)hi), 1);
}

/* Per-lane integer sums of one K-quant super-block and one activation row (lane u: the
 * weights with (e % 32) / 4 == u), without the min / offset terms; wdec: the
 * super-block's 8 groups of 32 weights as unsigned bytes (Q3_K: see below), scl: the
 * 8 groups' int16 scale vectors. */
static inline __m256i k_lanes(const __m256i wdec[8], const __m256i scl[8], const int8_t *x)
{
    __m256i s = _mm256_setzero_si256();
    for (int g = 0; g < 8; g++) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + 32 * g));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(scl[g], _mm256_maddubs_epi16(wdec[g], xv)));
    }
    return s;
}

/* Decode a K-quant super-block: wdec (unsigned weights per group of 32), scl (int16
 * scales), and the type's extras: Q3_K's "minus 4" bytes in wneg (4 where the high bit
 * is clear), Q2/Q4/Q5_K's mins in mn[16] (per 16 weights for Q2_K, per 32 in mn[0..7]
 * for Q4/Q5_K), Q6_K's scales in sc6[16]. */
static inline __attribute__((always_inline)) void k_decode(const int type, const uint8_t *blk,
                                                          __m256i wdec[8], __m256i scl[8],
                                                          __m256i wneg[8], int32_t mn[16],
                                                          int32_t sc6[16])
{
    const __m256i m3 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(0xF);
    switch (type) {
    case MT_Q2_K: {
        for (int k = 0; k < 16; k++)
            mn[k] = blk[k] >> 4;
        for (int n = 0; n < 2; n++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * n));
            for (int j = 0; j < 4; j++) {
                int g = 4 * n + j;
                wdec[g] = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
                scl[g] = sc16(blk[2 * g] & 0xF, blk[2 * g + 1] & 0xF);
            }
        }
        break;
    }
    case MT_Q3_K: {
        int8_t sc[16];
        q3k_unpack(blk + 96, sc);
        __m256i hb = _mm256_loadu_si256((const __m256i *)blk);
        for (int n = 0; n < 2; n++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * n));
            for (int j = 0; j < 4; j++) {
                int g = 4 * n + j, bit = 4 * n + j;
                wdec[g] = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
                /* 4 where the high bit is clear, else 0 */
                __m256i h = _mm256_and_si256(hb, _mm256_set1_epi8((char)(1 << bit)));
                wneg[g] = _mm256_andnot_si256(_mm256_cmpeq_epi8(h, _mm256_set1_epi8((char)(1 << bit))),
                                              _mm256_set1_epi8(4));
                scl[g] = sc16(sc[2 * g], sc[2 * g + 1]);
            }
        }
        break;
    }
    case MT_Q4_K:
    case MT_Q5_K: {
        uint8_t sc[8], m8[8];
        k4_unpack(blk + 4, sc, m8);
        for (int k = 0; k < 8; k++)
            mn[k] = m8[k];
        const uint8_t *qs = blk + (type == MT_Q4_K ? 16 : 48);
        __m256i hb = type == MT_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            wdec[2 * j] = _mm256_and_si256(q, m4);
            wdec[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (type == MT_Q5_K)
                for (int h = 0; h < 2; h++) {
                    int g = 2 * j + h;
                    __m256i bit = _mm256_and_si256(hb, _mm256_set1_epi8((char)(1 << g)));
                    bit = _mm256_cmpeq_epi8(bit, _mm256_set1_epi8((char)(1 << g)));
                    wdec[g] = _mm256_or_si256(wdec[g], _mm256_and_si256(bit, _mm256_set1_epi8(16)));
                }
            scl[2 * j] = _mm256_set1_epi16(sc[2 * j]);
            scl[2 * j + 1] = _mm256_set1_epi16(sc[2 * j + 1]);
        }
        break;
    }
    default: { /* Q6_K */
        for (int k = 0; k < 16; k++)
            sc6[k] = (int8_t)blk[192 + k];
        for (int n = 0; n < 2; n++) {
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * n));
            __m256i l2 = _mm256_loadu_si256((const __m256i *)(blk + 64 * n + 32));
            __m256i hb = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * n));
            __m256i lo[4] = {_mm256_and_si256(l1, m4), _mm256_and_si256(l2, m4),
                             _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(l2, 4), m4)};
            for (int j = 0; j < 4; j++) {
                int g = 4 * n + j;
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), m3);
                wdec[g] = _mm256_or_si256(lo[j], _mm256_slli_epi16(hi, 4));
                scl[g] = sc16(sc6[2 * g], sc6[2 * g + 1]);
            }
        }
        break;
    }
    }
}

/* R activation rows x C weight rows of a K-quant in lane arithmetic. */
static inline __attribute__((always_inline)) void lane_k(const int type, float *out, size_t ldo,
                                                         const quant_act *a, int r0, const uint8_t *w,
                                                         size_t ldw, int nb, const int R, const int C)
{
    const int bytes = type == MT_Q2_K ? 84 : type == MT_Q3_K ? 110 : type == MT_Q4_K ? 144
                    : type == MT_Q5_K ? 176 : 210;
    const int dpos = type == MT_Q2_K ? 80 : type == MT_Q3_K ? 108 : type == MT_Q6_K ? 208 : 0;
    __m256 acc[4][4];
    __m128 accm[4][4];
    float summs[4][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            accm[r][c] = _mm_setzero_ps();
            summs[r][c] = 0.0f;
        }
    const int cols = a->cols;
    for (int b = 0; b < nb; b++) {
        for (int c = 0; c < C; c++) {
            const uint8_t *blk = w + (size_t)c * ldw + (size_t)b * bytes;
            if (QPF)
                _mm_prefetch((const char *)blk + QPF, _MM_HINT_T0);
            __m256i wdec[8], scl[8], wneg[8];
            int32_t mn[16], sc6[16];
            k_decode(type, blk, wdec, scl, wneg, mn, sc6);
            float dw = h2f(blk + dpos), dmw = type == MT_Q3_K || type == MT_Q6_K ? 0.0f
                                         : h2f(blk + (type == MT_Q2_K ? 82 : 2));
            for (int r = 0; r < R; r++) {
                const int8_t *x = a->q + (size_t)(r0 + r) * cols + (size_t)b * QK_K;
                const int16_t *bs = a->bs + (size_t)(r0 + r) * (cols / 16) + 16 * (size_t)b;
                float dx = a->d[(size_t)(r0 + r) * nb + b];
                __m256i lanes = k_lanes(wdec, scl, x);
                if (type == MT_Q3_K) {
                    __m256i s = _mm256_setzero_si256();
                    for (int g = 0; g < 8; g++) {
                        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + 32 * g));
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(scl[g], _mm256_maddubs_epi16(wneg[g], xv)));
                    }
                    lanes = _mm256_sub_epi32(lanes, s);
                }
                if (type == MT_Q6_K) {
                    __m256i bsv = _mm256_loadu_si256((const __m256i *)bs);
                    __m256i s16 = _mm256_setr_epi16(
                        (short)sc6[0], (short)sc6[1], (short)sc6[2], (short)sc6[3], (short)sc6[4],
                        (short)sc6[5], (short)sc6[6], (short)sc6[7], (short)sc6[8], (short)sc6[9],
                        (short)sc6[10], (short)sc6[11], (short)sc6[12], (short)sc6[13], (short)sc6[14],
                        (short)sc6[15]);
                    lanes = _mm256_sub_epi32(lanes, _mm256_slli_epi32(_mm256_madd_epi16(bsv, s16), 5));
                }
                float d = dx * dw;
                if (type == MT_Q2_K) {
                    __m256i bsv = _mm256_loadu_si256((const __m256i *)bs);
                    __m256i m16 = _mm256_setr_epi16(
                        (short)mn[0], (short)mn[1], (short)mn[2], (short)mn[3], (short)mn[4], (short)mn[5],
                        (short)mn[6], (short)mn[7], (short)mn[8], (short)mn[9], (short)mn[10],
                        (short)mn[11], (short)mn[12], (short)mn[13], (short)mn[14], (short)mn[15]);
                    float dmin = -dx * dmw;
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dmin),
                                                _mm256_cvtepi32_ps(_mm256_madd_epi16(m16, bsv)), acc[r][c]);
                }
                if (type == MT_Q4_K || type == MT_Q5_K) {
                    int32_t m32[8];
                    for (int k = 0; k < 8; k++)
                        m32[k] = mn[k] * (bs[2 * k] + bs[2 * k + 1]);
                    float dmin = -dx * dmw;
                    if (type == MT_Q4_K) {
                        __m128 pm = _mm_cvtepi32_ps(_mm_setr_epi32(m32[0] + m32[1], m32[2] + m32[3],
                                                                   m32[4] + m32[5], m32[6] + m32[7]));
                        accm[r][c] = _mm_fmadd_ps(_mm_set1_ps(dmin), pm, accm[r][c]);
                    } else {
                        int32_t im = 0;
                        for (int k = 0; k < 8; k++)
                            im += m32[k];
                        summs[r][c] = fmaf((float)im, dmin, summs[r][c]);
                    }
                }
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float s = hsum8(acc[r][c]);
            if (type == MT_Q4_K) {
                __m128 m = accm[r][c];
                m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                m = _mm_add_ss(m, _mm_movehdup_ps(m));
                s += _mm_cvtss_f32(m);
            } else if (type == MT_Q5_K) {
                s += summs[r][c];
            }
            out[(size_t)r * ldo + c] = s;
        }
}

/* Q4_K serial: R activation rows x 8 weight rows. */
static inline __attribute__((always_inline)) void serial_q4_k(float *out, size_t ldo, const quant_act *a,
                                                              int r0, const uint8_t *w, size_t ldw,
                                                              int nb, const int R)
{
    __m256 acc[4], accm[4];
    for (int r = 0; r < R; r++)
        acc[r] = accm[r] = _mm256_setzero_ps();
    const int cols = a->cols;
    for (int b = 0; b < nb; b++) {
        __m256i p[4][8];
        int32_t im[4][8];
        uint16_t dh[8], mh[8];
        for (int c = 0; c < 8; c++) {
            const uint8_t *blk = w + (size_t)c * ldw + (size_t)b * 144;
            if (QPF)
                _mm_prefetch((const char *)blk + QPF, _MM_HINT_T0);
            memcpy(&dh[c], blk, 2);
            memcpy(&mh[c], blk + 2, 2);
            __m256i wdec[8], scl[8];
            int32_t mn[16];
            k_decode(MT_Q4_K, blk, wdec, scl, NULL, mn, NULL);
            for (int r = 0; r < R; r++) {
                const int8_t *x = a->q + (size_t)(r0 + r) * cols + (size_t)b * QK_K;
                const int32_t *x32 = a->x32 + (size_t)(r0 + r) * (cols / 32) + 8 * (size_t)b;
                p[r][c] = k_lanes(wdec, scl, x);
                int32_t m = 0;
                for (int k = 0; k < 8; k++)
                    m += mn[k] * x32[k];
                im[r][c] = m;
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh));
        __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)mh));
        for (int r = 0; r < R; r++) {
            __m256 dx = _mm256_set1_ps(a->d[(size_t)(r0 + r) * nb + b]);
            __m256 is = _mm256_cvtepi32_ps(reduce8(p[r]));
            __m256 ms = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)im[r]));
            acc[r] = _mm256_fmadd_ps(is, _mm256_mul_ps(dw, dx), acc[r]);
            accm[r] = _mm256_fmadd_ps(ms, _mm256_mul_ps(mw, dx), accm[r]);
        }
    }
    for (int r = 0; r < R; r++)
        _mm256_storeu_ps(out + (size_t)r * ldo, _mm256_sub_ps(acc[r], accm[r]));
}

/* ---- Drivers ----------------------------------------------------------------------------- */

#define ROW_SWITCH(R, CALL)                                                                       \
    switch (R) {                                                                                  \
    case 4: CALL(4); break;                                                                       \
    case 3: CALL(3); break;                                                                       \
    case 2: CALL(2); break;                                                                       \
    default: CALL(1); break;                                                                      \
    }

/* One register block of a lane type: R (1..4) activation rows x C (1, 2 or 4) weight rows. */
static void block_lane(int type, float *out, size_t ldo, const quant_act *a, int r0, int R,
                       const uint8_t *w, size_t ldw, int nb, int C)
{
#define L32(TY, RR, CC) lane32(TY, out, ldo, a, r0, w, ldw, nb, RR, CC)
#define LK(TY, RR, CC) lane_k(TY, out, ldo, a, r0, w, ldw, nb, RR, CC)
#define BY_C(M, TY, RR)                                                                           \
    do {                                                                                          \
        if (C == 4) M(TY, RR, 4); else if (C == 2) M(TY, RR, 2); else M(TY, RR, 1);               \
    } while (0)
#define BY_R(M, TY)                                                                               \
    do {                                                                                          \
        if (R == 4) BY_C(M, TY, 4); else if (R == 3) BY_C(M, TY, 3);                              \
        else if (R == 2) BY_C(M, TY, 2); else BY_C(M, TY, 1);                                     \
    } while (0)
    switch (type) {
    case MT_Q4_0: BY_R(L32, MT_Q4_0); break;
    case MT_Q4_1: BY_R(L32, MT_Q4_1); break;
    case MT_Q5_0: BY_R(L32, MT_Q5_0); break;
    case MT_Q5_1: BY_R(L32, MT_Q5_1); break;
    case MT_Q8_0: BY_R(L32, MT_Q8_0); break;
    case MT_Q2_K: BY_R(LK, MT_Q2_K); break;
    case MT_Q3_K: BY_R(LK, MT_Q3_K); break;
    case MT_Q4_K: BY_R(LK, MT_Q4_K); break;
    case MT_Q5_K: BY_R(LK, MT_Q5_K); break;
    case MT_Q6_K: BY_R(LK, MT_Q6_K); break;
    }
#undef BY_R
#undef BY_C
#undef LK
#undef L32
}

static void block_serial(int type, float *out, size_t ldo, const quant_act *a, int r0, int R,
                         const uint8_t *w, size_t ldw, int nb)
{
#define SQ4(RR) serial_q4_0(out, ldo, a, r0, w, ldw, nb, RR)
#define SQK(RR) serial_q4_k(out, ldo, a, r0, w, ldw, nb, RR)
    if (type == MT_Q4_0) {
        ROW_SWITCH(R, SQ4)
    } else {
        ROW_SWITCH(R, SQK)
    }
#undef SQ4
#undef SQK
}

#endif /* QUANT_AVX2 */

/* x rows per pass over a task's weight rows: enough to reuse each weight block from
 * registers, few enough that their activations stay in L1/L2. */
#define XBLK 64

void quant_matmul_rows(float *out, size_t ldo, const quant_act *a, int n_rows, const mtensor *w,
                       int j0, int j1)
{
    int type = w->type, cols = w->cols;
    size_t ldw = quant_bytes(type, (uint64_t)cols, NULL);
    int nb = cols / quant_block_elems(type);
    const uint8_t *wd = w->data;
#ifdef QUANT_AVX2
    int serial = quant_is_serial(type, w->rows);
    for (int rb = 0; rb < n_rows; rb += XBLK) {
        int re = rb + XBLK < n_rows ? rb + XBLK : n_rows;
        int j = j0;
        if (serial) {
            /* whole groups of 8 weight rows (tasks start at multiples of 8); a partial
             * group at the end of a task computes its rows in scalar code */
            for (; j + 8 <= j1; j += 8)
                for (int r = rb; r < re; r += 4) {
                    int R = re - r < 4 ? re - r : 4;
                    block_serial(type, out + (size_t)r * ldo + j, ldo, a, r, R, wd + (size_t)j * ldw, ldw, nb);
                }
            for (; j < j1; j++)
                for (int r = rb; r < re; r++)
                    out[(size_t)r * ldo + j] = quant_dot_ref(a, r, w, j);
            continue;
        }
        int cm = re - rb == 1 ? 2 : 2;
        for (; j < j1; j += cm) {
            int C = j1 - j >= cm ? cm : 1;
            if (C < cm)
                cm = 1;
            for (int r = rb; r < re; r += 4) {
                int R = re - r < 4 ? re - r : 4;
                block_lane(type, out + (size_t)r * ldo + j, ldo, a, r, R, wd + (size_t)j * ldw, ldw, nb, C);
            }
        }
    }
#else
    (void)ldw, (void)nb, (void)wd;
    for (int r = 0; r < n_rows; r++)
        for (int j = j0; j < j1; j++)
            out[(size_t)r * ldo + j] = quant_dot_ref(a, r, w, j);
#endif
}
