/* test_rng.c -- the xoshiro256** / splitmix64 generator (sampler/rng.c). */
#include "sampler/sampler.h"

#include <criterion/criterion.h>

Test(rng, splitmix64_seeding_matches_published_values)
{
    /* splitmix64 from seed 0 yields 0xe220a8397b1dcdaf first (Vigna's reference
     * splitmix64.c); our state word 0 is exactly that output. */
    sampler_rng r;
    sampler_rng_seed(&r, 0);
    cr_assert_eq(r.s[0], 0xe220a8397b1dcdafull);
    cr_assert_eq(r.s[1], 0x6e789e6aa1b965f4ull);
}

Test(rng, same_seed_same_stream_different_seed_differs)
{
    sampler_rng a, b, c;
    sampler_rng_seed(&a, 42);
    sampler_rng_seed(&b, 42);
    sampler_rng_seed(&c, 43);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = sampler_rng_next(&a);
        cr_assert_eq(x, sampler_rng_next(&b));
        same_c += x == sampler_rng_next(&c);
    }
    cr_assert_eq(same_c, 0);
}

Test(rng, xoshiro256starstar_reference_outputs)
{
    /* From state {1, 2, 3, 4} the reference xoshiro256** (Blackman & Vigna) yields
     * 11520, 0, 1509978240, 1215971899390074240.  Exact. */
    sampler_rng r = { { 1, 2, 3, 4 } };
    cr_assert_eq(sampler_rng_next(&r), 11520ull);
    cr_assert_eq(sampler_rng_next(&r), 0ull);
    cr_assert_eq(sampler_rng_next(&r), 1509978240ull);
    cr_assert_eq(sampler_rng_next(&r), 1215971899390074240ull);
}

Test(rng, uniform_in_unit_interval_with_24_bits_and_fair_mean)
{
    sampler_rng r;
    sampler_rng_seed(&r, 7);
    double s = 0;
    enum { N = 200000 };
    for (int i = 0; i < N; i++) {
        float u = sampler_rng_uniform(&r);
        cr_assert(u >= 0.0f && u < 1.0f);
        float scaled = u * 16777216.0f;
        cr_assert_eq(scaled, (float)(uint32_t)scaled); /* a multiple of 2^-24 */
        s += u;
    }
    /* mean of U[0,1): sd of the mean = sqrt(1/12/N) ~ 6.5e-4; 5 sd tolerance */
    cr_assert_float_eq(s / N, 0.5, 3.3e-3);
}
