/* test_seq.c -- sequences (model/compute/seq.c): model_seq_copy, the primitive the
 * server's prefix cache is built on, checked BITWISE (memcmp).
 *
 *   - a sequence that copies another's first n positions and computes the rest goes on
 *     exactly as the original: the same K/V bytes at every position and the same logits
 *     for every later position, although the rest is cut into other chunks (a prefix
 *     taken from a cache moves the chunk boundaries of what is left);
 *   - for F32 and Q8_0 weights, F32 and F16 caches, across the copy's own growth;
 *   - positions the target already holds with the same tokens are kept; a different
 *     tail is replaced; copying 0 clears;
 *   - bad arguments are refused and leave the target as it was;
 *   - model_seq_bytes / model_seq_position_bytes count what a sequence allocated.
 */
#include <criterion/criterion.h>

#include "model/compute/seq.h"
#include "tests/model/fixture.h"

static const fx_shape SHAPE = { .dim = 64,
                                .hidden = 160,
                                .layers = 3,
                                .heads = 8,
                                .kv_heads = 4,
                                .vocab = 96,
                                .ctx = 200,
                                .theta = 10000.0f,
                                .eps = 1e-5f };

#define LEN 150

/* Feed toks[from..to) to s in chunks of `chunk` (the last one shorter), writing the
 * logits of every position p into logits + p * V. */
static void feed(fx_model *f, model_seq *s, const int32_t *toks, int from, int to, int chunk, float *logits)
{
    int V = f->sh.vocab;
    for (int a = from; a < to; a += chunk) {
        int k = to - a < chunk ? to - a : chunk;
        model_batch_item it = {
            .seq = s, .tokens = toks + a, .n_tokens = k, .logits = logits + (size_t)a * V, .all_logits = 1
        };
        cr_assert_eq(model_forward(&f->m, &it, 1), 0);
    }
}

/* Positions [from, to) of a and b hold the same K and V bytes. */
static int same_kv(const model_seq *a, const model_seq *b, int from, int to)
{
    const model_info *in = &a->m->info;
    size_t row = (size_t)in->head_dim * seq_esz(a);
    for (int l = 0; l < in->n_layers; l++)
        for (int h = 0; h < in->n_kv_heads; h++)
            for (int p = from; p < to; p++)
                if (memcmp(seq_k(a, l, h, p), seq_k(b, l, h, p), row) ||
                    memcmp(seq_v(a, l, h, p), seq_v(b, l, h, p), row))
                    return 0;
    return 1;
}

static void check_copy(int type, int kv_f16)
{
    int V = SHAPE.vocab;
    int32_t toks[LEN];
    fx_tokens(toks, LEN, V, 77);
    fx_model *f = fx_model_new(&SHAPE, type, 9, 2);
    cr_assert_eq(model_set_kv_f16(&f->m, kv_f16), 0);
    float *ref = malloc(sizeof(float) * LEN * V), *got = malloc(sizeof(float) * LEN * V);
    cr_assert(ref && got);
    /* the original: every position, in chunks of 64 (the server's default) */
    model_seq *orig = model_seq_new(&f->m, 0);
    feed(f, orig, toks, 0, LEN, 64, ref);
    /* copies of n positions, the rest in chunks that start where the copy ends */
    static const int ns[] = { 0, 1, 37, 63, 64, 65, 128, LEN - 1, LEN };
    static const int chunks[] = { 64, 5, 1 };
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
        for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
            int n = ns[i];
            model_seq *s = model_seq_new(&f->m, 0);
            cr_assert_eq(model_seq_copy(s, orig, n), 0);
            cr_assert_eq(model_seq_len(s), n);
            cr_assert_eq(memcmp(model_seq_tokens(s), toks, sizeof(int32_t) * (size_t)n), 0);
            cr_assert(same_kv(s, orig, 0, n), "copied entries differ (n %d)", n);
            memset(got, 0, sizeof(float) * LEN * V);
            feed(f, s, toks, n, LEN, chunks[c], got);
            cr_assert_eq(memcmp(got + (size_t)n * V, ref + (size_t)n * V, sizeof(float) * (size_t)(LEN - n) * V), 0,
                         "logits after a copy of %d positions, chunks of %d, differ (type %d, kv_f16 %d)", n, chunks[c],
                         type, kv_f16);
            cr_assert(same_kv(s, orig, 0, LEN));
            model_seq_free(s);
        }
    model_seq_free(orig);
    free(ref);
    free(got);
    fx_model_free(f);
}

Test(seq, copy_then_compute_is_bit_identical_f32) { check_copy(MT_F32, 0); }
Test(seq, copy_then_compute_is_bit_identical_q8_0) { check_copy(MT_Q8_0, 0); }
Test(seq, copy_then_compute_is_bit_identical_f16_kv) { check_copy(MT_F32, 1); }

