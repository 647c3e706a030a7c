/* test_gguf.c -- the GGUF reader and writer: stories260K.gguf against the
 * llama2.c file (same weights, bit for bit), writer round trips in every
 * supported type, and hostile files (truncations at every header offset,
 * byte surgery, semantic nonsense built with the writer).  Every failure
 * must be one line naming the file; the ASan build proves nothing is read
 * out of bounds. */
#include "tests/model/helpers.h"
#include "model/formats/gguf_write.h"
#include "model/compute/kernels.h"
#include "model/half.h"
#include "model/loader.h"

#include <math.h>

static model *load_ok(const char *path, const char *tok)
{
    char err[512] = "";
    model *m = NULL;
    model_load_opts o = { .tokenizer_path = tok, .n_threads = 1 };
    int rc = model_load(&m, path, &o, err, sizeof err);
    cr_assert_eq(rc, 0, "load %s: %s", path, err);
    return m;
}

/* ---- The real file ------------------------------------------------------------ */

Test(gguf, stories260k_info)
{
    char *p = th_model_path("stories260K.gguf");
    model *m = load_ok(p, NULL);
    const model_info *i = model_get_info(m);
    cr_assert_str_eq(i->arch, "llama");
    cr_assert_str_eq(i->format, "gguf");
    cr_assert_str_eq(i->weight_type, "F32");
    cr_assert_eq(i->dim, 64);
    cr_assert_eq(i->hidden_dim, 172);
    cr_assert_eq(i->n_layers, 5);
    cr_assert_eq(i->n_heads, 8);
    cr_assert_eq(i->n_kv_heads, 4);
    cr_assert_eq(i->head_dim, 8);
    cr_assert_eq(i->vocab_size, 512);
    cr_assert_eq(i->ctx_len, 2048);
    cr_assert_eq(i->rope_dim, 8);
    cr_assert_float_eq(i->rope_theta, 10000.0f, 0);
    cr_assert_float_eq(i->norm_eps, 9.999999747378752e-06f, 0);
    cr_assert_eq(i->bos_id, 1);
    cr_assert_eq(i->eos_id, 2);
    cr_assert_eq(i->add_bos, 1);
    cr_assert_eq(m->rope_neox, 0);
    cr_assert_eq(m->tok.unk_id, 0);
    cr_assert_eq(m->tok.add_space_prefix, 1);
    model_free(m);
    free(p);
}

static void same_matrix(const mtensor *a, const mtensor *b, const char *what, int l)
{
    cr_assert_eq(a->type, MT_F32);
    cr_assert_eq(b->type, MT_F32);
    cr_assert_eq(a->rows, b->rows, "%s[%d] rows", what, l);
    cr_assert_eq(a->cols, b->cols, "%s[%d] cols", what, l);
    /* row by row: the engine may hold either copy packed (kernels.h) */
    float *ra = malloc(sizeof(float) * (size_t)a->cols), *rb = malloc(sizeof(float) * (size_t)a->cols);
    for (int r = 0; r < a->rows; r++) {
        mtensor_get_row(a, r, ra);
        mtensor_get_row(b, r, rb);
        cr_assert_eq(memcmp(ra, rb, (size_t)a->cols * 4), 0, "%s[%d] row %d differs", what, l, r);
    }
    free(ra);
    free(rb);
}

