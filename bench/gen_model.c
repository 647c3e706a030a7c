/* gen_model.c -- write a random-weight llama model of any shape, for benchmarks.
 *
 * The speed of a forward pass does not depend on the weight values, so the
 * benchmark models are generated rather than downloaded.  Formats:
 *   llama2c: llama2.c's run.c checkpoint (7 int32 header fields, float32 weights
 *            in run.c's order, shared classifier) plus a tokenizer.bin of the same
 *            vocabulary size (max_token_length, then per token: float score,
 *            int32 length, bytes) -- layout as read by llama2.c's run.c.
 *   gguf:    GGUF v3 through model/formats/gguf_write.c, tensor names and metadata keys
 *            as llama.cpp writes them for "llama", with an embedded SentencePiece-style
 *            vocabulary; --type f32, f16, bf16, or a block-quantized type (q8_0, q4_0, q4_k,
 *            ...: every matrix that type), or one of llama.cpp's mixtures (q4_k_m,
 *            q5_k_m, ...: written as F16 beside OUT, then model_quantize, as
 *            `lmserve quantize` does).
 * Vocabulary: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then unique
 * made-up lowercase pieces (half with a leading space marker).
 *
 * usage: gen_model --out FILE [--format llama2c|gguf] [--type f32|f16|q8_0|q4_k_m|...]
 *                  [--dim N] [--hidden N] [--layers N] [--heads N] [--kv-heads N]
 *                  [--vocab N] [--ctx N] [--seed N] [--tokenizer-out FILE]
 */
#include "model/formats/gguf_write.h"
#include "model/half.h"
#include "model/model.h"
#include "model/model_internal.h"
#include "model/compute/quant.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int dim, hidden, layers, heads, kv_heads, vocab, ctx;
    uint64_t seed;
} shape;

static uint64_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t z = *s;
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdull;
    return z ^ (z >> 33);
}

/* n floats uniform in [-a, a) */
static void fill(float *d, size_t n, float a, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) d[i] = a * ((float)(rng_next(s) >> 40) / 8388608.0f - 1.0f);
}

/* ---- Vocabulary ------------------------------------------------------------------ */

static char *piece(int id, int *len)
{
    char buf[32];
    if (id == 0)
        snprintf(buf, sizeof buf, "<unk>");
    else if (id == 1)
        snprintf(buf, sizeof buf, "<s>");
    else if (id == 2)
        snprintf(buf, sizeof buf, "</s>");
    else if (id < 259)
        snprintf(buf, sizeof buf, "<0x%02X>", id - 3);
    else {
        /* unique: the index written in base 26, letters a..z; odd ids get a space */
        int k = id - 259, n = 0;
        char t[16];
        do {
            t[n++] = (char)('a' + k % 26);
            k /= 26;
        } while (k && n < 15);
        int o = 0;
        if (id & 1) buf[o++] = ' ';
        while (n) buf[o++] = t[--n];
        buf[o] = 0;
    }
    *len = (int)strlen(buf);
    return strdup(buf);
}

static int write_tokenizer_bin(const char *path, int vocab)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int32_t maxlen = 16;
    fwrite(&maxlen, 4, 1, f);
    for (int i = 0; i < vocab; i++) {
        int len;
        char *p = piece(i, &len);
        /* llama2.c's vocab uses ' ' where SentencePiece stores U+2581 */
        float score = i < 259 ? 0.0f : -(float)(i - 259);
        int32_t l = len;
        fwrite(&score, 4, 1, f);
        fwrite(&l, 4, 1, f);
        fwrite(p, 1, (size_t)len, f);
        free(p);
    }
    return fclose(f) ? -1 : 0;
}

/* ---- llama2.c -------------------------------------------------------------------- */

static int write_floats(FILE *f, size_t n, float a, uint64_t *s)
{
    float buf[4096];
    while (n) {
        size_t k = n < 4096 ? n : 4096;
        fill(buf, k, a, s);
        if (fwrite(buf, 4, k, f) != k) return -1;
        n -= k;
    }
    return 0;
}

static int write_ones(FILE *f, size_t n)
{
    float one = 1.0f;
    for (size_t i = 0; i < n; i++)
        if (fwrite(&one, 4, 1, f) != 1) return -1;
    return 0;
}

