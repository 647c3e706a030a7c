/* quantize.c -- model_quantize: a GGUF model file to another GGUF file with its
 * matrices in a smaller type (the `lmserve quantize` command).
 *
 * Design
 * ------
 * The output is what llama.cpp's llama-quantize (without an importance matrix)
 * writes for the same input and file type, so files made here behave like the
 * ones people download:
 *   - metadata: every key/value pair of the input in order (except the split keys,
 *     and general.alignment unless it is 32, the alignment written), then
 *     general.quantization_version = 2 and general.file_type = llama.cpp's id of the
 *     recipe;
 *   - tensors in llama.cpp's order: those outside the blocks by name, then block by
 *     block (numerically), by name within a block;
 *   - which tensors are quantized: two-dimensional ones named "*weight", except
 *     norms and learned position embeddings (the others are copied as they are);
 *   - their type: the recipe's base type, changed per tensor by the recipe
 *     (pick_type: e.g. Q4_K_M gives attn_v and ffn_down Q6_K in the layers
 *     use_more_bits selects, the classifier Q6_K), then the shape fall-back
 *     (fallback_type: rows that are not whole blocks of the type get Q4_0, Q5_0,
 *     Q5_1 or Q8_0 for Q2_K/Q3_K, Q4_K, Q5_K, Q6_K, and F16 when even 32 does
 *     not divide them);
 *   - the bytes: quant_quantize_rows (quant.h), the reference quantizers.
 * Rows are quantized on n_threads threads, each tensor split in row ranges; the
 * result does not depend on the split.
 */
#include "model/formats/gguf.h"
#include "model/formats/gguf_write.h"
#include "model/loader.h"
#include "model/compute/pool.h"
#include "model/compute/quant.h"
#include "model/half.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- Recipes ------------------------------------------------------------------------ */

enum { /* llama.cpp's llama_ftype ids, written as general.file_type */
       FT_F32 = 0,
       FT_F16 = 1,
       FT_Q4_0 = 2,
       FT_Q4_1 = 3,
       FT_Q8_0 = 7,
       FT_Q5_0 = 8,
       FT_Q5_1 = 9,
       FT_Q2_K = 10,
       FT_Q3_K_S = 11,
       FT_Q3_K_M = 12,
       FT_Q3_K_L = 13,
       FT_Q4_K_S = 14,
       FT_Q4_K_M = 15,
       FT_Q5_K_S = 16,
       FT_Q5_K_M = 17,
       FT_Q6_K = 18,
       FT_BF16 = 32,
};

typedef struct {
    const char *name;
    int ftype;
    int base; /* MT_* */
    int pure; /* a plain K type: every tensor in the base type (llama-quantize --pure) */
} recipe;

static const recipe recipes[] = {
    { "F32", FT_F32, MT_F32, 0 },        { "F16", FT_F16, MT_F16, 0 },        { "BF16", FT_BF16, MT_BF16, 0 },
    { "Q4_0", FT_Q4_0, MT_Q4_0, 0 },     { "Q4_1", FT_Q4_1, MT_Q4_1, 0 },     { "Q5_0", FT_Q5_0, MT_Q5_0, 0 },
    { "Q5_1", FT_Q5_1, MT_Q5_1, 0 },     { "Q8_0", FT_Q8_0, MT_Q8_0, 0 },     { "Q2_K", FT_Q2_K, MT_Q2_K, 0 },
    { "Q3_K_S", FT_Q3_K_S, MT_Q3_K, 0 }, { "Q3_K_M", FT_Q3_K_M, MT_Q3_K, 0 }, { "Q3_K_L", FT_Q3_K_L, MT_Q3_K, 0 },
    { "Q4_K_S", FT_Q4_K_S, MT_Q4_K, 0 }, { "Q4_K_M", FT_Q4_K_M, MT_Q4_K, 0 }, { "Q5_K_S", FT_Q5_K_S, MT_Q5_K, 0 },
    { "Q5_K_M", FT_Q5_K_M, MT_Q5_K, 0 }, { "Q6_K", FT_Q6_K, MT_Q6_K, 0 },     { "Q3_K", FT_Q3_K_M, MT_Q3_K, 1 },
    { "Q4_K", FT_Q4_K_M, MT_Q4_K, 1 },   { "Q5_K", FT_Q5_K_M, MT_Q5_K, 1 },
};

