/* safetensors.c -- safetensors reader with full offset validation (see safetensors.h). */
#include "model/formats/safetensors.h"
#include "model/model_internal.h"
#include "model/loader.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */

struct st_file {
    st_tensor *t;
    size_t n, cap;
    struct {
        void *addr;
        size_t len;
    } maps[64];
    int n_maps;
};

static const struct {
    const char *name;
    int size;
    int mt;
} dtypes[] = {
    { "F32", 4, MT_F32 }, { "F16", 2, MT_F16 }, { "BF16", 2, MT_BF16 }, { "F64", 8, -1 },     { "I64", 8, -1 },
    { "U64", 8, -1 },     { "I32", 4, -1 },     { "U32", 4, -1 },       { "I16", 2, -1 },     { "U16", 2, -1 },
    { "I8", 1, -1 },      { "U8", 1, -1 },      { "BOOL", 1, -1 },      { "F8_E4M3", 1, -1 }, { "F8_E5M2", 1, -1 },
};

typedef struct {
    size_t idx;
    uint64_t b, e;
} range;

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

/* The header of a file image: its JSON object into *h (caller json_decref's), the
 * data buffer after it into *data, *dlen. */
static int read_header(const unsigned char *buf, size_t len, const char *name, json_t **h, const unsigned char **data,
                       uint64_t *dlen, char *err, size_t errlen)
{
    if (len < 8) return model_errf(err, errlen, MODEL_EFORMAT, name, "too short for a safetensors file");
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > ST_MAX_HEADER)
        return model_errf(err, errlen, MODEL_EFORMAT, name, "header length %llu is absurd (not safetensors?)",
                          (unsigned long long)hlen);
    if (hlen > len - 8)
        return model_errf(err, errlen, MODEL_EFORMAT, name,
                          "header (%llu bytes) runs past the end of the "
                          "file (truncated?)",
                          (unsigned long long)hlen);
    if (hlen < 2 || buf[8] != '{') return model_errf(err, errlen, MODEL_EFORMAT, name, "header is not a JSON object");
    *data = buf + 8 + hlen;
    *dlen = len - 8 - hlen;
    json_error_t je;
    *h = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!*h || !json_is_object(*h)) {
        json_decref(*h);
        *h = NULL;
        return model_errf(err, errlen, MODEL_EFORMAT, name, "header JSON: %s", je.text);
    }
    return 0;
}

/* A new tensor named key at the end of f->t (zeroed but for its name). */
static st_tensor *add_tensor(st_file *f, const char *key)
{
    st_tensor *nt = model_grow(f->t, f->n, &f->cap, sizeof *nt, 64);
    if (!nt) return NULL;
    f->t = nt;
    st_tensor *t = &f->t[f->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(key);
    if (!t->name) return NULL;
    f->n++;
    return t;
}

/* The shape of entry key into t (ndim already set); *numel gets the product. */
static int read_shape(st_tensor *t, const json_t *sh, const char *key, const char *name, uint64_t *numel, char *err,
                      size_t errlen)
{
    *numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *x = json_array_get(sh, (size_t)d);
        json_int_t s = json_is_integer(x) ? json_integer_value(x) : -1;
        if (s < 0 || s > ((json_int_t)1 << 40))
            return model_errf(err, errlen, MODEL_EFORMAT, name,
                              "tensor '%s': dimension %d is not a sane "
                              "size",
                              key, d);
        t->shape[d] = s;
        if (s && *numel > (((uint64_t)1 << 48) / (uint64_t)s))
            return model_errf(err, errlen, MODEL_EFORMAT, name, "tensor '%s': absurd shape", key);
        *numel *= (uint64_t)s;
    }
    return 0;
}

/* One header entry (key: {dtype, shape, data_offsets}) appended to f as a tensor
 * pointing into data; its byte range into *r. */
