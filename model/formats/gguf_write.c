/* gguf_write.c -- write GGUF v3 files (layout: see gguf.c's header comment).
 *
 * Key/value pairs are serialised into a growing byte buffer as they are added;
 * tensors are copied.  gguf_writer_write emits header, metadata, tensor infos,
 * padding to 32 bytes, then each tensor's data padded to 32 bytes. */
#include "model/formats/gguf_write.h"
#include "model/formats/gguf.h"
#include "model/loader.h"
#include "model/compute/quant.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GW_ALIGN 32

typedef struct {
    char *name;
    int type, n_dims;
    int64_t ne[4];
    void *data;
    size_t nbytes;
} gw_tensor;

struct gguf_writer {
    uint8_t *kv;
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    gw_tensor *t;
    size_t n_t, cap_t;
    int failed; /* an allocation failed: every later call fails */
};

gguf_writer *gguf_writer_new(void) { return calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->t);
    free(w->kv);
    free(w);
}

static int put(gguf_writer *w, const void *p, size_t n)
{
    if (w->failed) return MODEL_ENOMEM;
    if (w->kv_cap - w->kv_len < n) {
        size_t cap = w->kv_cap ? w->kv_cap : 256;
        while (cap - w->kv_len < n) cap *= 2;
        uint8_t *k = realloc(w->kv, cap);
        if (!k) {
            w->failed = 1;
            return MODEL_ENOMEM;
        }
        w->kv = k;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return MODEL_OK;
}

static int put_u32(gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(gguf_writer *w, uint64_t v) { return put(w, &v, 8); }
static int put_str(gguf_writer *w, const char *s)
{
    size_t n = strlen(s);
    int rc = put_u64(w, n);
    return rc ? rc : put(w, s, n);
}

/* key + value type; the value follows */
static int put_key(gguf_writer *w, const char *key, uint32_t type)
{
    if (!w || !key) return MODEL_EINVAL;
    int rc = put_str(w, key);
    if (!rc) rc = put_u32(w, type);
    if (!rc) w->n_kv++;
    return rc;
}

int gguf_writer_kv_str(gguf_writer *w, const char *key, const char *val)
{
    if (!val) return MODEL_EINVAL;
    int rc = put_key(w, key, GGUF_TYPE_STRING);
    return rc ? rc : put_str(w, val);
}

int gguf_writer_kv_u32(gguf_writer *w, const char *key, uint32_t val)
{
    int rc = put_key(w, key, GGUF_TYPE_UINT32);
    return rc ? rc : put_u32(w, val);
}

int gguf_writer_kv_i32(gguf_writer *w, const char *key, int32_t val)
{
    int rc = put_key(w, key, GGUF_TYPE_INT32);
    return rc ? rc : put(w, &val, 4);
}

int gguf_writer_kv_f32(gguf_writer *w, const char *key, float val)
{
    int rc = put_key(w, key, GGUF_TYPE_FLOAT32);
    return rc ? rc : put(w, &val, 4);
}

int gguf_writer_kv_bool(gguf_writer *w, const char *key, int val)
{
    uint8_t b = val != 0;
    int rc = put_key(w, key, GGUF_TYPE_BOOL);
    return rc ? rc : put(w, &b, 1);
}

static int put_arr(gguf_writer *w, const char *key, uint32_t et, size_t n)
{
    int rc = put_key(w, key, GGUF_TYPE_ARRAY);
    if (!rc) rc = put_u32(w, et);
    if (!rc) rc = put_u64(w, n);
    return rc;
}

int gguf_writer_kv_arr_str(gguf_writer *w, const char *key, const char *const *vals, size_t n)
{
    if (n && !vals) return MODEL_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!vals[i]) return MODEL_EINVAL;
    int rc = put_arr(w, key, GGUF_TYPE_STRING, n);
    for (size_t i = 0; !rc && i < n; i++) rc = put_str(w, vals[i]);
    return rc;
}

int gguf_writer_kv_arr_f32(gguf_writer *w, const char *key, const float *vals, size_t n)
{
    if (n && !vals) return MODEL_EINVAL;
    int rc = put_arr(w, key, GGUF_TYPE_FLOAT32, n);
    return rc ? rc : put(w, vals, 4 * n);
}

int gguf_writer_kv_arr_i32(gguf_writer *w, const char *key, const int32_t *vals, size_t n)
{
    if (n && !vals) return MODEL_EINVAL;
    int rc = put_arr(w, key, GGUF_TYPE_INT32, n);
    return rc ? rc : put(w, vals, 4 * n);
}

int gguf_writer_kv_raw(gguf_writer *w, const char *key, uint32_t vtype, const void *val, size_t len)
{
    if (len && !val) return MODEL_EINVAL;
    int rc = put_key(w, key, vtype);
    return rc ? rc : put(w, val, len);
}

int gguf_writer_tensor(gguf_writer *w, const char *name, int type, const int64_t *ne, int n_dims, const void *data,
                       size_t nbytes)
{
    if (!w || !name || !ne || n_dims < 1 || n_dims > 4 || (nbytes && !data)) return MODEL_EINVAL;
    if (w->failed) return MODEL_ENOMEM;
    uint64_t n = 1;
    for (int d = 0; d < n_dims; d++)
        if (ne[d] <= 0 || !mul_ok(n, (uint64_t)ne[d], &n)) return MODEL_EINVAL;
    int blk = quant_block_elems(type);
    if (blk > 1 && ne[0] % blk) return MODEL_EINVAL; /* rows are whole blocks */
    int ok;
    size_t want = mtensor_bytes(type, n, &ok);
    if (!ok || want != nbytes) return MODEL_EINVAL;
    gw_tensor *grown = model_grow(w->t, w->n_t, &w->cap_t, sizeof *grown, 16);
    if (!grown) return MODEL_ENOMEM;
    w->t = grown;
    gw_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->data = malloc(nbytes ? nbytes : 1);
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return MODEL_ENOMEM;
    }
    if (nbytes) memcpy(t->data, data, nbytes);
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < 4; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = nbytes;
    w->n_t++;
    return MODEL_OK;
}