const char *model_quantize_types(void)
{
    return "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S "
           "Q5_K_M Q6_K, and Q3_K Q4_K Q5_K (every matrix that type)";
}

/* Tensor categories, from the names (llama.cpp's tensor_get_category). */
enum {
    C_OTHER,
    C_OUTPUT,
    C_TOKEN_EMBD,
    C_ATTN_V,
    C_ATTN_K,
    C_ATTN_Q,
    C_ATTN_OUT,
    C_FFN_UP,
    C_FFN_GATE,
    C_FFN_DOWN,
    C_ATTN_QKV
};

static int has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static int category(const char *name)
{
    if (!strcmp(name, "output.weight")) return C_OUTPUT;
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "per_layer_token_embd.weight")) return C_TOKEN_EMBD;
    if (has(name, "attn_qkv.weight")) return C_ATTN_QKV;
    if (has(name, "attn_kv_b.weight") || has(name, "attn_v.weight")) return C_ATTN_V;
    if (has(name, "attn_k.weight")) return C_ATTN_K;
    if (has(name, "attn_q.weight")) return C_ATTN_Q;
    if (has(name, "attn_output.weight")) return C_ATTN_OUT;
    if (has(name, "ffn_up")) return C_FFN_UP;
    if (has(name, "ffn_gate")) return C_FFN_GATE;
    if (has(name, "ffn_down")) return C_FFN_DOWN;
    return C_OTHER;
}

/* Quantizable: 2-D "*weight" tensors but norms, position embeddings, token types,
 * expert routers (the cases of llama.cpp's tensor_allows_quantization that can occur
 * in the architectures read here and their relatives). */
static int quantizable(const gguf_tensor *t, const char *name)
{
    size_t n = strlen(name);
    if (t->n_dims < 2 || n < 6 || strcmp(name + n - 6, "weight") != 0) return 0;
    if (has(name, "_norm.weight") || has(name, "ffn_gate_inp.weight")) return 0;
    if (!strcmp(name, "position_embd.weight") || !strcmp(name, "token_types.weight")) return 0;
    return 1;
}

typedef struct {
    const recipe *r;
    int n_layers, n_gqa, is_70b, tied;
    int n_attn_v, i_attn_v, i_ffn_down;
} qstate;

static int use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

/* llama.cpp's per-tensor recipe for the file types above (dense models: no experts). */
static int pick_type(qstate *s, int cat, int64_t ncols)
{
    int ft = s->r->ftype, t = s->r->base;
    if (cat == C_OUTPUT || (s->tied && cat == C_TOKEN_EMBD)) {
        if (ncols % quant_block_elems(t)) return MT_Q8_0;
        return t != MT_Q8_0 ? MT_Q6_K : t;
    }
    if (cat == C_TOKEN_EMBD) return t;
    if (cat == C_ATTN_V || cat == C_ATTN_QKV) {
        if (ft == FT_Q2_K)
            t = s->n_gqa >= 4 ? MT_Q4_K : MT_Q3_K;
        else if (ft == FT_Q3_K_M)
            t = s->i_attn_v < 2 ? MT_Q5_K : MT_Q4_K;
        else if (ft == FT_Q3_K_L)
            t = MT_Q5_K;
        else if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && use_more_bits(s->i_attn_v, s->n_attn_v))
            t = MT_Q6_K;
        else if (ft == FT_Q4_K_S && s->i_attn_v < 4)
            t = MT_Q5_K;
        if (s->is_70b && (t == MT_Q3_K || t == MT_Q4_K)) t = MT_Q5_K;
        s->i_attn_v++;
        return t;
    }
    if (cat == C_FFN_DOWN) {
        int i = s->i_ffn_down++, n = s->n_layers;
        if (ft == FT_Q2_K)
            t = MT_Q3_K;
        else if (ft == FT_Q3_K_M)
            t = i < n / 16 ? MT_Q5_K : MT_Q4_K;
        else if (ft == FT_Q3_K_L)
            t = MT_Q5_K;
        else if (ft == FT_Q4_K_M && use_more_bits(i, n))
            t = MT_Q6_K;
        else if (ft == FT_Q5_K_M && use_more_bits(i, n))
            t = MT_Q6_K;
        else if (ft == FT_Q4_K_S && i < n / 8)
            t = MT_Q5_K;
        return t;
    }
    if (cat == C_ATTN_OUT) {
        if (ft == FT_Q2_K)
            t = MT_Q3_K;
        else if (ft == FT_Q3_K_M)
            t = MT_Q4_K;
        else if (ft == FT_Q3_K_L)
            t = MT_Q5_K;
    }
    return t;
}

