/* rng.c -- the per-sequence random number generator.
 *
 * xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number
 * generators", 2018) with its state filled by splitmix64 from one 64-bit
 * seed, as its authors recommend.  Only fixed-width integer arithmetic is
 * used, so a seed gives the same stream on every platform and compiler.
 */
#include "sampler/sampler.h"

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t v, int k) { return (v << k) | (v >> (64 - k)); }

void sampler_rng_seed(sampler_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64_next(&x);
    /* splitmix64 is a bijection of its counter, so four successive outputs are
     * never all zero; the all-zero state (the one xoshiro forbids) cannot occur. */
}

uint64_t sampler_rng_next(sampler_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

float sampler_rng_uniform(sampler_rng *r)
{
    /* The top 24 bits, scaled exactly by 2^-24: every value is a float in [0, 1). */
    return (float)(sampler_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}