static size_t pad_to(size_t x) { return (x + GW_ALIGN - 1) / GW_ALIGN * GW_ALIGN; }

int gguf_writer_write(gguf_writer *w, const char *path, char *err, size_t errlen)
{
    if (!w || !path) return MODEL_EINVAL;
    if (w->failed) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory while building the file");
    FILE *f = fopen(path, "wb");
    if (!f) return model_errf(err, errlen, MODEL_EIO, path, "cannot create: %s", strerror(errno));
    static const uint8_t zeros[GW_ALIGN];
    uint32_t version = 3;
    uint64_t nt = w->n_t;
    size_t pos = 0;
    int ok = fwrite("GGUF", 1, 4, f) == 4 && fwrite(&version, 4, 1, f) == 1 && fwrite(&nt, 8, 1, f) == 1 &&
             fwrite(&w->n_kv, 8, 1, f) == 1 && fwrite(w->kv, 1, w->kv_len, f) == w->kv_len;
    pos = 24 + w->kv_len;
    uint64_t off = 0;
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const gw_tensor *t = &w->t[i];
        uint64_t len = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims, ty = (uint32_t)t->type;
        ok = fwrite(&len, 8, 1, f) == 1 && fwrite(t->name, 1, len, f) == len && fwrite(&nd, 4, 1, f) == 1 &&
             fwrite(t->ne, 8, nd, f) == nd && fwrite(&ty, 4, 1, f) == 1 && fwrite(&off, 8, 1, f) == 1;
        pos += 8 + len + 4 + 8 * nd + 4 + 8;
        off = pad_to(off + t->nbytes);
    }
    if (ok && w->n_t) {
        size_t p = pad_to(pos) - pos;
        ok = fwrite(zeros, 1, p, f) == p;
    }
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const gw_tensor *t = &w->t[i];
        size_t p = pad_to(t->nbytes) - t->nbytes;
        ok = fwrite(t->data, 1, t->nbytes, f) == t->nbytes && fwrite(zeros, 1, p, f) == p;
    }
    int e = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) return model_errf(err, errlen, MODEL_EIO, path, "write failed: %s", strerror(e));
    return MODEL_OK;
}