Test(gguf, same_weights_as_llama2c)
{
    char *g = th_model_path("stories260K.gguf"), *b = th_model_path("stories260K.bin");
    char *tok = th_model_path("tok512.bin");
    model *mg = load_ok(g, NULL), *mb = load_ok(b, tok);
    int dim = 64;
    same_matrix(&mg->tok_embd, &mb->tok_embd, "tok_embd", 0);
    same_matrix(&mg->output, &mb->output, "output", 0); /* the gguf stores a copy of the tied matrix */
    cr_assert_eq(memcmp(mg->out_norm, mb->out_norm, dim * 4), 0);
    for (int l = 0; l < 5; l++) {
        const layer_weights *x = &mg->layers[l], *y = &mb->layers[l];
        same_matrix(&x->wq, &y->wq, "wq", l);
        same_matrix(&x->wk, &y->wk, "wk", l);
        same_matrix(&x->wv, &y->wv, "wv", l);
        same_matrix(&x->wo, &y->wo, "wo", l);
        same_matrix(&x->w1, &y->w1, "w1", l);
        same_matrix(&x->w2, &y->w2, "w2", l);
        same_matrix(&x->w3, &y->w3, "w3", l);
        cr_assert_eq(memcmp(x->attn_norm, y->attn_norm, dim * 4), 0, "attn_norm[%d]", l);
        cr_assert_eq(memcmp(x->ffn_norm, y->ffn_norm, dim * 4), 0, "ffn_norm[%d]", l);
    }
    /* and the vocabularies agree, up to the space convention and llama2.c's "\n<s>\n" */
    for (int i = 0; i < 512; i++) {
        size_t n1, n2;
        const char *s1 = model_token_bytes(mg, i, &n1), *s2 = model_token_bytes(mb, i, &n2);
        cr_assert(n1 == n2 && memcmp(s1, s2, n1) == 0, "token %d: '%s' vs '%s'", i, s1, s2);
        cr_assert_float_eq(mg->tok.scores[i], mb->tok.scores[i], 0);
        cr_assert_eq(model_token_is_special(mg, i), model_token_is_special(mb, i), "token %d", i);
    }
    model_free(mg);
    model_free(mb);
    free(g);
    free(b);
    free(tok);
}

/* ---- Files built with the writer ------------------------------------------------------ */

typedef struct {
    const char *arch, *tok_model;
    int dim, hidden, layers, heads, kv_heads, vocab, n_tokens, ctx;
    int mat_type, norm_type;
    int tied;                /* omit output.weight */
    const char *skip_tensor; /* omit this tensor */
    const char *skip_key;    /* omit this key */
    const char *wide_tensor; /* give this tensor one column too many */
    int64_t bos;             /* -2: omit */
    uint32_t alignment;      /* 0: omit */
    int dup;                 /* 1: a key twice, 2: a tensor twice */
} spec;

static spec tiny(void)
{
    return (spec){ "llama", "llama", 64, 96, 2, 4, 2, 40, 40, 128, MT_F32, MT_F32, 0, NULL, NULL, NULL, 1, 0, 0 };
}

static unsigned rng_state = 1;
static float frand(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Q8_0: per 32 values, an f16 scale d = max|x| / 127 and int8 round(x / d). */
static void quantize_q8_0(uint8_t *out, const float *x, size_t n)
{
    for (size_t b = 0; b < n / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127.0f;
        uint16_t h = model_f32_to_f16(d);
        memcpy(out + 34 * b, &h, 2);
        for (int j = 0; j < 32; j++) {
            float v = d ? x[b * 32 + j] / d : 0;
            ((int8_t *)out)[34 * b + 2 + j] = (int8_t)lrintf(v);
        }
    }
}

/* Add a tensor of `type` with ne = {cols, rows} (rows 0: a vector), values from frand. */
static void add_tensor(gguf_writer *w, const spec *s, const char *name, int type, int rows, int cols)
{
    if (s->skip_tensor && !strcmp(s->skip_tensor, name)) return;
    if (s->wide_tensor && !strcmp(s->wide_tensor, name)) cols += 32;
    size_t n = (size_t)cols * (size_t)(rows ? rows : 1);
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = rows ? frand() : 0.5f + (float)(i % 64) / 64.0f;
    size_t nb = mtensor_row_bytes(type, cols) * (size_t)(rows ? rows : 1);
    uint8_t *d = malloc(nb);
    if (type == MT_F32)
        memcpy(d, x, nb);
    else if (type == MT_F16 || type == MT_BF16)
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            if (type == MT_F16)
                h = model_f32_to_f16(x[i]);
            else {
                uint32_t u;
                memcpy(&u, &x[i], 4);
                h = (uint16_t)(u >> 16);
            }
            memcpy(d + 2 * i, &h, 2);
        }
    else
        quantize_q8_0(d, x, n);
    int64_t ne[2] = { cols, rows };
    cr_assert_eq(gguf_writer_tensor(w, name, type, ne, rows ? 2 : 1, d, nb), 0, "%s", name);
    free(x);
    free(d);
}