/* Rows that are not whole blocks of t: a 32-weight type instead, else F16. */
static int fallback_type(int t, int64_t ncols, int *fell)
{
    int blk = quant_block_elems(t);
    *fell = 0;
    if (blk <= 1 || ncols % blk == 0) return t;
    *fell = 1;
    switch (t) {
    case MT_Q2_K:
    case MT_Q3_K: t = MT_Q4_0; break;
    case MT_Q4_K: t = MT_Q5_0; break;
    case MT_Q5_K: t = MT_Q5_1; break;
    case MT_Q6_K: t = MT_Q8_0; break;
    default: break;
    }
    return ncols % quant_block_elems(t) ? MT_F16 : t;
}

/* ---- Conversion --------------------------------------------------------------------- */

typedef struct {
    const gguf_tensor *src;
    int dst_type;
    int64_t rows, cols;
    uint8_t *dst;
    int failed;    /* a task could not allocate its row buffer */
    int nonfinite; /* a weight is NaN or infinite */
} conv_job;

/* Rows of src as floats (F32 / F16 / BF16 / quantized). */
static void rows_to_f32(const gguf_tensor *t, int64_t r0, int64_t n, int64_t cols, float *out)
{
    size_t rb = mtensor_row_bytes(t->type, (int)cols);
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *p = t->data + (size_t)(r0 + r) * rb;
        float *o = out + (size_t)r * cols;
        switch (t->type) {
        case MT_F32: memcpy(o, p, (size_t)cols * 4); break;
        case MT_F16:
        case MT_BF16:
            for (int64_t i = 0; i < cols; i++) {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                o[i] = t->type == MT_F16 ? model_f16_to_f32(h) : model_bf16_to_f32(h);
            }
            break;
        default: quant_dequantize_row(t->type, p, o, (int)cols); break;
        }
    }
}

