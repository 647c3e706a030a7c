/* test_half.c -- model/half.h, the one half / bfloat16 conversion.
 *
 * The portable code is compiled here on purpose (MODEL_HALF_PORTABLE) and
 * checked against properties that do not depend on it: every finite half widens
 * to the value its bits mean (computed with ldexp), narrows back to itself, and
 * the point halfway between two neighbours rounds to the even one.  Where the
 * CPU has F16C (the code path of a -march=native build), the portable results
 * must equal the instructions' for every half and for a sweep of floats. */
#define MODEL_HALF_PORTABLE 1
#include "model/half.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __F16C__
#include <immintrin.h>
#endif

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* What the 16 bits mean, from the IEEE definition. */
static double half_value(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

Test(half, every_finite_half_widens_exactly_and_narrows_back)
{
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31) continue;
        float f = model_f16_to_f32((uint16_t)h);
        cr_assert_eq((double)f, half_value((uint16_t)h), "half 0x%04x", h);
        cr_assert_eq(signbit(f) != 0, (h & 0x8000) != 0, "sign of 0x%04x", h);
        cr_assert_eq(model_f32_to_f16(f), h, "0x%04x -> %a -> back", h, (double)f);
    }
}

Test(half, halfway_between_neighbours_rounds_to_even)
{
    for (uint32_t h = 0; h < 0x7bff; h++) { /* positive finite, each with a finite successor */
        double lo = half_value((uint16_t)h), hi = half_value((uint16_t)(h + 1));
        float mid = (float)((lo + hi) / 2); /* exact: 12 significant bits at most */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        cr_assert_eq(model_f32_to_f16(mid), even, "between 0x%04x and 0x%04x", h, h + 1);
        cr_assert_eq(model_f32_to_f16(-mid), even | 0x8000, "negative, 0x%04x", h);
        /* a hair off the middle goes to the nearer neighbour */
        cr_assert_eq(model_f32_to_f16(nextafterf(mid, 0)), h, "below the middle of 0x%04x", h);
        cr_assert_eq(model_f32_to_f16(nextafterf(mid, INFINITY)), h + 1, "above the middle of 0x%04x", h);
    }
}

Test(half, overflow_infinity_nan_and_underflow)
{
    cr_assert_eq(model_f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(model_f32_to_f16(65519.99f), 0x7bff);
    cr_assert_eq(model_f32_to_f16(65520.0f), 0x7c00, "the tie above the largest half goes up");
    cr_assert_eq(model_f32_to_f16(1e30f), 0x7c00);
    cr_assert_eq(model_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t n = model_f32_to_f16(NAN);
    cr_assert((n & 0x7c00) == 0x7c00 && (n & 0x3ff), "NaN stays NaN: 0x%04x", n);
    cr_assert(isnan(model_f16_to_f32(0x7e00)));
    cr_assert(isinf(model_f16_to_f32(0xfc00)) && model_f16_to_f32(0xfc00) < 0);
    cr_assert_eq(model_f32_to_f16(ldexpf(1, -25)), 0, "half the smallest subnormal: tie to 0");
    cr_assert_eq(model_f32_to_f16(nextafterf(ldexpf(1, -25), 1)), 1);
    cr_assert_eq(model_f32_to_f16(-1e-30f), 0x8000, "underflow keeps the sign");
}

Test(half, bfloat16_is_the_top_half_of_a_float)
{
    for (uint32_t h = 0; h < 65536; h++)
        cr_assert_eq(bits_of(model_bf16_to_f32((uint16_t)h)), h << 16, "bf16 0x%04x", h);
}

#ifdef __F16C__
Test(half, portable_code_equals_the_f16c_instructions)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float a = model_f16_to_f32((uint16_t)h), b = _cvtsh_ss((uint16_t)h);
        cr_assert_eq(bits_of(a), bits_of(b), "widening 0x%04x", h);
    }
    /* every float exponent, sign and NaN, with mantissas spread over the range */
    for (uint64_t u = 0; u < (1ull << 32); u += 65521) {
        float f = float_of((uint32_t)u);
        uint16_t a = model_f32_to_f16(f), b = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
        cr_assert_eq(a, b, "narrowing 0x%08x", (uint32_t)u);
    }
}
#endif
