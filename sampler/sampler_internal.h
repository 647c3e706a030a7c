/* sampler_internal.h -- shared between the sampler's own sources; never included elsewhere.
 *
 * The warpers that need working memory come in two forms: the public one
 * (allocates, may return SAMPLER_ENOMEM) and a sampler__ one taking caller
 * scratch, which the per-token pipeline uses so a step never allocates.
 * sampler__choose is the single "warp + draw" used by both sampler_generate
 * and sampler_step, so the two can never drift apart.
 */
#ifndef LMSERVE_SAMPLER_INTERNAL_H
#define LMSERVE_SAMPLER_INTERNAL_H

#include "sampler/sampler.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Order-preserving map float -> uint32: a > b (as numbers) iff key(a) > key(b).
 * -0 maps like +0 (they compare equal), NaN maps to 0, below -INFINITY. */
static inline uint32_t sampler__key(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    b = b == 0x80000000u ? 0u : b;                   /* -0 -> +0 */
    uint32_t neg = -(b >> 31);                       /* all ones for negatives */
    uint32_t k = b ^ (neg | 0x80000000u);            /* negatives: ~b; others: set top bit */
    return (b & 0x7fffffffu) > 0x7f800000u ? 0u : k; /* NaN -> 0 */
}

/* Offer (key k, value v) to a running top n kept in bkey/best[0..nb), largest key
 * first and, among equal keys, the earlier offer first; returns the new count.  A small
 * sorted insertion: usually one comparison per offer. */
static inline int sampler__top_offer(uint32_t *bkey, int32_t *best, int nb, int n, uint32_t k, int32_t v)
{
    if (nb == n && (n == 0 || k <= bkey[nb - 1])) return nb; /* not strictly better than the n-th */
    int j = nb < n ? nb++ : nb - 1;
    while (j > 0 && bkey[j - 1] < k) {
        bkey[j] = bkey[j - 1];
        best[j] = best[j - 1];
        j--;
    }
    bkey[j] = k;
    best[j] = v;
    return nb;
}

/* exp(x) in float for x <= 0 (a max-subtracted logit), without a libm call and
 * without branches, so the loops that call it vectorise.  exp(x) = 2^n * exp(r)
 * with n = round(x / ln 2) and |r| <= ln(2)/2 (Cody-Waite: ln 2 split into a
 * short high part and a correction), exp(r) by its degree-7 Taylor polynomial
 * (truncation < 6e-9 relative).  Relative error within a few float ulps (tested
 * against exp() in double).  x < -87 (including -INFINITY) and NaN give exactly 0;
 * x > 0 is outside the domain and gives 1 (never an out-of-range conversion).
 * Plain IEEE float operations only, so every machine gets the same bits (the
 * build is ISO C: no FMA contraction, never -ffast-math).  The selects are bit
 * masks because the compiler will not if-convert floating-point arms. */
static inline float sampler__exp_neg(float x)
{
    uint32_t keep = -(uint32_t)(x >= -87.0f); /* all ones, or 0 for small/NaN */
    uint32_t xb, lo;
    float lim = -87.0f;
    memcpy(&xb, &x, sizeof xb);
    memcpy(&lo, &lim, sizeof lo);
    xb = (xb & keep) | (lo & ~keep);
    float xk;
    memcpy(&xk, &xb, sizeof xk);
    xb &= ~(-(uint32_t)(xk > 0.0f)); /* outside the domain (x > 0): computed as exp(0) */
    float xc;
    memcpy(&xc, &xb, sizeof xc);
    float t = xc * 1.44269504088896341f;
    float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest (1.5 * 2^23 trick) */
    float r = xc - n * 0.693359375f;           /* ln 2 high part: exact product */
    r = r - n * -2.12194440e-4f;               /* ln 2 - 0.693359375 */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = (int32_t)n + 127; /* n in [-126, 0]: a normal scale */
    uint32_t sb = (uint32_t)e << 23;
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    float y = p * scale;
    uint32_t yb;
    memcpy(&yb, &y, sizeof yb);
    yb &= keep;
    memcpy(&y, &yb, sizeof y);
    return y;
}

/* Reductions in a fixed order (8 interleaved double partial sums, then combined
 * in a fixed sequence): deterministic on every machine, and vectorisable. */
double sampler__sum_f(const float *x, int n);
double sampler__sum_d(const double *x, int n);
/* Largest non-NaN value; -INFINITY if there is none (all NaN or -INFINITY). */
float sampler__max(const float *x, int n);

/* Working memory for one sequence's steps (vocab entries each). */
typedef struct {
    int vocab;
    float *work;    /* (vocab) logits being warped */
    float *probs;   /* (vocab) softmax of the survivors */
    double *weight; /* (vocab) selection weights (exp of shifted logits or 1) */
    uint32_t *key;  /* (vocab) selection keys */
    int32_t *count; /* (vocab) per-id counts/marks, all zero between calls */
    int32_t *idx;   /* (vocab) ids of the compacted survivors */
} sampler_scratch;

