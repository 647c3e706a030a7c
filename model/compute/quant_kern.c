/* quant_kern.c -- products of quantized weight matrices with quantized activation
 * rows: quant_matmul_rows (quant.h), with AVX2 kernels and a portable fallback.
 *
 * Every kernel computes each output element with exactly the operations of
 * quant_dot_ref (quant.c), which states ggml's arithmetic: the integer parts are
 * exact, so any instruction sequence that forms the same integers will do (sums
 * are regrouped freely below); the float parts (one fused multiply-add per block
 * and lane, the final lane tree) are done in the same order.  Register blocks of
 * R activation rows x C weight rows decide only which elements are computed side
 * by side.
 *
 * A kernel sees C weight rows through (w, rs, bs): block b of row c is at
 * w + c rs + b bs.  Row-major: rs = the row's bytes, bs = the block's; in a packed
 * panel (quant.h): rs = the block's bytes, bs = 8 times that, so that the 8 rows of
 * a panel are one sequential stream.  Decoding (one activation row) takes weight
 * rows 8 at a time; batches take them 4 (or 2) at a time against up to 4
 * activation rows, to reuse each decoded block from registers.
 *
 * Where the compiler targets AVX-512 (F, BW, VL, VNNI), decoding one activation row
 * against a packed panel has kernels of its own for the commonest types, which put two
 * weight rows in each 512-bit vector; each row's lanes see the operations above.  So
 * do batches against a packed panel (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1, Q6_K, serial Q4_K):
 * up to 4 activation rows x the panel's 8 rows, each weight block unpacked once for
 * those rows.
 *
 * "Serial" matrices (quant.h) reduce each weight row's per-block integer sums
 * across lanes and 8 rows at once (two rows per 256-bit vector, then three
 * horizontal adds), so that the 8 outputs share one vector of accumulators, as
 * llama.cpp's repacked kernels do.
 */
#include "model/compute/quant.h"
#include "model/half.h"
#include "model/loader.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QUANT_AVX2 1
#include <immintrin.h>
/* With VNNI (AVX512-VNNI with VL, or AVX-VNNI) a byte dot product accumulates four
 * products into each 32-bit lane in one instruction (vpdpbusd: unsigned x signed,
 * no 16-bit saturation), and vpdpwssd does madd + add.  The integers are the same. */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define QUANT_VNNI        1
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define DPWSSD(acc, a, b) _mm256_dpwssd_epi32(acc, a, b)
#elif defined(__AVXVNNI__)
#define QUANT_VNNI        1
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#define DPWSSD(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#endif
/* AVX-512 (F, BW, VL, VNNI): decoding against packed panels takes two weight rows per
 * 512-bit vector (row c in the low half, c + 1 in the high half), so each instruction
 * does the work of two of the 256-bit kernels'; every lane's arithmetic is unchanged. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define QUANT_AVX512 1
#endif
#endif

/* Software prefetch of the weights, this many bytes ahead of the block being read (the
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

#define AI static inline __attribute__((always_inline))

AI float hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles in bytes 0..15, high in 16..31. */
AI __m256i nibbles32(const uint8_t *p)
{
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set. */
AI __m256i bits32(const uint8_t *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf =
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* Pair sums of bytes to int32 lanes: lane u = sum of bytes 4u..4u+3 products. */
AI __m256i dot_us(__m256i u, __m256i s) /* u unsigned, s signed */
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
AI __m256i dot_ss(__m256i a, __m256i b) /* both signed (b's sign moved onto a) */
{
    return dot_us(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* Prefetch block b of C weight rows, QPF bytes ahead: one stream when the rows' blocks
 * are contiguous (a packed panel), else one per row. */
AI void pf_rows(const uint8_t *w, size_t rs, size_t bs, int b, const int C, const int bb)
{
    if (!QPF) return;
    const char *p = (const char *)(w + (size_t)b * bs) + QPF;
    if ((size_t)C * rs == bs) {
        for (int k = 0; k < C * bb; k += 64) _mm_prefetch(p + k, _MM_HINT_T0);
    } else {
        for (int c = 0; c < C; c++)
            for (int k = 0; k < bb; k += 64) _mm_prefetch(p + (size_t)c * rs + k, _MM_HINT_T0);
    }
}

/* ---- 32-weight blocks, lane arithmetic --------------------------------------------- */

AI int b32_bytes_of(const int type)
{
    return type == MT_Q4_0 ? 18 : type == MT_Q4_1 ? 20 : type == MT_Q5_0 ? 22 : type == MT_Q5_1 ? 24 : 34;
}

/* The block's 32 weights as bytes: signed (Q4_0, Q5_0, Q8_0) or unsigned (Q4_1, Q5_1). */
AI __m256i b32_bytes(const int type, const uint8_t *b)
{
    switch (type) {
    case MT_Q4_0: return _mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8));
    case MT_Q4_1: return nibbles32(b + 4);
    case MT_Q5_0:
        return _mm256_or_si256(nibbles32(b + 6), _mm256_andnot_si256(bits32(b + 2), _mm256_set1_epi8((char)0xF0)));
    case MT_Q5_1: return _mm256_or_si256(nibbles32(b + 8), _mm256_and_si256(bits32(b + 4), _mm256_set1_epi8(0x10)));
    default: return _mm256_loadu_si256((const __m256i *)(b + 2)); /* Q8_0 */
    }
}

#ifdef QUANT_VNNI
/* The block's weights as unsigned bytes u = w + off (Q8_0 128, Q4_0 8, Q5_0 16; the
 * Q4_1 / Q5_1 quants are unsigned already, off 0): lanes = dpbusd(-off sum4(x), u, x). */
AI int b32_off(const int type) { return type == MT_Q8_0 ? 128 : type == MT_Q4_0 ? 8 : type == MT_Q5_0 ? 16 : 0; }
AI __m256i b32_ubytes(const int type, const uint8_t *b)
{
    switch (type) {
    case MT_Q4_0: return nibbles32(b + 2);
    case MT_Q4_1: return nibbles32(b + 4);
    case MT_Q5_0: return _mm256_or_si256(nibbles32(b + 6), _mm256_and_si256(bits32(b + 2), _mm256_set1_epi8(0x10)));
    case MT_Q5_1: return _mm256_or_si256(nibbles32(b + 8), _mm256_and_si256(bits32(b + 4), _mm256_set1_epi8(0x10)));
    default: return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(b + 2)), _mm256_set1_epi8((char)0x80));
    }
}
#endif

