/* fuzz_gguf_struct.c -- libFuzzer target: GGUF files built from structured
 * mutations of a small, valid llama model.
 *
 * Byte-level fuzzing of a real GGUF mostly breaks the header and stops at the
 * first bounds check.  Here the input is a recipe: it picks hyper-parameters,
 * tensor types, which keys and tensors to omit, retype or reshape, odd special
 * token ids, NaN/inf weights, and finally a few byte flips of the written file.
 * The file is written with gguf_writer (model/formats/gguf_write.h) and loaded with
 * model_load.  Every input must load, or fail with a one-line message and no
 * model.  A loaded model must report consistent facts and, when the forward pass
 * is available, run a couple of tokens (logits may be anything, but no crash). */
#include "model/compute/quant.h"
#include "model/formats/gguf_write.h"
#include "model/half.h"
#include "model/loader.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FZ_CHECK(cond, what)                                 \
    do {                                                     \
        if (!(cond)) {                                       \
            fprintf(stderr, "fuzz_gguf_struct: %s\n", what); \
            abort();                                         \
        }                                                    \
    } while (0)

static char g_path[64];

typedef struct {
    const uint8_t *p;
    size_t n, off;
} recipe;

static unsigned take(recipe *r, unsigned range) /* a value in [0, range) */
{
    unsigned v = r->off < r->n ? r->p[r->off++] : 0;
    return range ? v % range : 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(g_path, sizeof g_path, "/tmp/lmserve-fuzz-gguf-%d.gguf", (int)getpid());
    return 0;
}

/* Tensor data of n elements of the given type; values small and deterministic,
 * with a NaN or inf at element 0 when poison says so. */
static void *make_data(int type, size_t n, int poison, size_t *nbytes)
{
    int ok;
    *nbytes = mtensor_bytes(type, n, &ok);
    if (!ok || *nbytes == 0) return NULL;
    uint8_t *d = calloc(1, *nbytes);
    if (!d) return NULL;
    if (quant_is_quantized(type) && type != MT_Q8_0) { /* the reference quantizer's blocks */
        float *f = malloc(n * sizeof *f);
        if (!f) {
            free(d);
            return NULL;
        }
        for (size_t i = 0; i < n; i++) f[i] = (float)((int)(i * 7 % 13) - 6) / 16.0f;
        if (poison) f[0] = poison == 1 ? NAN : INFINITY;
        quant_quantize_rows(type, f, d, 1, (int)n);
        free(f);
        return d;
    }
    for (size_t i = 0; i < n; i++) {
        float v = (float)((int)(i * 7 % 13) - 6) / 16.0f;
        if (i == 0 && poison == 1) v = NAN;
        if (i == 0 && poison == 2) v = INFINITY;
        if (type == MT_F32)
            memcpy(d + 4 * i, &v, 4);
        else if (type == MT_F16) {
            uint16_t h = model_f32_to_f16(v);
            memcpy(d + 2 * i, &h, 2);
        } else if (type == MT_BF16) {
            uint32_t b;
            memcpy(&b, &v, 4);
            uint16_t h = (uint16_t)(b >> 16);
            memcpy(d + 2 * i, &h, 2);
        } else if (type == MT_Q8_0) {
            size_t blk = i / Q8_0_BLOCK, k = i % Q8_0_BLOCK;
            uint8_t *q = d + blk * (2 + Q8_0_BLOCK);
            if (k == 0) {
                uint16_t s = model_f32_to_f16(poison == 1 ? NAN : 1.0f / 16.0f);
                memcpy(q, &s, 2);
            }
            q[2 + k] = (uint8_t)(int8_t)((int)(i * 7 % 13) - 6);
        }
    }
    return d;
}