static int parse_entry(st_file *f, const char *key, const json_t *v, const unsigned char *data, uint64_t dlen,
                       const char *name, range *r, char *err, size_t errlen)
{
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(sh) || !json_is_array(off) ||
        json_array_size(off) != 2 || !json_is_integer(json_array_get(off, 0)) ||
        !json_is_integer(json_array_get(off, 1)))
        return model_errf(err, errlen, MODEL_EFORMAT, name,
                          "tensor '%s': entry needs dtype, shape and "
                          "data_offsets [begin, end]",
                          key);
    int di = -1;
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(json_string_value(dt), dtypes[i].name) == 0) di = (int)i;
    if (di < 0)
        return model_errf(err, errlen, MODEL_EFORMAT, name, "tensor '%s': unknown dtype '%.16s'", key,
                          json_string_value(dt));
    if (json_array_size(sh) > ST_MAX_DIMS)
        return model_errf(err, errlen, MODEL_EFORMAT, name, "tensor '%s' has %zu dimensions", key, json_array_size(sh));
    json_int_t b = json_integer_value(json_array_get(off, 0));
    json_int_t e = json_integer_value(json_array_get(off, 1));
    if (b < 0 || e < b || (uint64_t)e > dlen)
        return model_errf(err, errlen, MODEL_EFORMAT, name,
                          "tensor '%s': data_offsets [%lld, %lld] lie "
                          "outside the %llu-byte data buffer",
                          key, (long long)b, (long long)e, (unsigned long long)dlen);
    st_tensor *t = add_tensor(f, key);
    if (!t) return model_errf(err, errlen, MODEL_ENOMEM, name, "out of memory");
    snprintf(t->dtype, sizeof t->dtype, "%s", dtypes[di].name);
    t->mt_type = dtypes[di].mt;
    t->ndim = (int)json_array_size(sh);
    uint64_t numel;
    int rc = read_shape(t, sh, key, name, &numel, err, errlen);
    if (rc) return rc;
    t->numel = (int64_t)numel;
    if (numel * (uint64_t)dtypes[di].size != (uint64_t)(e - b))
        return model_errf(err, errlen, MODEL_EFORMAT, name,
                          "tensor '%s': shape x %s size = %llu bytes but "
                          "data_offsets span %lld",
                          key, t->dtype, (unsigned long long)(numel * (uint64_t)dtypes[di].size), (long long)(e - b));
    t->data = data + b;
    t->nbytes = (size_t)(e - b);
    *r = (range){ f->n - 1, (uint64_t)b, (uint64_t)e };
    return 0;
}

/* The tensors' byte ranges (rs, nr of them) must tile the dlen-byte data buffer:
 * no overlap, no hole, nothing left over. */
static int check_tiling(const st_file *f, range *rs, size_t nr, uint64_t dlen, const char *name, char *err,
                        size_t errlen)
{
    qsort(rs, nr, sizeof *rs, cmp_range);
    uint64_t at = 0;
    for (size_t i = 0; i < nr; i++) {
        if (rs[i].b < at)
            return model_errf(err, errlen, MODEL_EFORMAT, name,
                              "tensor '%s' overlaps the one before it "
                              "(offset %llu < %llu)",
                              f->t[rs[i].idx].name, (unsigned long long)rs[i].b, (unsigned long long)at);
        if (rs[i].b > at)
            return model_errf(err, errlen, MODEL_EFORMAT, name,
                              "hole in the data buffer before tensor "
                              "'%s' (bytes %llu..%llu unused)",
                              f->t[rs[i].idx].name, (unsigned long long)at, (unsigned long long)rs[i].b);
        at = rs[i].e;
    }
    if (at != dlen)
        return model_errf(err, errlen, MODEL_EFORMAT, name,
                          "data buffer has %llu bytes but tensors use "
                          "%llu",
                          (unsigned long long)dlen, (unsigned long long)at);
    return 0;
}

/* Parse one file image into f (appending tensors). */
static int parse_one(st_file *f, const unsigned char *buf, size_t len, const char *name, char *err, size_t errlen)
{
    json_t *h;
    const unsigned char *data;
    uint64_t dlen;
    int rc = read_header(buf, len, name, &h, &data, &dlen, err, errlen);
    if (rc) return rc;
    size_t n_ent = json_object_size(h), nr = 0;
    range *rs = calloc(n_ent ? n_ent : 1, sizeof *rs);
    if (!rs) {
        json_decref(h);
        return model_errf(err, errlen, MODEL_ENOMEM, name, "out of memory");
    }
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) continue;
        if ((rc = parse_entry(f, key, v, data, dlen, name, &rs[nr], err, errlen))) break;
        nr++;
    }
    if (!rc) rc = check_tiling(f, rs, nr, dlen, name, err, errlen);
    free(rs);
    json_decref(h);
    return rc;
}