/* R activation rows x C weight rows of a lane type; out[r * ldo + c]. */
AI void lane32(const int type, float *out, size_t ldo, const quant_act *a, int r0, const int R, const uint8_t *w,
               size_t rs, size_t bs, int nb, const int C)
{
    const int mins = type == MT_Q4_1 || type == MT_Q5_1;
    const int sgn = type == MT_Q4_0 || type == MT_Q5_0 || type == MT_Q8_0;
    __m256 acc[4][8];
    float summs[4][8];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            summs[r][c] = 0.0f;
        }
    const size_t cols = (size_t)a->cols;
    const int8_t *xq = a->q + (size_t)r0 * cols;
    const float *xd = a->d + (size_t)r0 * nb;
    for (int b = 0; b < nb; b++) {
        __m256i xv[4];
        __m256 dx[4];
        for (int r = 0; r < R; r++) {
            xv[r] = _mm256_loadu_si256((const __m256i *)(xq + (size_t)r * cols + 32 * (size_t)b));
            dx[r] = _mm256_broadcast_ss(xd + (size_t)r * nb + b);
        }
        pf_rows(w, rs, bs, b, C, b32_bytes_of(type));
#ifdef QUANT_VNNI
        __m256i corr[4]; /* - off * (sum of x over each lane's 4 bytes) */
        for (int r = 0; r < R; r++)
            corr[r] =
                b32_off(type)
                    ? _mm256_sub_epi32(_mm256_setzero_si256(),
                                       DPBUSD(_mm256_setzero_si256(), _mm256_set1_epi8((char)b32_off(type)), xv[r]))
                    : _mm256_setzero_si256();
#endif
        for (int c = 0; c < C; c++) {
            const uint8_t *blk = w + (size_t)c * rs + (size_t)b * bs;
            __m256 dw = _mm256_set1_ps(h2f(blk));
            float mw = mins ? h2f(blk + 2) : 0.0f;
#ifdef QUANT_VNNI
            __m256i wu = b32_ubytes(type, blk);
#else
            __m256i wv = b32_bytes(type, blk);
            __m256i wa = sgn ? _mm256_sign_epi8(wv, wv) : wv;
#endif
            for (int r = 0; r < R; r++) { /* d = d_w d_x, the same product in every lane */
#ifdef QUANT_VNNI
                __m256i p = DPBUSD(corr[r], wu, xv[r]);
                (void)sgn;
#else
                __m256i p = sgn ? dot_us(wa, _mm256_sign_epi8(xv[r], wv)) : dot_us(wv, xv[r]);
#endif
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx[r]), _mm256_cvtepi32_ps(p), acc[r][c]);
                if (mins) summs[r][c] = fmaf(mw, a->s[(size_t)(r0 + r) * nb + b], summs[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float s = hsum8(acc[r][c]);
            out[(size_t)r * ldo + c] = mins ? s + summs[r][c] : s;
        }
}

/* ---- Q4_0 serial: 8 weight rows into one vector of outputs ------------------------------ */

/* Per block and weight row: isum = sum nibble * x - 8 sum x (exact), then
 * acc = fma(isum, d_w * d_x, acc), lane c holding weight row c.  Two rows' nibbles
 * share a 256-bit vector: [row c bytes | row c + 1 bytes], multiplied by the
 * activation halves [x0..15 | x0..15] and [x16..31 | x16..31]. */
AI void serial_q4_0(float *out, size_t ldo, const quant_act *a, int r0, const int R, const uint8_t *w, size_t rs,
                    size_t bs, int nb)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
#ifndef QUANT_VNNI
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256 acc[4];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    const size_t cols = (size_t)a->cols;
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * bs;
        uint16_t dh[8];
        __m256i lo[4], hi[4];
        pf_rows(w, rs, bs, b, 8, 18);
        for (int pr = 0; pr < 4; pr++) {
            const uint8_t *b0 = blk + (size_t)(2 * pr) * rs, *b1 = b0 + rs;
            memcpy(&dh[2 * pr], b0, 2);
            memcpy(&dh[2 * pr + 1], b1, 2);
            __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 2))),
                                                _mm_loadu_si128((const __m128i *)(b1 + 2)), 1);
            lo[pr] = _mm256_and_si256(v, m4);
            hi[pr] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh));
        for (int r = 0; r < R; r++) {
            const int8_t *x = a->q + (size_t)(r0 + r) * cols + 32 * (size_t)b;
            __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)x));
            __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(x + 16)));
            __m256i p[4];
            for (int pr = 0; pr < 4; pr++) /* int16 pair sums <= 2 * 15 * 128 each: their sum fits */
#ifdef QUANT_VNNI
                p[pr] = DPBUSD(DPBUSD(_mm256_setzero_si256(), lo[pr], xl), hi[pr], xh);
#else
                p[pr] = _mm256_madd_epi16(
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo[pr], xl), _mm256_maddubs_epi16(hi[pr], xh)), ones);
#endif
            /* [c0 c0 c2 c2 | c1 c1 c3 c3], [c4 c4 c6 c6 | c5 c5 c7 c7] -> [c0 c2 c4 c6 | c1 c3 c5 c7] */
            __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            s = _mm256_permutevar8x32_epi32(s, order);
            s = _mm256_sub_epi32(s, _mm256_set1_epi32(8 * a->x32[(size_t)(r0 + r) * nb + b]));
            __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(a->d[(size_t)(r0 + r) * nb + b]));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

/* ---- K-quants --------------------------------------------------------------------------- */

/* Q4_K / Q5_K: the 8 six-bit scales (int16 lanes 0..7) and mins (8..15) of a super-block. */
AI __m256i k4_scales_mins(const uint8_t *s)
{
    uint32_t u[4];
    memcpy(u, s, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    u[3] = ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4); /* mins 4..7 */
    uint32_t mins03 = u[1] & m1;
    u[1] = (u[2] & m2) | (((u[0] >> 6) & m3) << 4); /* scales 4..7 */
    u[2] = mins03;
    u[0] &= m1; /* scales 0..3 */
    return _mm256_cvtepu8_epi16(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]));
}

/* Broadcast int16 lane i of the low 128 bits (i < 8) to a whole vector. */
static const uint8_t kshuf16[8][32] __attribute__((aligned(32))) = {
#define KS(i)                                                                                                       \
    {                                                                                                               \
        2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, \
            2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i,        \
            2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1, 2 * i, 2 * i + 1                       \
    }
    KS(0), KS(1), KS(2), KS(3), KS(4), KS(5), KS(6), KS(7)
#undef KS
};
AI __m256i bcast16(__m256i lo8x2, int i) /* lo8x2: the 8 int16 in both 128-bit halves */
{
    return _mm256_shuffle_epi8(lo8x2, _mm256_load_si256((const __m256i *)kshuf16[i]));
}
/* int16 scales 2g in the low and 2g + 1 in the high 128 bits, from 16 int16 scales
 * s16 = [s0..s7 | s8..s15]: for g < 4 from s0..s7, else from s8..s15. */
static const uint8_t kshuf_pair[4][32] __attribute__((aligned(32))) = {
#define KP(g)                                                                                                       \
    {                                                                                                               \
        4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g, 4 * g + 1, \
            4 * g, 4 * g + 1, 4 * g, 4 * g + 1, 4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3,   \
            4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2, 4 * g + 3, 4 * g + 2,      \
            4 * g + 3                                                                                               \
    }
    KP(0), KP(1), KP(2), KP(3)
#undef KP
};
AI void pair_scales(__m256i s16, __m256i out[8])
{
    __m256i lo = _mm256_permute4x64_epi64(s16, 0x44), hi = _mm256_permute4x64_epi64(s16, 0xEE);
    for (int g = 0; g < 8; g++)
        out[g] = _mm256_shuffle_epi8(g < 4 ? lo : hi, _mm256_load_si256((const __m256i *)kshuf_pair[g % 4]));
}

/* One K-quant super-block of one weight row against R activation rows: the per-lane
 * integer sums without min/offset terms (lanes[r]); plus the type's extra integers:
 * Q2_K prod16[r] (lanes of mins x bsums), Q6_K the offset subtracted already,
 * Q4_K/Q5_K m4[r] (4 int32: m_2t q8s_2t + m_2t+1 q8s_2t+1) and im[r] (their total). */
typedef struct {
    __m256i lanes[4];
    __m256i prod[4]; /* Q2_K */
    __m128i m4[4];   /* Q4_K, Q5_K */
} kres;

