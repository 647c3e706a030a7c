/* test_train.c -- the optimizer, the schedule, the data split, and whole
 * training runs: loss falls, runs are deterministic, resume is bit-identical,
 * checkpoints round-trip and hostile files are refused. */
#include <criterion/criterion.h>

#include "train/train_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const train_shape tiny = { .dim = 32,
                                  .n_layers = 2,
                                  .n_heads = 4,
                                  .n_kv_heads = 2,
                                  .hidden_dim = 64,
                                  .ctx_len = 32,
                                  .vocab_size = TRAIN_VOCAB,
                                  .tied = 1,
                                  .rope_theta = 10000.0f,
                                  .norm_eps = 1e-5f };

static char tmpdir[64];
static void mk_tmp(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lmserve-train-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}
static void rm_tmp(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_expect_eq(system(cmd), 0);
}
static const char *tpath(const char *name)
{
    static char buf[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

/* A small repetitive English text: a handful of sentences in a fixed cycle. */
static unsigned char *repetitive_text(size_t *len)
{
    static const char *const s[] = {
        "In the beginning was the word. ",
        "The quick brown fox jumps over the lazy dog. ",
        "And the evening and the morning were the first day.\n",
        "Let there be light. ",
    };
    size_t cap = 24000, n = 0;
    unsigned char *t = malloc(cap);
    for (int i = 0; n < cap - 64; i++) {
        const char *p = s[i % 4];
        size_t m = strlen(p);
        memcpy(t + n, p, m);
        n += m;
    }
    *len = n;
    return t;
}

static void tiny_opts(train_opts *o, int steps)
{
    train_opts_default(o);
    o->shape = tiny;
    o->steps = steps;
    o->batch = 4;
    o->lr = 3e-3f;
    o->min_lr = 3e-4f;
    o->warmup = 5;
    o->n_threads = 2;
    o->val_frac = 0.1f;
    o->eval_every = 0;
    o->eval_tokens = 512;
    o->seed = 99;
    o->progress = 0;
}

/* ---- AdamW and the schedule ------------------------------------------------------ */

Test(adamw, two_steps_by_hand)
{
    train_net *n;
    cr_assert_eq(train_net_new(&n, &tiny, 1), 0);
    const train_tensor *wq = train_net_find(n, "blk.0.attn_q.weight");
    const train_tensor *nrm = train_net_find(n, "blk.0.attn_norm.weight");
    cr_assert(wq && nrm && wq->decay && !nrm->decay);
    float *w = n->w + wq->offset, *g = n->g + wq->offset, *wn = n->w + nrm->offset, *gn = n->g + nrm->offset;
    memset(n->g, 0, sizeof(float) * n->n_params);
    w[0] = 0.5f;
    g[0] = 0.2f;
    wn[0] = 1.0f;
    gn[0] = -0.4f;
    const double lr = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    adamw_update(n, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, 1);
    /* step 1: m = 0.1 g, v = 0.05 g^2, bias-corrected m/sqrt(v) = sign(g) */
    double w1 = 0.5 - lr * (0.2 / (0.2 + eps) + wd * 0.5);
    double n1 = 1.0 - lr * (-0.4 / (0.4 + eps));
    cr_expect_float_eq(w[0], (float)w1, 1e-6, "decayed weight %.9g vs %.9g", w[0], w1);
    cr_expect_float_eq(wn[0], (float)n1, 1e-6, "norm weight (no decay) %.9g vs %.9g", wn[0], n1);
    cr_expect_float_eq(n->m[wq->offset], 0.02f, 1e-8);
    cr_expect_float_eq(n->v[wq->offset], 0.002f, 1e-9);
    /* step 2 with g = -0.1 */
    g[0] = -0.1f;
    adamw_update(n, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, 2);
    double m2 = 0.9 * 0.02 + 0.1 * -0.1, v2 = 0.95 * 0.002 + 0.05 * 0.01;
    double mh = m2 / (1 - 0.81), vh = v2 / (1 - 0.9025);
    double w2 = w1 - lr * (mh / (sqrt(vh) + eps) + wd * w1);
    cr_expect_float_eq(w[0], (float)w2, 1e-6, "step 2: %.9g vs %.9g", w[0], w2);
    /* untouched parameters (zero gradient, zero moments) only decay */
    float before = n->w[wq->offset + 1];
    cr_expect_float_eq(w[1], before, 0);
    train_net_free(n);
}

Test(adamw, schedule)
{
    cr_expect_float_eq(train_lr_at(0, 100, 10, 1.0f, 0.1f), 0.1f, 1e-7);
    cr_expect_float_eq(train_lr_at(9, 100, 10, 1.0f, 0.1f), 1.0f, 1e-7);
    cr_expect_float_eq(train_lr_at(10, 100, 10, 1.0f, 0.1f), 1.0f, 1e-6); /* cosine starts at the peak */
    cr_expect_float_eq(train_lr_at(99, 100, 10, 1.0f, 0.1f), 0.1f, 1e-6); /* ... and ends at min_lr */
    float mid = train_lr_at(10 + 89 / 2, 100, 10, 1.0f, 0.1f);
    cr_expect(fabsf(mid - 0.55f) < 0.02f, "midpoint %g", mid);
}

Test(adamw, grad_norm_and_clip_value)
{
    train_net *n;
    cr_assert_eq(train_net_new(&n, &tiny, 1), 0);
    memset(n->g, 0, sizeof(float) * n->n_params);
    n->g[0] = 3.0f;
    n->g[n->n_params - 1] = 4.0f;
    cr_expect_float_eq(train_grad_norm(n), 5.0, 1e-12);
    train_net_free(n);
}

/* ---- Data -------------------------------------------------------------------------- */

Test(data, split_and_windows)
{
    size_t len = 8192 * 10 + 100;
    unsigned char *t = malloc(len);
    for (size_t i = 0; i < len; i++) t[i] = (unsigned char)(i * 7 + (i >> 13));
    train_data d;
    cr_assert_eq(train_data_split(&d, t, len, 0.1f), 0);
    /* k = 10: chunk 9 (bytes 73728..81919) is held out, everything else trains */
    cr_expect_eq(d.n_val, 8192);
    cr_expect_eq(d.n_train, len - 8192);
    cr_expect_eq(memcmp(d.val, t + 9 * 8192, 8192), 0);
    cr_expect_eq(memcmp(d.train + 9 * 8192, t + 10 * 8192, 100), 0);
    int32_t tok[5], tgt[5];
    train_data_window(d.train, d.n_train, 3, 5, tok, tgt);
    cr_expect_eq(tok[0], TRAIN_BOS);
    for (int i = 1; i < 5; i++) cr_expect_eq(tok[i], TRAIN_BYTE0 + t[3 + i - 1]);
    for (int i = 0; i < 5; i++) cr_expect_eq(tgt[i], TRAIN_BYTE0 + t[3 + i]);
    train_data_free(&d);
    cr_expect_eq(train_data_split(&d, t, len, 1.5f), TRAIN_EINVAL);
    free(t);
}

/* ---- Whole runs ---------------------------------------------------------------------- */

static train_net *load_ok(const char *path)
{
    train_net *n = NULL;
    char err[256] = "";
    int rc = train_net_load(&n, path, err, sizeof err);
    cr_assert_eq(rc, 0, "load %s: %s", path, err);
    return n;
}

Test(run, loss_falls_well_below_uniform, .init = mk_tmp, .fini = rm_tmp)
{
    size_t len;
    unsigned char *text = repetitive_text(&len);
    train_opts o;
    tiny_opts(&o, 250);
    o.batch = 8;
    o.lr = 1e-2f;
    o.min_lr = 1e-3f;
    o.out_path = tpath("m.gguf");
    train_result r;
    char err[256] = "";
    cr_assert_eq(train_run(&o, text, len, &r, err, sizeof err), 0, "%s", err);
    double uniform_bpb = log2(259.0); /* 8.02 */
    cr_expect_eq(r.steps_done, 250);
    /* the text is 4 sentences in a cycle: after 250 small steps (64k tokens)
     * the held-out loss must be a small fraction of the uniform loss (measured:
     * about 0.45 bpb; the first bytes after BOS stay uncertain) */
    cr_expect(r.val_bpb < 0.15 * uniform_bpb, "val %.3f bpb vs uniform %.3f", r.val_bpb, uniform_bpb);
    cr_expect(r.train_bpb < 0.25 * uniform_bpb, "train %.3f bpb", r.train_bpb);
    /* the written model continues a sentence it has seen */
    train_net *n = load_ok(o.out_path);
    char out[64];
    cr_expect_eq(train_generate(n, "The quick brown fox jumps over the l", 8, 0.0f, 1, out, sizeof out), 8);
    cr_expect_str_eq(out, "azy dog.");
    train_net_free(n);
    free(text);
}

static int same_state(const train_net *a, const train_net *b)
{
    return a->n_params == b->n_params && a->step == b->step && a->rng == b->rng &&
           !memcmp(a->w, b->w, sizeof(float) * a->n_params) && !memcmp(a->m, b->m, sizeof(float) * a->n_params) &&
           !memcmp(a->v, b->v, sizeof(float) * a->n_params);
}

Test(run, deterministic_for_seed_and_threads, .init = mk_tmp, .fini = rm_tmp)
{
    size_t len;
    unsigned char *text = repetitive_text(&len);
    train_opts o;
    char err[256];
    tiny_opts(&o, 12);
    o.ckpt_path = tpath("a.gguf");
    cr_assert_eq(train_run(&o, text, len, NULL, err, sizeof err), 0, "%s", err);
    o.ckpt_path = tpath("b.gguf");
    cr_assert_eq(train_run(&o, text, len, NULL, err, sizeof err), 0, "%s", err);
    o.seed = 100;
    o.ckpt_path = tpath("c.gguf");
    cr_assert_eq(train_run(&o, text, len, NULL, err, sizeof err), 0, "%s", err);
    train_net *a = load_ok(tpath("a.gguf")), *b = load_ok(tpath("b.gguf")), *c = load_ok(tpath("c.gguf"));
    cr_expect_eq(a->step, 12);
    cr_expect(same_state(a, b), "two runs with one seed differ");
    cr_expect(!same_state(a, c), "a different seed gave the same weights");
    train_net_free(a);
    train_net_free(b);
    train_net_free(c);
    free(text);
}

Test(run, resume_is_bit_identical, .init = mk_tmp, .fini = rm_tmp)
{
    size_t len;
    unsigned char *text = repetitive_text(&len);
    train_opts o;
    char err[256];
    tiny_opts(&o, 16);
    o.ckpt_path = tpath("straight.gguf");
    cr_assert_eq(train_run(&o, text, len, NULL, err, sizeof err), 0, "%s", err);
    o.ckpt_path = tpath("half.gguf");
    o.stop_at = 8;
    cr_assert_eq(train_run(&o, text, len, NULL, err, sizeof err), 0, "%s", err);
    o.stop_at = 0;
    o.resume_path = tpath("half.gguf");
    o.ckpt_path = tpath("resumed.gguf");
    o.seed = 12345; /* ignored on resume: the RNG state comes from the checkpoint */
    cr_assert_eq(train_run(&o, text, len, NULL, err, sizeof err), 0, "%s", err);
    train_net *s = load_ok(tpath("straight.gguf")), *h = load_ok(tpath("half.gguf")),
              *r = load_ok(tpath("resumed.gguf"));
    cr_expect_eq(h->step, 8);
    cr_expect_eq(r->step, 16);
    cr_expect(same_state(s, r), "16 steps straight != 8 + resume + 8");
    cr_expect(!same_state(s, h));
    train_net_free(s);
    train_net_free(h);
    train_net_free(r);
    free(text);
}

/* ---- Files ---------------------------------------------------------------------------- */

Test(ckpt, roundtrip_f32_and_f16, .init = mk_tmp, .fini = rm_tmp)
{
    train_shape s = tiny;
    s.tied = 0;
    train_net *n;
    char err[256];
    cr_assert_eq(train_net_new(&n, &s, 5), 0);
    for (size_t i = 0; i < n->n_params; i++) {
        n->m[i] = 1e-3f * (float)i;
        n->v[i] = 2e-6f * (float)i;
    }
    n->step = 77;
    n->rng = 0x0123456789ABCDEFull;
    cr_assert_eq(train_net_save(n, tpath("f32.gguf"), 0, 1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(train_net_save(n, tpath("f16.gguf"), 1, 0, err, sizeof err), 0, "%s", err);
    train_net *a = load_ok(tpath("f32.gguf")), *b = load_ok(tpath("f16.gguf"));
    cr_expect(same_state(n, a), "F32 checkpoint does not round-trip");
    cr_expect_eq(a->shape.tied, 0);
    cr_expect_eq(a->shape.n_kv_heads, 2);
    cr_expect_eq(b->step, 0); /* no training state in the exported model */
    size_t worst = 0;
    double werr = 0;
    for (size_t i = 0; i < n->n_params; i++) {
        double e = fabs((double)b->w[i] - n->w[i]) / (fabs(n->w[i]) + 1e-4);
        if (e > werr) {
            werr = e;
            worst = i;
        }
    }
    /* F16 keeps 11 significant bits: relative error <= 2^-11 (plus subnormals near 1e-4) */
    cr_expect(werr < 1.0 / 2048 + 1e-3, "F16 relative error %g at %zu", werr, worst);
    /* F16 file is about half the F32 weights, without the moments */
    FILE *f = fopen(tpath("f16.gguf"), "rb");
    fseek(f, 0, SEEK_END);
    long sz16 = ftell(f);
    fclose(f);
    cr_expect(sz16 < (long)(n->n_params * 2 + 16384), "F16 file %ld bytes", sz16);
    train_net_free(a);
    train_net_free(b);
    train_net_free(n);
}

Test(ckpt, hostile_files_are_refused, .init = mk_tmp, .fini = rm_tmp)
{
    train_net *n, *x = NULL;
    char err[256];
    cr_assert_eq(train_net_new(&n, &tiny, 5), 0);
    cr_assert_eq(train_net_save(n, tpath("ok.gguf"), 0, 1, err, sizeof err), 0);
    FILE *f = fopen(tpath("ok.gguf"), "rb");
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(sz);
    cr_assert_eq(fread(buf, 1, sz, f), (size_t)sz);
    fclose(f);
    /* every truncation is refused without crashing */
    long cuts[] = { 0, 3, 10, 24, 100, 1000, sz / 2, sz - 1 };
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        f = fopen(tpath("cut.gguf"), "wb");
        fwrite(buf, 1, cuts[i], f);
        fclose(f);
        int rc = train_net_load(&x, tpath("cut.gguf"), err, sizeof err);
        cr_expect_lt(rc, 0, "truncated at %ld accepted", cuts[i]);
        cr_expect_null(x);
    }
    /* a huge string length in the first key */
    unsigned char *bad = malloc(sz);
    memcpy(bad, buf, sz);
    memset(bad + 24, 0xFF, 8);
    f = fopen(tpath("bad.gguf"), "wb");
    fwrite(bad, 1, sz, f);
    fclose(f);
    cr_expect_eq(train_net_load(&x, tpath("bad.gguf"), err, sizeof err), TRAIN_EFORMAT);
    cr_expect_eq(train_net_load(&x, tpath("missing.gguf"), err, sizeof err), TRAIN_EIO);
    free(bad);
    free(buf);
    train_net_free(n);
}

Test(shape, checks)
{
    char err[128];
    train_shape s = tiny;
    cr_expect_eq(train_shape_check(&s, err, sizeof err), 0);
    s.dim = 30;
    cr_expect_eq(train_shape_check(&s, err, sizeof err), TRAIN_EINVAL);
    s = tiny;
    s.n_kv_heads = 3;
    cr_expect_eq(train_shape_check(&s, err, sizeof err), TRAIN_EINVAL);
    s = tiny;
    s.n_heads = 32; /* head size 1 is odd: RoPE needs pairs */
    cr_expect_eq(train_shape_check(&s, err, sizeof err), TRAIN_EINVAL);
    s = tiny;
    s.ctx_len = 1;
    cr_expect_eq(train_shape_check(&s, err, sizeof err), TRAIN_EINVAL);
}