int sampler__scratch_init(sampler_scratch *sc, int vocab);

/* 1 if ids[0..n) are all token ids in [0, vocab) (ids may be NULL when n == 0). */
int sampler__ids_valid(const int32_t *ids, int n, int vocab);
void sampler__scratch_release(sampler_scratch *sc);

/* Scratch forms of the warpers (same contracts as the public ones). */
int sampler__top_k(const float *logits, float *out, int vocab, int k, uint32_t *key);
int sampler__top_p(const float *logits, float *out, int vocab, float p, uint32_t *key, double *weight);
int sampler__repetition(const float *logits, float *out, int vocab, const int32_t *seen, int n_seen, float penalty,
                        int32_t *marks);
int sampler__presence_frequency(const float *logits, float *out, int vocab, const int32_t *seen, int n_seen,
                                float presence, float frequency, int32_t *counts);

/* The recorder of a traced step (trace.c): a copy of the row each stage left
 * behind, taken by sampler__choose as it goes, reduced to a sampler_trace after
 * the draw.  Rows after a filter are compacted (survivors only) with their ids. */
typedef struct {
    int n; /* N */
    int vocab;
    float *row[SAMPLER_STAGE_COUNT];      /* (vocab) each: the stage's output row */
    int32_t *row_id[SAMPLER_STAGE_COUNT]; /* (vocab) ids of row's entries for stages
                                             * after a compaction, else NULL (entry i is id i) */
    int32_t *id_buf[4];                   /* (vocab) each: storage for row_id */
    int len[SAMPLER_STAGE_COUNT];         /* entries in row; 0 = stage did not run */
    int n_id_bufs;                        /* id_buf entries handed out this step */
    int greedy;
    float coin;
    void *block; /* the one allocation behind row and id_buf */
} sampler_recorder;

int sampler__recorder_init(sampler_recorder *r, int vocab, int n);
void sampler__recorder_release(sampler_recorder *r);
/* Start a step: every stage "did not run". */
void sampler__record_begin(sampler_recorder *r);
/* Stage `stage` left x[0..n) with ids id[0..n) (NULL: entry i is token i). */
void sampler__record(sampler_recorder *r, int stage, const float *x, int n, const int32_t *id);
/* The softmax stage: probabilities sampler__prob(e[i], scale). */
void sampler__record_softmax(sampler_recorder *r, const float *e, double scale, int n, const int32_t *id);
/* Reduce the recorded rows to candidates and their values (sampler.h). */
void sampler__record_finish(const sampler_recorder *r, int32_t token, sampler_trace *out);

/* One token's probability from softmax_scaled's e[i] and scale: the one expression
 * that softmax, the draw and the trace all use, so they agree to the bit. */
static inline float sampler__prob(float e, double scale) { return (float)((double)e * scale); }

/* One step: copy logits into scratch, apply every enabled warper in the documented
 * order, and pick a token (argmax at temperature 0, else one draw from rng).
 * ids[0..n_ids) is the sequence so far, the last n_generated of which were generated.
 * rec: NULL, or a recorder that receives each stage's row (a traced step).
 * SAMPLER_EINVAL if no token can be chosen (every logit -INFINITY or NaN). */
int sampler__choose(const sampler_params *p, sampler_scratch *sc, sampler_rng *rng, const float *logits,
                    const int32_t *ids, int n_ids, int n_generated, sampler_recorder *rec, int32_t *token);

/* softmax and draw without the pass that normalises: e[i] = exp(logits[i] - max) and
 * *scale = 1 / sum e, and the draw takes (float)(e[i] * scale) as token i's
 * probability -- exactly the value sampler_softmax stores -- only for the tokens it
 * walks past.  sampler_softmax and sampler_draw are these two with the pass. */
int sampler__softmax_scaled(const float *logits, float *e, int vocab, double *scale);
int sampler__draw_scaled(const float *e, double scale, int n, float coin);

/* The vocabulary size a constraint was built for. */
int sampler__constraint_vocab(const sampler_constraint *c);
/* Tests: the size of its tables past which a constraint moves to private ones,
 * the size of a cache's tables past which new constraints get new ones, and how
 * many automaton states the constraint's tables hold. */
void sampler__constraint_set_cache_limit(sampler_constraint *c, size_t bytes);
void sampler__constraint_cache_set_limit(sampler_constraint_cache *cc, size_t bytes);
int sampler__constraint_cached_states(const sampler_constraint *c);

#endif /* LMSERVE_SAMPLER_INTERNAL_H */
