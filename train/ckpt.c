/* ckpt.c -- save the model as GGUF (model/formats/gguf_write.h) and read a
 * checkpoint back for --resume (through model/formats/gguf.h, the GGUF parser the
 * model loader uses: the file is validated whole before anything is read).
 *
 * What is written (GGUF v3, keys as llama.cpp's "llama" architecture names them,
 * see ggml's docs/gguf.md): general.architecture = "llama", llama.* shape keys,
 * a SentencePiece-style ("llama") byte vocabulary, and the tensors token_embd,
 * blk.N.*, output_norm and output (omitted when tied).  Matrices are row-major
 * (out, in), so ne = {in, out}.  With the training state: keys train.step,
 * train.rng_lo/hi, train.version and 1-D F32 tensors train.adam_m, train.adam_v
 * holding the moments in the flat parameter order (net.c).
 */
#include "train/train_internal.h"
#include "model/formats/gguf.h"
#include "model/formats/gguf_write.h"
#include "model/half.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Writing ------------------------------------------------------------------------ */

static int put_vocab(gguf_writer *w)
{
    char names[TRAIN_VOCAB][8];
    const char *toks[TRAIN_VOCAB];
    float scores[TRAIN_VOCAB];
    int32_t types[TRAIN_VOCAB];
    for (int i = 0; i < TRAIN_VOCAB; i++) {
        if (i == TRAIN_UNK)
            toks[i] = "<unk>";
        else if (i == TRAIN_BOS)
            toks[i] = "<s>";
        else if (i == TRAIN_EOS)
            toks[i] = "</s>";
        else if (i == TRAIN_BYTE0 + ' ')
            toks[i] = "\xe2\x96\x81"; /* U+2581, see below */
        else {
            snprintf(names[i], sizeof names[i], "<0x%02X>", i - TRAIN_BYTE0);
            toks[i] = names[i];
        }
        scores[i] = 0.0f;
        types[i] = i == TRAIN_UNK ? 2 : i < TRAIN_BYTE0 ? 3 : 6; /* UNKNOWN, CONTROL, BYTE */
    }
    /* A "llama" (SentencePiece) tokenizer turns every space into U+2581 before it
     * looks pieces up, so a space only ever reaches the byte token for 0x20 as the
     * three bytes of U+2581 (llama.cpp does exactly that).  The trainer's text has one
     * token per byte, space = TRAIN_BYTE0 + 0x20; naming that token U+2581 (a normal
     * piece) makes every SentencePiece implementation encode a space as the id the
     * model was trained on, and decode it back to ' '. */
    types[TRAIN_BYTE0 + ' '] = 1; /* NORMAL */
    int rc = 0;
    rc = rc ? rc : gguf_writer_kv_str(w, "tokenizer.ggml.model", "llama");
    rc = rc ? rc : gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", toks, TRAIN_VOCAB);
    rc = rc ? rc : gguf_writer_kv_arr_f32(w, "tokenizer.ggml.scores", scores, TRAIN_VOCAB);
    rc = rc ? rc : gguf_writer_kv_arr_i32(w, "tokenizer.ggml.token_type", types, TRAIN_VOCAB);
    rc = rc ? rc : gguf_writer_kv_u32(w, "tokenizer.ggml.bos_token_id", TRAIN_BOS);
    rc = rc ? rc : gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", TRAIN_EOS);
    rc = rc ? rc : gguf_writer_kv_u32(w, "tokenizer.ggml.unknown_token_id", TRAIN_UNK);
    rc = rc ? rc : gguf_writer_kv_bool(w, "tokenizer.ggml.add_bos_token", 1);
    rc = rc ? rc : gguf_writer_kv_bool(w, "tokenizer.ggml.add_eos_token", 0);
    rc = rc ? rc : gguf_writer_kv_bool(w, "tokenizer.ggml.add_space_prefix", 0);
    return rc;
}

/* general.name for a file written to path: its file name without the extension (`--out
 * book.gguf` is served as "book", as the file would be without a name). */
static void name_from_path(const char *path, char *out, size_t n)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t len = dot && dot > base ? (size_t)(dot - base) : strlen(base);
    snprintf(out, n, "%.*s", (int)len, base);
}