static const int mat_types[8] = { MT_F32, MT_F16, MT_BF16, MT_Q8_0, MT_Q4_0, MT_Q4_1, MT_Q5_0, MT_Q5_1 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    recipe r = { data, size, 0 };
    /* hyper-parameters: dim in {32, 64}, heads dividing it, 1-2 layers (the block types need
     * cols % 32) */
    int dim = 32 * (1 + (int)take(&r, 2));
    static const int heads_choice[3] = { 1, 2, 4 };
    int n_heads = heads_choice[take(&r, 3)];
    int n_kv = take(&r, 2) ? n_heads : 1;
    int n_layers = 1 + (int)take(&r, 2);
    int hidden = 32 * (1 + (int)take(&r, 2));
    int ctx = 1 + (int)take(&r, 64);
    int n_vocab = 8 + (int)take(&r, 32);
    int mtype = mat_types[take(&r, 8)];
    int vtype = mat_types[take(&r, 3)]; /* norm vectors: F32, F16 or BF16 */
    /* every choice is 0 for "as a valid model has it", so the empty input loads */
    unsigned omit = take(&r, 24);      /* which key or tensor to leave out (0, >= 16: none) */
    unsigned bad_shape = take(&r, 16); /* 1 + which tensor gets a wrong shape (0: none) */
    int tied = take(&r, 2);
    int poison = (int)take(&r, 8); /* 1: NaN, 2: inf in some tensor */
    int bos = (int)take(&r, 4) == 3 ? (int)take(&r, 64) - 8 : 1;
    unsigned n_flips = take(&r, 4);

    gguf_writer *w = gguf_writer_new();
    if (!w) return 0;
    if (omit != 15) gguf_writer_kv_str(w, "general.architecture", take(&r, 16) == 1 ? "gpt2" : "llama");
    const struct {
        const char *key;
        int val;
    } ints[] = {
        { "llama.context_length", ctx },
        { "llama.embedding_length", dim },
        { "llama.block_count", n_layers },
        { "llama.feed_forward_length", hidden },
        { "llama.attention.head_count", n_heads },
        { "llama.attention.head_count_kv", n_kv },
        { "llama.rope.dimension_count", dim / n_heads },
    };
    for (unsigned k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        if (omit == 1 + k) continue;
        unsigned how = take(&r, 16);
        if (how == 1)
            gguf_writer_kv_i32(w, ints[k].key, -ints[k].val);
        else if (how == 2)
            gguf_writer_kv_f32(w, ints[k].key, (float)ints[k].val);
        else if (how == 3)
            gguf_writer_kv_u32(w, ints[k].key, (uint32_t)ints[k].val * 3u);
        else
            gguf_writer_kv_u32(w, ints[k].key, (uint32_t)ints[k].val);
    }
    gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", take(&r, 16) == 1 ? -1.0f : 1e-5f);
    gguf_writer_kv_f32(w, "llama.rope.freq_base", take(&r, 16) == 1 ? NAN : 10000.0f);

    /* vocabulary: <unk>, <s>, </s>, then byte tokens and a few pieces */
    char *toks[40];
    float scores[40];
    int32_t types[40];
    char buf[40][8];
    for (int i = 0; i < n_vocab; i++) {
        if (i == 0)
            snprintf(buf[i], sizeof buf[i], "<unk>");
        else if (i == 1)
            snprintf(buf[i], sizeof buf[i], "<s>");
        else if (i == 2)
            snprintf(buf[i], sizeof buf[i], "</s>");
        else if (i < 12)
            snprintf(buf[i], sizeof buf[i], "<0x%02X>", 0x20 + i);
        else
            snprintf(buf[i], sizeof buf[i], "\xe2\x96\x81%c", 'a' + i % 26);
        toks[i] = buf[i];
        scores[i] = (float)-i;
        types[i] = i == 0 ? TT_UNKNOWN : i < 3 ? TT_CONTROL : i < 12 ? TT_BYTE : TT_NORMAL;
    }
    unsigned tok_mut = take(&r, 16);
    if (tok_mut == 1) scores[n_vocab - 1] = NAN;
    if (tok_mut == 2) types[n_vocab / 2] = 9;
    if (tok_mut == 3) toks[n_vocab - 1] = buf[n_vocab - 2]; /* duplicate string */
    int listed = tok_mut == 4 ? n_vocab - 1 : n_vocab;      /* fewer tokens than embedding rows */
    if (omit != 8) gguf_writer_kv_str(w, "tokenizer.ggml.model", tok_mut == 5 ? "gpt2" : "llama");
    if (omit != 9) gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, (size_t)listed);
    if (omit != 10) gguf_writer_kv_arr_f32(w, "tokenizer.ggml.scores", scores, (size_t)listed);
    if (omit != 11) gguf_writer_kv_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)listed);
    if (omit != 12) gguf_writer_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_writer_kv_bool(w, "tokenizer.ggml.add_bos_token", !take(&r, 2));

    /* tensors */
    int hd = dim / n_heads;
    struct {
        char name[40];
        int rows, cols, vec;
    } ts[4 + 9 * 2];
    int nt = 0;