/* n floats into type (F32, F16, BF16 or quantized; n a multiple of the block). */
static void store_f32(int type, const float *src, uint8_t *d, int64_t nrows, int64_t cols)
{
    size_t cnt = (size_t)nrows * (size_t)cols;
    switch (type) {
    case MT_F32: memcpy(d, src, cnt * 4); break;
    case MT_F16:
        for (size_t i = 0; i < cnt; i++) {
            uint16_t h = model_f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case MT_BF16: /* round to nearest even, a NaN kept a quiet NaN (as ggml's fp32_to_bf16) */
        for (size_t i = 0; i < cnt; i++) {
            uint32_t b;
            memcpy(&b, &src[i], 4);
            uint16_t h = (b & 0x7fffffff) > 0x7f800000 ? (uint16_t)((b >> 16) | 64)
                                                       : (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    default: quant_quantize_rows(type, src, d, nrows, (int)cols); break;
    }
}

#define CONV_ROWS 64 /* rows converted per step of a task (a float copy of them is kept) */

static void conv_task(void *arg, int task, int n_tasks)
{
    conv_job *j = arg;
    int64_t r0 = j->rows * task / n_tasks, r1 = j->rows * (task + 1) / n_tasks;
    size_t rb = mtensor_row_bytes(j->dst_type, (int)j->cols);
    float *buf = malloc((size_t)CONV_ROWS * (size_t)j->cols * sizeof(float));
    if (!buf) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t r = r0; r < r1; r += CONV_ROWS) {
        int64_t n = r1 - r < CONV_ROWS ? r1 - r : CONV_ROWS;
        rows_to_f32(j->src, r, n, j->cols, buf);
        for (size_t i = 0; i < (size_t)n * (size_t)j->cols; i++)
            if (!isfinite(buf[i])) {
                __atomic_store_n(&j->nonfinite, 1, __ATOMIC_RELAXED);
                break;
            }
        store_f32(j->dst_type, buf, j->dst + (size_t)r * rb, n, j->cols);
    }
    free(buf);
}

/* ---- The file ----------------------------------------------------------------------- */

static int tensor_layer(const gguf_str *name)
{
    char buf[32];
    size_t n = name->len < sizeof buf - 1 ? name->len : sizeof buf - 1;
    memcpy(buf, name->s, n);
    buf[n] = '\0';
    int l = -1;
    if (sscanf(buf, "blk.%d.", &l) != 1) l = -1;
    return l;
}

static int cmp_gstr(const gguf_str *a, const gguf_str *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* llama.cpp's tensor order: by block number (tensors outside the blocks first), then name */
static int cmp_tensor_order(const void *pa, const void *pb)
{
    const gguf_tensor *a = *(const gguf_tensor *const *)pa, *b = *(const gguf_tensor *const *)pb;
    int la = tensor_layer(&a->name), lb = tensor_layer(&b->name);
    if (la != lb) return la < lb ? -1 : 1;
    return cmp_gstr(&a->name, &b->name);
}

static const gguf_kv *find_kv_prefixed(const gguf_file *g, const char *arch, const char *key)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return gguf_find(g, k);
}

/* The serialized bytes of pair i's value: from its value offset to the next pair's key
 * (or to the first tensor info after the last pair).  The reader checked them. */
static size_t kv_value_len(const gguf_file *g, size_t i)
{
    size_t end;
    if (i + 1 < g->n_kv)
        end = (size_t)((const uint8_t *)g->kv[i + 1].key.s - g->data) - 8;
    else
        end = (size_t)((const uint8_t *)g->tensors[0].name.s - g->data) - 8;
    return end - g->kv[i].val_off;
}

#define QERR(code, ...) model_errf(err, errlen, code, in, __VA_ARGS__)

int model_quantize(const char *in, const char *out, const model_quantize_opts *opts, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!in || !out || !opts || !opts->type) return MODEL_EINVAL;
    const recipe *r = NULL;
    for (size_t i = 0; i < sizeof recipes / sizeof recipes[0]; i++)
        if (!strcasecmp(opts->type, recipes[i].name)) r = &recipes[i];
    if (!r)
        return model_errf(err, errlen, MODEL_EINVAL, in, "unknown type '%s' (known: %s)", opts->type,
                          model_quantize_types());
    gguf_file gf;
    int rc = gguf_open(&gf, NULL, in, err, errlen);
    if (rc) return rc;
    gguf_file *g = &gf;
    gguf_writer *w = gguf_writer_new();
    const gguf_tensor **order = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *order);
    model_pool *pool = model_pool_new(opts->n_threads);
    uint8_t *dst = NULL;
    if (!w || !order || !pool) {
        rc = QERR(MODEL_ENOMEM, "out of memory");
        goto done;
    }
    if (g->n_tensors == 0) {
        rc = QERR(MODEL_EFORMAT, "the file has no tensors");
        goto done;
    }

    /* hyper-parameters the recipes look at */
    char arch[64] = "llama";
    gguf_str as;
    const gguf_kv *akv = gguf_find(g, "general.architecture");
    if (akv && gguf_kv_string(g, akv, &as) && as.len < sizeof arch) {
        memcpy(arch, as.s, as.len);
        arch[as.len] = '\0';
    }
    qstate st = { .r = r, .tied = 1 };
    uint64_t v;
    const gguf_kv *kv = find_kv_prefixed(g, arch, "block_count");
    if (kv && gguf_kv_uint(g, kv, &v) && v < 100000) st.n_layers = (int)v;
    uint64_t nh = 0, nkv = 0;
    kv = find_kv_prefixed(g, arch, "attention.head_count");
    if (kv) gguf_kv_uint(g, kv, &nh);
    kv = find_kv_prefixed(g, arch, "attention.head_count_kv");
    if (!kv || !gguf_kv_uint(g, kv, &nkv)) nkv = nh;
    st.n_gqa = nkv ? (int)(nh / nkv) : 1;
    st.is_70b = !strcmp(arch, "llama") && st.n_layers == 80;
    for (size_t i = 0; i < g->n_tensors; i++) {
        order[i] = &g->tensors[i];
        char name[260];
        size_t n = g->tensors[i].name.len;
        memcpy(name, g->tensors[i].name.s, n);
        name[n] = '\0';
        int c = category(name);
        if (c == C_ATTN_V || c == C_ATTN_QKV) st.n_attn_v++;
        if (c == C_OUTPUT) st.tied = 0;
    }
    qsort(order, g->n_tensors, sizeof *order, cmp_tensor_order);

    /* metadata */
    for (size_t i = 0; i < g->n_kv && !rc; i++) {
        const gguf_kv *k = &g->kv[i];
        char key[260];
        if (k->key.len >= sizeof key) continue; /* no such keys in model files */
        memcpy(key, k->key.s, k->key.len);
        key[k->key.len] = '\0';
        if (!strcmp(key, "general.quantization_version") || !strcmp(key, "general.file_type") ||
            !strncmp(key, "split.", 6))
            continue;
        if (!strcmp(key, "general.alignment") && g->alignment != 32) continue;
        rc = gguf_writer_kv_raw(w, key, k->type, g->data + k->val_off, kv_value_len(g, i));
    }
    if (!rc) rc = gguf_writer_kv_u32(w, "general.quantization_version", 2);
    if (!rc) rc = gguf_writer_kv_u32(w, "general.file_type", (uint32_t)r->ftype);
    if (rc) {
        rc = QERR(rc, "out of memory");
        goto done;
    }

    size_t total_in = 0, total_out = 0;
    int n_fallback = 0;
    for (size_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = order[i];
        char name[260];
        memcpy(name, t->name.s, t->name.len);
        name[t->name.len] = '\0';
        int64_t cols = (int64_t)t->ne[0], rows = (int64_t)(t->n_elems / t->ne[0]);
        int type = t->type, fell = 0;
        if (quantizable(t, name)) {
            type = r->base;
            if (quant_is_quantized(r->base)) {
                if (!r->pure) type = pick_type(&st, category(name), cols);
                type = fallback_type(type, cols, &fell);
                n_fallback += fell;
            }
        }
        int64_t ne[4];
        for (int d = 0; d < 4; d++) ne[d] = (int64_t)t->ne[d];
        size_t nbytes;
        int ok = 1;
        if (type == t->type) {
            rc = gguf_writer_tensor(w, name, type, ne, t->n_dims, t->data, t->nbytes);
            nbytes = t->nbytes;
        } else {
            nbytes = mtensor_bytes(type, t->n_elems, &ok);
            if (!ok || cols > INT32_MAX) {
                rc = QERR(MODEL_EFORMAT, "tensor '%s' cannot be stored as %s", name, mtensor_type_name(type));
                goto done;
            }
            dst = malloc(nbytes ? nbytes : 1);
            if (!dst) {
                rc = QERR(MODEL_ENOMEM, "out of memory (tensor '%s', %zu bytes)", name, nbytes);
                goto done;
            }
            if (quant_is_quantized(t->type) && !opts->allow_requantize) {
                rc = QERR(MODEL_EINVAL,
                          "tensor '%s' is already %s: quantizing it again loses more "
                          "(allow it with --allow-requantize)",
                          name, mtensor_type_name(t->type));
                goto done;
            }
            conv_job job = { t, type, rows, cols, dst, 0, 0 };
            int nt = model_pool_size(pool) * 4;
            if (rows < nt) nt = rows > 0 ? (int)rows : 1;
            model_pool_run(pool, conv_task, &job, nt);
            if (job.failed) {
                rc = QERR(MODEL_ENOMEM, "out of memory (converting tensor '%s')", name);
                goto done;
            }
            if (job.nonfinite) {
                rc = QERR(MODEL_EFORMAT, "tensor '%s' holds a NaN or infinite weight", name);
                goto done;
            }
            rc = gguf_writer_tensor(w, name, type, ne, t->n_dims, dst, nbytes);
            free(dst);
            dst = NULL;
        }
        if (rc) {
            rc = QERR(rc, "out of memory");
            goto done;
        }
        total_in += t->nbytes;
        total_out += nbytes;
        if (opts->log) {
            char line[400];
            snprintf(line, sizeof line, "[%4zu/%4zu] %-32s %6s -> %-6s %9.3f MiB%s", i + 1, g->n_tensors, name,
                     mtensor_type_name(t->type) ? mtensor_type_name(t->type) : "?", mtensor_type_name(type),
                     (double)nbytes / 1048576.0, fell ? "  (rows not whole blocks: fall-back type)" : "");
            opts->log(opts->log_ctx, line);
        }
    }
    rc = gguf_writer_write(w, out, err, errlen);
    if (!rc && opts->log) {
        char line[200];
        snprintf(line, sizeof line, "%s: %.2f MiB -> %.2f MiB (%s%s), %d tensor(s) fell back", out,
                 (double)total_in / 1048576.0, (double)total_out / 1048576.0, r->name, r->pure ? ", every matrix" : "",
                 n_fallback);
        opts->log(opts->log_ctx, line);
    }
done:
    free(dst);
    free(order);
    model_pool_free(pool);
    gguf_writer_free(w);
    gguf_close(g);
    return rc;
}
