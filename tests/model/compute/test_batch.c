/* test_batch.c -- batch independence of model_forward, checked BITWISE (memcmp):
 *
 *   - several sequences at different positions, with prefill chunks of mixed
 *     lengths and single-token decode rows in one call, give exactly the logits
 *     each sequence gets when run alone with the same chunking;
 *   - a prefill chunk gives exactly the logits of feeding its tokens one at a
 *     time (all_logits rows vs step-by-step), and any split into chunks too;
 *   - 1 and 2 threads give the same bits;
 *   - for all four weight types, including across KV-cache growth, and with the
 *     F16 KV cache (model_set_kv_f16).
 * The schedule-independent values are also checked against the double reference
 * (tolerance 1e-4 relative to the logit scale, F32).
 */
#include <criterion/criterion.h>

#include "tests/model/fixture.h"

static const fx_shape SHAPE = { .dim = 64,
                                .hidden = 160,
                                .layers = 3,
                                .heads = 8,
                                .kv_heads = 4,
                                .vocab = 96,
                                .ctx = 160,
                                .theta = 10000.0f,
                                .eps = 1e-5f };

#define NSEQ 6
#define LEN  100

/* Run NSEQ sequences of LEN tokens through a schedule of batched calls and record
 * every position's logits into out[s][p][:].  Step i gives sequence s a chunk of
 * chunk(s, i) tokens (or skips it).  `alone`: each call holds one sequence only. */
static int chunk_of(int s, int step, int mode)
{
    if (mode == 0) return 1; /* token by token */
    static const int pat[] = { 5, 1, 1, 13, 1, 2, 1, 1, 7, 1, 1, 1, 30, 1 };
    int v = pat[(s * 5 + step * 3) % 14];
    if ((s + step) % 4 == 3) return 0; /* sequences join and leave */
    return mode == 2 ? v + 1 : v;
}

static void run_schedule(fx_model *f, const int32_t toks[NSEQ][LEN], float *out, int mode, int alone)
{
    int V = f->sh.vocab;
    model_seq *seqs[NSEQ];
    int pos[NSEQ] = { 0 };
    for (int s = 0; s < NSEQ; s++) seqs[s] = model_seq_new(&f->m, 0);
    for (int step = 0;; step++) {
        model_batch_item items[NSEQ];
        int n = 0;
        for (int s = 0; s < NSEQ; s++) {
            int c = chunk_of(s, step, mode);
            if (c > LEN - pos[s]) c = LEN - pos[s];
            if (c <= 0) continue;
            items[n++] = (model_batch_item){ .seq = seqs[s],
                                             .tokens = toks[s] + pos[s],
                                             .n_tokens = c,
                                             .logits = out + ((size_t)s * LEN + pos[s]) * V,
                                             .all_logits = 1 };
            pos[s] += c;
        }
        int done = 1;
        for (int s = 0; s < NSEQ; s++) done &= pos[s] == LEN;
        if (n == 0 && done) break;
        if (alone) {
            for (int i = 0; i < n; i++) cr_assert_eq(model_forward(&f->m, &items[i], 1), 0);
        } else if (n) {
            cr_assert_eq(model_forward(&f->m, items, n), 0);
        }
    }
    for (int s = 0; s < NSEQ; s++) {
        cr_assert_eq(model_seq_len(seqs[s]), LEN);
        model_seq_free(seqs[s]);
    }
}

static void check_shape(const fx_shape *sh, int type, int kv_f16)
{
    int V = sh->vocab;
    int32_t toks[NSEQ][LEN];
    for (int s = 0; s < NSEQ; s++) fx_tokens(toks[s], LEN, V, 100 + s);
    toks[1][0] = toks[0][0]; /* two sequences sharing a first token */
    size_t n = (size_t)NSEQ * LEN * V;
    float *base = malloc(n * 4), *got = malloc(n * 4);
    fx_model *f1 = fx_model_new(sh, type, 77, 1);
    fx_model *f2 = fx_model_new(sh, type, 77, 2);
    cr_assert_eq(model_set_kv_f16(&f1->m, kv_f16), 0);
    cr_assert_eq(model_set_kv_f16(&f2->m, kv_f16), 0);
    run_schedule(f1, toks, base, 0, 1); /* alone, token by token, 1 thread */
    struct {
        fx_model *f;
        int mode, alone;
        const char *what;
    } runs[] = {
        { f2, 0, 0, "batched token by token, 2 threads" }, { f1, 1, 1, "alone, mixed prefill chunks, 1 thread" },
        { f2, 1, 0, "batched mixed chunks, 2 threads" },   { f1, 2, 0, "batched other chunks, 1 thread" },
        { f2, 2, 1, "alone other chunks, 2 threads" },
    };
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        memset(got, 0xff, n * 4);
        run_schedule(runs[r].f, toks, got, runs[r].mode, runs[r].alone);
        for (int s = 0; s < NSEQ; s++)
            for (int p = 0; p < LEN; p++)
                cr_assert_eq(memcmp(got + ((size_t)s * LEN + p) * V, base + ((size_t)s * LEN + p) * V, (size_t)V * 4),
                             0, "type %d, %s: seq %d pos %d differs", type, runs[r].what, s, p);
    }
    if (type == MT_F32) {
        /* F16 keys and values keep 11 significant bits: the logits move by a few
         * 1e-4 of their scale (measured 3.4e-4 and 4.9e-4 here), against ~1e-7 with F32 */
        double tol = kv_f16 ? 3e-3 : 1e-4;
        double *ref = malloc((size_t)LEN * V * 8), sc;
        for (int s = 0; s < 2; s++) {
            fx_reference(f1, toks[s], LEN, ref);
            double e = fx_max_err(base + (size_t)s * LEN * V, ref, (size_t)LEN * V, &sc);
            cr_assert(e / fmax(sc, 1) < tol, "seq %d vs reference: %g", s, e / fmax(sc, 1));
            if (kv_f16) /* and it is not the F32 cache by another name */
                cr_assert(e / fmax(sc, 1) > 1e-6, "kv_f16 logits match F32 too closely: %g", e / fmax(sc, 1));
        }
        free(ref);
    }
    fx_model_free(f1);
    fx_model_free(f2);
    free(base);
    free(got);
}

