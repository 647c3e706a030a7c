/* test_gpt2.c -- the GPT-2 architecture: course artifact folders (model.pt written by
 * tests/tools/write_course_pt.py) and GGUF gpt2 files, against the slow double
 * reference in ref_forward.h.  Tolerance: max |logit - reference| <= 1e-4 * max(1,
 * max |reference|) (float32 accumulation over widths <= 64). */
#include <criterion/criterion.h>

#include "model/formats/formats.h"
#include "model/formats/gguf_write.h"
#include "model/formats/torchzip.h"
#include "tests/model/fmt_util.h"
#include "tests/model/ref_forward.h"

#include <math.h>

static char root[128];
static char mdir[256];

static void mk_course(void)
{
    cr_assert_not_null(fx_tmpdir(root, sizeof root));
    char args[512];
    snprintf(args, sizeof args, "course %s/art tiny --seed 7 --dim 16 --layers 2 --heads 4 --ctx 32 --hidden 40", root);
    cr_assert_eq(fx_pywrite(args), 0);
    snprintf(mdir, sizeof mdir, "%s/art/models/tiny", root);
}
static void rm_course(void) { fx_rmtree(root); }

/* ---- Reference from model.pt, read independently of the loader ---- */

static double *tz_d(const tz_value *ps, size_t i)
{
    const tz_tensor *t = &ps->items[i]->t;
    double *d = malloc((size_t)t->numel * sizeof *d);
    tz_tensor_to_f64(t, d);
    return d;
}

static double *tz_dT(const tz_value *ps, size_t i) /* (in, out) -> (out, in) */
{
    const tz_tensor *t = &ps->items[i]->t;
    int in = (int)t->shape[0], out = (int)t->shape[1];
    double *s = tz_d(ps, i), *d = malloc((size_t)in * out * sizeof *d);
    for (int a = 0; a < in; a++)
        for (int b = 0; b < out; b++) d[(size_t)b * in + a] = s[(size_t)a * out + b];
    free(s);
    return d;
}

static void ref_from_course(ref_model *r, const char *dir)
{
    char p[512], err[256];
    snprintf(p, sizeof p, "%s/model.pt", dir);
    tz_file *f;
    cr_assert_eq(tz_open(&f, p, err, sizeof err), 0, "%s", err);
    const tz_value *ps = tz_dict_get(tz_root(f), "params");
    memset(r, 0, sizeof *r);
    r->D = 16;
    r->H = 40;
    r->L = 2;
    r->nh = r->nkv = 4;
    r->T = 32;
    r->eps = 1e-5;
    r->V = (int)tz_dict_get(tz_root(f), "vocab_size")->i;
    size_t k = 0;
    r->tok = tz_d(ps, k++);
    r->pos = tz_d(ps, k++);
    r->layers = calloc((size_t)r->L, sizeof *r->layers);
    for (int l = 0; l < r->L; l++) {
        ref_layer *w = &r->layers[l];
        w->ln1g = tz_d(ps, k++);
        w->ln1b = tz_d(ps, k++);
        w->wq = tz_dT(ps, k++);
        w->bq = tz_d(ps, k++);
        w->wk = tz_dT(ps, k++);
        w->bk = tz_d(ps, k++);
        w->wv = tz_dT(ps, k++);
        w->bv = tz_d(ps, k++);
        w->wo = tz_dT(ps, k++);
        w->bo = tz_d(ps, k++);
        w->ln2g = tz_d(ps, k++);
        w->ln2b = tz_d(ps, k++);
        w->w1 = tz_dT(ps, k++);
        w->b1 = tz_d(ps, k++);
        w->w2 = tz_dT(ps, k++);
        w->b2 = tz_d(ps, k++);
    }
    r->lnfg = tz_d(ps, k++);
    r->lnfb = tz_d(ps, k++);
    r->outb = tz_d(ps, k++);
    r->out = r->tok;
    tz_close(f);
}