static void build(const spec *s, const char *path)
{
    gguf_writer *w = gguf_writer_new();
    cr_assert_not_null(w);
    char key[96];
#define KEY(k) (!s->skip_key || strcmp(s->skip_key, (k)) != 0)
#define KV_U32(k, v)                                                              \
    do {                                                                          \
        snprintf(key, sizeof key, "%s.%s", s->arch, k);                           \
        if (KEY(key)) cr_assert_eq(gguf_writer_kv_u32(w, key, (uint32_t)(v)), 0); \
    } while (0)
    if (KEY("general.architecture")) gguf_writer_kv_str(w, "general.architecture", s->arch);
    if (s->alignment) gguf_writer_kv_u32(w, "general.alignment", s->alignment);
    if (s->dup == 1) gguf_writer_kv_str(w, "general.architecture", s->arch);
    KV_U32("context_length", s->ctx);
    KV_U32("embedding_length", s->dim);
    KV_U32("block_count", s->layers);
    KV_U32("feed_forward_length", s->hidden);
    KV_U32("attention.head_count", s->heads);
    KV_U32("attention.head_count_kv", s->kv_heads);
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", s->arch);
    gguf_writer_kv_f32(w, key, 1e-6f);
    snprintf(key, sizeof key, "%s.rope.freq_base", s->arch);
    gguf_writer_kv_f32(w, key, 500000.0f);
    if (KEY("tokenizer.ggml.model")) gguf_writer_kv_str(w, "tokenizer.ggml.model", s->tok_model);
    char **toks = calloc((size_t)s->n_tokens, sizeof *toks);
    float *scores = calloc((size_t)s->n_tokens, sizeof *scores);
    int32_t *types = calloc((size_t)s->n_tokens, sizeof *types);
    for (int i = 0; i < s->n_tokens; i++) {
        toks[i] = th_fake_piece(i);
        cr_assert_not_null(toks[i]);
        types[i] = i == 0 ? TT_UNKNOWN : i < 3 ? TT_CONTROL : TT_NORMAL;
        scores[i] = (float)-i;
    }
    if (KEY("tokenizer.ggml.tokens"))
        gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, (size_t)s->n_tokens);
    gguf_writer_kv_arr_f32(w, "tokenizer.ggml.scores", scores, (size_t)s->n_tokens);
    gguf_writer_kv_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)s->n_tokens);
    if (s->bos != -2) gguf_writer_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)s->bos);
    gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_writer_kv_bool(w, "tokenizer.ggml.add_bos_token", 1);
    for (int i = 0; i < s->n_tokens; i++) free(toks[i]);
    free(toks);
    free(scores);
    free(types);

    int hd = s->dim / s->heads;
    add_tensor(w, s, "token_embd.weight", s->mat_type, s->vocab, s->dim);
    if (s->dup == 2) add_tensor(w, s, "token_embd.weight", s->mat_type, s->vocab, s->dim);
    add_tensor(w, s, "output_norm.weight", s->norm_type, 0, s->dim);
    if (!s->tied) add_tensor(w, s, "output.weight", s->mat_type, s->vocab, s->dim);
    for (int l = 0; l < s->layers; l++) {
        char n[64];
#define T(suffix, rows, cols, type)                           \
    do {                                                      \
        snprintf(n, sizeof n, "blk.%d.%s.weight", l, suffix); \
        add_tensor(w, s, n, type, rows, cols);                \
    } while (0)
        T("attn_norm", 0, s->dim, s->norm_type);
        T("attn_q", s->heads * hd, s->dim, s->mat_type);
        T("attn_k", s->kv_heads * hd, s->dim, s->mat_type);
        T("attn_v", s->kv_heads * hd, s->dim, s->mat_type);
        T("attn_output", s->dim, s->heads * hd, s->mat_type);
        T("ffn_norm", 0, s->dim, s->norm_type);
        T("ffn_gate", s->hidden, s->dim, s->mat_type);
        T("ffn_down", s->dim, s->hidden, s->mat_type);
        T("ffn_up", s->hidden, s->dim, s->mat_type);
#undef T
    }
    char err[256];
    cr_assert_eq(gguf_writer_write(w, path, err, sizeof err), 0, "%s", err);
    gguf_writer_free(w);
