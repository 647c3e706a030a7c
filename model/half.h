/* half.h -- IEEE half (binary16) and bfloat16 <-> single conversions: the one copy
 * every reader, the kernels and the trainer use.
 *
 * model_f16_to_f32 is exact for every input (subnormals and infinities included;
 * a signalling NaN widens to the quiet NaN with its payload), model_bf16_to_f32
 * is a shift.  model_f32_to_f16 rounds to nearest, ties to
 * even (IEEE's default); magnitudes that round to 65520 or more become infinity,
 * NaN stays NaN (quiet, with the top 10 bits of its payload).  This is what the
 * F16C instructions (vcvtph2ps / vcvtps2ph with _MM_FROUND_TO_NEAREST_INT) do, so
 * builds with F16C use them and builds without get the same bits from the
 * portable code below (tests/model/compute/test_half.c compares both, every half
 * and every float class).  Define MODEL_HALF_PORTABLE before including this
 * header to get the portable code on any build.
 *
 * Self-contained (no other model header), so train/ includes it as well.
 */
#ifndef LMSERVE_MODEL_HALF_H
#define LMSERVE_MODEL_HALF_H

#include <stdint.h>
#include <string.h>

#if defined(__F16C__) && !defined(MODEL_HALF_PORTABLE)
#include <immintrin.h>
#define MODEL_HALF_F16C 1
#endif

static inline float model_f16_to_f32(uint16_t h)
{
#ifdef MODEL_HALF_F16C
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) { /* infinity, or NaN (made quiet, payload kept) */
        bits = sign | 0x7f800000u | (man ? 0x400000u : 0) | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: man * 2^-24, exact in single precision */
        float f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline uint16_t model_f32_to_f16(float f)
{
#ifdef MODEL_HALF_F16C
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* infinity, or NaN (kept quiet, payload truncated) */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) {   /* below the smallest normal half 2^-14: subnormal or zero */
        if (ax < 0x33000000u) /* at most half the smallest subnormal: rounds to 0 */
            return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* f = m * 2^(e-150) = (m >> (126 - e)) * 2^-24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t h = (ax >> 13) - (112u << 10); /* rebias 127 -> 15, keep 10 mantissa bits */
    uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into the exponent: still the right rounding */
    return (uint16_t)(sign | h);
#endif
}

/* bfloat16 is the top half of a single: widening is a shift. */
static inline float model_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#endif /* LMSERVE_MODEL_HALF_H */