static int write_llama2c(const char *path, const shape *sh)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int32_t hdr[7] = { sh->dim, sh->hidden, sh->layers, sh->heads, sh->kv_heads, sh->vocab, sh->ctx };
    uint64_t s = sh->seed;
    size_t D = (size_t)sh->dim, H = (size_t)sh->hidden, L = (size_t)sh->layers;
    size_t hd = D / sh->heads, kvd = hd * sh->kv_heads;
    float ad = 1.0f / sqrtf((float)D), ah = 1.0f / sqrtf((float)H);
    int rc = fwrite(hdr, 4, 7, f) == 7 ? 0 : -1;
    rc |= write_floats(f, (size_t)sh->vocab * D, 1.0f, &s); /* token_embedding_table */
    rc |= write_ones(f, L * D);                             /* rms_att_weight */
    rc |= write_floats(f, L * D * D, ad, &s);               /* wq */
    rc |= write_floats(f, L * D * kvd, ad, &s);             /* wk */
    rc |= write_floats(f, L * D * kvd, ad, &s);             /* wv */
    rc |= write_floats(f, L * D * D, ad, &s);               /* wo */
    rc |= write_ones(f, L * D);                             /* rms_ffn_weight */
    rc |= write_floats(f, L * H * D, ad, &s);               /* w1 */
    rc |= write_floats(f, L * D * H, ah, &s);               /* w2 */
    rc |= write_floats(f, L * H * D, ad, &s);               /* w3 */
    rc |= write_ones(f, D);                                 /* rms_final_weight */
    rc |= write_floats(f, (size_t)sh->ctx * hd, 0.0f, &s);  /* freq_cis_real + imag (unused) */
    if (fclose(f)) rc = -1;
    return rc;
}

/* ---- GGUF ------------------------------------------------------------------------ */

static uint16_t to_f16(float f) { return model_f32_to_f16(f); }

/* Convert a (rows, cols) float matrix to type (F32, F16, BF16 or a block-quantized type: the
 * reference quantizers of model/quant.h); returns malloc'd data and its size. */