int train_net_save(const train_net *n, const char *path, int f16, int with_state, char *err, size_t errlen)
{
    const train_shape *s = &n->shape;
    size_t most = 0; /* elements of the largest matrix: the F16 buffer's size */
    for (int i = 0; f16 && i < n->n_tensors; i++)
        if (n->tensors[i].rows > 1 && (size_t)n->tensors[i].rows * n->tensors[i].cols > most)
            most = (size_t)n->tensors[i].rows * n->tensors[i].cols;
    gguf_writer *w = gguf_writer_new();
    uint16_t *half = most ? malloc(most * sizeof *half) : NULL;
    if (!w || (most && !half)) {
        gguf_writer_free(w);
        free(half);
        if (err && errlen) snprintf(err, errlen, "%s: out of memory", path);
        return TRAIN_ENOMEM;
    }
    int rc = 0;
    rc = rc ? rc : gguf_writer_kv_str(w, "general.architecture", "llama");
    char name[256];
    name_from_path(path, name, sizeof name);
    rc = rc ? rc : gguf_writer_kv_str(w, "general.name", name[0] ? name : "lmserve-trained");
    rc = rc ? rc : gguf_writer_kv_u32(w, "general.file_type", f16 ? 1 : 0);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.context_length", s->ctx_len);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.embedding_length", s->dim);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.block_count", s->n_layers);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.feed_forward_length", s->hidden_dim);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.attention.head_count", s->n_heads);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.attention.head_count_kv", s->n_kv_heads);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.rope.dimension_count", s->dim / s->n_heads);
    rc = rc ? rc : gguf_writer_kv_f32(w, "llama.rope.freq_base", s->rope_theta);
    rc = rc ? rc : gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", s->norm_eps);
    rc = rc ? rc : gguf_writer_kv_u32(w, "llama.vocab_size", s->vocab_size);
    rc = rc ? rc : put_vocab(w);
    if (!rc && with_state) {
        rc = rc ? rc : gguf_writer_kv_u32(w, "train.version", 1);
        rc = rc ? rc : gguf_writer_kv_u32(w, "train.step", (uint32_t)n->step);
        rc = rc ? rc : gguf_writer_kv_u32(w, "train.rng_lo", (uint32_t)(n->rng & 0xFFFFFFFFu));
        rc = rc ? rc : gguf_writer_kv_u32(w, "train.rng_hi", (uint32_t)(n->rng >> 32));
    }
    for (int i = 0; !rc && i < n->n_tensors; i++) {
        const train_tensor *t = &n->tensors[i];
        const float *data = n->w + t->offset;
        size_t cnt = (size_t)t->rows * t->cols;
        if (t->rows == 1) {
            int64_t ne[1] = { t->cols };
            rc = gguf_writer_tensor(w, t->name, MT_F32, ne, 1, data, cnt * 4);
            continue;
        }
        int64_t ne[2] = { t->cols, t->rows };
        if (f16) {
            for (size_t j = 0; j < cnt; j++) half[j] = model_f32_to_f16(data[j]);
            rc = gguf_writer_tensor(w, t->name, MT_F16, ne, 2, half, cnt * 2);
        } else {
            rc = gguf_writer_tensor(w, t->name, MT_F32, ne, 2, data, cnt * 4);
        }
    }
    if (!rc && with_state) {
        int64_t ne[1] = { (int64_t)n->n_params };
        rc = gguf_writer_tensor(w, "train.adam_m", MT_F32, ne, 1, n->m, n->n_params * 4);
        rc = rc ? rc : gguf_writer_tensor(w, "train.adam_v", MT_F32, ne, 1, n->v, n->n_params * 4);
    }
    if (!rc)
        rc = gguf_writer_write(w, path, err, errlen);
    else if (err && errlen)
        snprintf(err, errlen, "%s: %s", path, train_strerror(rc));
    free(half);
    gguf_writer_free(w);
    return rc;
}

/* ---- Reading ------------------------------------------------------------------------ */