#undef KEY
#undef KV_U32
}

Test(gguf, writer_round_trip_types)
{
    th_tmp t;
    th_tmp_init(&t);
    const char *p = th_tmp_file(&t, "tiny.gguf");
    int mats[] = { MT_F32, MT_F16, MT_BF16, MT_Q8_0 };
    const char *names[] = { "F32", "F16", "BF16", "Q8_0" };
    for (int k = 0; k < 4; k++) {
        spec s = tiny();
        s.mat_type = mats[k];
        s.norm_type = k == 1 ? MT_F16 : k == 2 ? MT_BF16 : MT_F32;
        s.tied = k == 3;
        rng_state = 42;
        build(&s, p);
        model *m = load_ok(p, NULL);
        const model_info *i = model_get_info(m);
        cr_assert_str_eq(i->weight_type, names[k]);
        cr_assert_eq(i->dim, 64);
        cr_assert_eq(i->hidden_dim, 96);
        cr_assert_eq(i->n_kv_heads, 2);
        cr_assert_eq(i->vocab_size, 40);
        cr_assert_float_eq(i->rope_theta, 500000.0f, 0);
        cr_assert_float_eq(i->norm_eps, 1e-6f, 0);
        cr_assert_eq(i->rope_dim, 16, "defaults to the head size");
        cr_assert_eq(m->layers[1].wk.type, mats[k]);
        cr_assert_eq(m->layers[1].wk.rows, 32);
        cr_assert_eq(m->layers[1].w2.cols, 96);
        /* norms come out as F32 whatever they were stored as: 0.5 + (i % 64) / 64 is exact in all three */
        for (int j = 0; j < 64; j++) cr_assert_float_eq(m->layers[1].ffn_norm[j], 0.5f + (float)j / 64.0f, 0);
        if (s.tied)
            cr_assert_eq(m->output.data, m->tok_embd.data);
        else
            cr_assert_neq(m->output.data, m->tok_embd.data);
        /* the data stays in the mapping: the first row of token_embd is what was written */
        rng_state = 42;
        float x0 = frand();
        if (mats[k] == MT_F32) cr_assert_float_eq(((const float *)m->tok_embd.data)[0], x0, 0);
        if (mats[k] == MT_F16) {
            uint16_t h;
            memcpy(&h, m->tok_embd.data, 2);
            cr_assert_float_eq(model_f16_to_f32(h), x0, 1e-3);
        }
        size_t params = 40 * 64 * (s.tied ? 1 : 2) + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 96 + 128) + 64;
        cr_assert_eq(i->n_params, params);
        cr_assert_str_eq(model_token_str(m, 5), "\xe2\x96\x81t5");
        size_t n;
        cr_assert_str_eq(model_token_bytes(m, 5, &n), " t5");
        model_free(m);
    }
    th_tmp_cleanup(&t);
}

Test(gguf, version_2_and_alignment)
{
    th_tmp t;
    th_tmp_init(&t);
    const char *p = th_tmp_file(&t, "v2.gguf");
    spec s = tiny();
    build(&s, p);
    size_t len;
    unsigned char *b = th_read_file(p, &len);
    b[4] = 2; /* v2 and v3 share the little-endian layout */
    th_write_file(p, b, len);
    model *m = load_ok(p, NULL);
    model_free(m);
    b[4] = 1;
    th_write_file(p, b, len);
    const char *e = th_expect_load_error(p, NULL);
    cr_assert(strstr(e, "GGUF version 1 is not supported"), "'%s'", e);
    free(b);
    s.alignment = 64; /* the writer pads to 32 only: with 64 the offsets are misaligned */
    build(&s, p);
    e = th_expect_load_error(p, NULL);
    cr_assert(strstr(e, "not a multiple of the alignment 64") || strstr(e, "runs past"), "'%s'", e);
    s.alignment = 12;
    build(&s, p);
    e = th_expect_load_error(p, NULL);
    cr_assert(strstr(e, "general.alignment 12 is not a power of two"), "'%s'", e);
    th_tmp_cleanup(&t);
}