Test(seq, copy_keeps_agreeing_positions_and_replaces_the_rest)
{
    int V = SHAPE.vocab;
    int32_t a[LEN], b[LEN];
    fx_tokens(a, LEN, V, 1);
    memcpy(b, a, sizeof b);
    for (int i = 40; i < LEN; i++) b[i] = (a[i] + 1) % V; /* b agrees with a on 0..39 */
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 3, 1);
    float *la = malloc(sizeof(float) * LEN * V), *lb = malloc(sizeof(float) * LEN * V);
    cr_assert(la && lb);
    model_seq *sa = model_seq_new(&f->m, 0), *sb = model_seq_new(&f->m, 0);
    feed(f, sa, a, 0, LEN, 64, la);
    feed(f, sb, b, 0, 100, 64, lb);
    /* sb holds b[0..100): 40 positions agree with sa; copying 120 of sa replaces the rest */
    cr_assert_eq(model_seq_copy(sb, sa, 120), 0);
    cr_assert_eq(model_seq_len(sb), 120);
    cr_assert_eq(memcmp(model_seq_tokens(sb), a, sizeof(int32_t) * 120), 0);
    cr_assert(same_kv(sb, sa, 0, 120));
    /* a shorter copy truncates; 0 clears */
    cr_assert_eq(model_seq_copy(sb, sa, 30), 0);
    cr_assert_eq(model_seq_len(sb), 30);
    cr_assert(same_kv(sb, sa, 0, 30));
    cr_assert_eq(model_seq_copy(sb, sa, 0), 0);
    cr_assert_eq(model_seq_len(sb), 0);
    model_seq_free(sa);
    model_seq_free(sb);
    free(la);
    free(lb);
    fx_model_free(f);
}

Test(seq, copy_refuses_bad_arguments_and_leaves_the_target)
{
    int V = SHAPE.vocab;
    int32_t a[80];
    fx_tokens(a, 80, V, 5);
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 3, 1), *g = fx_model_new(&SHAPE, MT_F32, 3, 1);
    float *l = malloc(sizeof(float) * 80 * V);
    cr_assert_not_null(l);
    model_seq *src = model_seq_new(&f->m, 0), *dst = model_seq_new(&f->m, 0), *small = model_seq_new(&f->m, 20);
    feed(f, src, a, 0, 80, 64, l);
    feed(f, dst, a, 0, 10, 64, l);
    cr_assert_eq(model_seq_copy(dst, src, 81), MODEL_EINVAL, "more than the source holds");
    cr_assert_eq(model_seq_copy(dst, src, -1), MODEL_EINVAL);
    cr_assert_eq(model_seq_copy(dst, dst, 5), MODEL_EINVAL, "itself");
    cr_assert_eq(model_seq_copy(NULL, src, 5), MODEL_EINVAL);
    cr_assert_eq(model_seq_copy(dst, NULL, 5), MODEL_EINVAL);
    cr_assert_eq(model_seq_copy(small, src, 21), MODEL_ERANGE, "over the target's capacity");
    cr_assert_eq(model_seq_copy(small, src, 20), 0);
    model_seq *other = model_seq_new(&g->m, 0);
    cr_assert_eq(model_seq_copy(other, src, 5), MODEL_EINVAL, "another model");
    cr_assert_eq(model_set_kv_f16(&f->m, 1), 0);
    model_seq *half = model_seq_new(&f->m, 0);
    cr_assert_eq(model_seq_copy(half, src, 5), MODEL_EINVAL, "another KV type");
    cr_assert_eq(model_seq_len(dst), 10, "a refused copy changed the target");
    cr_assert_eq(memcmp(model_seq_tokens(dst), a, sizeof(int32_t) * 10), 0);
    model_seq_free(src), model_seq_free(dst), model_seq_free(small), model_seq_free(other), model_seq_free(half);
    free(l);
    fx_model_free(f);
    fx_model_free(g);
}

Test(seq, bytes_count_what_is_allocated)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 3, 1);
    const model_info *in = &f->m.info;
    size_t per = 2 * (size_t)in->n_layers * in->n_kv_heads * in->head_dim * 4 + 4;
    cr_assert_eq(model_seq_position_bytes(&f->m), per);
    model_seq *s = model_seq_new(&f->m, 0);
    cr_assert_eq(model_seq_bytes(s), 0, "nothing allocated before the first position");
    cr_assert_eq(model_seq_bytes(NULL), 0);
    int32_t t[70];
    fx_tokens(t, 70, SHAPE.vocab, 2);
    model_batch_item it = { .seq = s, .tokens = t, .n_tokens = 70 };
    cr_assert_eq(model_forward(&f->m, &it, 1), 0);
    cr_assert_eq(model_seq_bytes(s), 70 * per, "grown to exactly the first request (over 64)");
    model_seq *c = model_seq_new(&f->m, 0);
    cr_assert_eq(model_seq_copy(c, s, 70), 0);
    cr_assert_eq(model_seq_bytes(c), 128 * per, "a copy gets the capacity growth gives: 64, 128, ...");
    cr_assert_eq(model_seq_copy(c, s, 10), 0);
    cr_assert_eq(model_seq_bytes(c), 128 * per, "a shorter copy keeps the allocation");
    model_seq_free(c);
    cr_assert_eq(model_set_kv_f16(&f->m, 1), 0);
    cr_assert_eq(model_seq_position_bytes(&f->m), 2 * (size_t)in->n_layers * in->n_kv_heads * in->head_dim * 2 + 4);
    model_seq_free(s);
    fx_model_free(f);
}
