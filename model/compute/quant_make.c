/* quant_make.c -- float rows to block-quantized rows (quant_quantize_rows, quant.h):
 * the reference algorithms of ggml's quantize_row_*_ref, which llama-quantize uses
 * when it has no importance matrix, so that `lmserve quantize` writes the same bytes.
 * (ggml builds them without FMA contraction; this module's ISO C default,
 * -ffp-contract=off, keeps every product and sum rounded on its own the same way.)
 *
 *   Q4_0 / Q5_0: d = max / -8 (-16) where max is the value of largest magnitude (its
 *     sign kept), q = min(15 (31), trunc(x / d + 8.5 (16.5))).
 *   Q4_1 / Q5_1: d = (max - min) / 15 (31), m = min, q = trunc((x - min) / d + 0.5).
 *   Q8_0: d = amax / 127, q = round-half-away(x / d).
 *   K-quants: each 16 or 32 weights get a scale (and a min) fitted by a small search
 *     (fit_qx: scaled signed levels around the largest value; fit_qkx: affine levels,
 *     weighted least squares over trial scales; fit_q3: Q3_K's iterative refit), the
 *     scales are quantized to 4, 6 or 8 bits against the super-block's largest, and
 *     the weights are requantized with the stored scales.
 */
#include "model/compute/quant.h"
#include "model/half.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define GROUP_MAX_EPS 1e-15f

static inline uint16_t f2h(float f) { return model_f32_to_f16(f); }

static inline float h2f16(uint16_t h) { return model_f16_to_f32(h); }

static inline void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* round to nearest, ties to even, for |x| < 2^22 (ggml's nearest_int) */
static inline int nearest(float x)
{
    float v = x + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* (int8_t) and (uint8_t) of a float, as C converts an in-range value (truncation); out of
 * range or NaN (which only broken inputs produce, and where C leaves the conversion
 * undefined) the nearest end, NaN the low end. */
static inline int to_i8(float v) { return v >= 127.0f ? 127 : v > -128.0f ? (int)v : -128; }
static inline int to_u8(float v) { return v >= 255.0f ? 255 : v > 0.0f ? (int)v : 0; }

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* ---- 32-weight blocks ----------------------------------------------------------------- */

static void make_q4_0_q5_0(int bits, const float *x, uint8_t *y)
{
    const float max = quant_signed_max(x, 32);
    const float d = max / (bits == 4 ? -8.0f : -16.0f);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float off = bits == 4 ? 8.5f : 16.5f;
    const int top = bits == 4 ? 15 : 31;
    put16(y, f2h(d));
    uint8_t *qs = y + (bits == 4 ? 2 : 6);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        int a = imin(top, to_i8(x[j] * id + off));
        int b = imin(top, to_i8(x[j + 16] * id + off));
        qs[j] = (uint8_t)((a & 0xF) | (b & 0xF) << 4);
        qh |= (uint32_t)((a >> 4) & 1) << j;
        qh |= (uint32_t)((b >> 4) & 1) << (j + 16);
    }
    if (bits == 5) memcpy(y + 2, &qh, 4);
}

static void make_q4_1_q5_1(int bits, const float *x, uint8_t *y)
{
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / (float)((1 << bits) - 1);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(y, f2h(d));
    put16(y + 2, f2h(min));
    uint8_t *qs = y + (bits == 4 ? 4 : 8);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        int a, b;
        if (bits == 4) {
            a = imin(15, to_i8((x[j] - min) * id + 0.5f));
            b = imin(15, to_i8((x[j + 16] - min) * id + 0.5f));
        } else {
            a = to_u8((x[j] - min) * id + 0.5f);
            b = to_u8((x[j + 16] - min) * id + 0.5f);
        }
        qs[j] = (uint8_t)((a & 0xF) | (b & 0xF) << 4);
        qh |= (uint32_t)((a >> 4) & 1) << j;
        qh |= (uint32_t)((b >> 4) & 1) << (j + 16);
    }
    if (bits == 5) memcpy(y + 4, &qh, 4);
}

