/* test_llama2c.c -- the llama2.c checkpoint reader: real stories260K.bin values,
 * a hand-built unshared-classifier model, and corrupt files (truncations,
 * absurd headers, wrong tokenizers) that must fail with one line naming the file. */
#include "tests/model/helpers.h"
#include "model/compute/kernels.h"

#include <math.h>

static model *load_ok(const char *path, const char *tok)
{
    char err[512] = "";
    model *m = NULL;
    model_load_opts o = { .tokenizer_path = tok, .n_threads = 1 };
    int rc = model_load(&m, path, &o, err, sizeof err);
    cr_assert_eq(rc, 0, "load %s: %s", path, err);
    cr_assert_not_null(m);
    return m;
}

Test(llama2c, stories260k_info)
{
    char *bin = th_model_path("stories260K.bin"), *tok = th_model_path("tok512.bin");
    model *m = load_ok(bin, tok);
    const model_info *i = model_get_info(m);
    cr_assert_str_eq(i->arch, "llama");
    cr_assert_str_eq(i->format, "llama2c");
    cr_assert_str_eq(i->weight_type, "F32");
    cr_assert_eq(i->dim, 64);
    cr_assert_eq(i->hidden_dim, 172);
    cr_assert_eq(i->n_layers, 5);
    cr_assert_eq(i->n_heads, 8);
    cr_assert_eq(i->n_kv_heads, 4);
    cr_assert_eq(i->head_dim, 8);
    cr_assert_eq(i->vocab_size, 512);
    cr_assert_eq(i->ctx_len, 512);
    cr_assert_eq(i->rope_dim, 8);
    cr_assert_float_eq(i->rope_theta, 10000.0f, 0);
    cr_assert_float_eq(i->norm_eps, 1e-5f, 0);
    cr_assert_eq(i->bos_id, 1);
    cr_assert_eq(i->eos_id, 2);
    cr_assert_eq(i->add_bos, 1);
    /* 64*512 embedding + 5 * (4096 + 2*2048 + 4096 + 3*64*172 + 2*64) + 64 */
    cr_assert_eq(i->n_params, (size_t)(512 * 64 + 5 * (4096 + 2048 * 2 + 4096 + 3 * 64 * 172 + 128) + 64));
    cr_assert_eq(i->weight_bytes, 4 * i->n_params);
    cr_assert_eq(m->rope_neox, 0);
    cr_assert_eq(m->output.data, m->tok_embd.data, "stories260K shares its classifier");
    /* the embedding starts right after the 28-byte header */
    size_t len;
    unsigned char *raw = th_read_file(bin, &len);
    float row[64];
    for (int r = 0; r < 512; r++) { /* row by row: the tied matrix is held packed (kernels.h) */
        mtensor_get_row(&m->tok_embd, r, row);
        cr_assert_eq(memcmp(row, raw + 28 + (size_t)r * 64 * 4, 64 * 4), 0, "row %d", r);
    }
    cr_assert_eq(memcmp(m->layers[0].attn_norm, raw + 28 + 64 * 512 * 4, 64 * 4), 0);
    free(raw);
    model_free(m);
    free(bin);
    free(tok);
}

/* A random model in llama2.c layout; vocab < 0 = unshared classifier. */
static size_t write_l2c(const char *path, int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                        int seq_len, unsigned seed)
{
    int32_t h[7] = { dim, hidden, layers, heads, kv_heads, vocab, seq_len };
    int V = vocab < 0 ? -vocab : vocab, hd = dim / heads;
    size_t n = (size_t)V * dim +
               (size_t)layers *
                   (2 * dim + (size_t)dim * dim * 2 + 2 * (size_t)dim * kv_heads * hd + 3 * (size_t)dim * hidden) +
               dim + (size_t)seq_len * hd + (vocab < 0 ? (size_t)V * dim : 0);
    float *w = malloc(n * sizeof *w);
    for (size_t k = 0; k < n; k++) {
        seed = seed * 1103515245u + 12345u;
        w[k] = (float)((seed >> 8) & 0xffff) / 65536.0f - 0.5f;
    }
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fwrite(h, 4, 7, f);
    fwrite(w, sizeof *w, n, f);
    fclose(f);
    free(w);
    return 28 + 4 * n;
}