static int map_file(st_file *f, const char *path, char *err, size_t errlen)
{
    if (f->n_maps == (int)(sizeof f->maps / sizeof f->maps[0]))
        return model_errf(err, errlen, MODEL_EFORMAT, path, "too many shards");
    struct stat st;
    if (stat(path, &st) != 0) return model_errf(err, errlen, MODEL_EIO, path, "cannot open: %s", strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size < 8)
        return model_errf(err, errlen, MODEL_EFORMAT, path, "not a safetensors file (too short or not a file)");
    /* a private copy, not a file mapping: see model_map_file (truncation = SIGBUS) */
    const uint8_t *m;
    size_t len;
    int rc = model_map_file(NULL, path, &m, &len, err, errlen);
    if (rc) return rc;
    if (len < 8) {
        model_unmap(m, len);
        return model_errf(err, errlen, MODEL_EFORMAT, path, "not a safetensors file (too short or not a file)");
    }
    f->maps[f->n_maps].addr = (void *)m;
    f->maps[f->n_maps].len = model_map_len(len);
    f->n_maps++;
    return parse_one(f, m, len, path, err, errlen);
}

static int open_index(st_file *f, const char *dir, const char *index, char *err, size_t errlen)
{
    json_error_t je;
    json_t *ix = json_load_file(index, 0, &je);
    json_t *wm = ix ? json_object_get(ix, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        json_decref(ix);
        return model_errf(err, errlen, MODEL_EFORMAT, index, "no weight_map object (%s)", ix ? "" : je.text);
    }
    /* Distinct shard names, in first-seen order. */
    const char *shards[64];
    int ns = 0, rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v)
    {
        const char *s = json_string_value(v);
        if (!s || strchr(s, '/') || strcmp(s, "..") == 0 || !*s) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, index, "weight_map['%s'] is not a plain file name", key);
            break;
        }
        int seen = 0;
        for (int i = 0; i < ns; i++) seen |= strcmp(shards[i], s) == 0;
        if (seen) continue;
        if (ns == 64) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, index, "more than 64 shards");
            break;
        }
        shards[ns++] = s;
    }
    for (int i = 0; i < ns && !rc; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, shards[i]);
        rc = map_file(f, p, err, errlen);
    }
    /* Every name in the map must exist. */
    if (!rc) {
        json_object_foreach(wm, key, v)
        {
            if (!st_find(f, key)) {
                rc = model_errf(err, errlen, MODEL_EFORMAT, index, "tensor '%s' is listed but not in its shard", key);
                break;
            }
        }
    }
    json_decref(ix);
    return rc;
}

int st_open(st_file **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    struct stat st;
    int rc;
    if (stat(path, &st) != 0) {
        rc = model_errf(err, errlen, MODEL_EIO, path, "cannot open: %s", strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        char p[4096];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (access(p, R_OK) == 0) {
            rc = open_index(f, path, p, err, errlen);
        } else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            rc = map_file(f, p, err, errlen);
        }
    } else {
        rc = map_file(f, path, err, errlen);
    }
    if (!rc) {
        /* Names must be unique across shards. */
        for (size_t i = 1; i < f->n && !rc; i++)
            for (size_t j = 0; j < i; j++)
                if (strcmp(f->t[i].name, f->t[j].name) == 0) {
                    rc = model_errf(err, errlen, MODEL_EFORMAT, path, "tensor '%s' appears twice", f->t[i].name);
                    break;
                }
    }
    if (rc) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_open_mem(st_file **out, const void *buf, size_t len, const char *name, char *err, size_t errlen)
{
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return model_errf(err, errlen, MODEL_ENOMEM, name, "out of memory");
    int rc = parse_one(f, buf, len, name, err, errlen);
    if (rc) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void st_close(st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    for (int i = 0; i < f->n_maps; i++) munmap(f->maps[i].addr, f->maps[i].len);
    free(f);
}

int st_give_maps(st_file *f, model *m)
{
    int room = (int)(sizeof m->maps / sizeof m->maps[0]) - m->n_maps;
    if (f->n_maps > room) return MODEL_EFORMAT;
    for (int i = 0; i < f->n_maps; i++) {
        m->maps[m->n_maps].addr = f->maps[i].addr;
        m->maps[m->n_maps].len = f->maps[i].len;
        m->n_maps++;
    }
    f->n_maps = 0;
    return 0;
}

size_t st_count(const st_file *f) { return f ? f->n : 0; }
const st_tensor *st_at(const st_file *f, size_t i) { return f && i < f->n ? &f->t[i] : NULL; }

const st_tensor *st_find(const st_file *f, const char *name)
{
    for (size_t i = 0; f && i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}