static void check_type_kv(int type, int kv_f16) { check_shape(&SHAPE, type, kv_f16); }
static void check_type(int type) { check_type_kv(type, 0); }

Test(batch, f32_bit_identical) { check_type(MT_F32); }
/* the F16 KV cache: bit-identical across schedules and threads too, and within
 * its stated tolerance of the double reference */
Test(batch, f32_weights_f16_kv_bit_identical) { check_type_kv(MT_F32, 1); }
Test(batch, q8_0_weights_f16_kv_bit_identical) { check_type_kv(MT_Q8_0, 1); }
Test(batch, kv_type_rejects_other_values)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 5, 1);
    cr_assert_eq(model_set_kv_f16(&f->m, 2), MODEL_EINVAL);
    cr_assert_eq(model_set_kv_f16(NULL, 1), MODEL_EINVAL);
    fx_model_free(f);
}
/* grouped-query attention with an odd number of kv heads (3, of 2 q heads each): on 2
 * threads the (item, kv head) tasks do not split evenly, so odd batches store the
 * cache first (inline for one row, as a dispatch for more) and then run a task per q
 * head; the bits must not change */
Test(batch, gqa_odd_kv_heads_bit_identical)
{
    fx_shape sh = SHAPE;
    sh.dim = 96;
    sh.heads = 6;
    sh.kv_heads = 3;
    check_shape(&sh, MT_F32, 0);
    check_shape(&sh, MT_Q8_0, 1);
}
/* 8 kv heads of 32 dims on 2 threads: decoding rows take one dispatch for the q, k, v
 * projections and attention (a task per kv head), longer chunks the matmul dispatch
 * then the attention dispatch; the bits must not change */
Test(batch, mha_fused_qkv_attention_bit_identical)
{
    fx_shape sh = SHAPE;
    sh.dim = 256;
    sh.kv_heads = 8;
    check_shape(&sh, MT_F32, 0);
    check_shape(&sh, MT_Q8_0, 0);
}
Test(batch, f16_bit_identical) { check_type(MT_F16); }
Test(batch, bf16_bit_identical) { check_type(MT_BF16); }
Test(batch, q8_0_bit_identical) { check_type(MT_Q8_0); }

/* Only the last row's logits, in a batch with rows whose logits are not wanted. */
Test(batch, last_logits_and_no_logits)
{
    fx_model *f = fx_model_new(&SHAPE, MT_F32, 5, 2);
    int V = SHAPE.vocab;
    int32_t a[20], b[9];
    fx_tokens(a, 20, V, 1);
    fx_tokens(b, 9, V, 2);
    float la[96], all[20 * 96];
    model_seq *s1 = model_seq_new(&f->m, 0), *s2 = model_seq_new(&f->m, 0), *s3 = model_seq_new(&f->m, 0);
    model_batch_item it[2] = { { .seq = s1, .tokens = a, .n_tokens = 20, .logits = la },
                               { .seq = s2, .tokens = b, .n_tokens = 9, .logits = NULL } };
    cr_assert_eq(model_forward(&f->m, it, 2), 0);
    model_batch_item one = { .seq = s3, .tokens = a, .n_tokens = 20, .logits = all, .all_logits = 1 };
    cr_assert_eq(model_forward(&f->m, &one, 1), 0);
    cr_assert_eq(memcmp(la, all + 19 * V, sizeof la), 0);
    cr_assert_eq(model_seq_len(s2), 9);
    model_seq_free(s1), model_seq_free(s2), model_seq_free(s3);
    fx_model_free(f);
}