AI void k_block(const int type, const uint8_t *blk, const quant_act *a, int r0, int b, const int R, kres *o)
{
    const __m256i m3 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(0xF);
    const size_t cols = (size_t)a->cols;
    const int8_t *x[4];
    const int16_t *bsr[4];
    for (int r = 0; r < R; r++) {
        x[r] = a->q + (size_t)(r0 + r) * cols + (size_t)b * QK_K;
        bsr[r] = a->bs + (size_t)(r0 + r) * (cols / 16) + 16 * (size_t)b;
        o->lanes[r] = _mm256_setzero_si256();
    }
#ifdef QUANT_VNNI
#define SCALED_ADD(acc, sc, p16) DPWSSD(acc, sc, p16)
#else
#define SCALED_ADD(acc, sc, p16) _mm256_add_epi32(acc, _mm256_madd_epi16(sc, p16))
#endif
#define ACC(g, W, SC)                                                                                                  \
    do {                                                                                                               \
        for (int r = 0; r < R; r++)                                                                                    \
            o->lanes[r] = SCALED_ADD(o->lanes[r], SC,                                                                  \
                                     _mm256_maddubs_epi16(W, _mm256_loadu_si256((const __m256i *)(x[r] + 32 * (g))))); \
    } while (0)
    switch (type) {
    case MT_Q4_K:
    case MT_Q5_K: {
        __m256i sm = k4_scales_mins(blk + 4);
        __m256i sc2 = _mm256_permute4x64_epi64(sm, 0x44); /* scales in both halves */
        const uint8_t *qs = blk + (type == MT_Q4_K ? 16 : 48);
        __m256i hb = type == MT_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (type == MT_Q5_K) { /* bit 2j of qh for the low group, 2j + 1 for the high */
                const __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * j))), b1 = _mm256_set1_epi8((char)(2 << (2 * j)));
                lo = _mm256_or_si256(
                    lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, b0), b0), _mm256_set1_epi8(16)));
                hi = _mm256_or_si256(
                    hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, b1), b1), _mm256_set1_epi8(16)));
            }
            ACC(2 * j, lo, bcast16(sc2, 2 * j));
            ACC(2 * j + 1, hi, bcast16(sc2, 2 * j + 1));
        }
        /* mins x (bsums of each 32) */
        __m128i mn = _mm256_extracti128_si256(sm, 1);
        for (int r = 0; r < R; r++) {
            __m256i bsv = _mm256_loadu_si256((const __m256i *)bsr[r]);
            __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bsv), _mm256_extracti128_si256(bsv, 1));
            o->m4[r] = _mm_madd_epi16(mn, q8s);
        }
        break;
    }
    case MT_Q6_K: {
        __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
        __m256i sc[8];
        pair_scales(s16, sc);
        for (int n = 0; n < 2; n++) {
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * n));
            __m256i l2 = _mm256_loadu_si256((const __m256i *)(blk + 64 * n + 32));
            __m256i hb = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * n));
            __m256i q0 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));
            __m256i q1 = _mm256_or_si256(_mm256_and_si256(l2, m4),
                                         _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(12)), 2));
            __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_and_si256(hb, _mm256_set1_epi8(48)));
            __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m4),
                                         _mm256_srli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8((char)0xC0)), 2));
            ACC(4 * n + 0, q0, sc[4 * n + 0]);
            ACC(4 * n + 1, q1, sc[4 * n + 1]);
            ACC(4 * n + 2, q2, sc[4 * n + 2]);
            ACC(4 * n + 3, q3, sc[4 * n + 3]);
        }
        for (int r = 0; r < R; r++) { /* - 32 x (scale x bsum) per lane pair of sixteens */
            __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsr[r]), s16);
            o->lanes[r] = _mm256_sub_epi32(o->lanes[r], _mm256_slli_epi32(corr, 5));
        }
        break;
    }
    case MT_Q2_K: {
        __m128i raw = _mm_loadu_si128((const __m128i *)blk);
        __m256i s16 = _mm256_cvtepi8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0xF)));
        __m256i mn16 = _mm256_cvtepi8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0xF)));
        __m256i sc[8];
        pair_scales(s16, sc);
        for (int n = 0; n < 2; n++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * n));
            ACC(4 * n + 0, _mm256_and_si256(q, m3), sc[4 * n + 0]);
            ACC(4 * n + 1, _mm256_and_si256(_mm256_srli_epi16(q, 2), m3), sc[4 * n + 1]);
            ACC(4 * n + 2, _mm256_and_si256(_mm256_srli_epi16(q, 4), m3), sc[4 * n + 2]);
            ACC(4 * n + 3, _mm256_and_si256(_mm256_srli_epi16(q, 6), m3), sc[4 * n + 3]);
        }
        for (int r = 0; r < R; r++) o->prod[r] = _mm256_madd_epi16(mn16, _mm256_loadu_si256((const __m256i *)bsr[r]));
        break;
    }
    default: { /* Q3_K: (low 2 bits) - 4 where the high bit is clear; 6-bit signed scales */
        uint32_t u[3];
        memcpy(u, blk + 96, 12);
        const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f;
        __m128i s8 = _mm_set_epi32((int)(((u[1] >> 4) & k2) | (((u[2] >> 6) & k1) << 4)),
                                   (int)(((u[0] >> 4) & k2) | (((u[2] >> 4) & k1) << 4)),
                                   (int)((u[1] & k2) | (((u[2] >> 2) & k1) << 4)),
                                   (int)((u[0] & k2) | (((u[2] >> 0) & k1) << 4)));
        __m256i s16 = _mm256_cvtepi8_epi16(_mm_sub_epi8(s8, _mm_set1_epi8(32)));
        __m256i sc[8];
        pair_scales(s16, sc);
        __m256i hb = _mm256_loadu_si256((const __m256i *)blk);
        for (int n = 0; n < 2; n++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * n));
            for (int j = 0; j < 4; j++) {
                int g = 4 * n + j;
                __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
                __m256i bit = _mm256_set1_epi8((char)(1 << g));
                __m256i neg =
                    _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit), _mm256_set1_epi8(4));
                for (int r = 0; r < R; r++) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(x[r] + 32 * g));
                    __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(lo, xv), _mm256_maddubs_epi16(neg, xv));
                    o->lanes[r] = SCALED_ADD(o->lanes[r], sc[g], p16);
                }
            }
        }
        break;
    }
    }
#undef ACC
#undef SCALED_ADD
}

AI int kbytes_of(const int type)
{
    return type == MT_Q2_K ? 84 : type == MT_Q3_K ? 110 : type == MT_Q4_K ? 144 : type == MT_Q5_K ? 176 : 210;
}

/* R activation rows x C weight rows of a K-quant in lane arithmetic. */
AI void lane_k(const int type, float *out, size_t ldo, const quant_act *a, int r0, const int R, const uint8_t *w,
               size_t rs, size_t bs, int nb, const int C)
{
    const int dpos = type == MT_Q2_K ? 80 : type == MT_Q3_K ? 108 : type == MT_Q6_K ? 208 : 0;
    const int mpos = type == MT_Q2_K ? 82 : 2;
    __m256 acc[4][8];
    __m128 accm[4][8];
    float summs[4][8];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            accm[r][c] = _mm_setzero_ps();
            summs[r][c] = 0.0f;
        }
    for (int b = 0; b < nb; b++) {
        pf_rows(w, rs, bs, b, C, kbytes_of(type));
        for (int c = 0; c < C; c++) {
            const uint8_t *blk = w + (size_t)c * rs + (size_t)b * bs;
            kres o;
            k_block(type, blk, a, r0, b, R, &o);
            float dwf = h2f(blk + dpos);
            __m256 dw = _mm256_set1_ps(dwf);
            float dmw = type == MT_Q3_K || type == MT_Q6_K ? 0.0f : h2f(blk + mpos);
            for (int r = 0; r < R; r++) {
                float dx = a->d[(size_t)(r0 + r) * nb + b];
                if (type == MT_Q2_K)
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(-dx * dmw), _mm256_cvtepi32_ps(o.prod[r]), acc[r][c]);
                if (type == MT_Q4_K) {
                    __m128 pm = _mm_cvtepi32_ps(o.m4[r]);
                    accm[r][c] = _mm_fmadd_ps(_mm_set1_ps(-dx * dmw), pm, accm[r][c]);
                }
                if (type == MT_Q5_K) {
                    __m128i t = _mm_hadd_epi32(o.m4[r], o.m4[r]);
                    t = _mm_hadd_epi32(t, t);
                    summs[r][c] = fmaf((float)_mm_cvtsi128_si32(t), -dx * dmw, summs[r][c]);
                }
                acc[r][c] =
                    _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(dx), dw), _mm256_cvtepi32_ps(o.lanes[r]), acc[r][c]);
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

/* Q4_K serial: R activation rows x 8 weight rows.  Per block and row: isum (the
 * scaled integer sum over the super-block) and imin (mins x sums of x per 32), then
 * acc = fma(isum, d_w d_x, acc), accm = fma(imin, dmin_w d_x, accm); out = acc - accm. */
AI void serial_q4_k(float *out, size_t ldo, const quant_act *a, int r0, const int R, const uint8_t *w, size_t rs,
                    size_t bs, int nb)
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256 acc[4], accm[4];
    for (int r = 0; r < R; r++) acc[r] = accm[r] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i p[4][4];
        __m128i mm[4][4];
        uint16_t dh[8], mh[8];
        pf_rows(w, rs, bs, b, 8, 144);
        for (int pr = 0; pr < 4; pr++) {
            kres o[2];
            for (int h = 0; h < 2; h++) {
                const uint8_t *blk = w + (size_t)(2 * pr + h) * rs + (size_t)b * bs;
                memcpy(&dh[2 * pr + h], blk, 2);
                memcpy(&mh[2 * pr + h], blk + 2, 2);
                k_block(MT_Q4_K, blk, a, r0, b, R, &o[h]);
            }
            for (int r = 0; r < R; r++) {
                __m256i u = o[0].lanes[r], v = o[1].lanes[r];
                /* [u0..3 + u4..7 | v0..3 + v4..7] */
                p[r][pr] =
                    _mm256_add_epi32(_mm256_permute2x128_si256(u, v, 0x20), _mm256_permute2x128_si256(u, v, 0x31));
                mm[r][pr] = _mm_hadd_epi32(o[0].m4[r], o[1].m4[r]); /* [u01 u23 v01 v23] */
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh));
        __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)mh));
        for (int r = 0; r < R; r++) {
            /* [c0 c0 c2 c2 | c1 c1 c3 c3] + [c4 ..] -> [c0 c2 c4 c6 | c1 c3 c5 c7] -> rows in order */
            __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(p[r][0], p[r][1]), _mm256_hadd_epi32(p[r][2], p[r][3]));
            s = _mm256_permutevar8x32_epi32(s, order);
            __m256i ms = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_hadd_epi32(mm[r][0], mm[r][1])),
                                                 _mm_hadd_epi32(mm[r][2], mm[r][3]), 1);
            __m256 dx = _mm256_set1_ps(a->d[(size_t)(r0 + r) * nb + b]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dx), acc[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(mw, dx), accm[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, _mm256_sub_ps(acc[r], accm[r]));
}

