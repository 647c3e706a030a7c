/* test_forward.c -- model_forward against a slow double-precision reference.
 *
 * Models are built in memory with seeded random weights (tests/model/fixture.h);
 * no loader is involved.  Tolerances (max |logit - reference| over all
 * positions and vocab, relative to the largest |reference logit|):
 *   F32, F16, BF16 weights vs the reference on the same stored values: 1e-4
 *   Q8_0 weights vs that reference (activations are quantized too): 3e-2
 *   F16 / BF16 / Q8_0 copies vs the F32 model: 5e-3 / 2e-2 / 5e-2
 */
#include <criterion/criterion.h>

#include "tests/model/fixture.h"

static const fx_shape SHAPE = { .dim = 64,
                                .hidden = 172,
                                .layers = 3,
                                .heads = 8,
                                .kv_heads = 4,
                                .vocab = 96,
                                .ctx = 200,
                                .theta = 10000.0f,
                                .eps = 1e-5f };

/* Prefill all n tokens with all_logits; compare every position with the reference. */
static double prefill_err(fx_model *f, const int32_t *toks, int n, double *scale_out)
{
    int V = f->sh.vocab;
    float *lg = malloc((size_t)n * V * sizeof(float));
    double *ref = malloc((size_t)n * V * sizeof(double));
    model_seq *s = model_seq_new(&f->m, 0);
    model_batch_item it = { .seq = s, .tokens = toks, .n_tokens = n, .logits = lg, .all_logits = 1 };
    cr_assert_eq(model_forward(&f->m, &it, 1), 0);
    cr_assert_eq(model_seq_len(s), n);
    cr_assert_eq(memcmp(model_seq_tokens(s), toks, (size_t)n * 4), 0);
    fx_reference(f, toks, n, ref);
    double scale, err = fx_max_err(lg, ref, (size_t)n * V, &scale);
    if (scale_out) *scale_out = scale;
    model_seq_free(s);
    free(lg);
    free(ref);
    return err / fmax(scale, 1.0);
}

Test(forward, f32_prefill_matches_reference)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 11, 2);
    int32_t toks[40];
    fx_tokens(toks, 40, SHAPE.vocab, 5);
    double scale;
    double err = prefill_err(f, toks, 40, &scale);
    cr_log_info("f32 prefill: relative max err %g, logit scale %g", err, scale);
    cr_assert(scale > 0.5, "logit scale %g is degenerate", scale);
    cr_assert(err < 1e-4, "relative max err %g", err);
    fx_model_free(f);
}

Test(forward, decode_step_by_step_matches_reference)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 12, 2);
    int n = 30, V = SHAPE.vocab;
    int32_t toks[30];
    fx_tokens(toks, n, V, 6);
    double *ref = malloc((size_t)n * V * sizeof(double));
    fx_reference(f, toks, n, ref);
    model_seq *s = model_seq_new(&f->m, 0);
    float lg[96];
    double worst = 0;
    /* a 7-token prefill, then one token at a time */
    model_batch_item it = { .seq = s, .tokens = toks, .n_tokens = 7, .logits = lg };
    cr_assert_eq(model_forward(&f->m, &it, 1), 0);
    double sc;
    worst = fmax(worst, fx_max_err(lg, ref + 6 * V, V, &sc) / fmax(sc, 1));
    for (int p = 7; p < n; p++) {
        it = (model_batch_item){ .seq = s, .tokens = toks + p, .n_tokens = 1, .logits = lg };
        cr_assert_eq(model_forward(&f->m, &it, 1), 0);
        worst = fmax(worst, fx_max_err(lg, ref + (size_t)p * V, V, &sc) / fmax(sc, 1));
    }
    cr_log_info("decode: relative max err %g", worst);
    cr_assert(worst < 1e-4, "relative max err %g", worst);
    model_seq_free(s);
    free(ref);
    fx_model_free(f);
}