#define T(nm, rw, cl, vc)                                    \
    do {                                                     \
        snprintf(ts[nt].name, sizeof ts[nt].name, "%s", nm); \
        ts[nt].rows = rw;                                    \
        ts[nt].cols = cl;                                    \
        ts[nt].vec = vc;                                     \
        nt++;                                                \
    } while (0)
    T("token_embd.weight", n_vocab, dim, 0);
    T("output_norm.weight", 0, dim, 1);
    if (!tied) T("output.weight", n_vocab, dim, 0);
    for (int l = 0; l < n_layers; l++) {
        char nm[40];
#define L(sfx, rw, cl, vc)                                   \
    do {                                                     \
        snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, sfx); \
        T(nm, rw, cl, vc);                                   \
    } while (0)
        L("attn_norm", 0, dim, 1);
        L("attn_q", n_heads * hd, dim, 0);
        L("attn_k", n_kv * hd, dim, 0);
        L("attn_v", n_kv * hd, dim, 0);
        L("attn_output", dim, n_heads * hd, 0);
        L("ffn_norm", 0, dim, 1);
        L("ffn_gate", hidden, dim, 0);
        L("ffn_down", dim, hidden, 0);
        L("ffn_up", hidden, dim, 0);
#undef L
    }
#undef T
    for (int i = 0; i < nt; i++) {
        if (omit == 13 && i == nt - 1) continue;
        if (omit == 14 && i == 0) continue;
        int rows = ts[i].rows, cols = ts[i].cols;
        if ((unsigned)i + 1 == bad_shape) {
            if (rows)
                rows += 1;
            else
                cols += 32;
        }
        int type = ts[i].vec ? vtype : mtype;
        size_t n = (size_t)(rows ? rows : 1) * (size_t)cols, nb;
        void *d = make_data(type, n, (i == nt / 2) ? poison : 0, &nb);
        if (!d) continue;
        int64_t ne[2] = { cols, rows };
        gguf_writer_tensor(w, ts[i].name, type, ne, rows ? 2 : 1, d, nb);
        free(d);
    }
    char err[512] = "";
    int wrc = gguf_writer_write(w, g_path, err, sizeof err);
    gguf_writer_free(w);
    if (wrc != 0) return 0;

    /* byte flips: (u16 offset, xor) pairs from the rest of the recipe */
    if (n_flips) {
        FILE *f = fopen(g_path, "r+b");
        if (!f) return 0;
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        for (unsigned k = 0; k < n_flips && len > 0; k++) {
            long off = (long)((take(&r, 256) << 8 | take(&r, 256)) % (unsigned long)len);
            unsigned x = take(&r, 256);
            fseek(f, off, SEEK_SET);
            int c = fgetc(f);
            fseek(f, off, SEEK_SET);
            fputc((c ^ (int)x) & 0xff, f);
        }
        fclose(f);
    }

    model_load_opts opts = { .n_threads = 1 };
    model *m = (model *)0x1;
    int rc = model_load(&m, g_path, &opts, err, sizeof err);
    if (rc != 0) {
        FZ_CHECK(rc < 0 && m == NULL, "failed load must give a negative code and no model");
        FZ_CHECK(err[0] != '\0' && strchr(err, '\n') == NULL, "error must be one line");
        FZ_CHECK(strncmp(err, g_path, strlen(g_path)) == 0, "error must start with the path");
        return 0;
    }
    const model_info *in = model_get_info(m);
    FZ_CHECK(in->dim > 0 && in->n_layers > 0 && in->vocab_size > 0 && in->ctx_len > 0, "bad info");
    FZ_CHECK(in->n_heads * in->head_dim == in->dim, "inconsistent heads");
    FZ_CHECK(in->bos_id >= -1 && in->bos_id < in->vocab_size, "bos out of range");
    FZ_CHECK(in->eos_id >= -1 && in->eos_id < in->vocab_size, "eos out of range");
    model_seq *s = model_seq_new(m, 4);
    if (s) {
        float *logits = malloc(sizeof(float) * (size_t)in->vocab_size);
        int32_t toks2[2] = { in->bos_id >= 0 ? in->bos_id : 0, in->vocab_size - 1 };
        if (logits) {
            model_batch_item it = { .seq = s, .tokens = toks2, .n_tokens = 2, .logits = logits };
            int frc = model_forward(m, &it, 1);
            FZ_CHECK(frc == 0 || frc < 0, "forward returned a positive code");
            if (frc == 0) FZ_CHECK(model_seq_len(s) == 2, "sequence did not grow by 2");
        }
        free(logits);
        model_seq_free(s);
    }
    model_free(m);
    return 0;
}