#ifdef QUANT_AVX512
/* ---- AVX-512: one activation row against a packed panel ------------------------------- */

AI __m256 hi256(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

/* The 8 rows' half scales of a packed 8-row group of 34-byte Q8_0 blocks (row c's at byte
 * 34 c, i.e. 16-bit word 17 c) as 8 floats: two two-source word permutes over the
 * group's first 256 bytes, then one blend. */
AI __m256 q8_0_group_scales(const uint8_t *g)
{
    const __m512i z0 = _mm512_loadu_si512(g), z1 = _mm512_loadu_si512(g + 64);
    const __m512i z2 = _mm512_loadu_si512(g + 128), z3 = _mm512_loadu_si512(g + 192);
    /* words 0..3 from z0:z1 (rows 0..3), words 4..7 from z2:z3 (rows 4..7: word 17 c - 64) */
    const __m512i i03 = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         0, 0, 51, 34, 17, 0);
    const __m512i i47 = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 55, 38,
                                         21, 4, 0, 0, 0, 0);
    __m512i h = _mm512_mask_blend_epi16(0xF0, _mm512_permutex2var_epi16(z0, i03, z1),
                                        _mm512_permutex2var_epi16(z2, i47, z3));
    return _mm256_cvtph_ps(_mm512_castsi512_si128(h));
}

/* Q8_0, one activation row x one packed panel of 8 rows (w: the panel; block b of row c at
 * w + (8 b + c) 34).  Per block and row the same integers and the same
 * fma(d_w d_x, lanes, acc) as lane32 (VNNI form: unsigned w + 128 against x, minus 128
 * times each lane's sum of x), then ggml's lane tree per row. */
static void q8_0_panel_1x8(float *out, const quant_act *a, int r, const uint8_t *w, int nb)
{
    const size_t cols = (size_t)a->cols;
    const int8_t *xq = a->q + (size_t)r * cols;
    const float *xd = a->d + (size_t)r * nb;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i dsel[4];
    for (int p = 0; p < 4; p++) /* [d_2p x 8 | d_2p+1 x 8] from the 8 scales */
        dsel[p] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * p)), _mm256_set1_epi32(2 * p + 1), 1);
    __m512 acc[4];
    for (int p = 0; p < 4; p++) acc[p] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *g = w + (size_t)b * (8 * 34);
        if (QPF)
            for (int k = 0; k < 8 * 34; k += 64) _mm_prefetch((const char *)g + QPF + k, _MM_HINT_T0);
        __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xq + 32 * (size_t)b)));
        __m512i corr = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, xv));
        __m256 d8 = _mm256_mul_ps(q8_0_group_scales(g), _mm256_set1_ps(xd[b]));
        __m512 d16 = _mm512_castps256_ps512(d8);
        for (int p = 0; p < 4; p++) {
            const uint8_t *b0 = g + (size_t)(2 * p) * 34;
            __m512i wq = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + 2))),
                                            _mm256_loadu_si256((const __m256i *)(b0 + 36)), 1);
            __m512i s = _mm512_dpbusd_epi32(corr, _mm512_xor_si512(wq, flip), xv);
            __m512 d = _mm512_permutexvar_ps(dsel[p], d16);
            acc[p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[p]);
        }
    }
    for (int p = 0; p < 4; p++) {
        out[2 * p] = hsum8(_mm512_castps512_ps256(acc[p]));
        out[2 * p + 1] = hsum8(hi256(acc[p]));
    }
}

/* Sum of each of 8 vectors' 16 int32 lanes: 8 sums, in order (integer adds: any order). */
AI __m256i hsum16x8(const __m512i z[8])
{
    __m512i a[4], b[2];
    for (int i = 0; i < 4; i++) /* per 128-bit lane: [z2i 0+2, z2i+1 0+2, z2i 1+3, z2i+1 1+3] */
        a[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(z[2 * i], z[2 * i + 1]),
                                _mm512_unpackhi_epi32(z[2 * i], z[2 * i + 1]));
    for (int i = 0; i < 2; i++) /* per 128-bit lane: rows 4i..4i+3 */
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                                _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
    /* the four 128-bit lanes of each: [b0 L0+L1, b0 L2+L3, b1 L0+L1, b1 L2+L3], then pairs */
    __m512i c = _mm512_add_epi32(_mm512_shuffle_i32x4(b[0], b[1], 0x88), _mm512_shuffle_i32x4(b[0], b[1], 0xDD));
    c = _mm512_add_epi32(_mm512_shuffle_i32x4(c, c, 0x08), _mm512_shuffle_i32x4(c, c, 0x0D));
    return _mm512_castsi512_si256(c);
}

/* Four Q4_K super-block headers (one per 128-bit lane: d, dmin, then the 12 bytes of
 * 6-bit scales and mins) -> per lane the bytes [sc0..sc7, mn0..mn7] (k4_scales_mins). */
AI __m512i k4_headers_decode(__m512i h)
{
    /* dwords per lane: [d|dmin, u0, u1, u2] -> (u0, u2, u1, u2) and (u0, u0, u1, u1); then
     * [u0 & 0x3f.., u2 & 0x0f.., u1 & 0x3f.., (u2 >> 4) & 0x0f..] or'ed with the top two
     * bits of u0 and u1 moved to bits 4..5 of dwords 1 and 3 */
    __m512i p = _mm512_shuffle_epi32(h, (_MM_PERM_ENUM)0xED), q = _mm512_shuffle_epi32(h, (_MM_PERM_ENUM)0xA5);
    const __m512i sh = _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0, 4));
    const __m512i lm = _mm512_broadcast_i32x4(_mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m512i hm = _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0x03030303, 0, 0x03030303));
    __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(p, sh), lm);
    __m512i hi = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(q, 6), hm), 4);
    return _mm512_or_si512(lo, hi);
}

/* Q4_K serial, one activation row x one packed panel of 8 rows (block b of row c at
 * w + (8 b + c) 144).  Per super-block and row the same two integers as serial_q4_k
 * (isum: the scaled sum of q x over the 256 weights; imin: mins x the sums of x per 32),
 * and the same fma(isum, d_w d_x, acc), fma(imin, dmin_w d_x, accm), out = acc - accm.
 * A row's 128 bytes of nibbles are two 512-bit vectors: [chunk 0 | chunk 1] gives
 * sub-blocks 0, 2 (low nibbles) and 1, 3 (high), [chunk 2 | 3] sub-blocks 4, 6 and 5, 7;
 * x is arranged once per super-block to match.  The scales and mins of four rows are
 * unpacked side by side (a row per 128-bit lane). */
