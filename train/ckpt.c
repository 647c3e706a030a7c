/* ckpt.c -- save the model as GGUF (through model/formats/gguf_write.h) and read a
 * checkpoint back for --resume.
 *
 * What is written (GGUF v3, keys as llama.cpp's "llama" architecture names them,
 * see ggml's docs/gguf.md): general.architecture = "llama", llama.* shape keys,
 * a SentencePiece-style ("llama") byte vocabulary, and the tensors token_embd,
 * blk.N.*, output_norm and output (omitted when tied).  Matrices are row-major
 * (out, in), so ne = {in, out}.  With the training state: keys train.step,
 * train.rng_lo/hi, train.version and 1-D F32 tensors train.adam_m, train.adam_v
 * holding the moments in the flat parameter order (net.c).
 *
 * The reader below parses only what a checkpoint needs; every length and
 * offset is checked against the file size before use.
 */
#include "train/train_internal.h"
#include "model/formats/gguf_write.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GT_F32 = 0, GT_F16 = 1 }; /* GGML tensor types used here */

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                  /* subnormal or zero in f16 */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 rounded to nearest even gives the subnormal mantissa */
        uint32_t m = (uint32_t)nearbyintf(a * 16777216.0f);
        return (uint16_t)(sign | m);
    }
    uint32_t e = (ax >> 23) - 127 + 15, mant = ax & 0x7FFFFFu;
    uint32_t h = (e << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* nearest even; may carry into e */
    return (uint16_t)(sign | h);
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, x;
    if (e == 0) {
        float f = (float)m / 16777216.0f;
        return sign ? -f : f;
    }
    if (e == 31) x = sign | 0x7F800000u | (m << 13);
    else x = sign | ((e - 15 + 127) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* ---- Writing ------------------------------------------------------------------------ */

static int put_vocab(gguf_writer *w)
{
    char names[TRAIN_VOCAB][8];
    const char *toks[TRAIN_VOCAB];
    float scores[TRAIN_VOCAB];
    int32_t types[TRAIN_VOCAB];
    for (int i = 0; i < TRAIN_VOCAB; i++) {
        if (i == TRAIN_UNK) toks[i] = "<unk>";
        else if (i == TRAIN_BOS) toks[i] = "<s>";
        else if (i == TRAIN_EOS) toks[i] = "</s>";
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

int train_net_save(const train_net *n, const char *path, int f16, int with_state,
                   char *err, size_t errlen)
{
    const train_shape *s = &n->shape;
    gguf_writer *w = gguf_writer_new();
    uint16_t *half = NULL;
    if (!w) return TRAIN_ENOMEM;
    int rc = 0;
    rc = rc ? rc : gguf_writer_kv_str(w, "general.architecture", "llama");
    rc = rc ? rc : gguf_writer_kv_str(w, "general.name", "lmserve-trained-bytes");
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
            int64_t ne[1] = {t->cols};
            rc = gguf_writer_tensor(w, t->name, GT_F32, ne, 1, data, cnt * 4);
            continue;
        }
        int64_t ne[2] = {t->cols, t->rows};
        if (f16) {
            half = realloc(half, cnt * 2);
            if (!half) { rc = TRAIN_ENOMEM; break; }
            for (size_t j = 0; j < cnt; j++) half[j] = f32_to_f16(data[j]);
            rc = gguf_writer_tensor(w, t->name, GT_F16, ne, 2, half, cnt * 2);
        } else {
            rc = gguf_writer_tensor(w, t->name, GT_F32, ne, 2, data, cnt * 4);
        }
    }
    if (!rc && with_state) {
        int64_t ne[1] = {(int64_t)n->n_params};
        rc = gguf_writer_tensor(w, "train.adam_m", GT_F32, ne, 1, n->m, n->n_params * 4);
        rc = rc ? rc : gguf_writer_tensor(w, "train.adam_v", GT_F32, ne, 1, n->v, n->n_params * 4);
    }
    if (!rc) rc = gguf_writer_write(w, path, err, errlen);
    else if (err && errlen) snprintf(err, errlen, "%s: %s", path, train_strerror(rc));
    free(half);
    gguf_writer_free(w);
    return rc;
}

/* ---- Reading ------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *p;
    size_t len, pos;
    int bad;
} rd;

static int rd_take(rd *r, void *out, size_t n)
{
    if (r->bad || n > r->len - r->pos) { r->bad = 1; if (out) memset(out, 0, n); return -1; }
    if (out) memcpy(out, r->p + r->pos, n);
    r->pos += n;
    return 0;
}
static uint32_t rd_u32(rd *r) { uint32_t v; rd_take(r, &v, 4); return v; }
static uint64_t rd_u64(rd *r) { uint64_t v; rd_take(r, &v, 8); return v; }

/* A string as (pointer, length) into the buffer. */
static const char *rd_str(rd *r, uint64_t *n)
{
    *n = rd_u64(r);
    if (r->bad || *n > r->len - r->pos) { r->bad = 1; *n = 0; return ""; }
    const char *s = (const char *)r->p + r->pos;
    r->pos += *n;
    return s;
}

static size_t type_size(uint32_t t)
{
    static const size_t sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < 13 ? sz[t] : 0;
}

/* Skip a value of type t (nesting depth limited). */
static void rd_skip(rd *r, uint32_t t, int depth)
{
    if (t == 8) { uint64_t n; rd_str(r, &n); return; }
    if (t == 9) {
        uint32_t et = rd_u32(r);
        uint64_t n = rd_u64(r);
        if (depth > 2 || et > 12) { r->bad = 1; return; }
        size_t es = type_size(et);
        if (es) {
            if (n > (r->len - r->pos) / es) { r->bad = 1; return; }
            r->pos += n * es;
        } else {
            for (uint64_t i = 0; i < n && !r->bad; i++) rd_skip(r, et, depth + 1);
        }
        return;
    }
    size_t s = type_size(t);
    if (!s) { r->bad = 1; return; }
    rd_take(r, NULL, s);
}

typedef struct {
    char name[64];
    uint32_t type, n_dims;
    uint64_t ne[4], offset;
} tinfo;

static int key_is(const char *k, uint64_t kn, const char *want)
{
    return kn == strlen(want) && !memcmp(k, want, kn);
}

int train_net_load(train_net **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    int rc = TRAIN_EFORMAT;
    const char *why = "not a GGUF file";
    unsigned char *buf = NULL;
    tinfo *ti = NULL;
    train_net *n = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (err && errlen) snprintf(err, errlen, "%s: cannot open", path);
        return TRAIN_EIO;
    }
    long flen = -1;
    if (!fseek(f, 0, SEEK_END)) flen = ftell(f);
    if (flen < 0 || fseek(f, 0, SEEK_SET)) { fclose(f); rc = TRAIN_EIO; why = "cannot read"; goto fail; }
    buf = malloc(flen ? (size_t)flen : 1);
    if (!buf) { fclose(f); rc = TRAIN_ENOMEM; why = "out of memory"; goto fail; }
    if (fread(buf, 1, (size_t)flen, f) != (size_t)flen) { fclose(f); rc = TRAIN_EIO; why = "short read"; goto fail; }
    fclose(f);

    rd r = {buf, (size_t)flen, 0, 0};
    char magic[4];
    rd_take(&r, magic, 4);
    uint32_t version = rd_u32(&r);
    uint64_t n_t = rd_u64(&r), n_kv = rd_u64(&r);
    if (r.bad || memcmp(magic, "GGUF", 4) || version < 2 || version > 3) goto fail;
    if (n_t > 100000 || n_kv > 100000) { why = "implausible counts"; goto fail; }

    train_shape s = {0};
    s.vocab_size = TRAIN_VOCAB;
    s.rope_theta = 10000.0f;
    s.norm_eps = 1e-5f;
    uint32_t step = 0, rng_lo = 0, rng_hi = 0, alignment = 32;
    int have_state = 0, n_vocab = -1;
    char archname[16] = "";
    for (uint64_t i = 0; i < n_kv && !r.bad; i++) {
        uint64_t kn;
        const char *k = rd_str(&r, &kn);
        uint32_t t = rd_u32(&r);
        if (r.bad) break;
        int *dst = NULL;
        uint32_t *udst = NULL;
        float *fdst = NULL;
        if (key_is(k, kn, "llama.context_length")) dst = &s.ctx_len;
        else if (key_is(k, kn, "llama.embedding_length")) dst = &s.dim;
        else if (key_is(k, kn, "llama.block_count")) dst = &s.n_layers;
        else if (key_is(k, kn, "llama.feed_forward_length")) dst = &s.hidden_dim;
        else if (key_is(k, kn, "llama.attention.head_count")) dst = &s.n_heads;
        else if (key_is(k, kn, "llama.attention.head_count_kv")) dst = &s.n_kv_heads;
        else if (key_is(k, kn, "train.step")) udst = &step;
        else if (key_is(k, kn, "train.rng_lo")) udst = &rng_lo;
        else if (key_is(k, kn, "train.rng_hi")) udst = &rng_hi;
        else if (key_is(k, kn, "general.alignment")) udst = &alignment;
        else if (key_is(k, kn, "llama.rope.freq_base")) fdst = &s.rope_theta;
        else if (key_is(k, kn, "llama.attention.layer_norm_rms_epsilon")) fdst = &s.norm_eps;
        if ((dst || udst) && t == 4) {
            uint32_t v = rd_u32(&r);
            if (dst) *dst = v > 1000000 ? -1 : (int)v;
            else *udst = v;
            if (udst == &step) have_state = 1;
        } else if (fdst && t == 6) {
            rd_take(&r, fdst, 4);
        } else if (key_is(k, kn, "general.architecture") && t == 8) {
            uint64_t vn;
            const char *v = rd_str(&r, &vn);
            snprintf(archname, sizeof archname, "%.*s", (int)(vn < 15 ? vn : 15), v);
        } else if (key_is(k, kn, "tokenizer.ggml.tokens") && t == 9) {
            size_t save = r.pos;
            uint32_t et = rd_u32(&r);
            uint64_t cnt = rd_u64(&r);
            n_vocab = et == 8 && cnt < 1000000 ? (int)cnt : -2;
            r.pos = save;
            rd_skip(&r, t, 0);
        } else {
            rd_skip(&r, t, 0);
        }
    }
    if (r.bad) { why = "truncated or malformed metadata"; goto fail; }
    if (strcmp(archname, "llama")) { why = "not a llama model"; goto fail; }
    if (n_vocab != TRAIN_VOCAB) { why = "vocabulary is not the trainer's 259 byte tokens"; goto fail; }
    if (alignment == 0 || alignment > 65536 || (alignment & (alignment - 1))) { why = "bad alignment"; goto fail; }

    ti = calloc(n_t ? n_t : 1, sizeof *ti);
    if (!ti) { rc = TRAIN_ENOMEM; why = "out of memory"; goto fail; }
    int has_output = 0;
    for (uint64_t i = 0; i < n_t && !r.bad; i++) {
        uint64_t nn;
        const char *nm = rd_str(&r, &nn);
        if (nn >= sizeof ti[i].name) { r.bad = 1; break; }
        memcpy(ti[i].name, nm, nn);
        ti[i].n_dims = rd_u32(&r);
        if (ti[i].n_dims < 1 || ti[i].n_dims > 4) { r.bad = 1; break; }
        for (uint32_t d = 0; d < ti[i].n_dims; d++) ti[i].ne[d] = rd_u64(&r);
        ti[i].type = rd_u32(&r);
        ti[i].offset = rd_u64(&r);
        if (!strcmp(ti[i].name, "output.weight")) has_output = 1;
    }
    if (r.bad) { why = "truncated or malformed tensor table"; goto fail; }
    size_t data0 = (r.pos + alignment - 1) / alignment * alignment;
    s.tied = !has_output;
    char serr[128];
    if (train_shape_check(&s, serr, sizeof serr)) { why = "unsupported shape"; goto fail; }
    rc = train_net_new(&n, &s, 0);
    if (rc) { why = "out of memory"; goto fail; }
    rc = TRAIN_EFORMAT;

    int found_m = 0, found_v = 0;
    for (int k = 0; k < n->n_tensors; k++) {
        const train_tensor *t = &n->tensors[k];
        const tinfo *x = NULL;
        for (uint64_t i = 0; i < n_t; i++)
            if (!strcmp(ti[i].name, t->name)) { x = &ti[i]; break; }
        if (!x) { why = "a weight tensor is missing"; goto fail; }
        uint64_t cnt = 1;
        for (uint32_t d = 0; d < x->n_dims; d++) cnt *= x->ne[d];
        if (x->ne[0] != (uint64_t)t->cols || cnt != (uint64_t)t->rows * t->cols) {
            why = "a weight tensor has the wrong shape"; goto fail;
        }
        size_t es = x->type == GT_F32 ? 4 : x->type == GT_F16 ? 2 : 0;
        if (!es) { why = "weights must be F32 or F16"; goto fail; }
        if (x->offset > (size_t)flen || data0 > (size_t)flen - x->offset ||
            cnt * es > (size_t)flen - data0 - x->offset) { why = "tensor data out of bounds"; goto fail; }
        const unsigned char *src = buf + data0 + x->offset;
        float *dst = n->w + t->offset;
        if (es == 4) memcpy(dst, src, cnt * 4);
        else for (uint64_t j = 0; j < cnt; j++) {
            uint16_t h;
            memcpy(&h, src + 2 * j, 2);
            dst[j] = f16_to_f32(h);
        }
    }
    for (uint64_t i = 0; i < n_t; i++) {
        int is_m = !strcmp(ti[i].name, "train.adam_m"), is_v = !strcmp(ti[i].name, "train.adam_v");
        if (!is_m && !is_v) continue;
        const tinfo *x = &ti[i];
        if (x->type != GT_F32 || x->n_dims != 1 || x->ne[0] != n->n_params) { why = "bad optimizer state"; goto fail; }
        if (x->offset > (size_t)flen || data0 > (size_t)flen - x->offset ||
            n->n_params * 4 > (size_t)flen - data0 - x->offset) { why = "tensor data out of bounds"; goto fail; }
        memcpy(is_m ? n->m : n->v, buf + data0 + x->offset, n->n_params * 4);
        if (is_m) found_m = 1; else found_v = 1;
    }
    if (have_state && !(found_m && found_v)) { why = "training state incomplete"; goto fail; }
    n->step = have_state ? step : 0;
    n->rng = ((uint64_t)rng_hi << 32) | rng_lo;
    free(buf);
    free(ti);
    *out = n;
    return 0;
fail:
    if (err && errlen) snprintf(err, errlen, "%s: %s", path, why);
    free(buf);
    free(ti);
    train_net_free(n);
    return rc;
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