static void *convert(const float *x, int rows, int cols, int type, size_t *nbytes)
{
    size_t n = (size_t)rows * cols;
    if (type == MT_F32) {
        *nbytes = n * 4;
        void *d = malloc(*nbytes);
        if (d) memcpy(d, x, *nbytes);
        return d;
    }
    if (type == MT_F16) {
        *nbytes = n * 2;
        uint16_t *d = malloc(*nbytes);
        for (size_t i = 0; d && i < n; i++) d[i] = to_f16(x[i]);
        return d;
    }
    if (type == MT_BF16) { /* round to nearest even (the values are finite) */
        *nbytes = n * 2;
        uint16_t *d = malloc(*nbytes);
        for (size_t i = 0; d && i < n; i++) {
            uint32_t b;
            memcpy(&b, &x[i], 4);
            d[i] = (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
        }
        return d;
    }
    *nbytes = quant_bytes(type, n, NULL);
    void *d = malloc(*nbytes ? *nbytes : 1);
    if (d && quant_quantize_rows(type, x, d, rows, cols) != *nbytes) {
        free(d);
        return NULL;
    }
    return d;
}

static int add_matrix(gguf_writer *w, const char *name, int rows, int cols, int type, float a, uint64_t *s)
{
    float *x = malloc((size_t)rows * cols * sizeof(float));
    if (!x) return MODEL_ENOMEM;
    fill(x, (size_t)rows * cols, a, s);
    if (quant_block_elems(type) > 1 && cols % quant_block_elems(type))
        type = MT_F16; /* rows that are not whole blocks (recipes: lmserve quantize) */
    size_t nb;
    void *d = convert(x, rows, cols, type, &nb);
    free(x);
    if (!d) return MODEL_ENOMEM;
    int64_t ne[2] = { cols, rows };
    int rc = gguf_writer_tensor(w, name, type, ne, 2, d, nb);
    free(d);
    return rc;
}

static int add_ones(gguf_writer *w, const char *name, int n)
{
    float *x = malloc((size_t)n * sizeof(float));
    if (!x) return MODEL_ENOMEM;
    for (int i = 0; i < n; i++) x[i] = 1.0f;
    int64_t ne[1] = { n };
    int rc = gguf_writer_tensor(w, name, MT_F32, ne, 1, x, (size_t)n * 4);
    free(x);
    return rc;
}

static int write_gguf(const char *path, const shape *sh, int type, char *err, size_t errlen)
{
    gguf_writer *w = gguf_writer_new();
    if (!w) return MODEL_ENOMEM;
    int rc = 0, D = sh->dim, H = sh->hidden, hd = sh->dim / sh->heads, kvd = hd * sh->kv_heads;
    float ad = 1.0f / sqrtf((float)D), ah = 1.0f / sqrtf((float)H);
    uint64_t s = sh->seed;
    rc |= gguf_writer_kv_str(w, "general.architecture", "llama");
    rc |= gguf_writer_kv_str(w, "general.name", "lmserve random benchmark model");
    rc |= gguf_writer_kv_u32(w, "llama.context_length", (uint32_t)sh->ctx);
    rc |= gguf_writer_kv_u32(w, "llama.embedding_length", (uint32_t)D);
    rc |= gguf_writer_kv_u32(w, "llama.block_count", (uint32_t)sh->layers);
    rc |= gguf_writer_kv_u32(w, "llama.feed_forward_length", (uint32_t)H);
    rc |= gguf_writer_kv_u32(w, "llama.attention.head_count", (uint32_t)sh->heads);
    rc |= gguf_writer_kv_u32(w, "llama.attention.head_count_kv", (uint32_t)sh->kv_heads);
    rc |= gguf_writer_kv_u32(w, "llama.rope.dimension_count", (uint32_t)hd);
    rc |= gguf_writer_kv_f32(w, "llama.rope.freq_base", 10000.0f);
    rc |= gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    rc |= gguf_writer_kv_str(w, "tokenizer.ggml.model", "llama");
    char **toks = calloc((size_t)sh->vocab, sizeof *toks);
    float *scores = calloc((size_t)sh->vocab, sizeof *scores);
    int32_t *types = calloc((size_t)sh->vocab, sizeof *types);
    if (!toks || !scores || !types) {
        rc = MODEL_ENOMEM;
    } else {
        for (int i = 0; i < sh->vocab; i++) {
            int len;
            char *p = piece(i, &len);
            if (p && p[0] == ' ') { /* SentencePiece's space marker U+2581 */
                char *q = malloc((size_t)len + 3);
                if (q) {
                    memcpy(q, "\xe2\x96\x81", 3);
                    memcpy(q + 3, p + 1, (size_t)len);
                }
                free(p);
                p = q;
            }
            toks[i] = p;
            scores[i] = i < 259 ? 0.0f : -(float)(i - 259);
            types[i] = i == 0 ? TT_UNKNOWN : i < 3 ? TT_CONTROL : i < 259 ? TT_BYTE : TT_NORMAL;
            if (!p) rc = MODEL_ENOMEM;
        }
        if (!rc) {
            rc |= gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, (size_t)sh->vocab);
            rc |= gguf_writer_kv_arr_f32(w, "tokenizer.ggml.scores", scores, (size_t)sh->vocab);
            rc |= gguf_writer_kv_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)sh->vocab);
            rc |= gguf_writer_kv_u32(w, "tokenizer.ggml.bos_token_id", 1);
            rc |= gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", 2);
            rc |= gguf_writer_kv_u32(w, "tokenizer.ggml.unknown_token_id", 0);
        }
    }
    for (int i = 0; toks && i < sh->vocab; i++) free(toks[i]);
    free(toks);
    free(scores);
    free(types);
    char name[96];
    rc = rc ? rc : add_matrix(w, "token_embd.weight", sh->vocab, D, type, 1.0f, &s);
    for (int l = 0; l < sh->layers && !rc; l++) {
        /* llama.cpp's tensor names and shapes, in its order; rows 0: a norm (ones) */
        const struct {
            const char *name;
            int rows, cols;
            float a;
        } t[] = { { "attn_norm", 0, D, 0 }, { "attn_q", D, D, ad },      { "attn_k", kvd, D, ad },
                  { "attn_v", kvd, D, ad }, { "attn_output", D, D, ad }, { "ffn_norm", 0, D, 0 },
                  { "ffn_gate", H, D, ad }, { "ffn_down", D, H, ah },    { "ffn_up", H, D, ad } };
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, t[k].name);
            rc |=
                t[k].rows ? add_matrix(w, name, t[k].rows, t[k].cols, type, t[k].a, &s) : add_ones(w, name, t[k].cols);
        }
    }
    if (!rc) rc = add_ones(w, "output_norm.weight", D);
    if (!rc)
        rc = gguf_writer_write(w, path, err, errlen);
    else if (!err[0])
        snprintf(err, errlen, "%s: building the file failed (%d)", path, rc);
    gguf_writer_free(w);
    return rc;
}