static void make_q8_0(const float *x, uint8_t *y)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(y, f2h(d));
    for (int j = 0; j < 32; j++) y[2 + j] = (uint8_t)(int8_t)to_i8(roundf(x[j] * id));
}

/* ---- Scale fitting for the K-quants ------------------------------------------------------ */

/* The signed levels l = nearest(iscale x) clamped to [-nmax, nmax) of x[0..n), stored
 * as l + offset in L (unless L is NULL), and their weighted sums (weights x^2):
 * *sumlx = sum w x l, *suml2 = sum w l^2. */
static void level_sums(int n, int nmax, float iscale, const float *x, int8_t *L, int offset, float *sumlx, float *suml2)
{
    float slx = 0.0f, sl2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest(iscale * x[i])));
        if (L) L[i] = (int8_t)(l + offset);
        float w = x[i] * x[i];
        slx += w * x[i] * l;
        sl2 += w * l * l;
    }
    *sumlx = slx;
    *suml2 = sl2;
}

/* The first fit of fit_qx and fit_q3: the levels at scale -nmax / max, in L (plus offset),
 * and their weighted sums.  Returns max, the value of largest magnitude; 0 for a group
 * that is all but zero (L is then zeroed and the group's scale is 0). */
static float first_levels(int n, int nmax, const float *x, int8_t *L, int offset, float *sumlx, float *suml2)
{
    const float max = quant_signed_max(x, n);
    if (fabsf(max) < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    level_sums(n, nmax, -nmax / max, x, L, offset, sumlx, suml2);
    return max;
}

/* Signed levels L in [0, 2 nmax) (level - nmax is the value) for n weights with one scale:
 * start from -nmax / max, then try 18 nearby scales, keeping the one with the best
 * weighted fit (weights x^2).  Returns the scale. */
static float fit_qx(int n, int nmax, const float *x, int8_t *L)
{
    float sumlx, suml2;
    const float max = first_levels(n, nmax, x, L, nmax, &sumlx, &suml2);
    if (max == 0.0f) return 0.0f;
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        float iscale = -(nmax + 0.1f * is) / max;
        level_sums(n, nmax, iscale, x, NULL, 0, &sumlx, &suml2);
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's scale fit: levels in [-nmax, nmax), refined by moving one level at a time while
 * the weighted fit improves (at most 5 rounds).  L returned offset by nmax. */
static float fit_q3(int n, int nmax, const float *x, int8_t *L)
{
    float sumlx, suml2;
    const float max = first_levels(n, nmax, x, L, 0, &sumlx, &suml2);
    if (max == 0.0f) return 0.0f;
    for (int round = 0; round < 5; round++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0.0f) {
                float sl2 = suml2 - w * L[i] * L[i];
                int nl = imax(-nmax, imin(nmax - 1, nearest(x[i] * sl2 / slx)));
                if (nl != L[i]) {
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Affine levels L in [0, nmax] with scale and min (x ~ scale L - *mneg): from the range,
 * then nstep + 1 trial scales (rmin + rdelta is) / range, each refitted by weighted least
 * squares; the lowest weighted error (absolute with use_mad, else squared) wins. */
static float fit_qkx(int n, int nmax, const float *x, const float *wt, uint8_t *L, float *mneg, uint8_t *Laux,
                     float rmin, float rdelta, int nstep, int use_mad)
{
    float min = x[0], max = x[0], sum_w = wt[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += wt[i];
        sum_x += wt[i] * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *mneg = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min), scale = 1.0f / iscale, best_err = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)imax(0, imin(nmax, nearest(iscale * (x[i] - min))));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_err += wt[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = imax(0, imin(nmax, nearest(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            sum_l += wt[i] * l;
            sum_l2 += wt[i] * l * l;
            sum_xl += wt[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0.0f) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0.0f;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                err += wt[i] * diff;
            }
            if (err < best_err) {
                memcpy(L, Laux, (size_t)n);
                best_err = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *mneg = -min;
    return scale;
}

/* ---- K-quant super-blocks ----------------------------------------------------------------- */

static void make_q2_k(const float *x, uint8_t *y)
{
    uint8_t L[QK_K], Laux[16];
    float wt[16], mins[16], scales[16], max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++) wt[l] = fabsf(x[16 * j + l]);
        scales[j] = fit_qkx(16, 3, x + 16 * j, wt, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t *sc = y;
    if (max_scale > 0.0f) {
        float iscale = 15.0f / max_scale;
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)nearest(iscale * scales[j]);
        put16(y + 80, f2h(max_scale / 15.0f));
    } else {
        memset(sc, 0, 16);
        put16(y + 80, f2h(0.0f));
    }
    if (max_min > 0.0f) {
        float iscale = 15.0f / max_min;
        /* unsigned: a NaN min (from a NaN weight) rounds to a negative int, whose left
         * shift C leaves undefined; the stored byte is the same either way */
        for (int j = 0; j < 16; j++) sc[j] |= (uint8_t)((unsigned)nearest(iscale * mins[j]) << 4);
        put16(y + 82, f2h(max_min / 15.0f));
    } else {
        put16(y + 82, f2h(0.0f));
    }
    uint16_t dh, mh;
    memcpy(&dh, y + 80, 2);
    memcpy(&mh, y + 82, 2);
    for (int j = 0; j < 16; j++) {
        const float d = h2f16(dh) * (sc[j] & 0xF);
        if (d == 0.0f) continue;
        const float dm = h2f16(mh) * (sc[j] >> 4);
        for (int i = 0; i < 16; i++) L[16 * j + i] = (uint8_t)imax(0, imin(3, nearest((x[16 * j + i] + dm) / d)));
    }
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            y[16 + j / 4 + l] = (uint8_t)(L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6);
}

static void make_q3_k(const float *x, uint8_t *y)
{
    int8_t L[QK_K];
    float scales[16];
    for (int j = 0; j < 16; j++) scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
    const float max_scale = quant_signed_max(scales, 16);
    uint8_t *sc = y + 96;
    memset(sc, 0, 12);
    if (max_scale != 0.0f) {
        float iscale = -32.0f / max_scale;
        for (int j = 0; j < 16; j++) {
            int8_t l = (int8_t)nearest(iscale * scales[j]);
            l = (int8_t)(imax(-32, imin(31, l)) + 32);
            if (j < 8)
                sc[j] = (uint8_t)(l & 0xF);
            else
                sc[j - 8] |= (uint8_t)((l & 0xF) << 4);
            l >>= 4;
            sc[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
        }
        put16(y + 108, f2h(1.0f / iscale));
    } else {
        put16(y + 108, f2h(0.0f));
    }
    uint16_t dh;
    memcpy(&dh, y + 108, 2);
    for (int j = 0; j < 16; j++) {
        int8_t s = (int8_t)(j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4);
        s = (int8_t)((s | ((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32);
        float d = h2f16(dh) * s;
        if (d == 0.0f) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(imax(-4, imin(3, nearest(x[16 * j + i] / d))) + 4);
    }
    uint8_t *hm = y;
    memset(hm, 0, 32);
    int m = 0;
    uint8_t bit = 1;
    for (int j = 0; j < QK_K; j++) {
        if (L[j] > 3) {
            hm[m] |= bit;
            L[j] = (int8_t)(L[j] - 4);
        }
        if (++m == 32) {
            m = 0;
            bit = (uint8_t)(bit << 1);
        }
    }
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            y[32 + j / 4 + l] = (uint8_t)(L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6);
}

/* Q4_K (bits 4) and Q5_K (bits 5). */
static void make_q45_k(int bits, const float *x, uint8_t *y)
{
    uint8_t L[QK_K], Laux[32];
    float wt[32], mins[8], scales[8], max_scale = 0.0f, max_min = 0.0f;
    const int nmax = (1 << bits) - 1;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) wt[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = bits == 4 ? fit_qkx(32, nmax, x + 32 * j, wt, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20, 0)
                              : fit_qkx(32, nmax, x + 32 * j, wt, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    uint8_t *s = y + 4;
    memset(s, 0, 12);
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)nearest(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (uint8_t)((ls & 0xF) | (lm & 0xF) << 4);
            s[j - 4] |= (uint8_t)((ls >> 4) << 6);
            s[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    put16(y, f2h(max_scale / 63.0f));
    put16(y + 2, f2h(max_min / 63.0f));
    uint16_t dh, mh;
    memcpy(&dh, y, 2);
    memcpy(&mh, y + 2, 2);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        if (j < 4) {
            sc = s[j] & 63;
            m = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        const float d = h2f16(dh) * sc;
        if (d == 0.0f) continue;
        const float dm = h2f16(mh) * m;
        for (int i = 0; i < 32; i++) L[32 * j + i] = (uint8_t)imax(0, imin(nmax, nearest((x[32 * j + i] + dm) / d)));
    }
    if (bits == 4) {
        uint8_t *q = y + 16;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | L[j + l + 32] << 4);
        return;
    }
    uint8_t *qh = y + 16, *ql = y + 48;
    memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64, ql += 32) {
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) {
                l1 -= 16;
                qh[j] |= m1;
            }
            if (l2 > 15) {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[j] = (uint8_t)(l1 | l2 << 4);
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
    }
}

static void make_q6_k(const float *x, uint8_t *y)
{
    int8_t L[QK_K];
    float scales[16], max_scale = 0.0f, max_abs = 0.0f;
    for (int ib = 0; ib < 16; ib++) {
        scales[ib] = fit_qx(16, 32, x + 16 * ib, L + 16 * ib);
        float a = fabsf(scales[ib]);
        if (a > max_abs) {
            max_abs = a;
            max_scale = scales[ib];
        }
    }
    if (max_abs < GROUP_MAX_EPS) {
        memset(y, 0, 210);
        return;
    }
    float iscale = -128.0f / max_scale;
    put16(y + 208, f2h(1.0f / iscale));
    int8_t *sc = (int8_t *)(y + 192);
    for (int ib = 0; ib < 16; ib++) sc[ib] = (int8_t)imin(127, nearest(iscale * scales[ib]));
    uint16_t dh;
    memcpy(&dh, y + 208, 2);
    for (int j = 0; j < 16; j++) {
        float d = h2f16(dh) * sc[j];
        if (d == 0.0f) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(imax(-32, imin(31, nearest(x[16 * j + i] / d))) + 32);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l] = (uint8_t)(q1 | q3 << 4);
            ql[l + 32] = (uint8_t)(q2 | q4 << 4);
            qh[l] = (uint8_t)((L[j + l] >> 4) | (L[j + l + 32] >> 4) << 2 | (L[j + l + 64] >> 4) << 4 |
                              (L[j + l + 96] >> 4) << 6);
        }
}

size_t quant_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int n_per_row)
{
    int blk = quant_block_elems(type);
    size_t bb = quant_block_bytes(type);
    if (blk <= 1 || n_per_row <= 0 || n_per_row % blk || nrows < 0) return 0;
    uint64_t nblocks = (uint64_t)nrows * (uint64_t)(n_per_row / blk);
    uint8_t *y = dst;
    for (uint64_t b = 0; b < nblocks; b++, src += blk, y += bb) {
        switch (type) {
        case MT_Q4_0: make_q4_0_q5_0(4, src, y); break;
        case MT_Q5_0: make_q4_0_q5_0(5, src, y); break;
        case MT_Q4_1: make_q4_1_q5_1(4, src, y); break;
        case MT_Q5_1: make_q4_1_q5_1(5, src, y); break;
        case MT_Q8_0: make_q8_0(src, y); break;
        case MT_Q2_K: make_q2_k(src, y); break;
        case MT_Q3_K: make_q3_k(src, y); break;
        case MT_Q4_K: make_q45_k(4, src, y); break;
        case MT_Q5_K: make_q45_k(5, src, y); break;
        case MT_Q6_K: make_q6_k(src, y); break;
        default: return 0;
        }
    }
    return (size_t)nblocks * bb;
}