Test(forward, rope_variants_and_mha_and_tied)
{
    fx_shape a = SHAPE;
    a.neox = 1;
    a.rope_dim = 4; /* head_dim 8: half the dims rotate */
    a.theta = 500000.0f;
    fx_model *f = fx_model_new(&a, MT_F32, 13, 1);
    int32_t toks[25];
    fx_tokens(toks, 25, a.vocab, 7);
    double err = prefill_err(f, toks, 25, NULL);
    cr_assert(err < 1e-4, "neox/partial rope: relative max err %g", err);
    fx_model_free(f);

    fx_shape b = SHAPE;
    b.kv_heads = 8; /* plain multi-head */
    b.tied = 1;
    b.layers = 2;
    f = fx_model_new(&b, MT_F32, 14, 2);
    err = prefill_err(f, toks, 25, NULL);
    cr_assert(err < 1e-4, "mha/tied: relative max err %g", err);
    fx_model_free(f);

    fx_shape c = SHAPE;
    c.kv_heads = 1; /* multi-query */
    f = fx_model_new(&c, MT_F32, 15, 2);
    err = prefill_err(f, toks, 25, NULL);
    cr_assert(err < 1e-4, "mqa: relative max err %g", err);
    fx_model_free(f);
}

Test(forward, half_and_q8_types_match_reference)
{
    fx_shape sh = SHAPE;
    sh.hidden = 160; /* Q8_0 needs every cols % 32 == 0 */
    int32_t toks[33];
    fx_tokens(toks, 33, sh.vocab, 8);
    const int types[] = { MT_F16, MT_BF16, MT_Q8_0 };
    /* F16 / BF16 matrices multiply activations rounded to half / bfloat16 (as ggml does:
     * relative error up to 2^-11 / 2^-8 per activation), which the double reference
     * does not */
    const double tol[] = { 3e-3, 3e-2, 3e-2 };
    for (int i = 0; i < 3; i++) {
        fx_model *f = fx_model_new(&sh, types[i], 21, 2);
        double err = prefill_err(f, toks, 33, NULL);
        cr_log_info("type %d vs reference: %g", types[i], err);
        cr_assert(err < tol[i], "type %d: relative max err %g (tol %g)", types[i], err, tol[i]);
        fx_model_free(f);
    }
}

Test(forward, half_and_q8_copies_close_to_f32)
{
    fx_shape sh = SHAPE;
    sh.hidden = 160;
    int n = 24, V = sh.vocab;
    int32_t toks[24];
    fx_tokens(toks, n, V, 9);
    float *base = malloc((size_t)n * V * 4), *lg = malloc((size_t)n * V * 4);
    const int types[] = { MT_F32, MT_F16, MT_BF16, MT_Q8_0 };
    const double tol[] = { 0, 5e-3, 2e-2, 5e-2 };
    for (int i = 0; i < 4; i++) {
        fx_model *f = fx_model_new(&sh, types[i], 22, 2);
        model_seq *s = model_seq_new(&f->m, 0);
        model_batch_item it = { .seq = s, .tokens = toks, .n_tokens = n, .logits = i ? lg : base, .all_logits = 1 };
        cr_assert_eq(model_forward(&f->m, &it, 1), 0);
        if (i) {
            double e = 0, sc = 0;
            for (int j = 0; j < n * V; j++) {
                e = fmax(e, fabs(lg[j] - base[j]));
                sc = fmax(sc, fabs(base[j]));
            }
            cr_log_info("type %d vs F32: %g", types[i], e / fmax(sc, 1));
            cr_assert(e / fmax(sc, 1) < tol[i], "type %d vs F32: %g (tol %g)", types[i], e / fmax(sc, 1), tol[i]);
            cr_assert(e > 0, "type %d gave exactly the F32 logits: conversion not applied?", types[i]);
        }
        model_seq_free(s);
        fx_model_free(f);
    }
    free(base);
    free(lg);
}