static void q4_k_panel_1x8(float *out, const quant_act *a, int r, const uint8_t *w, int nb)
{
    const size_t cols = (size_t)a->cols;
    const int8_t *xq = a->q + (size_t)r * cols;
    const float *xd = a->d + (size_t)r * nb;
    const int16_t *bsr = a->bs + (size_t)r * (cols / 16);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __mmask64 even = 0x5555555555555555ull;
    /* byte selectors: for row L of a quad and vector k (sub-blocks (0, 2), (1, 3), (4, 6),
     * (5, 7)), int16 lanes 0..15 take scale byte s_lo of lane L, lanes 16..31 s_hi */
    __m512i sel[4][4], msel;
    {
        static const int slo[4] = { 0, 1, 4, 5 };
        uint8_t t[64];
        for (int L = 0; L < 4; L++)
            for (int k = 0; k < 4; k++) {
                for (int i = 0; i < 64; i++) t[i] = (uint8_t)(16 * L + slo[k] + (i >= 32 ? 2 : 0));
                sel[L][k] = _mm512_loadu_si512(t);
            }
        for (int i = 0; i < 64; i++) t[i] = (uint8_t)((i / 16) * 16 + 8 + (i % 16) / 2); /* mins as int16 */
        msel = _mm512_loadu_si512(t);
    }
    const __m512i first = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *g = w + (size_t)b * (8 * 144);
        if (QPF)
            for (int k = 0; k < 8 * 144; k += 64) _mm_prefetch((const char *)g + QPF + k, _MM_HINT_T0);
        const int8_t *x = xq + (size_t)b * QK_K;
        __m512i xs[4];
        for (int k = 0; k < 4; k++) { /* [x of sub-block s_lo | s_hi] */
            static const int lo_of[4] = { 0, 1, 4, 5 };
            xs[k] = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + 32 * lo_of[k]))),
                _mm256_loadu_si256((const __m256i *)(x + 32 * (lo_of[k] + 2))), 1);
        }
        __m256i bsv = _mm256_loadu_si256((const __m256i *)(bsr + 16 * (size_t)b));
        __m512i q8s = _mm512_broadcast_i32x4(_mm_hadd_epi16(_mm256_castsi256_si128(bsv), _mm256_extracti128_si256(bsv, 1)));
        __m512i hd[2], sm[2], mm[2];
        for (int h = 0; h < 2; h++) {
            const uint8_t *g4 = g + (size_t)(4 * h) * 144;
            __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)g4));
            v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(g4 + 144)), 1);
            v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(g4 + 288)), 2);
            hd[h] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(g4 + 432)), 3);
            sm[h] = k4_headers_decode(hd[h]);
            __m512i m = _mm512_madd_epi16(_mm512_maskz_permutexvar_epi8(even, msel, sm[h]), q8s);
            m = _mm512_add_epi32(m, _mm512_shuffle_epi32(m, (_MM_PERM_ENUM)0x4E));
            mm[h] = _mm512_add_epi32(m, _mm512_shuffle_epi32(m, (_MM_PERM_ENUM)0xB1));
        }
        __m512i z[8];
        for (int c = 0; c < 8; c++) {
            const uint8_t *qs = g + (size_t)c * 144 + 16;
            __m512i A = _mm512_loadu_si512(qs), B = _mm512_loadu_si512(qs + 64);
            __m512i nib[4] = { _mm512_and_si512(A, m4), _mm512_and_si512(_mm512_srli_epi16(A, 4), m4),
                               _mm512_and_si512(B, m4), _mm512_and_si512(_mm512_srli_epi16(B, 4), m4) };
            __m512i acc32 = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) {
                __m512i sc = _mm512_maskz_permutexvar_epi8(even, sel[c % 4][k], sm[c / 4]);
                acc32 = _mm512_dpwssd_epi32(acc32, _mm512_maddubs_epi16(nib[k], xs[k]), sc);
            }
            z[c] = acc32;
        }
        __m256i isum = hsum16x8(z);
        __m256i imin = _mm512_castsi512_si256(_mm512_permutex2var_epi32(mm[0], first, mm[1]));
        __m256i dd = _mm512_castsi512_si256(_mm512_permutex2var_epi32(hd[0], first, hd[1])); /* d | dmin << 16 */
        __m256 dw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(dd));
        __m256 mw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(dd, 16)));
        __m256 dx = _mm256_set1_ps(xd[b]);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx), acc);
        accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(mw, dx), accm);
    }
    _mm256_storeu_ps(out, _mm256_sub_ps(acc, accm));
}

/* Q6_K (lane arithmetic), one activation row x one packed panel of 8 rows (block b of row
 * c at w + (8 b + c) 210): rows 2p and 2p + 1 share 512-bit vectors.  Per row and lane
 * the same integers as k_block (the scaled sums of q x, minus 32 x the scales x the sums
 * of x per 16) and the same fma(d_w d_x, lanes, acc); ggml's lane tree per row. */
static void q6_k_panel_1x8(float *out, const quant_act *a, int r, const uint8_t *w, int nb)
{
    const size_t cols = (size_t)a->cols;
    const int8_t *xq = a->q + (size_t)r * cols;
    const float *xd = a->d + (size_t)r * nb;
    const int16_t *bsr = a->bs + (size_t)r * (cols / 16);
    const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(3), c12 = _mm512_set1_epi8(12),
                  c48 = _mm512_set1_epi8(48), cc0 = _mm512_set1_epi8((char)0xC0);
    /* scales of group g (32 weights): int16 lanes 0..7 scale 2g of the low row, 8..15
     * scale 2g + 1, 16..31 the same of the high row (s16: the two rows' 16 scales) */
    __m512i gsel[8], dsel[4];
    for (int gg = 0; gg < 8; gg++) {
        int16_t t[32];
        for (int i = 0; i < 32; i++) t[i] = (int16_t)((i / 16) * 16 + 2 * gg + (i % 16) / 8);
        gsel[gg] = _mm512_loadu_si512(t);
    }
    for (int p = 0; p < 4; p++)
        dsel[p] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * p)), _mm256_set1_epi32(2 * p + 1), 1);
    /* each row's d: the high half of the 4 bytes ending at byte 210 (within the block) */
    const __m256i doff = _mm256_setr_epi32(206, 416, 626, 836, 1046, 1256, 1466, 1676);
    __m512 acc[4];
    for (int p = 0; p < 4; p++) acc[p] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *g = w + (size_t)b * (8 * 210);
        if (QPF)
            for (int k = 0; k < 8 * 210; k += 64) _mm_prefetch((const char *)g + QPF + k, _MM_HINT_T0);
        const int8_t *x = xq + (size_t)b * QK_K;
        __m512i xv[8];
        for (int gg = 0; gg < 8; gg++)
            xv[gg] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x + 32 * gg)));
        __m512i bsv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(bsr + 16 * (size_t)b)));
        __m256i dd = _mm256_i32gather_epi32((const int *)g, doff, 1);
        __m256 d8 = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(dd, 16))),
                                  _mm256_set1_ps(xd[b]));
        __m512 d16 = _mm512_castps256_ps512(d8);
        for (int p = 0; p < 4; p++) {
            const uint8_t *b0 = g + (size_t)(2 * p) * 210, *b1 = b0 + 210;
#define PAIR256(off)                                                                                     \
    _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + (off)))), \
                       _mm256_loadu_si256((const __m256i *)(b1 + (off))), 1)
            __m512i s16 = _mm512_cvtepi8_epi16(_mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 192))),
                _mm_loadu_si128((const __m128i *)(b1 + 192)), 1));
            __m512i lanes = _mm512_setzero_si512();
            for (int n = 0; n < 2; n++) {
                __m512i l1 = PAIR256(64 * n), l2 = PAIR256(64 * n + 32), hb = PAIR256(128 + 32 * n);
                __m512i q[4] = {
                    _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_slli_epi16(_mm512_and_si512(hb, m3), 4)),
                    _mm512_or_si512(_mm512_and_si512(l2, m4), _mm512_slli_epi16(_mm512_and_si512(hb, c12), 2)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4), _mm512_and_si512(hb, c48)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l2, 4), m4),
                                    _mm512_srli_epi16(_mm512_and_si512(hb, cc0), 2)),
                };
                for (int k = 0; k < 4; k++)
                    lanes = _mm512_dpwssd_epi32(lanes, _mm512_maddubs_epi16(q[k], xv[4 * n + k]),
                                                _mm512_permutexvar_epi16(gsel[4 * n + k], s16));
            }
#undef PAIR256
            lanes = _mm512_sub_epi32(lanes, _mm512_slli_epi32(_mm512_madd_epi16(bsv, s16), 5));
            acc[p] = _mm512_fmadd_ps(_mm512_permutexvar_ps(dsel[p], d16), _mm512_cvtepi32_ps(lanes), acc[p]);
        }
    }
    for (int p = 0; p < 4; p++) {
        out[2 * p] = hsum8(_mm512_castps512_ps256(acc[p]));
        out[2 * p + 1] = hsum8(hi256(acc[p]));
    }
}

/* ---- AVX-512: a batch of activation rows against a packed panel -------------------------
 *
 * R activation rows (1..PR_MAX) x the 8 rows of a packed panel.  The weight side of a block (its
 * bytes made unsigned, its scales unpacked) is done once and reused for the R rows; the
 * activations' block quants are broadcast from memory (load-port work only).  Per output
 * element the integers and the float operations are those of lane32, lane_k and
 * serial_q4_k, in the same order. */

/* Activation rows per register block of the batched kernels. */
#define PR_MAX 8

/* The half at byte dpos of each of 8 consecutive blocks of bb bytes, as 8 floats: one
 * gather of 4 bytes per block, starting with the half (or ending with it when it is the
 * block's last two bytes, so that nothing past the block is read). */
AI __m256 group_halves(const uint8_t *g, const int bb, const int dpos)
{
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bb));
    if (dpos + 4 <= bb)
        return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_i32gather_epi32((const int *)(g + dpos), idx, 1)));
    __m256i v = _mm256_i32gather_epi32((const int *)(g + dpos - 2), idx, 1);
    return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(v, 16)));
}

/* Two rows' 32-weight blocks (b0 in the low half, b1 in the high) as b32_ubytes makes
 * them: unsigned bytes w + off.  Nibble types: the two rows' 16 bytes each become
 * [n0 | n0 | n1 | n1] (128-bit lanes), shifted right by 0 / 4 per lane and masked; the
 * fifth bits of both rows (Q5_0, Q5_1) are one 64-bit mask adding 16 to their bytes. */
