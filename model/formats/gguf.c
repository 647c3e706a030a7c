/* gguf.c -- read GGUF v2/v3 files (a private read-only copy, gguf.h).
 *
 * Layout (from the GGUF specification in ggml's docs/gguf.md; all integers
 * little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
 * key/value pairs (string key, u32 value type, value), then n_tensors tensor
 * infos (string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset), then
 * padding to general.alignment (default 32), then the data section; each
 * tensor's offset is relative to the data section and aligned.  Strings are
 * u64 length + bytes (no NUL).  Arrays are u32 element type + u64 count + items.
 *
 * Everything is parsed into small tables first, with every length, count and
 * offset checked against the file size (with overflow checks) before the data
 * is used.  Matrices stay in the copy; F16/BF16 vectors are converted to F32
 * copies on the heap.  The model readers built on this are load_gguf.c (llama,
 * and the dispatch by architecture) and gguf_gpt2.c. */
#include "model/formats/gguf.h"
#include "model/half.h"
#include "model/loader.h"
#include "model/compute/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t gv_scalar_size(uint32_t t)
{
    static const size_t sz[GGUF_TYPE_COUNT] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
    return t < GGUF_TYPE_COUNT ? sz[t] : 0;
}

static const char *gv_name(uint32_t t)
{
    static const char *names[GGUF_TYPE_COUNT] = { "u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                  "bool", "string", "array", "u64", "i64", "f64" };
    return t < GGUF_TYPE_COUNT ? names[t] : "unknown";
}

/* ---- Reader with bounds checks ------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t size, off;
} cursor;

static int cur_need(const cursor *c, uint64_t n) { return c->off <= c->size && n <= c->size - c->off; }

static int cur_u32(cursor *c, uint32_t *v)
{
    if (!cur_need(c, 4)) return 0;
    memcpy(v, c->p + c->off, 4);
    c->off += 4;
    return 1;
}

static int cur_u64(cursor *c, uint64_t *v)
{
    if (!cur_need(c, 8)) return 0;
    memcpy(v, c->p + c->off, 8);
    c->off += 8;
    return 1;
}

/* A string: sets *s to its bytes inside the file. */
static int cur_str(cursor *c, gguf_str *s)
{
    uint64_t n;
    if (!cur_u64(c, &n) || !cur_need(c, n)) return 0;
    s->s = (const char *)c->p + c->off;
    s->len = (size_t)n;
    c->off += (size_t)n;
    return 1;
}

int gguf_str_eq(gguf_str s, const char *z)
{
    size_t n = strlen(z);
    return s.len == n && memcmp(s.s, z, n) == 0;
}

const char *gguf_str_show(gguf_str s, char *buf, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < s.len && n + 4 < cap; i++) {
        unsigned char ch = (unsigned char)s.s[i];
        buf[n++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (s.len > 0 && n < s.len && n + 4 <= cap) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* Skip one value of type t (validating it); depth limits nested arrays. */
static int skip_value(cursor *c, uint32_t t, int depth, uint32_t *arr_type, uint64_t *arr_n, const char **why)
{
    size_t sz = gv_scalar_size(t);
    if (sz) {
        if (!cur_need(c, sz)) {
            *why = "value runs past the end of the file";
            return 0;
        }
        c->off += sz;
        return 1;
    }
    if (t == GGUF_TYPE_STRING) {
        gguf_str s;
        if (!cur_str(c, &s)) {
            *why = "string runs past the end of the file";
            return 0;
        }
        return 1;
    }
    if (t != GGUF_TYPE_ARRAY) {
        *why = "unknown value type";
        return 0;
    }
    uint32_t et;
    uint64_t n;
    if (!cur_u32(c, &et) || !cur_u64(c, &n)) {
        *why = "array header runs past the end of the file";
        return 0;
    }
    if (arr_type) *arr_type = et;
    if (arr_n) *arr_n = n;
    size_t esz = gv_scalar_size(et);
    if (esz) {
        uint64_t bytes;
        if (!mul_ok(n, esz, &bytes) || !cur_need(c, bytes)) {
            *why = "array is longer than the rest of the file";
            return 0;
        }
        c->off += (size_t)bytes;
        return 1;
    }
    if (et == GGUF_TYPE_STRING) {
        /* every string takes at least 8 bytes: reject absurd counts before walking */
        if (n > (c->size - c->off) / 8) {
            *why = "array is longer than the rest of the file";
            return 0;
        }
        for (uint64_t i = 0; i < n; i++) {
            gguf_str s;
            if (!cur_str(c, &s)) {
                *why = "string in array runs past the end of the file";
                return 0;
            }
        }
        return 1;
    }
    if (et == GGUF_TYPE_ARRAY) {
        if (depth >= 2) {
            *why = "arrays nested too deeply";
            return 0;
        }
        if (n > (c->size - c->off) / 12) {
            *why = "array is longer than the rest of the file";
            return 0;
        }
        for (uint64_t i = 0; i < n; i++)
            if (!skip_value(c, GGUF_TYPE_ARRAY, depth + 1, NULL, NULL, why)) return 0;
        return 1;
    }
    *why = "array of unknown element type";
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    const gguf_str *x = *(const gguf_str *const *)a, *y = *(const gguf_str *const *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int cmp_str(const gguf_str *x, const gguf_str *y) { return cmp_str_ptr(&x, &y); }

static int cmp_tensor_ptr(const void *a, const void *b)
{
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return cmp_str(&x->name, &y->name);
}

/* Any string that appears twice among n strings found every `stride` bytes from first
 * (sorting pointers: O(n log n) even for hostile counts).  *dup = NULL if none. */
static int find_duplicate(const gguf_str *first, size_t stride, size_t n, const gguf_str **dup)
{
    *dup = NULL;
    if (n < 2) return MODEL_OK;
    const gguf_str **v = malloc(n * sizeof *v);
    if (!v) return MODEL_ENOMEM;
    for (size_t i = 0; i < n; i++) v[i] = (const gguf_str *)((const char *)first + i * stride);
    qsort(v, n, sizeof *v, cmp_str_ptr);
    for (size_t i = 1; i < n && !*dup; i++)
        if (cmp_str_ptr(&v[i - 1], &v[i]) == 0) *dup = v[i];
    free(v);
    return MODEL_OK;
}

/* ---- Parsing the header, metadata and tensor infos -------------------------------------- */

#define GERR(...) model_errf(err, errlen, MODEL_EFORMAT, g->path, __VA_ARGS__)

static int parse(gguf_file *g, char *err, size_t errlen)
{
    cursor c = { g->data, g->size, 0 };
    char show[96];
    if (g->size < 4 || memcmp(g->data, "GGUF", 4) != 0) return GERR("not a GGUF file (bad magic)");
    c.off = 4;
    uint64_t n_tensors, n_kv;
    if (!cur_u32(&c, &g->version) || !cur_u64(&c, &n_tensors) || !cur_u64(&c, &n_kv))
        return GERR("truncated GGUF header (file is %zu bytes)", g->size);
    if (g->version != 2 && g->version != 3) return GERR("GGUF version %u is not supported (only 2 and 3)", g->version);
    /* a key/value pair takes at least 13 bytes, a tensor info at least 32 */
    if (n_kv > (g->size - c.off) / 13)
        return GERR("metadata count %llu is more than the file can hold", (unsigned long long)n_kv);
    if (n_tensors > (g->size - c.off) / 32)
        return GERR("tensor count %llu is more than the file can hold", (unsigned long long)n_tensors);
    g->n_kv = (size_t)n_kv;
    g->n_tensors = (size_t)n_tensors;
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return model_errf(err, errlen, MODEL_ENOMEM, g->path, "out of memory");

    for (size_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        if (!cur_str(&c, &kv->key)) return GERR("metadata key %zu runs past the end of the file", i);
        if (!cur_u32(&c, &kv->type))
            return GERR("metadata '%s' runs past the end of the file", gguf_str_show(kv->key, show, sizeof show));
        kv->val_off = c.off;
        const char *why = NULL;
        if (!skip_value(&c, kv->type, 0, &kv->arr_type, &kv->arr_n, &why)) {
            if (kv->type >= GGUF_TYPE_COUNT)
                return GERR("metadata '%s' has unknown value type %u", gguf_str_show(kv->key, show, sizeof show),
                            kv->type);
            return GERR("metadata '%s': %s", gguf_str_show(kv->key, show, sizeof show), why);
        }
    }
    const gguf_str *dup;
    int rc = find_duplicate(&g->kv[0].key, sizeof *g->kv, g->n_kv, &dup);
    if (rc) return model_errf(err, errlen, rc, g->path, "out of memory");
    if (dup) return GERR("metadata key '%s' appears twice", gguf_str_show(*dup, show, sizeof show));

    /* general.alignment (u32, a power of two; we also need 8 | alignment for aligned float reads) */
    g->alignment = 32;
    const gguf_kv *al = gguf_find(g, "general.alignment");
    if (al) {
        uint64_t a;
        if (!gguf_kv_uint(g, al, &a)) return GERR("general.alignment is not an unsigned integer");
        if (a == 0 || (a & (a - 1)) != 0 || a % 8 != 0 || a > (1u << 16))
            return GERR("general.alignment %llu is not a power of two in [8, 65536]", (unsigned long long)a);
        g->alignment = (size_t)a;
    }

    for (size_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint32_t n_dims, type;
        uint64_t offset;
        if (!cur_str(&c, &t->name)) return GERR("tensor info %zu runs past the end of the file", i);
        gguf_str_show(t->name, show, sizeof show);
        if (t->name.len == 0 || t->name.len > 256) return GERR("tensor %zu has a name of length %zu", i, t->name.len);
        if (!cur_u32(&c, &n_dims)) return GERR("tensor '%s': info runs past the end of the file", show);
        if (n_dims < 1 || n_dims > 4) return GERR("tensor '%s' has %u dimensions (1 to 4 allowed)", show, n_dims);
        t->n_dims = (int)n_dims;
        uint64_t ne_prod = 1;
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            if (!cur_u64(&c, &t->ne[d])) return GERR("tensor '%s': info runs past the end of the file", show);
            if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT32_MAX)
                return GERR("tensor '%s' has dimension %u of size %llu", show, d, (unsigned long long)t->ne[d]);
            if (!mul_ok(ne_prod, t->ne[d], &ne_prod)) return GERR("tensor '%s': element count overflows", show);
        }
        if (!cur_u32(&c, &type) || !cur_u64(&c, &offset))
            return GERR("tensor '%s': info runs past the end of the file", show);
        t->type = (int)type;
        t->n_elems = ne_prod;
        t->offset = offset;
        if (!mtensor_type_name((int)type))
            return GERR("tensor '%s' has unsupported type %u (supported: F32, F16, BF16, Q4_0, Q4_1, "
                        "Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                        show, type);
        int ok, blk = quant_block_elems((int)type);
        if (blk > 1 && t->ne[0] % (uint64_t)blk != 0)
            return GERR("tensor '%s' is %s but its row length %llu is not a multiple of its block (%d)", show,
                        mtensor_type_name((int)type), (unsigned long long)t->ne[0], blk);
        t->nbytes = mtensor_bytes((int)type, ne_prod, &ok);
        if (!ok) return GERR("tensor '%s': byte size overflows", show);
        if (offset % g->alignment != 0)
            return GERR("tensor '%s' has offset %llu, not a multiple of the alignment %zu", show,
                        (unsigned long long)offset, g->alignment);
    }
    /* sorted by name for lookups; a name that sorts next to itself appears twice */
    g->by_name = malloc((g->n_tensors ? g->n_tensors : 1) * sizeof *g->by_name);
    if (!g->by_name) return model_errf(err, errlen, MODEL_ENOMEM, g->path, "out of memory");
    for (size_t i = 0; i < g->n_tensors; i++) g->by_name[i] = &g->tensors[i];
    qsort(g->by_name, g->n_tensors, sizeof *g->by_name, cmp_tensor_ptr);
    for (size_t i = 1; i < g->n_tensors; i++)
        if (cmp_tensor_ptr(&g->by_name[i - 1], &g->by_name[i]) == 0)
            return GERR("tensor '%s' appears twice", gguf_str_show(g->by_name[i]->name, show, sizeof show));

    /* the data section starts at the next multiple of the alignment */
    uint64_t data_off = c.off;
    if (g->n_tensors > 0) {
        uint64_t rem = data_off % g->alignment;
        if (rem) data_off += g->alignment - rem;
        if (data_off > g->size)
            return GERR("data section would start at %llu, past the end of the file (%zu bytes)",
                        (unsigned long long)data_off, g->size);
    }
    g->data_off = (size_t)data_off;
    size_t data_size = g->size - g->data_off;
    for (size_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint64_t end;
        if (!add_ok(t->offset, t->nbytes, &end) || end > data_size)
            return GERR("tensor '%s' (offset %llu, %zu bytes) runs past the end of the file "
                        "(data section is %zu bytes)",
                        gguf_str_show(t->name, show, sizeof show), (unsigned long long)t->offset, t->nbytes, data_size);
        t->data = g->data + g->data_off + t->offset;
    }
    return MODEL_OK;
}

/* ---- Lookups ------------------------------------------------------------------------- */

const gguf_kv *gguf_find(const gguf_file *g, const char *key)
{
    for (size_t i = 0; i < g->n_kv; i++)
        if (gguf_str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name)
{
    gguf_str key = { name, strlen(name) };
    size_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_str(&g->by_name[mid]->name, &key);
        if (c == 0) return g->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int gguf_kv_uint(const gguf_file *g, const gguf_kv *kv, uint64_t *out)
{
    const uint8_t *p = g->data + kv->val_off;
    switch (kv->type) {
    case GGUF_TYPE_UINT8: *out = p[0]; return 1;
    case GGUF_TYPE_UINT16: {
        uint16_t v;
        memcpy(&v, p, 2);
        *out = v;
        return 1;
    }
    case GGUF_TYPE_UINT32: {
        uint32_t v;
        memcpy(&v, p, 4);
        *out = v;
        return 1;
    }
    case GGUF_TYPE_UINT64: {
        uint64_t v;
        memcpy(&v, p, 8);
        *out = v;
        return 1;
    }
    case GGUF_TYPE_INT8: {
        int8_t v;
        memcpy(&v, p, 1);
        if (v < 0) return 0;
        *out = (uint64_t)v;
        return 1;
    }
    case GGUF_TYPE_INT16: {
        int16_t v;
        memcpy(&v, p, 2);
        if (v < 0) return 0;
        *out = (uint64_t)v;
        return 1;
    }
    case GGUF_TYPE_INT32: {
        int32_t v;
        memcpy(&v, p, 4);
        if (v < 0) return 0;
        *out = (uint64_t)v;
        return 1;
    }
    case GGUF_TYPE_INT64: {
        int64_t v;
        memcpy(&v, p, 8);
        if (v < 0) return 0;
        *out = (uint64_t)v;
        return 1;
    }
    default: return 0;
    }
}

int gguf_kv_float(const gguf_file *g, const gguf_kv *kv, double *out)
{
    const uint8_t *p = g->data + kv->val_off;
    if (kv->type == GGUF_TYPE_FLOAT32) {
        float v;
        memcpy(&v, p, 4);
        *out = v;
        return 1;
    }
    if (kv->type == GGUF_TYPE_FLOAT64) {
        double v;
        memcpy(&v, p, 8);
        *out = v;
        return 1;
    }
    uint64_t u;
    if (gguf_kv_uint(g, kv, &u)) {
        *out = (double)u;
        return 1;
    }
    return 0;
}

int gguf_kv_bool(const gguf_file *g, const gguf_kv *kv, int *out)
{
    if (kv->type != GGUF_TYPE_BOOL) return 0;
    *out = g->data[kv->val_off] != 0;
    return 1;
}

int gguf_kv_string(const gguf_file *g, const gguf_kv *kv, gguf_str *out)
{
    if (kv->type != GGUF_TYPE_STRING) return 0;
    cursor c = { g->data, g->size, kv->val_off };
    return cur_str(&c, out);
}

int gguf_get_int(const gguf_file *g, const char *key, int required, int64_t dflt, int64_t lo, int64_t hi, int *out,
                 char *err, size_t errlen)
{
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv) {
        if (required) return GERR("missing metadata '%s'", key);
        *out = (int)dflt;
        return MODEL_OK;
    }
    uint64_t v;
    if (!gguf_kv_uint(g, kv, &v))
        return GERR("metadata '%s' is a %s, expected a non-negative integer", key, gv_name(kv->type));
    if (v < (uint64_t)lo || v > (uint64_t)hi)
        return GERR("metadata '%s' = %llu is out of range [%lld, %lld]", key, (unsigned long long)v, (long long)lo,
                    (long long)hi);
    *out = (int)v;
    return MODEL_OK;
}

int gguf_get_float(const gguf_file *g, const char *key, double dflt, float *out, char *err, size_t errlen)
{
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv) {
        *out = (float)dflt;
        return MODEL_OK;
    }
    double v;
    if (!gguf_kv_float(g, kv, &v)) return GERR("metadata '%s' is a %s, expected a number", key, gv_name(kv->type));
    if (!isfinite(v)) return GERR("metadata '%s' is not a finite number", key);
    *out = (float)v;
    return MODEL_OK;
}

int gguf_get_array(const gguf_file *g, const char *key, uint32_t elem_type, uint64_t n, const gguf_kv **out, char *err,
                   size_t errlen)
{
    const gguf_kv *kv = gguf_find(g, key);
    *out = kv;
    if (!kv) return MODEL_OK;
    if (kv->type != GGUF_TYPE_ARRAY) return GERR("metadata '%s' is a %s, expected an array", key, gv_name(kv->type));
    if (kv->arr_type != elem_type)
        return GERR("metadata '%s' is an array of %s, expected %s", key, gv_name(kv->arr_type), gv_name(elem_type));
    if (kv->arr_n != n)
        return GERR("metadata '%s' has %llu entries, expected %llu (the vocabulary size)", key,
                    (unsigned long long)kv->arr_n, (unsigned long long)n);
    return MODEL_OK;
}

const uint8_t *gguf_array_data(const gguf_file *g, const gguf_kv *kv)
{
    return g->data + kv->val_off + 4 + 8; /* after element type and count */
}

int gguf_str_iter_init(gguf_str_iter *it, const gguf_file *g, const gguf_kv *kv)
{
    it->g = g;
    it->left = 0;
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING) return 0;
    it->off = kv->val_off + 4 + 8;
    it->left = kv->arr_n;
    return 1;
}

int gguf_str_iter_next(gguf_str_iter *it, gguf_str *s)
{
    if (it->left == 0) return 0;
    cursor c = { it->g->data, it->g->size, it->off };
    if (!cur_str(&c, s)) return 0; /* cannot happen: gguf_open validated every string */
    it->off = c.off;
    it->left--;
    return 1;
}

/* ---- Tensors into the model ------------------------------------------------------------ */

/* A row-major (rows, cols) matrix: GGUF ne = {cols, rows}. */
int gguf_get_matrix(const gguf_file *g, const char *name, int rows, int cols, int optional, mtensor *out, char *err,
                    size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(g, name);
    memset(out, 0, sizeof *out);
    if (!t) return optional ? MODEL_OK : GERR("missing tensor '%s'", name);
    if (t->n_dims > 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows)
        return GERR("tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%d, %d] (cols, rows)", name,
                    (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
                    (unsigned long long)t->ne[3], cols, rows);
    out->data = t->data;
    out->type = t->type;
    out->rows = rows;
    out->cols = cols;
    return MODEL_OK;
}

/* A vector of n floats, converted to a heap F32 copy when stored as F16/BF16. */
int gguf_get_vector(model *m, const gguf_file *g, const char *name, int n, int optional, const float **out, char *err,
                    size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(g, name);
    *out = NULL;
    if (!t) return optional ? MODEL_OK : GERR("missing tensor '%s'", name);
    if (t->n_elems != (uint64_t)n || t->ne[0] != (uint64_t)n)
        return GERR("tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%d]", name, (unsigned long long)t->ne[0],
                    (unsigned long long)t->ne[1], (unsigned long long)t->ne[2], (unsigned long long)t->ne[3], n);
    if (t->type == MT_F32) {
        *out = (const float *)t->data; /* aligned: the data section and offsets are 8-aligned */
        return MODEL_OK;
    }
    if (t->type != MT_F16 && t->type != MT_BF16)
        return GERR("tensor '%s' is %s; vectors must be F32, F16 or BF16", name, mtensor_type_name(t->type));
    float *v = model_calloc_owned(m, (size_t)n, sizeof *v);
    if (!v) return model_errf(err, errlen, MODEL_ENOMEM, g->path, "out of memory");
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, t->data + 2 * (size_t)i, 2);
        v[i] = t->type == MT_F16 ? model_f16_to_f32(h) : model_bf16_to_f32(h);
    }
    *out = v;
    return MODEL_OK;
}

/* ---- Entry points --------------------------------------------------------------------- */

int gguf_open(gguf_file *g, model *m, const char *path, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    g->path = path;
    int rc = model_map_file(m, path, &g->data, &g->size, err, errlen);
    if (rc) return rc;
    g->mapped_by_model = m != NULL;
    rc = parse(g, err, errlen);
    if (rc) gguf_close(g);
    return rc;
}

void gguf_close(gguf_file *g)
{
    if (!g) return;
    free(g->kv);
    free(g->tensors);
    free(g->by_name);
    g->by_name = NULL;
    if (!g->mapped_by_model) model_unmap(g->data, g->size);
    g->kv = NULL;
    g->tensors = NULL;
    g->data = NULL;
}