/* "PATH: message" into err; returns TRAIN_EFORMAT. */
static int bad(char *err, size_t errlen, const char *path, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int bad(char *err, size_t errlen, const char *path, const char *fmt, ...)
{
    if (err && errlen) {
        int k = snprintf(err, errlen, "%s: ", path);
        if (k >= 0 && (size_t)k < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return TRAIN_EFORMAT;
}

/* The shape a checkpoint declares: a llama model over the trainer's byte vocabulary. */
static int read_shape(const gguf_file *g, train_shape *s, char *err, size_t errlen)
{
    const gguf_kv *kv = gguf_find(g, "general.architecture");
    gguf_str arch;
    if (!kv || !gguf_kv_string(g, kv, &arch) || !gguf_str_eq(arch, "llama"))
        return bad(err, errlen, g->path, "not a llama model");
    kv = gguf_find(g, "tokenizer.ggml.tokens");
    if (!kv || kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING || kv->arr_n != TRAIN_VOCAB)
        return bad(err, errlen, g->path, "vocabulary is not the trainer's %d byte tokens", TRAIN_VOCAB);
    memset(s, 0, sizeof *s);
    s->vocab_size = TRAIN_VOCAB;
    static const struct {
        const char *key;
        size_t off;
    } ints[] = {
        { "llama.context_length", offsetof(train_shape, ctx_len) },
        { "llama.embedding_length", offsetof(train_shape, dim) },
        { "llama.block_count", offsetof(train_shape, n_layers) },
        { "llama.feed_forward_length", offsetof(train_shape, hidden_dim) },
        { "llama.attention.head_count", offsetof(train_shape, n_heads) },
        { "llama.attention.head_count_kv", offsetof(train_shape, n_kv_heads) },
    };
    int rc;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if ((rc = gguf_get_int(g, ints[i].key, 1, 0, 1, 1000000, (int *)((char *)s + ints[i].off), err, errlen)))
            return rc;
    if ((rc = gguf_get_float(g, "llama.rope.freq_base", 10000.0, &s->rope_theta, err, errlen)) ||
        (rc = gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", 1e-5, &s->norm_eps, err, errlen)))
        return rc;
    s->tied = gguf_find_tensor(g, "output.weight") == NULL;
    char why[128];
    if (train_shape_check(s, why, sizeof why)) return bad(err, errlen, g->path, "unsupported shape: %s", why);
    return 0;
}

/* Tensor name as n floats into dst; its first dimension must be cols.  Weights
 * may be F32 or F16 (a final model saved with --f16); the optimizer state is F32. */
static int read_floats(const gguf_file *g, const char *name, uint64_t cols, uint64_t n, int f16_ok, float *dst,
                       char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) return bad(err, errlen, g->path, "tensor '%s' is missing", name);
    if (t->ne[0] != cols || t->n_elems != n) return bad(err, errlen, g->path, "tensor '%s' has the wrong shape", name);
    if (t->type == MT_F32) {
        memcpy(dst, t->data, n * sizeof *dst);
    } else if (t->type == MT_F16 && f16_ok) {
        for (uint64_t j = 0; j < n; j++) {
            uint16_t h;
            memcpy(&h, t->data + 2 * j, 2);
            dst[j] = model_f16_to_f32(h);
        }
    } else {
        return bad(err, errlen, g->path, "tensor '%s' must be F32%s", name, f16_ok ? " or F16" : "");
    }
    return 0;
}

/* train.step, train.rng_lo and train.rng_hi with the moments: all or nothing. */
static int read_state(const gguf_file *g, train_net *n, char *err, size_t errlen)
{
    const gguf_kv *step = gguf_find(g, "train.step"), *lo = gguf_find(g, "train.rng_lo"),
                  *hi = gguf_find(g, "train.rng_hi");
    if (!step) return 0; /* a final model: weights only, step 0 */
    uint64_t v[3];
    if (!lo || !hi || !gguf_kv_uint(g, step, &v[0]) || !gguf_kv_uint(g, lo, &v[1]) || !gguf_kv_uint(g, hi, &v[2]) ||
        v[0] > 100000000 || v[1] > 0xFFFFFFFFu || v[2] > 0xFFFFFFFFu)
        return bad(err, errlen, g->path, "training state incomplete");
    int rc;
    if ((rc = read_floats(g, "train.adam_m", n->n_params, n->n_params, 0, n->m, err, errlen)) ||
        (rc = read_floats(g, "train.adam_v", n->n_params, n->n_params, 0, n->v, err, errlen)))
        return rc;
    n->step = (long)v[0];
    n->rng = v[2] << 32 | v[1];
    return 0;
}

int train_net_load(train_net **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    gguf_file g;
    int rc = gguf_open(&g, NULL, path, err, errlen); /* MODEL_E* codes are TRAIN_E* codes */
    if (rc) return rc;
    train_shape s;
    train_net *n = NULL;
    if (!(rc = read_shape(&g, &s, err, errlen)) && (rc = train_net_new(&n, &s, 0)))
        bad(err, errlen, path, "out of memory");
    for (int k = 0; !rc && k < n->n_tensors; k++) {
        const train_tensor *t = &n->tensors[k];
        rc = read_floats(&g, t->name, (uint64_t)t->cols, (uint64_t)t->rows * t->cols, 1, n->w + t->offset, err, errlen);
    }
    if (!rc) rc = read_state(&g, n, err, errlen);
    gguf_close(&g);
    if (rc) {
        train_net_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

const char *train_strerror(int code)
{
    switch (code) {
    case TRAIN_OK: return "success";
    case TRAIN_EINVAL: return "invalid argument";
    case TRAIN_ENOMEM: return "out of memory";
    case TRAIN_EIO: return "input/output error";
    case TRAIN_EFORMAT: return "bad file format";
    default: return "unknown error";
    }
}