AI __m512i b32_ubytes2(const int type, const uint8_t *b0, const uint8_t *b1)
{
    if (type == MT_Q8_0) {
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + 2))),
                                       _mm256_loadu_si256((const __m256i *)(b1 + 2)), 1);
        return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    }
    const int qo = type == MT_Q4_0 ? 2 : type == MT_Q4_1 ? 4 : type == MT_Q5_0 ? 6 : 8;
    __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + qo))),
                                        _mm_loadu_si128((const __m128i *)(b1 + qo)), 1);
    __m512i z = _mm512_castsi256_si512(t);
    __m512i u = _mm512_and_si512(_mm512_srlv_epi64(_mm512_shuffle_i64x2(z, z, 0x50), _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)),
                                 _mm512_set1_epi8(0x0F));
    if (type == MT_Q5_0 || type == MT_Q5_1) {
        const int ho = type == MT_Q5_0 ? 2 : 4;
        uint32_t h0, h1;
        memcpy(&h0, b0 + ho, 4);
        memcpy(&h1, b1 + ho, 4);
        u = _mm512_mask_add_epi8(u, _cvtu64_mask64((uint64_t)h0 | (uint64_t)h1 << 32), u, _mm512_set1_epi8(16));
    }
    return u;
}

/* [v x 8 | v' x 8] selectors: lanes 0..7 take element 2p, 8..15 element 2p + 1. */
AI __m512i pair_sel(int p)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * p)), _mm256_set1_epi32(2 * p + 1), 1);
}

/* 32-weight types in lane arithmetic (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1): R activation rows x
 * one packed panel (block b of row c at w + (8 b + c) bytes).  Per block, row and lane:
 * dpbusd(-off sum4(x), w + off, x) (lane32's VNNI integers), acc = fma(d_w d_x, lanes,
 * acc); Q4_1 / Q5_1 also summs = fma(m_w, s_x, summs) (a vector of the panel's 8 rows,
 * each lane the scalar fmaf of lane32); at the end ggml's lane tree per row, + summs. */
AI void lane32_panel(const int type, float *out, size_t ldo, const quant_act *a, int r0, const int R,
                     const uint8_t *w, int nb)
{
    const int bb = b32_bytes_of(type), off = b32_off(type);
    const int mins = type == MT_Q4_1 || type == MT_Q5_1;
    const size_t cols = (size_t)a->cols;
    const int8_t *xq = a->q + (size_t)r0 * cols;
    const float *xd = a->d + (size_t)r0 * nb;
    const float *xs = mins ? a->s + (size_t)r0 * nb : NULL;
    __m512 acc[PR_MAX][4];
    __m256 summs[PR_MAX];
    for (int r = 0; r < R; r++) {
        summs[r] = _mm256_setzero_ps();
        for (int p = 0; p < 4; p++) acc[r][p] = _mm512_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        const uint8_t *g = w + (size_t)b * (8 * (size_t)bb);
        if (QPF)
            for (int k = 0; k < 8 * bb; k += 64) _mm_prefetch((const char *)g + QPF + k, _MM_HINT_T0);
        __m512i xv[PR_MAX], corr[PR_MAX];
        for (int r = 0; r < R; r++) {
            xv[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xq + (size_t)r * cols + 32 * (size_t)b)));
            corr[r] = off ? _mm512_sub_epi32(_mm512_setzero_si512(),
                                             _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)off), xv[r]))
                          : _mm512_setzero_si512();
        }
        __m512 dw16 = _mm512_castps256_ps512(group_halves(g, bb, 0));
        if (mins) {
            __m256 mw = group_halves(g, bb, 2);
            for (int r = 0; r < R; r++)
                summs[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[(size_t)r * nb + b]), summs[r]);
        }
        for (int p = 0; p < 4; p++) {
            const uint8_t *b0 = g + (size_t)(2 * p) * bb;
            __m512i wu = b32_ubytes2(type, b0, b0 + bb);
            __m512 dp = _mm512_permutexvar_ps(pair_sel(p), dw16);
            for (int r = 0; r < R; r++) {
                __m512i s = _mm512_dpbusd_epi32(corr[r], wu, xv[r]);
                __m512 d = _mm512_mul_ps(dp, _mm512_set1_ps(xd[(size_t)r * nb + b]));
                acc[r][p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[r][p]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        float sm[8];
        _mm256_storeu_ps(sm, summs[r]);
        for (int p = 0; p < 4; p++) {
            float s0 = hsum8(_mm512_castps512_ps256(acc[r][p])), s1 = hsum8(hi256(acc[r][p]));
            out[(size_t)r * ldo + 2 * p] = mins ? s0 + sm[2 * p] : s0;
            out[(size_t)r * ldo + 2 * p + 1] = mins ? s1 + sm[2 * p + 1] : s1;
        }
    }
}

/* Q6_K (lane arithmetic): R activation rows x one packed panel (block b of row c at
 * w + (8 b + c) 210); per row and lane k_block's integers and lane_k's fma(d_x d_w,
 * lanes, acc), rows 2p and 2p + 1 of the panel sharing 512-bit vectors. */
AI void q6_k_panel(float *out, size_t ldo, const quant_act *a, int r0, const int R, const uint8_t *w, int nb)
{
    const size_t cols = (size_t)a->cols;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(3), c12 = _mm512_set1_epi8(12),
                  c48 = _mm512_set1_epi8(48), cc0 = _mm512_set1_epi8((char)0xC0);
    /* scales of group gg: int16 lanes 0..7 scale 2gg of the low row, 8..15 scale 2gg + 1,
     * 16..31 the same of the high row (s16: the two rows' 16 scales) */
    __m512i gsel[8];
    for (int gg = 0; gg < 8; gg++) {
        int16_t t[32];
        for (int i = 0; i < 32; i++) t[i] = (int16_t)((i / 16) * 16 + 2 * gg + (i % 16) / 8);
        gsel[gg] = _mm512_loadu_si512(t);
    }
    __m512 acc[PR_MAX][4];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < 4; p++) acc[r][p] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *g = w + (size_t)b * (8 * 210);
        if (QPF)
            for (int k = 0; k < 8 * 210; k += 64) _mm_prefetch((const char *)g + QPF + k, _MM_HINT_T0);
        const int8_t *x[PR_MAX];
        const int16_t *bsr[PR_MAX];
        for (int r = 0; r < R; r++) {
            x[r] = a->q + (size_t)(r0 + r) * cols + (size_t)b * QK_K;
            bsr[r] = a->bs + (size_t)(r0 + r) * (cols / 16) + 16 * (size_t)b;
        }
        __m512 dw16 = _mm512_castps256_ps512(group_halves(g, 210, 208));
        for (int p = 0; p < 4; p++) {
            const uint8_t *b0 = g + (size_t)(2 * p) * 210, *b1 = b0 + 210;
#define PAIR256(off)                                                                                     \
    _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + (off)))), \
                       _mm256_loadu_si256((const __m256i *)(b1 + (off))), 1)
            __m512i s16 = _mm512_cvtepi8_epi16(_mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 192))),
                _mm_loadu_si128((const __m128i *)(b1 + 192)), 1));
            __m512i q[8], sc[8];
            for (int n = 0; n < 2; n++) {
                __m512i l1 = PAIR256(64 * n), l2 = PAIR256(64 * n + 32), hb = PAIR256(128 + 32 * n);
                q[4 * n + 0] = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_slli_epi16(_mm512_and_si512(hb, m3), 4));
                q[4 * n + 1] = _mm512_or_si512(_mm512_and_si512(l2, m4), _mm512_slli_epi16(_mm512_and_si512(hb, c12), 2));
                q[4 * n + 2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4), _mm512_and_si512(hb, c48));
                q[4 * n + 3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l2, 4), m4),
                                               _mm512_srli_epi16(_mm512_and_si512(hb, cc0), 2));
            }
#undef PAIR256
            for (int k = 0; k < 8; k++) sc[k] = _mm512_permutexvar_epi16(gsel[k], s16);
            __m512 dp = _mm512_permutexvar_ps(pair_sel(p), dw16);
            for (int r = 0; r < R; r++) {
                __m512i lanes = _mm512_setzero_si512();
                for (int k = 0; k < 8; k++) {
                    __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[r] + 32 * k)));
                    lanes = _mm512_dpwssd_epi32(lanes, _mm512_maddubs_epi16(q[k], xv), sc[k]);
                }
                __m512i bsv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)bsr[r]));
                lanes = _mm512_sub_epi32(lanes, _mm512_slli_epi32(_mm512_madd_epi16(bsv, s16), 5));
                __m512 d = _mm512_mul_ps(_mm512_set1_ps(a->d[(size_t)(r0 + r) * nb + b]), dp);
                acc[r][p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lanes), acc[r][p]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < 4; p++) {
            out[(size_t)r * ldo + 2 * p] = hsum8(_mm512_castps512_ps256(acc[r][p]));
            out[(size_t)r * ldo + 2 * p + 1] = hsum8(hi256(acc[r][p]));
        }
}