Test(gguf, semantic_errors)
{
    th_tmp t;
    th_tmp_init(&t);
    char p[160];
    snprintf(p, sizeof p, "%s", th_tmp_file(&t, "bad.gguf"));
    struct {
        spec s;
        const char *want;
    } cases[20];
    int n = 0;
#define CASE(field_assign, msg)  \
    do {                         \
        cases[n].s = tiny();     \
        cases[n].s.field_assign; \
        cases[n].want = msg;     \
        n++;                     \
    } while (0)
    CASE(arch = "bert", "unsupported architecture 'bert'"); /* llama and gpt2 are the supported ones */
    CASE(arch = "mamba", "unsupported architecture 'mamba'");
    CASE(skip_key = "general.architecture", "missing metadata 'general.architecture'");
    CASE(skip_key = "llama.context_length", "missing metadata 'llama.context_length'");
    CASE(ctx = 1 << 30, "'llama.context_length' = 1073741824 is out of range");
    CASE(heads = 3, "not a multiple of the head count 3");
    CASE(kv_heads = 3, "not a multiple of the kv head count 3");
    CASE(skip_tensor = "blk.1.ffn_up.weight", "missing tensor 'blk.1.ffn_up.weight'");
    CASE(wide_tensor = "blk.0.attn_k.weight", "tensor 'blk.0.attn_k.weight' has shape [96, 32");
    CASE(n_tokens = 41, "'tokenizer.ggml.tokens' has 41 entries, expected 40");
    CASE(bos = 40, "'tokenizer.ggml.bos_token_id' = 40 is not a token id");
    CASE(tok_model = "bert", "unsupported tokenizer model 'bert'");
    CASE(tok_model = "gpt2",
         "missing metadata 'tokenizer.ggml.merges'"); /* a byte-level BPE vocabulary needs its merges */
    CASE(skip_key = "tokenizer.ggml.model", "no tokenizer in the file");
    CASE(norm_type = MT_Q8_0, "vectors must be F32, F16 or BF16");
    CASE(skip_tensor = "output_norm.weight", "missing tensor 'output_norm.weight'");
    CASE(dup = 1, "metadata key 'general.architecture' appears twice");
    CASE(dup = 2, "tensor 'token_embd.weight' appears twice");
#undef CASE
    for (int k = 0; k < n; k++) {
        build(&cases[k].s, p);
        const char *e = th_expect_load_error(p, NULL);
        cr_assert(strstr(e, cases[k].want), "case %d: '%s' lacks '%s'", k, e, cases[k].want);
    }
    th_tmp_cleanup(&t);
}

Test(gguf, writer_rejects_bad_tensors)
{
    gguf_writer *w = gguf_writer_new();
    float x[64] = { 0 };
    int64_t ne[2] = { 16, 4 }, bad[2] = { 16, 0 };
    cr_assert_eq(gguf_writer_tensor(w, "a", MT_F32, ne, 2, x, 64 * 4), 0);
    cr_assert_eq(gguf_writer_tensor(w, "b", MT_F32, ne, 2, x, 63 * 4), MODEL_EINVAL, "size must match");
    cr_assert_eq(gguf_writer_tensor(w, "c", MT_Q8_0, ne, 2, x, 4 * 34), MODEL_EINVAL, "16 % 32 != 0");
    cr_assert_eq(gguf_writer_tensor(w, "d", MT_F32, bad, 2, x, 0), MODEL_EINVAL);
    cr_assert_eq(gguf_writer_tensor(w, "e", 99, ne, 2, x, 64 * 4), MODEL_EINVAL);
    cr_assert_eq(gguf_writer_tensor(w, "f", MT_F32, ne, 5, x, 64 * 4), MODEL_EINVAL);
    char err[256];
    cr_assert_eq(gguf_writer_write(w, "/nonexistent-dir/x.gguf", err, sizeof err), MODEL_EIO);
    cr_assert(strstr(err, "/nonexistent-dir/x.gguf: cannot create"), "'%s'", err);
    gguf_writer_free(w);
    gguf_writer_free(NULL);
}