Test(forward, seq_eval_reuses_prefix_and_truncates)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 31, 2);
    int V = SHAPE.vocab;
    int32_t a[50], b[50];
    fx_tokens(a, 50, V, 10);
    memcpy(b, a, sizeof a);
    b[20] = (a[20] + 1) % V; /* diverges at 20 */
    float l1[96], l2[96];
    model_seq *s = model_seq_new(&f->m, 0), *fresh = model_seq_new(&f->m, 0);

    cr_assert_eq(model_seq_eval(&f->m, s, a, 30, l1), 0);
    cr_assert_eq(model_seq_len(s), 30);
    /* extend: only 20 new positions computed, bit-identical to a fresh evaluation */
    cr_assert_eq(model_seq_eval(&f->m, s, a, 50, l1), 0);
    cr_assert_eq(model_seq_eval(&f->m, fresh, a, 50, l2), 0);
    cr_assert_eq(memcmp(l1, l2, sizeof l1), 0);
    /* same context again: the last position is recomputed, same logits */
    cr_assert_eq(model_seq_eval(&f->m, s, a, 50, l2), 0);
    cr_assert_eq(memcmp(l1, l2, sizeof l1), 0);
    cr_assert_eq(model_seq_len(s), 50);
    /* divergent context: truncated to the common prefix, then recomputed */
    cr_assert_eq(model_seq_eval(&f->m, s, b, 40, l1), 0);
    cr_assert_eq(model_seq_len(s), 40);
    cr_assert_eq(memcmp(model_seq_tokens(s), b, 40 * 4), 0);
    model_seq_truncate(fresh, 0);
    cr_assert_eq(model_seq_eval(&f->m, fresh, b, 40, l2), 0);
    cr_assert_eq(memcmp(l1, l2, sizeof l1), 0);
    /* shorter prefix of what is cached */
    cr_assert_eq(model_seq_eval(&f->m, s, b, 10, l1), 0);
    cr_assert_eq(model_seq_len(s), 10);
    double *ref = malloc((size_t)10 * V * sizeof(double)), sc;
    fx_reference(f, b, 10, ref);
    cr_assert(fx_max_err(l1, ref + 9 * V, V, &sc) / fmax(sc, 1) < 1e-4);
    free(ref);
    model_seq_free(s);
    model_seq_free(fresh);
    fx_model_free(f);
}

Test(forward, errors_leave_sequences_unchanged)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 41, 2);
    model_seq *s = model_seq_new(&f->m, 16), *t = model_seq_new(&f->m, 0);
    cr_assert_eq(model_seq_capacity(s), 16);
    cr_assert_eq(model_seq_capacity(t), SHAPE.ctx);
    int32_t toks[20];
    fx_tokens(toks, 20, SHAPE.vocab, 11);
    float lg[96];
    model_batch_item it[2] = { { .seq = s, .tokens = toks, .n_tokens = 10, .logits = lg },
                               { .seq = t, .tokens = toks, .n_tokens = 3, .logits = NULL } };
    cr_assert_eq(model_forward(&f->m, it, 2), 0);
    cr_assert_eq(model_seq_len(s), 10);
    cr_assert_eq(model_seq_len(t), 3);
    /* over capacity (10 + 7 > 16): ERANGE, nothing appended to either */
    it[0].n_tokens = 7;
    cr_assert_eq(model_forward(&f->m, it, 2), MODEL_ERANGE);
    cr_assert_eq(model_seq_len(s), 10);
    cr_assert_eq(model_seq_len(t), 3);
    /* bad token id */
    int32_t bad[2] = { 3, SHAPE.vocab };
    it[0] = (model_batch_item){ .seq = s, .tokens = bad, .n_tokens = 2, .logits = lg };
    cr_assert_eq(model_forward(&f->m, it, 2), MODEL_EINVAL);
    bad[1] = -1;
    cr_assert_eq(model_forward(&f->m, it, 2), MODEL_EINVAL);
    /* the same sequence twice in one batch */
    it[1] = it[0];
    bad[1] = 4;
    cr_assert_eq(model_forward(&f->m, it, 2), MODEL_EINVAL);
    cr_assert_eq(model_forward(&f->m, it, 0), MODEL_EINVAL);
    it[0].n_tokens = 0;
    cr_assert_eq(model_forward(&f->m, it, 1), MODEL_EINVAL);
    cr_assert_eq(model_seq_len(s), 10);
    cr_assert_eq(model_seq_len(t), 3);
    /* still usable and exact after the errors */
    it[0] = (model_batch_item){ .seq = s, .tokens = toks + 10, .n_tokens = 6, .logits = lg };
    cr_assert_eq(model_forward(&f->m, it, 1), 0);
    double ref[16 * 96], sc;
    fx_reference(f, toks, 16, ref);
    cr_assert(fx_max_err(lg, ref + 15 * 96, 96, &sc) / fmax(sc, 1) < 1e-4);
    cr_assert_eq(model_seq_eval(&f->m, s, toks, 17, lg), MODEL_ERANGE);
    cr_assert_eq(model_seq_len(s), 16);
    model_seq_truncate(s, 0);
    cr_assert_eq(model_seq_len(s), 0);
    model_seq_free(s);
    model_seq_free(t);
    model_seq_free(NULL);
    forward_scratch_free(NULL);
    fx_model_free(f);
}