/* Q4_K serial: R activation rows x one packed panel (block b of row c at w + (8 b + c)
 * 144).  Per super-block and row serial_q4_k's two integers (isum, imin) and its
 * fma(isum, d_w d_x, acc), fma(imin, dmin_w d_x, accm), out = acc - accm.  Rows 2p and
 * 2p + 1 share 512-bit vectors (as in q6_k_panel): 32 bytes of nibbles j of both rows
 * give sub-blocks 2j (low nibbles) and 2j + 1 (high), against x's sub-block broadcast to
 * both halves; the scales of four rows are unpacked side by side (a row per 128-bit lane)
 * once for the R rows.  The 8 outputs are kept in the order rows 0 2 4 6 1 3 5 7 (what
 * the lane sums reduce to) and put back in order at the end. */
AI void q4_k_panel(float *out, size_t ldo, const quant_act *a, int r0, const int R, const uint8_t *w, int nb)
{
    const size_t cols = (size_t)a->cols;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __mmask64 even = 0x5555555555555555ull;
    /* byte selectors: for the rows of pair half q (0: rows 0 1 / 4 5 of a quad's lanes 0 1;
     * 1: lanes 2 3) and sub-block s, int16 lanes 0..15 take scale byte s of the low row's
     * lane, 16..31 of the high row's; msel: the mins as int16, per lane */
    __m512i sel[2][8], msel;
    {
        uint8_t t[64];
        for (int q = 0; q < 2; q++)
            for (int sb = 0; sb < 8; sb++) {
                for (int i = 0; i < 64; i++) t[i] = (uint8_t)(16 * (2 * q + (i >= 32)) + sb);
                sel[q][sb] = _mm512_loadu_si512(t);
            }
        for (int i = 0; i < 64; i++) t[i] = (uint8_t)((i / 16) * 16 + 8 + (i % 16) / 2);
        msel = _mm512_loadu_si512(t);
    }
    /* dword 4L of hd[0] / hd[1]: rows L / 4 + L, taken in the order 0 2 4 6 1 3 5 7 */
    const __m512i eo = _mm512_setr_epi32(0, 8, 16, 24, 4, 12, 20, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    __m256 acc[PR_MAX], accm[PR_MAX];
    for (int r = 0; r < R; r++) acc[r] = accm[r] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *g = w + (size_t)b * (8 * 144);
        if (QPF)
            for (int k = 0; k < 8 * 144; k += 64) _mm_prefetch((const char *)g + QPF + k, _MM_HINT_T0);
        __m512i hd[2], sm[2], mins16[2];
        for (int h = 0; h < 2; h++) {
            const uint8_t *g4 = g + (size_t)(4 * h) * 144;
            __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)g4));
            v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(g4 + 144)), 1);
            v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(g4 + 288)), 2);
            hd[h] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(g4 + 432)), 3);
            sm[h] = k4_headers_decode(hd[h]);
            mins16[h] = _mm512_maskz_permutexvar_epi8(even, msel, sm[h]);
        }
        __m256i imin[PR_MAX];
        for (int r = 0; r < R; r++) {
            const int16_t *bsr = a->bs + (size_t)(r0 + r) * (cols / 16) + 16 * (size_t)b;
            __m256i bsv = _mm256_loadu_si256((const __m256i *)bsr);
            __m512i q8s = _mm512_broadcast_i32x4(_mm_hadd_epi16(_mm256_castsi256_si128(bsv), _mm256_extracti128_si256(bsv, 1)));
            __m512i mm[2];
            for (int h = 0; h < 2; h++) {
                __m512i m = _mm512_madd_epi16(mins16[h], q8s);
                m = _mm512_add_epi32(m, _mm512_shuffle_epi32(m, (_MM_PERM_ENUM)0x4E));
                mm[h] = _mm512_add_epi32(m, _mm512_shuffle_epi32(m, (_MM_PERM_ENUM)0xB1));
            }
            imin[r] = _mm512_castsi512_si256(_mm512_permutex2var_epi32(mm[0], eo, mm[1]));
        }
        __m512i z[PR_MAX][4];
        for (int p = 0; p < 4; p++) {
            const uint8_t *b0 = g + (size_t)(2 * p) * 144 + 16, *b1 = b0 + 144;
            __m512i q[8], sc[8];
            for (int j = 0; j < 4; j++) {
                __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + 32 * j))),
                                               _mm256_loadu_si256((const __m256i *)(b1 + 32 * j)), 1);
                q[2 * j] = _mm512_and_si512(v, m4);
                q[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
            for (int sb = 0; sb < 8; sb++) sc[sb] = _mm512_maskz_permutexvar_epi8(even, sel[p % 2][sb], sm[p / 2]);
            for (int r = 0; r < R; r++) {
                const int8_t *x = a->q + (size_t)(r0 + r) * cols + (size_t)b * QK_K;
                __m512i acc32 = _mm512_setzero_si512();
                for (int sb = 0; sb < 8; sb++) {
                    __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x + 32 * sb)));
                    acc32 = _mm512_dpwssd_epi32(acc32, _mm512_maddubs_epi16(q[sb], xv), sc[sb]);
                }
                z[r][p] = acc32;
            }
        }
        __m256i dd = _mm512_castsi512_si256(_mm512_permutex2var_epi32(hd[0], eo, hd[1])); /* d | dmin << 16 */
        __m256 dw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(dd));
        __m256 mw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(dd, 16)));
        for (int r = 0; r < R; r++) {
            /* z[r][p]: row 2p's 8 lane sums in 128-bit lanes 0 1, row 2p + 1's in 2 3 */
            __m512i a0 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[r][0], z[r][1]), _mm512_unpackhi_epi32(z[r][0], z[r][1]));
            __m512i a1 = _mm512_add_epi32(_mm512_unpacklo_epi32(z[r][2], z[r][3]), _mm512_unpackhi_epi32(z[r][2], z[r][3]));
            /* per 128-bit lane: the lane's sums of pairs 0 1 2 3 */
            __m512i s4 = _mm512_add_epi32(_mm512_unpacklo_epi64(a0, a1), _mm512_unpackhi_epi64(a0, a1));
            /* lanes 0 + 1: rows 0 2 4 6; lanes 2 + 3: rows 1 3 5 7 */
            __m512i s8 = _mm512_add_epi32(_mm512_shuffle_i32x4(s4, s4, 0x08), _mm512_shuffle_i32x4(s4, s4, 0x0D));
            __m256i isum = _mm512_castsi512_si256(s8);
            __m256 dx = _mm256_set1_ps(a->d[(size_t)(r0 + r) * nb + b]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx), acc[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin[r]), _mm256_mul_ps(mw, dx), accm[r]);
        }
    }
    const __m256i back = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* 0 2 4 6 1 3 5 7 -> 0..7 */
    for (int r = 0; r < R; r++)
        _mm256_storeu_ps(out + (size_t)r * ldo, _mm256_permutevar8x32_ps(_mm256_sub_ps(acc[r], accm[r]), back));
}

/* R activation rows x a packed panel, in register blocks of 8, 4, then 1..3 rows, if the
 * type has batched AVX-512 kernels (returns 0 otherwise). */
static int block_panel(int type, int serial, float *out, size_t ldo, const quant_act *a, int r0, int R,
                       const uint8_t *w, int nb)
{
    if (serial ? type != MT_Q4_K
               : type != MT_Q8_0 && type != MT_Q5_0 && type != MT_Q4_0 && type != MT_Q4_1 && type != MT_Q5_1 &&
                     type != MT_Q6_K)
        return 0;
    while (R > 0) {
        int n = R >= 8 ? 8 : R >= 4 ? 4 : R;
#define CALL(NN)                                                                                 \
    do {                                                                                         \
        if (serial)                                                                              \
            q4_k_panel(out, ldo, a, r0, NN, w, nb);                                              \
        else if (type == MT_Q6_K)                                                                \
            q6_k_panel(out, ldo, a, r0, NN, w, nb);                                              \
        else if (type == MT_Q8_0)                                                                \
            lane32_panel(MT_Q8_0, out, ldo, a, r0, NN, w, nb);                                   \
        else if (type == MT_Q5_0)                                                                \
            lane32_panel(MT_Q5_0, out, ldo, a, r0, NN, w, nb);                                   \
        else if (type == MT_Q4_0)                                                                \
            lane32_panel(MT_Q4_0, out, ldo, a, r0, NN, w, nb);                                   \
        else if (type == MT_Q4_1)                                                                \
            lane32_panel(MT_Q4_1, out, ldo, a, r0, NN, w, nb);                                   \
        else                                                                                     \
            lane32_panel(MT_Q5_1, out, ldo, a, r0, NN, w, nb);                                   \
    } while (0)
        switch (n) {
        case 8: CALL(8); break;
        case 4: CALL(4); break;
        case 3: CALL(3); break;
        case 2: CALL(2); break;
        default: CALL(1); break;
        }
#undef CALL
        out += (size_t)n * ldo;
        r0 += n;
        R -= n;
    }
    return 1;
}
#endif /* QUANT_AVX512 */