/* ---- Hostile versions of the real file -------------------------------------------------- */

/* Offset of the data section of a valid GGUF (computed independently of the reader). */
static size_t tensor_info_of(const unsigned char *b, size_t len, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 8; i + n + 4 < len; i++)
        if (memcmp(b + i, name, n) == 0 && b[i + n] < 8 /* low byte of n_dims */) {
            uint64_t sl;
            memcpy(&sl, b + i - 8, 8);
            if (sl == n) return i + n; /* points at n_dims */
        }
    cr_assert_fail("tensor %s not found", name);
    return 0;
}

Test(gguf, truncated_everywhere)
{
    char *g = th_model_path("stories260K.gguf");
    size_t len;
    unsigned char *raw = th_read_file(g, &len);
    /* the header region ends after the last tensor info (blk.4.ffn_norm.weight: 1 dim) */
    size_t last = tensor_info_of(raw, len, "blk.4.ffn_norm.weight") + 4 + 8 + 4 + 8;
    cr_assert_gt(last, 14000u);
    th_tmp t;
    th_tmp_init(&t);
    const char *p = th_tmp_file(&t, "cut.gguf");
    th_write_file(p, raw, len);
    int fd = open(p, O_RDWR);
    cr_assert_geq(fd, 0);
    /* shrink in place, long to short: 300 cuts over the data, then every header offset */
    size_t prev = len;
    for (int k = 300; k >= 0; k--) {
        size_t cut = k == 300 ? len - 1 : last + 32 + (len - last - 33) * (size_t)k / 300;
        if (cut >= prev) continue;
        prev = cut;
        cr_assert_eq(ftruncate(fd, (off_t)cut), 0);
        const char *e = th_expect_load_error(p, NULL);
        cr_assert(strstr(e, "runs past the end of the file"), "cut %zu: '%s'", cut, e);
    }
    for (size_t cut = last + 32;; cut--) {
        cr_assert_eq(ftruncate(fd, (off_t)cut), 0);
        th_expect_load_error(p, NULL);
        if (cut == 0) break;
    }
    close(fd);
    free(raw);
    free(g);
    th_tmp_cleanup(&t);
}

static void put_u64(unsigned char *b, size_t off, uint64_t v) { memcpy(b + off, &v, 8); }
static void put_u32(unsigned char *b, size_t off, uint32_t v) { memcpy(b + off, &v, 4); }