/* ---- ggml's arithmetic for RMSNorm and RoPE (llama.cpp's ggml-cpu/ops.cpp) ---- */

/* forward_rmsnorm: each square rounded to float, summed in double, the mean rounded
 * to float, scale = 1 / sqrtf(mean + eps), out = x * scale * w -- and on these rows
 * the former arithmetic (squares and scale in double) gives other scales. */
Test(forward, rmsnorm_is_ggmls)
{
    enum { N = 288 };
    uint64_t rng = 3;
    float x[N], w[N], out[N];
    int other = 0;
    for (int trial = 0; trial < 64; trial++) {
        for (int i = 0; i < N; i++) x[i] = (float)(fx_unif(&rng) * (trial + 1)), w[i] = (float)fx_unif(&rng);
        forward_rmsnorm(out, x, w, N, 1e-5f);
        double ss = 0, ssd = 0;
        for (int i = 0; i < N; i++) ss += (double)(x[i] * x[i]), ssd += (double)x[i] * x[i];
        float mean = (float)(ss / N), scale = 1.0f / sqrtf(mean + 1e-5f);
        for (int i = 0; i < N; i++) {
            float want = x[i] * scale * w[i];
            cr_assert(memcmp(&out[i], &want, 4) == 0, "trial %d [%d]: %a, want %a", trial, i, out[i], want);
        }
        other += (float)(1.0 / sqrt(ssd / N + 1e-5)) != scale;
    }
    cr_assert_gt(other, 0);
}

/* The RoPE table: the angle of pair i at position p starts at p and is multiplied by
 * powf(theta, -2 / rope_dim) once per pair, in float, then cosf / sinf -- which
 * differs from the angles computed in double in some entries. */
Test(forward, rope_table_is_ggmls)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 13, 1);
    model_seq *s = model_seq_new(&f->m, 0);
    int32_t tok = 1;
    float lg[96];
    cr_assert_eq(model_seq_eval(&f->m, s, &tok, 1, lg), 0);
    const fwd_scratch *sc = f->m.scratch;
    cr_assert(sc && sc->rope);
    int half = forward_rope_dim(&f->m.info) / 2, other = 0;
    float step = powf(SHAPE.theta, -2.0f / (float)(2 * half));
    for (int p = 0; p < f->m.info.ctx_len; p++) {
        float a = (float)p;
        for (int i = 0; i < half; i++) {
            float c = cosf(a), sn = sinf(a);
            const float *e = sc->rope + ((size_t)p * half + i) * 2;
            cr_assert(memcmp(&e[0], &c, 4) == 0 && memcmp(&e[1], &sn, 4) == 0, "p %d i %d: %a %a, want %a %a", p, i,
                      e[0], e[1], c, sn);
            double ad = p * pow(SHAPE.theta, -2.0 * i / (2.0 * half));
            other += (float)cos(ad) != c || (float)sin(ad) != sn;
            a *= step;
        }
    }
    cr_assert_gt(other, 0);
    model_seq_free(s);
    fx_model_free(f);
}