/* ---- CLI ------------------------------------------------------------------------- */

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    shape sh = {
        .dim = 288, .hidden = 768, .layers = 6, .heads = 6, .kv_heads = 0, .vocab = 32000, .ctx = 256, .seed = 1
    };
    const char *out = NULL, *format = "llama2c", *type_s = "f32", *tok_out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *dst = !strcmp(a, "--dim")        ? &sh.dim
                   : !strcmp(a, "--hidden")   ? &sh.hidden
                   : !strcmp(a, "--layers")   ? &sh.layers
                   : !strcmp(a, "--heads")    ? &sh.heads
                   : !strcmp(a, "--kv-heads") ? &sh.kv_heads
                   : !strcmp(a, "--vocab")    ? &sh.vocab
                   : !strcmp(a, "--ctx")      ? &sh.ctx
                                              : NULL;
        if (!v) {
            fprintf(stderr, "gen_model: %s needs a value\n", a);
            return 2;
        }
        if (dst) {
            if (parse_int(v, 1, 1 << 20, dst)) {
                fprintf(stderr, "gen_model: bad value for %s: %s\n", a, v);
                return 2;
            }
        } else if (!strcmp(a, "--seed")) {
            sh.seed = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--format")) {
            format = v;
        } else if (!strcmp(a, "--type")) {
            type_s = v;
        } else if (!strcmp(a, "--tokenizer-out")) {
            tok_out = v;
        } else {
            fprintf(stderr, "gen_model: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (!sh.kv_heads) sh.kv_heads = sh.heads;
    if (!out || sh.dim % sh.heads || sh.heads % sh.kv_heads || sh.vocab < 260 || (sh.dim / sh.heads) % 2) {
        fprintf(stderr, "usage: gen_model --out FILE [--format llama2c|gguf] [--type f32|f16|q8_0|q4_k_m|...]\n"
                        "  [--dim N] [--hidden N] [--layers N] [--heads N] [--kv-heads N] [--vocab N>=260]\n"
                        "  [--ctx N] [--seed N] [--tokenizer-out FILE]  (dim %% heads == 0, heads %% kv-heads == 0)\n");
        return 2;
    }
    int type = quant_type_from_name(type_s); /* F32, F16, BF16, Q8_0, Q4_K, ... */
    char err[256] = "";
    if (!strcmp(format, "llama2c")) {
        if (type != MT_F32) {
            fprintf(stderr, "gen_model: llama2c checkpoints are f32 only\n");
            return 2;
        }
        char tok_default[4096];
        if (!tok_out) {
            snprintf(tok_default, sizeof tok_default, "%s.tokenizer.bin", out);
            tok_out = tok_default;
        }
        if (write_llama2c(out, &sh) || write_tokenizer_bin(tok_out, sh.vocab)) {
            fprintf(stderr, "gen_model: %s: %s\n", out, strerror(errno));
            return 1;
        }
    } else if (!strcmp(format, "gguf")) {
        if (type < 0) { /* a mixture: F16 first, then model_quantize */
            char tmp[4096];
            snprintf(tmp, sizeof tmp, "%s.f16.tmp", out);
            model_quantize_opts qo = { .type = type_s };
            int rc = write_gguf(tmp, &sh, MT_F16, err, sizeof err);
            if (!rc) rc = model_quantize(tmp, out, &qo, err, sizeof err);
            remove(tmp);
            if (rc) {
                fprintf(stderr, "gen_model: %s\n", err[0] ? err : "failed");
                return rc == MODEL_EINVAL ? 2 : 1;
            }
            return 0;
        }
        if (write_gguf(out, &sh, type, err, sizeof err)) {
            fprintf(stderr, "gen_model: %s\n", err[0] ? err : "failed");
            return 1;
        }
    } else {
        fprintf(stderr, "gen_model: unknown format %s\n", format);
        return 2;
    }
    return 0;
}