Test(gguf, byte_surgery)
{
    char *g = th_model_path("stories260K.gguf");
    size_t len;
    unsigned char *raw = th_read_file(g, &len);
    unsigned char *b = malloc(len);
    th_tmp t;
    th_tmp_init(&t);
    const char *p = th_tmp_file(&t, "bad.gguf");
    size_t emb = tensor_info_of(raw, len, "token_embd.weight"); /* n_dims, ne[2], type, offset */
    size_t q0 = tensor_info_of(raw, len, "blk.0.attn_q.weight");
    struct {
        int what;
        size_t off;
        uint64_t val;
        const char *want;
    } cases[] = {
        { 0, 0, 'X', "unknown model format" }, /* magic */
        { 4, 4, 4, "GGUF version 4 is not supported" },
        { 8, 8, (uint64_t)1 << 62, "tensor count" },
        { 8, 16, (uint64_t)1 << 62, "metadata count" },
        { 8, 24, (uint64_t)1 << 40, "metadata key 0 runs past the end" }, /* first key's length */
        { 8, 24, 0xffffffffffffffffull, "metadata key 0 runs past the end" },
        { 4, emb, 5, "has 5 dimensions" },
        { 4, emb, 0, "has 0 dimensions" },
        { 8, emb + 4, 0, "has dimension 0 of size 0" },
        { 8, emb + 4, (uint64_t)1 << 40, "has dimension 0 of size" },
        { 8, emb + 4, 1 << 30, "runs past the end of the file" },
        { 4, emb + 20, 99, "unsupported type 99" },
        { 8, emb + 24, (uint64_t)len, "runs past the end of the file" },
        { 8, emb + 24, 0xffffffffffffffe0ull, "runs past the end of the file" },
        { 8, emb + 24, 4, "not a multiple of the alignment" },
        { 8, q0 + 4, 32, "tensor 'blk.0.attn_q.weight' has shape [32, 64" },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        memcpy(b, raw, len);
        if (cases[k].what == 0)
            b[cases[k].off] = (unsigned char)cases[k].val;
        else if (cases[k].what == 4)
            put_u32(b, cases[k].off, (uint32_t)cases[k].val);
        else
            put_u64(b, cases[k].off, cases[k].val);
        th_write_file(p, b, len);
        cr_log_info("surgery case %zu", k);
        const char *e = th_expect_load_error(p, NULL);
        cr_assert(strstr(e, cases[k].want), "case %zu: '%s' lacks '%s'", k, e, cases[k].want);
    }
    /* a string array whose count is absurd: tokenizer.ggml.tokens is the first key */
    memcpy(b, raw, len);
    size_t key0 = 24 + 8 + strlen("tokenizer.ggml.tokens");
    cr_assert_eq(memcmp(raw + 32, "tokenizer.ggml.tokens", 21), 0);
    put_u64(b, key0 + 4 + 4, (uint64_t)1 << 61);
    th_write_file(p, b, len);
    const char *e = th_expect_load_error(p, NULL);
    cr_assert(strstr(e, "'tokenizer.ggml.tokens': array is longer than the rest of the file"), "'%s'", e);
    /* an unknown value type */
    memcpy(b, raw, len);
    put_u32(b, key0, 77);
    th_write_file(p, b, len);
    e = th_expect_load_error(p, NULL);
    cr_assert(strstr(e, "unknown value type 77"), "'%s'", e);
    free(b);
    free(raw);
    free(g);
    th_tmp_cleanup(&t);
}

Test(gguf, half_conversions)
{
    /* every finite half survives f16 -> f32 -> f16; NaNs stay NaN */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = model_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            cr_assert(isnan(f));
            cr_assert(isnan(model_f16_to_f32(model_f32_to_f16(f))));
            continue;
        }
        cr_assert_eq(model_f32_to_f16(f), h, "half 0x%04x -> %g -> 0x%04x", h, (double)f, model_f32_to_f16(f));
    }
    cr_assert_float_eq(model_f16_to_f32(0x3c00), 1.0f, 0);
    cr_assert_float_eq(model_f16_to_f32(0x0001), 0x1p-24f, 0); /* smallest subnormal */
    cr_assert_float_eq(model_f16_to_f32(0x7bff), 65504.0f, 0);
    cr_assert_eq(model_f32_to_f16(1.0f + 0x1p-11f), 0x3c00); /* a tie rounds to even */
    cr_assert_eq(model_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    cr_assert_eq(model_f32_to_f16(65520.0f), 0x7c00);  /* rounds up to infinity */
    cr_assert_eq(model_f32_to_f16(-0x1p-26f), 0x8000); /* underflows to -0 */
    cr_assert_float_eq(model_bf16_to_f32(0x3fc0), 1.5f, 0);
    cr_assert_eq(mtensor_row_bytes(MT_F32, 64), 256u);
    cr_assert_eq(mtensor_row_bytes(MT_F16, 64), 128u);
    cr_assert_eq(mtensor_row_bytes(MT_BF16, 64), 128u);
    cr_assert_eq(mtensor_row_bytes(MT_Q8_0, 64), 68u);
}

Test(gguf, other_architecture_is_reported)
{
    /* llama.cpp's vocab-only GPT-2 GGUF (no tensors, no padding after the metadata):
     * it parses, reaches the gpt2 reader, and is refused for its lack of weights */
    char p[512];
    td_fixture(p, sizeof p, "gguf/ggml-vocab-gpt-2.gguf");
    const char *e = th_expect_load_error(p, NULL);
    cr_assert(strstr(e, "missing tensor 'token_embd.weight' (a vocabulary-only file"), "'%s'", e);
}