/* ---- Drivers ----------------------------------------------------------------------------- */

/* One register block of a lane type. */
static void block_lane(int type, float *out, size_t ldo, const quant_act *a, int r0, int R, const uint8_t *w, size_t rs,
                       size_t bs, int nb, int C)
{
#define L32(TY, RR, CC) lane32(TY, out, ldo, a, r0, RR, w, rs, bs, nb, CC)
#define LK(TY, RR, CC)  lane_k(TY, out, ldo, a, r0, RR, w, rs, bs, nb, CC)
#define BY_R(M, TY, CC)   \
    do {                  \
        if (R == 4)       \
            M(TY, 4, CC); \
        else if (R == 3)  \
            M(TY, 3, CC); \
        else if (R == 2)  \
            M(TY, 2, CC); \
        else              \
            M(TY, 1, CC); \
    } while (0)
#define BY_RC(M, TY)                         \
    do {                                     \
        if (C == 8)                          \
            M(TY, 1, 8); /* decoding only */ \
        else if (C == 4)                     \
            BY_R(M, TY, 4);                  \
        else                                 \
            BY_R(M, TY, 1);                  \
    } while (0)
    switch (type) {
    case MT_Q4_0: BY_RC(L32, MT_Q4_0); break;
    case MT_Q4_1: BY_RC(L32, MT_Q4_1); break;
    case MT_Q5_0: BY_RC(L32, MT_Q5_0); break;
    case MT_Q5_1: BY_RC(L32, MT_Q5_1); break;
    case MT_Q8_0: BY_RC(L32, MT_Q8_0); break;
    case MT_Q2_K: BY_RC(LK, MT_Q2_K); break;
    case MT_Q3_K: BY_RC(LK, MT_Q3_K); break;
    case MT_Q4_K: BY_RC(LK, MT_Q4_K); break;
    case MT_Q5_K: BY_RC(LK, MT_Q5_K); break;
    case MT_Q6_K: BY_RC(LK, MT_Q6_K); break;
    }
#undef BY_RC
#undef BY_R
#undef LK
#undef L32
}

static void block_serial(int type, float *out, size_t ldo, const quant_act *a, int r0, int R, const uint8_t *w,
                         size_t rs, size_t bs, int nb)
{
#define SER(F)                                    \
    do {                                          \
        if (R == 4)                               \
            F(out, ldo, a, r0, 4, w, rs, bs, nb); \
        else if (R == 3)                          \
            F(out, ldo, a, r0, 3, w, rs, bs, nb); \
        else if (R == 2)                          \
            F(out, ldo, a, r0, 2, w, rs, bs, nb); \
        else                                      \
            F(out, ldo, a, r0, 1, w, rs, bs, nb); \
    } while (0)
    if (type == MT_Q4_0)
        SER(serial_q4_0);
    else
        SER(serial_q4_k);
#undef SER
}

#endif /* QUANT_AVX2 */

/* Activation rows per pass over a task's weight rows (their quants stay in L1/L2). */
#define XBLK 64

#ifdef QUANT_AVX2
/* One activation row against the whole packed panels of [j0, j1) (j0 a multiple of
 * 8): the kernel calls the loop below makes for them, without finding each panel's
 * address and kernel again.  Returns the first row not done. */
static int decode_panels(float *out, const quant_act *a, const mtensor *w, int j0, int j1, int nb)
{
    int type = w->type, serial = quant_is_serial(type, w->rows);
    int full = w->panel ? w->rows / QUANT_PANEL * QUANT_PANEL : 0, je = j1 < full ? j1 : full;
    if (j0 >= je) return j0;
    size_t bs;
    const uint8_t *p = quant_row_blocks(w, j0, &bs); /* bs: one block of each of the panel's rows */
    size_t rs = bs / QUANT_PANEL, step = bs * (size_t)nb;
#ifdef QUANT_AVX512
    void (*kern)(float *, const quant_act *, int, const uint8_t *, int) = NULL;
    if (type == MT_Q8_0)
        kern = q8_0_panel_1x8;
    else if (type == MT_Q6_K)
        kern = q6_k_panel_1x8;
    else if (type == MT_Q4_K && serial)
        kern = q4_k_panel_1x8;
    if (kern) {
        for (int j = j0; j < je; j += QUANT_PANEL, p += step) kern(out + j, a, 0, p, nb);
        return je;
    }
#endif
    for (int j = j0; j < je; j += QUANT_PANEL, p += step)
        if (serial)
            block_serial(type, out + j, 0, a, 0, 1, p, rs, bs, nb);
        else
            block_lane(type, out + j, 0, a, 0, 1, p, rs, bs, nb, 8);
    return je;
}
#endif

void quant_matmul_rows(float *out, size_t ldo, const quant_act *a, int n_rows, const mtensor *w, int j0, int j1)
{
#ifdef QUANT_AVX2
    int type = w->type, nb = w->cols / quant_block_elems(type);
    int serial = quant_is_serial(type, w->rows);
    int full = w->panel ? w->rows / QUANT_PANEL * QUANT_PANEL : 0;
    size_t row_bytes = mtensor_row_bytes(type, w->cols);
    if (n_rows == 1) j0 = decode_panels(out, a, w, j0, j1, nb);
    for (int rb = 0; rb < n_rows; rb += XBLK) {
        int re = rb + XBLK < n_rows ? rb + XBLK : n_rows;
        for (int j = j0; j < j1;) {
            size_t rs, bs;
            const uint8_t *wj = quant_row_blocks(w, j, &bs);
            int group;
            if (j < full) { /* a whole packed panel (tasks start at multiples of 8) */
                rs = bs / QUANT_PANEL;
                group = 8;
            } else { /* row-major: 8 rows when decoding (or serial), else 4, then singles */
                rs = row_bytes;
                int want = serial || re - rb == 1 ? 8 : 4;
                group = j1 - j >= want ? want : serial ? 0 : 1;
            }
            if (group == 0) { /* a lone serial row (not reached: tasks take whole 8s) */
                for (int r = rb; r < re; r++) out[(size_t)r * ldo + j] = quant_dot_ref(a, r, w, j);
                j++;
                continue;
            }
#ifdef QUANT_AVX512
            /* a packed panel against a batch: the pass's rows in the batched kernels */
            if (j < full && re - rb > 1 && block_panel(type, serial, out + (size_t)rb * ldo + j, ldo, a, rb, re - rb, wj, nb)) {
                j += group;
                continue;
            }
#endif
            for (int r = rb; r < re;) {
                int R = re - r >= 4 ? 4 : re - r;
                float *o = out + (size_t)r * ldo + j;
                if (serial) {
#ifdef QUANT_AVX512
                    if (type == MT_Q4_K && j < full && R == 1 && re - rb == 1) {
                        q4_k_panel_1x8(o, a, r, wj, nb);
                        r += R;
                        continue;
                    }
#endif
                    block_serial(type, o, ldo, a, r, R, wj, rs, bs, nb);
                } else if (group == 8 && re - rb == 1) {
#ifdef QUANT_AVX512
                    if (type == MT_Q8_0 && j < full) {
                        q8_0_panel_1x8(o, a, r, wj, nb);
                        r += R;
                        continue;
                    }
                    if (type == MT_Q6_K && j < full) {
                        q6_k_panel_1x8(o, a, r, wj, nb);
                        r += R;
                        continue;
                    }
#endif
                    block_lane(type, o, ldo, a, r, 1, wj, rs, bs, nb, 8);
                } else if (group == 8) { /* a panel against a batch: its two halves */
                    block_lane(type, o, ldo, a, r, R, wj, rs, bs, nb, 4);
                    block_lane(type, o + 4, ldo, a, r, R, wj + 4 * rs, rs, bs, nb, 4);
                } else {
                    block_lane(type, o, ldo, a, r, R, wj, rs, bs, nb, group);
                }
                r += R;
            }
            j += group;
        }
    }
#else
    for (int r = 0; r < n_rows; r++)
        for (int j = j0; j < j1; j++) out[(size_t)r * ldo + j] = quant_dot_ref(a, r, w, j);
#endif
}