static void write_tok(const char *path, int n)
{
    FILE *f = fopen(path, "wb");
    uint32_t maxlen = 8;
    fwrite(&maxlen, 4, 1, f);
    for (int i = 0; i < n; i++) {
        char s[16];
        if (i == 0)
            strcpy(s, "<unk>");
        else if (i == 1)
            strcpy(s, "\n<s>\n");
        else if (i == 2)
            strcpy(s, "\n</s>\n");
        else
            snprintf(s, sizeof s, "t%d", i);
        float score = (float)-i;
        int32_t len = (int32_t)strlen(s);
        fwrite(&score, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(s, 1, (size_t)len, f);
    }
    fclose(f);
}

Test(llama2c, unshared_classifier_and_default_tokenizer)
{
    th_tmp t;
    th_tmp_init(&t);
    char bin[160];
    snprintf(bin, sizeof bin, "%s", th_tmp_file(&t, "m.bin"));
    size_t size = write_l2c(bin, 16, 40, 2, 4, 2, -24, 10, 7);
    write_tok(th_tmp_file(&t, "tokenizer.bin"), 24);
    model *m = load_ok(bin, NULL); /* tokenizer.bin beside the model */
    const model_info *i = model_get_info(m);
    cr_assert_eq(i->vocab_size, 24);
    cr_assert_eq(i->head_dim, 4);
    cr_assert_neq(m->output.data, m->tok_embd.data);
    /* wcls is the last vocab*dim floats of the file */
    size_t flen;
    unsigned char *raw = th_read_file(bin, &flen);
    cr_assert_eq(flen, size);
    float row[16];
    for (int r = 0; r < 24; r++) {
        mtensor_get_row(&m->output, r, row);
        cr_assert_eq(memcmp(row, raw + size - 4 * 24 * 16 + (size_t)r * 16 * 4, 16 * 4), 0, "row %d", r);
    }
    free(raw);
    cr_assert_eq(m->layers[1].wk.rows, 8);
    cr_assert_eq(m->layers[1].wk.cols, 16);
    cr_assert_eq(m->layers[1].w2.rows, 16);
    cr_assert_eq(m->layers[1].w2.cols, 40);
    cr_assert_str_eq(model_token_str(m, 5), "t5");
    cr_assert(model_token_is_special(m, 1) && model_token_is_special(m, 2) && !model_token_is_special(m, 3));
    size_t n;
    cr_assert_str_eq(model_token_bytes(m, 1, &n), "<s>");
    model_free(m);
    th_tmp_cleanup(&t);
}

Test(llama2c, truncated_everywhere)
{
    char *bin = th_model_path("stories260K.bin"), *tok = th_model_path("tok512.bin");
    size_t len;
    unsigned char *raw = th_read_file(bin, &len);
    th_tmp t;
    th_tmp_init(&t);
    const char *p = th_tmp_file(&t, "cut.bin");
    th_write_file(p, raw, len);
    int fd = open(p, O_RDWR);
    cr_assert_geq(fd, 0);
    model_load_opts o = { .tokenizer_path = tok, .n_threads = 1 };
    /* shrink one file in place, from long to short: every header offset, 300 spread offsets */
    size_t cuts[400];
    int nc = 0;
    for (int k = 300; k >= 1; k--) cuts[nc++] = 28 + (len - 29) * (size_t)k / 301;
    cuts[nc++] = len - 1;
    for (int k = 28; k >= 0; k--) cuts[nc++] = (size_t)k;
    for (int c = 0; c < nc; c++) {
        if (c > 0 && cuts[c] > cuts[c - 1]) continue;
        cr_assert_eq(ftruncate(fd, (off_t)cuts[c]), 0);
        const char *e = th_expect_load_error(p, &o);
        if (cuts[c] >= 28) cr_assert(strstr(e, "implies"), "cut at %zu: '%s'", cuts[c], e);
    }
    close(fd);
    free(raw);
    th_tmp_cleanup(&t);
    free(bin);
    free(tok);
}

Test(llama2c, absurd_headers)
{
    char *bin = th_model_path("stories260K.bin"), *tok = th_model_path("tok512.bin");
    size_t len;
    unsigned char *raw = th_read_file(bin, &len);
    th_tmp t;
    th_tmp_init(&t);
    const char *p = th_tmp_file(&t, "bad.bin");
    model_load_opts o = { .tokenizer_path = tok, .n_threads = 1 };
    struct {
        int field;
        int32_t value;
        const char *want;
    } cases[] = {
        { 0, 0, "unknown model format" }, /* dim 0: not even plausible */
        { 0, -64, "unknown model format" },
        { 0, 1 << 30, "embedding width" },
        { 0, 80, "implies" }, /* plausible but the size is wrong */
        { 1, 1 << 30, "feed-forward width" },
        { 2, 100000, "layer count" },
        { 3, 3, "unknown model format" }, /* 64 % 3 != 0 */
        { 3, 64, "head size 1 is odd" },
        { 4, 3, "head count 8 is not a multiple" },
        { 4, 16, "unknown model format" }, /* more kv heads than heads */
        { 5, INT32_MIN, "vocabulary size" },
        { 5, 1 << 30, "vocabulary size" },
        { 5, -512, "implies" }, /* unshared: needs another vocab*dim floats */
        { 6, 0, "unknown model format" },
        { 6, 1 << 28, "context length" },
        { 6, 513, "implies" },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        unsigned char *b = malloc(len);
        memcpy(b, raw, len);
        memcpy(b + 4 * cases[k].field, &cases[k].value, 4);
        th_write_file(p, b, len);
        const char *e = th_expect_load_error(p, &o);
        cr_assert(strstr(e, cases[k].want), "field %d = %d: '%s' lacks '%s'", cases[k].field, (int)cases[k].value, e,
                  cases[k].want);
        free(b);
    }
    free(raw);
    th_tmp_cleanup(&t);
    free(bin);
    free(tok);
}

Test(llama2c, bad_tokenizers)
{
    char *bin = th_model_path("stories260K.bin"), *tok = th_model_path("tok512.bin");
    char *big = th_model_path("tokenizer.bin");
    size_t len;
    unsigned char *raw = th_read_file(tok, &len);
    th_tmp t;
    th_tmp_init(&t);
    char p[160];
    snprintf(p, sizeof p, "%s", th_tmp_file(&t, "tok.bin"));
    model_load_opts o = { .tokenizer_path = p, .n_threads = 1 };
    /* every truncation of the tokenizer */
    th_write_file(p, raw, len);
    int fd = open(p, O_RDWR);
    for (size_t cut = len - 1;; cut--) {
        cr_assert_eq(ftruncate(fd, (off_t)cut), 0);
        const char *e = th_expect_load_error(bin, &o);
        cr_assert(strstr(e, p), "the message should name the tokenizer: '%s'", e);
        if (cut == 0) break;
    }
    close(fd);
    /* a negative and a huge token length */
    int32_t lens[2] = { -1, 0x7fffffff };
    for (int k = 0; k < 2; k++) {
        memcpy(raw + 4 + 4, &lens[k], 4); /* token 0's length */
        th_write_file(p, raw, len);
        const char *e = th_expect_load_error(bin, &o);
        cr_assert(strstr(e, "token 0 has length"), "'%s'", e);
    }
    /* the 32000-token vocabulary does not fit a 512-token model */
    o.tokenizer_path = big;
    const char *e = th_expect_load_error(bin, &o);
    cr_assert(strstr(e, "follow the last of the model's 512 tokens"), "'%s'", e);
    /* a missing tokenizer */
    o.tokenizer_path = th_tmp_file(&t, "nope.bin");
    e = th_expect_load_error(bin, &o);
    cr_assert(strstr(e, "cannot open"), "'%s'", e);
    free(raw);
    th_tmp_cleanup(&t);
    free(bin);
    free(tok);
    free(big);
}

Test(llama2c, not_a_model)
{
    th_tmp t;
    th_tmp_init(&t);
    model_load_opts o = { .n_threads = 1 };
    const char *e = th_expect_load_error(t.dir, &o);
    cr_assert(strstr(e, "unsupported folder"), "'%s'", e);
    const char *p = th_tmp_file(&t, "empty.bin");
    th_write_file(p, "", 0);
    e = th_expect_load_error(p, &o);
    cr_assert(strstr(e, "empty"), "'%s'", e);
    th_write_file(p, "hello, world: not a model at all, really", 40);
    e = th_expect_load_error(p, &o);
    cr_assert(strstr(e, "unknown model format"), "'%s'", e);
    e = th_expect_load_error(th_tmp_file(&t, "missing.bin"), &o);
    cr_assert(strstr(e, "cannot open"), "'%s'", e);
    model *m = (model *)0x1;
    cr_assert_eq(model_load(&m, NULL, &o, NULL, 0), MODEL_EINVAL);
    cr_assert_null(m);
    model_free(NULL);
    th_tmp_cleanup(&t);
}