static void ref_free(ref_model *r)
{
    for (int l = 0; l < r->L; l++) {
        ref_layer *w = &r->layers[l];
        double *ps[] = { w->ln1g, w->ln1b, w->wq,   w->bq, w->wk, w->bk, w->wv, w->bv, w->wo,
                         w->bo,   w->ln2g, w->ln2b, w->w1, w->b1, w->w2, w->b2, w->w3 };
        for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
    }
    free(r->layers);
    if (r->out != r->tok) free(r->out);
    free(r->tok);
    free(r->pos);
    free(r->lnfg);
    free(r->lnfb);
    free(r->outb);
}

static model *load(const char *path)
{
    char err[512] = "";
    model *m = NULL;
    model_load_opts o = { .n_threads = 2 };
    int rc = model_load(&m, path, &o, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    return m;
}

static void check_all_logits(model *m, const ref_model *r, const int32_t *toks, int n)
{
    int V = r->V;
    float *lg = malloc((size_t)n * V * sizeof *lg);
    double *want = malloc((size_t)n * V * sizeof *want);
    int *ti = malloc((size_t)n * sizeof *ti);
    for (int i = 0; i < n; i++) ti[i] = toks[i];
    model_seq *s = model_seq_new(m, 0);
    model_batch_item it = { .seq = s, .tokens = toks, .n_tokens = n, .logits = lg, .all_logits = 1 };
    cr_assert_eq(model_forward(m, &it, 1), 0);
    ref_forward(r, ti, n, want);
    double bmax, d = ref_maxdiff(lg, want, (size_t)n * V, &bmax);
    cr_assert_leq(d, 1e-4 * fmax(1.0, bmax), "max diff %g (max |ref| %g)", d, bmax);
    cr_assert_gt(bmax, 0.1, "reference logits are suspiciously flat");
    model_seq_free(s);
    free(lg);
    free(want);
    free(ti);
}

TestSuite(gpt2_course, .init = mk_course, .fini = rm_course);

Test(gpt2_course, loads_with_its_facts)
{
    model *m = load(mdir);
    const model_info *in = model_get_info(m);
    cr_assert_str_eq(in->arch, "gpt2");
    cr_assert_str_eq(in->format, "torch");
    cr_assert_eq(in->ctx_len, 32);
    cr_assert_eq(in->dim, 16);
    cr_assert_eq(in->hidden_dim, 40);
    cr_assert_eq(in->n_layers, 2);
    cr_assert_eq(in->n_heads, 4);
    cr_assert_eq(in->vocab_size, model_get_info(m)->vocab_size);
    cr_assert_eq(in->bos_id, -1);
    cr_assert_eq(in->eos_id, 256); /* <|endoftext|>, the first special */
    cr_assert_eq(in->add_bos, 0);
    /* The g2c tokenizer round-trips through the model's entry points. */
    const char *text = "To be, or not to be<|endoftext|>\xc3\x9c!";
    int32_t ids[128];
    int n = model_tokenize(m, text, strlen(text), 1, ids, 128);
    cr_assert_gt(n, 3);
    cr_assert_lt(n, (int)strlen(text)); /* merges applied */
    int has_eot = 0;
    for (int i = 0; i < n; i++) has_eot |= ids[i] == 256;
    cr_assert(has_eot);
    size_t len;
    char *back = model_detokenize(m, ids, n, &len);
    cr_assert_str_eq(back, "To be, or not to be\xc3\x9c!"); /* the special decodes to "" */
    free(back);
    model_free(m);
}

Test(gpt2_course, prefill_matches_double_reference)
{
    model *m = load(mdir);
    ref_model r;
    ref_from_course(&r, mdir);
    cr_assert_eq(r.V, model_get_info(m)->vocab_size);
    int32_t toks[32];
    for (int i = 0; i < 32; i++) toks[i] = (i * 37 + 11) % r.V;
    check_all_logits(m, &r, toks, 32);
    ref_free(&r);
    model_free(m);
}

Test(gpt2_course, incremental_and_batched_equal_prefill)
{
    model *m = load(mdir);
    int V = model_get_info(m)->vocab_size;
    int32_t toks[20];
    for (int i = 0; i < 20; i++) toks[i] = (i * 53 + 5) % V;
    float *all = malloc((size_t)20 * V * sizeof *all), *one = malloc((size_t)V * sizeof *one);
    float *b1 = malloc((size_t)V * sizeof *b1), *b2 = malloc((size_t)V * sizeof *b2);
    model_seq *s = model_seq_new(m, 0), *s2 = model_seq_new(m, 0), *s3 = model_seq_new(m, 0);
    model_batch_item it = { .seq = s, .tokens = toks, .n_tokens = 20, .logits = all, .all_logits = 1 };
    cr_assert_eq(model_forward(m, &it, 1), 0);
    /* One token at a time gives the same last-position logits (within float noise). */
    for (int i = 0; i < 20; i++) {
        model_batch_item st = { .seq = s2, .tokens = toks + i, .n_tokens = 1, .logits = one };
        cr_assert_eq(model_forward(m, &st, 1), 0);
    }
    for (int j = 0; j < V; j++) cr_assert_float_eq(one[j], all[(size_t)19 * V + j], 1e-4);
    /* In a batch beside another sequence: bit-identical to alone. */
    model_seq_truncate(s2, 0);
    model_batch_item two[2] = { { .seq = s2, .tokens = toks, .n_tokens = 20, .logits = b1 },
                                { .seq = s3, .tokens = toks + 3, .n_tokens = 7, .logits = b2 } };
    cr_assert_eq(model_forward(m, two, 2), 0);
    cr_assert(memcmp(b1, all + (size_t)19 * V, (size_t)V * sizeof *b1) == 0);
    model_seq_free(s);
    model_seq_free(s2);
    model_seq_free(s3);
    free(all);
    free(one);
    free(b1);
    free(b2);
    model_free(m);
}

Test(gpt2_course, greedy_generation_slides_past_the_window)
{
    model *m = load(mdir);
    ref_model r;
    ref_from_course(&r, mdir);
    int V = r.V, ctx = 32;
    int32_t hist[64];
    int n = model_tokenize(m, "To be", 5, 0, hist, 64);
    cr_assert_gt(n, 0);
    float *lg = malloc((size_t)V * sizeof *lg);
    model_seq *s = model_seq_new(m, 0);
    cr_assert_eq(model_seq_capacity(s), ctx);
    while (n < 45) {
        int start = n > ctx ? n - ctx : 0; /* crop: positions restart at 0 */
        cr_assert_eq(model_seq_eval(m, s, hist + start, n - start, lg), 0);
        int best = 0;
        for (int j = 1; j < V; j++)
            if (lg[j] > lg[best]) best = j;
        hist[n++] = best;
    }
    /* The last step's logits equal the reference over the cropped window. */
    int start = n - 1 > ctx ? n - 1 - ctx : 0, w = n - 1 - start;
    cr_assert_eq(model_seq_eval(m, s, hist + start, w, lg), 0);
    int ti[64];
    for (int i = 0; i < w; i++) ti[i] = hist[start + i];
    double *want = malloc((size_t)w * V * sizeof *want), bmax;
    ref_forward(&r, ti, w, want);
    double d = ref_maxdiff(lg, want + (size_t)(w - 1) * V, (size_t)V, &bmax);
    cr_assert_leq(d, 1e-4 * fmax(1.0, bmax), "diff %g", d);
    size_t len;
    char *text = model_detokenize(m, hist, n, &len);
    cr_assert_not_null(text);
    cr_assert_eq(strncmp(text, "To be", 5), 0);
    free(text);
    free(want);
    free(lg);
    model_seq_free(s);
    ref_free(&r);
    model_free(m);
}

static void expect_load_error(const char *path, const char *needle)
{
    char err[512] = "";
    model *m = NULL;
    int rc = model_load(&m, path, NULL, err, sizeof err);
    cr_assert_lt(rc, 0, "%s loaded", path);
    cr_assert_null(m);
    cr_assert_not_null(strstr(err, needle), "'%s' lacks '%s'", err, needle);
}

Test(gpt2_course, broken_folders_rejected)
{
    char p[512];
    /* config.json disagreeing with the params list */
    snprintf(p, sizeof p, "%s/config.json", mdir);
    const char *cfg =
        "{\"embedding_dim\": 16, \"num_layers\": 3, \"num_heads\": 4, \"max_seq_len\": 32, \"hidden_dim\": 40}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(mdir, "params has 37 tensors; a 3-layer model has 53");
    cfg = "{\"embedding_dim\": 16, \"num_layers\": 2, \"num_heads\": 4, \"max_seq_len\": 32, \"hidden_dim\": 41}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(mdir, "(fc1 W) has shape (16, 40), expected (16, 41)");
    /* nested under model_config, and with hidden_dim left to the checkpoint: loads */
    cfg = "{\"model_config\": {\"embedding_dim\": 16, \"num_layers\": 2, \"num_heads\": 4, \"max_seq_len\": 32}}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    char err[256];
    model *m = NULL;
    cr_assert_eq(model_load(&m, mdir, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(model_get_info(m)->hidden_dim, 40);
    model_free(m);
    /* a manifest pointing outside the tokenizers folder */
    snprintf(p, sizeof p, "%s/manifest.json", mdir);
    const char *man = "{\"tokenizer_artifact\": \"../../etc\"}";
    cr_assert_eq(fx_write(p, man, strlen(man)), 0);
    expect_load_error(mdir, "tokenizer_artifact");
    man = "{\"tokenizer_artifact\": \"missing-bpe\"}";
    cr_assert_eq(fx_write(p, man, strlen(man)), 0);
    expect_load_error(mdir, "missing-bpe/tokenizer.json");
}

/* ---- GGUF gpt2 with tensors, written from the course reference ---- */

static void put(gguf_writer *w, const char *name, const double *src, int rows, int cols)
{
    size_t n = (size_t)rows * cols;
    float *f = malloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = (float)src[i];
    int64_t ne[2] = { cols, rows };
    cr_assert_eq(gguf_writer_tensor(w, name, MT_F32, ne, rows == 1 ? 1 : 2, f, n * sizeof *f), 0);
    free(f);
}

Test(gpt2_course, gguf_gpt2_matches_reference_with_tanh_gelu)
{
    ref_model r;
    ref_from_course(&r, mdir);
    model *cm = load(mdir); /* for its tokenizer spellings */
    int D = r.D, H = r.H, V = r.V;
    gguf_writer *w = gguf_writer_new();
    gguf_writer_kv_str(w, "general.architecture", "gpt2");
    gguf_writer_kv_u32(w, "gpt2.context_length", 32);
    gguf_writer_kv_u32(w, "gpt2.embedding_length", (uint32_t)D);
    gguf_writer_kv_u32(w, "gpt2.feed_forward_length", (uint32_t)H);
    gguf_writer_kv_u32(w, "gpt2.block_count", 2);
    gguf_writer_kv_u32(w, "gpt2.attention.head_count", 4);
    gguf_writer_kv_f32(w, "gpt2.attention.layer_norm_epsilon", 1e-5f);
    gguf_writer_kv_str(w, "tokenizer.ggml.model", "gpt2");
    const char **toks = malloc((size_t)V * sizeof *toks);
    int32_t *types = malloc((size_t)V * sizeof *types);
    for (int i = 0; i < V; i++) {
        toks[i] = model_token_str(cm, i);
        types[i] = model_token_is_special(cm, i) ? TT_CONTROL : TT_NORMAL;
    }
    /* Merges in id order, each joining two earlier tokens into the next one (a valid
     * byte-level merge list; which split is chosen does not matter here). */
    const tokenizer *t = &cm->tok;
    char **merges = calloc((size_t)V, sizeof *merges);
    int nm = 0;
    for (int id = 258; id < V; id++) {
        /* find a, b < id with bytes(a) + bytes(b) == bytes(id) that the g2c table merges */
        for (int a = 0; a < id && !merges[nm]; a++) {
            if (a == 256 || a == 257) continue;
            size_t la = (size_t)t->bytes_len[a];
            if (la >= (size_t)t->bytes_len[id] || memcmp(t->bytes[a], t->bytes[id], la)) continue;
            for (int b = 0; b < id; b++) {
                if (b == 256 || b == 257) continue;
                if (la + (size_t)t->bytes_len[b] != (size_t)t->bytes_len[id] ||
                    memcmp(t->bytes[b], t->bytes[id] + la, (size_t)t->bytes_len[b]))
                    continue;
                size_t sl = strlen(t->str[a]) + strlen(t->str[b]) + 2;
                merges[nm] = malloc(sl);
                snprintf(merges[nm], sl, "%s %s", t->str[a], t->str[b]);
                break;
            }
        }
        if (merges[nm]) nm++;
    }
    gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", toks, (size_t)V);
    gguf_writer_kv_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)V);
    gguf_writer_kv_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, (size_t)nm);
    gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", 256);
    put(w, "token_embd.weight", r.tok, V, D);
    put(w, "position_embd.weight", r.pos, 32, D);
    put(w, "output_norm.weight", r.lnfg, 1, D);
    put(w, "output_norm.bias", r.lnfb, 1, D);
    char nm_[64];
    for (int l = 0; l < 2; l++) {
        ref_layer *L = &r.layers[l];
        double *qkv = malloc((size_t)3 * D * D * sizeof *qkv), *qkvb = malloc((size_t)3 * D * sizeof *qkvb);
        memcpy(qkv, L->wq, (size_t)D * D * 8);
        memcpy(qkv + D * D, L->wk, (size_t)D * D * 8);
        memcpy(qkv + 2 * D * D, L->wv, (size_t)D * D * 8);
        memcpy(qkvb, L->bq, (size_t)D * 8);
        memcpy(qkvb + D, L->bk, (size_t)D * 8);
        memcpy(qkvb + 2 * D, L->bv, (size_t)D * 8);
#define P(s, src, rr, cc) (snprintf(nm_, sizeof nm_, "blk.%d.%s", l, s), put(w, nm_, src, rr, cc))
        P("attn_norm.weight", L->ln1g, 1, D);
        P("attn_norm.bias", L->ln1b, 1, D);
        P("attn_qkv.weight", qkv, 3 * D, D);
        P("attn_qkv.bias", qkvb, 1, 3 * D);
        P("attn_output.weight", L->wo, D, D);
        P("attn_output.bias", L->bo, 1, D);
        P("ffn_norm.weight", L->ln2g, 1, D);
        P("ffn_norm.bias", L->ln2b, 1, D);
        P("ffn_up.weight", L->w1, H, D);
        P("ffn_up.bias", L->b1, 1, H);
        P("ffn_down.weight", L->w2, D, H);
        P("ffn_down.bias", L->b2, 1, D);
#undef P
        free(qkv);
        free(qkvb);
    }
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/tiny-gpt2.gguf", root);
    cr_assert_eq(gguf_writer_write(w, path, err, sizeof err), 0, "%s", err);
    gguf_writer_free(w);
    model *m = load(path);
    cr_assert_str_eq(model_get_info(m)->arch, "gpt2");
    cr_assert_str_eq(model_get_info(m)->format, "gguf");
    cr_assert_eq(model_get_info(m)->eos_id, 256);
    /* GGUF gpt2 uses HF's tanh GELU and has no output bias. */
    r.gelu_tanh = 1;
    free(r.outb);
    r.outb = NULL;
    int32_t ids[32];
    for (int i = 0; i < 32; i++) ids[i] = (i * 29 + 3) % V;
    check_all_logits(m, &r, ids, 32);
    /* Its byte-level BPE (regex pre-split, unlike g2c) round-trips text and merges. */
    const char *text = "the question: Whether 'tis nobler in the mind";
    int32_t a[64];
    int na = model_tokenize(m, text, strlen(text), 0, a, 64);
    cr_assert_gt(na, 0);
    cr_assert_lt(na, (int)strlen(text) - 10);
    size_t len;
    char *back = model_detokenize(m, a, na, &len);
    cr_assert_str_eq(back, text);
    free(back);
    for (int i = 0; i < nm; i++) free(merges[i]);
    free(merges);
    free(toks);
    free(types);
    model_free(m);
    model_free(cm);
    ref_free(&r);
}

Test(gpt2_gguf, vocab_only_file_rejected_for_missing_tensors)
{
    char p[512];
    expect_load_error(fx_path(p, sizeof p, "gguf/ggml-vocab-gpt-2.gguf"), "vocabulary-only");
}
