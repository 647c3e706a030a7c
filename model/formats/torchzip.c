/* torchzip.c -- torch.save zip reader and a data-only pickle machine.
 *
 * Zip layout facts are from PKWARE's APPNOTE.TXT (sections 4.3.7 local header,
 * 4.3.12 central directory header, 4.3.14-4.3.16 zip64 end records, 4.5.3 zip64
 * extra field).  Pickle opcode numbers are from CPython's Lib/pickletools.py
 * documentation.  The torch persistent-id tuple and _rebuild_tensor_v2's
 * argument order are facts observed in the fixture files (pickletools.dis).
 */
#include "model/formats/torchzip.h"
#include "model/half.h"
#include "model/model.h"
#include "model/loader.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *name;        /* NUL-terminated copy */
    uint64_t size;     /* uncompressed (== compressed, STORED) */
    uint64_t data_off; /* offset of the data in the file */
} tz_entry;

struct tz_file {
    const unsigned char *buf;
    size_t len;
    void *map; /* non-NULL if we mmapped buf */
    char name[256];
    tz_entry *entries;
    size_t n_entries;
    char *prefix;   /* "archive/" etc., with the slash */
    tz_value **all; /* every value allocated, freed at close */
    size_t n_all, cap_all;
    tz_value *root;
};

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* ---- Zip ------------------------------------------------------------------- */

static int zip_read(tz_file *f, char *err, size_t errlen)
{
    const unsigned char *b = f->buf;
    size_t len = f->len;
    if (len < 22) return model_errf(err, errlen, MODEL_EFORMAT, f->name, "too short for a zip archive");
    /* End of central directory: scan back over at most a 64 KiB comment. */
    size_t eocd = (size_t)-1;
    size_t lo = len > 22 + 65535 ? len - 22 - 65535 : 0;
    for (size_t i = len - 22 + 1; i-- > lo;) {
        if (b[i] == 'P' && b[i + 1] == 'K' && b[i + 2] == 5 && b[i + 3] == 6) {
            eocd = i;
            break;
        }
    }
    if (eocd == (size_t)-1)
        return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                          "no zip end-of-central-directory record "
                          "(truncated file, or not a zip archive)");
    uint64_t n_ent = rd16(b + eocd + 10);
    uint64_t cd_size = rd32(b + eocd + 12);
    uint64_t cd_off = rd32(b + eocd + 16);
    /* zip64 locator sits right before the classic record. */
    if (eocd >= 20 && rd32(b + eocd - 20) == 0x07064b50) {
        uint64_t z64 = rd64(b + eocd - 20 + 8);
        if (z64 > len || len - z64 < 56 || rd32(b + z64) != 0x06064b50)
            return model_errf(err, errlen, MODEL_EFORMAT, f->name, "bad zip64 end-of-central-directory record");
        n_ent = rd64(b + z64 + 32);
        cd_size = rd64(b + z64 + 40);
        cd_off = rd64(b + z64 + 48);
    }
    if (cd_off > len || cd_size > len - cd_off)
        return model_errf(err, errlen, MODEL_EFORMAT, f->name, "zip central directory lies outside the file");
    if (n_ent > cd_size / 46)
        return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                          "zip entry count %llu does not fit the "
                          "central directory",
                          (unsigned long long)n_ent);
    f->entries = calloc(n_ent ? n_ent : 1, sizeof *f->entries);
    if (!f->entries) return model_errf(err, errlen, MODEL_ENOMEM, f->name, "out of memory");
    size_t p = (size_t)cd_off, end = (size_t)(cd_off + cd_size);
    for (uint64_t e = 0; e < n_ent; e++) {
        if (end - p < 46 || rd32(b + p) != 0x02014b50)
            return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                              "zip central directory entry %llu is "
                              "damaged",
                              (unsigned long long)e);
        unsigned method = rd16(b + p + 10);
        uint64_t csize = rd32(b + p + 20), usize = rd32(b + p + 24);
        size_t nlen = rd16(b + p + 28), xlen = rd16(b + p + 30), clen = rd16(b + p + 32);
        uint64_t loff = rd32(b + p + 42);
        if (end - p - 46 < nlen + xlen + clen)
            return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                              "zip central directory entry %llu runs "
                              "past the directory",
                              (unsigned long long)e);
        const unsigned char *nm = b + p + 46, *x = nm + nlen, *xe = x + xlen;
        /* zip64 extended information: only the fields that are 0xFFFFFFFF, in order. */
        while (xe - x >= 4) {
            unsigned id = rd16(x), sz = rd16(x + 2);
            if ((size_t)(xe - x - 4) < sz) break;
            if (id == 1) {
                const unsigned char *q = x + 4, *qe = q + sz;
                if (usize == 0xFFFFFFFFu && qe - q >= 8) {
                    usize = rd64(q);
                    q += 8;
                }
                if (csize == 0xFFFFFFFFu && qe - q >= 8) {
                    csize = rd64(q);
                    q += 8;
                }
                if (loff == 0xFFFFFFFFu && qe - q >= 8) {
                    loff = rd64(q);
                    q += 8;
                }
            }
            x += 4 + sz;
        }
        char *name = malloc(nlen + 1);
        if (!name) return model_errf(err, errlen, MODEL_ENOMEM, f->name, "out of memory");
        memcpy(name, nm, nlen);
        name[nlen] = 0;
        f->entries[f->n_entries].name = name;
        f->n_entries++;
        if (method != 0)
            return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                              "zip entry '%s' is compressed (method "
                              "%u); torch.save writes STORED entries only",
                              name, method);
        if (csize != usize)
            return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                              "zip entry '%s' has differing stored and "
                              "real sizes",
                              name);
        if (loff > len || len - loff < 30 || rd32(b + loff) != 0x04034b50)
            return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                              "zip entry '%s': local header missing "
                              "or outside the file",
                              name);
        uint64_t doff = loff + 30 + rd16(b + loff + 26) + rd16(b + loff + 28);
        if (doff > len || usize > len - doff)
            return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                              "zip entry '%s' (%llu bytes) runs past "
                              "the end of the file (truncated?)",
                              name, (unsigned long long)usize);
        f->entries[f->n_entries - 1].size = usize;
        f->entries[f->n_entries - 1].data_off = doff;
        p += 46 + nlen + xlen + clen;
    }
    return 0;
}

static const tz_entry *zip_find(const tz_file *f, const char *name)
{
    for (size_t i = 0; i < f->n_entries; i++)
        if (strcmp(f->entries[i].name, name) == 0) return &f->entries[i];
    return NULL;
}

/* ---- Values ---------------------------------------------------------------- */

static tz_value *val_new(tz_file *f, int kind)
{
    tz_value **na = model_grow(f->all, f->n_all, &f->cap_all, sizeof *na, 64);
    if (!na) return NULL;
    f->all = na;
    tz_value *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->kind = kind;
    f->all[f->n_all++] = v;
    return v;
}

static int val_push(tz_value *c, tz_value *item)
{
    tz_value **na = model_grow(c->items, c->n, &c->cap, sizeof *na, 4);
    if (!na) return MODEL_ENOMEM;
    c->items = na;
    c->items[c->n++] = item;
    return 0;
}

static void val_free(tz_value *v)
{
    free(v->s);
    free(v->items);
    free(v);
}

const tz_value *tz_dict_get(const tz_value *v, const char *key)
{
    if (!v || v->kind != TZ_DICT) return NULL;
    const tz_value *hit = NULL;
    for (size_t i = 0; i + 1 < v->n; i += 2) /* last assignment wins, as in Python */
        if (v->items[i]->kind == TZ_STR && strcmp(v->items[i]->s, key) == 0) hit = v->items[i + 1];
    return hit;
}

size_t tz_dtype_size(int dtype)
{
    switch (dtype) {
    case TZ_F64:
    case TZ_I64: return 8;
    case TZ_F32:
    case TZ_I32: return 4;
    case TZ_F16:
    case TZ_BF16:
    case TZ_I16: return 2;
    default: return 1;
    }
}

const char *tz_dtype_name(int dtype)
{
    static const char *names[] = { "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL" };
    return dtype >= 0 && dtype <= TZ_BOOL_T ? names[dtype] : "?";
}

/* ---- Pickle machine -------------------------------------------------------------- */

typedef struct {
    tz_file *f;
    const unsigned char *p, *end, *start;
    tz_value **stack;
    size_t sp, scap;
    size_t *marks;
    size_t n_marks, cap_marks;
    tz_value **memo;
    size_t memo_cap, memo_count;
    char *err;
    size_t errlen;
} pvm;

#define PVM_MAX_MEMO (1u << 24)

static int perr(pvm *m, const char *fmt, ...)
{
    if (m->err && m->errlen) {
        int k = snprintf(m->err, m->errlen, "%s: data.pkl: ", m->f->name);
        if (k < 0) k = 0;
        if ((size_t)k < m->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(m->err + k, m->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return MODEL_EFORMAT;
}

static int push(pvm *m, tz_value *v)
{
    if (!v) return MODEL_ENOMEM;
    tz_value **na = model_grow(m->stack, m->sp, &m->scap, sizeof *na, 64);
    if (!na) return MODEL_ENOMEM;
    m->stack = na;
    m->stack[m->sp++] = v;
    return 0;
}

static tz_value *pop(pvm *m)
{
    size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
    if (m->sp <= floor) return NULL;
    return m->stack[--m->sp];
}

static tz_value *top(pvm *m)
{
    size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
    return m->sp > floor ? m->stack[m->sp - 1] : NULL;
}

/* Remove the last MARK and give its stack position (the items above it stay). */
static int pop_mark(pvm *m, size_t *from)
{
    *from = 0;
    if (!m->n_marks) return perr(m, "opcode needs a MARK but there is none");
    *from = m->marks[--m->n_marks];
    return 0;
}

static int need(pvm *m, size_t n)
{
    if ((size_t)(m->end - m->p) < n) return perr(m, "pickle ends in the middle of an opcode");
    return 0;
}

static int memo_put(pvm *m, uint64_t idx)
{
    tz_value *v = top(m);
    if (!v) return perr(m, "memo store with an empty stack");
    /* Real pickles number memo slots 0, 1, 2, ...: an index beyond what the pickle's
     * length allows is hostile (it would make us allocate a huge table). */
    if (idx >= PVM_MAX_MEMO || idx > (uint64_t)(m->end - m->start) + 64)
        return perr(m, "memo index %llu is absurd", (unsigned long long)idx);
    if (idx >= m->memo_cap) {
        size_t nc = m->memo_cap ? m->memo_cap : 64;
        while (nc <= idx) nc *= 2;
        tz_value **na = realloc(m->memo, nc * sizeof *na);
        if (!na) return MODEL_ENOMEM;
        memset(na + m->memo_cap, 0, (nc - m->memo_cap) * sizeof *na);
        m->memo = na;
        m->memo_cap = nc;
    }
    if (!m->memo[idx]) m->memo_count++;
    m->memo[idx] = v;
    return 0;
}

static int memo_get(pvm *m, uint64_t idx)
{
    if (idx >= m->memo_cap || !m->memo[idx])
        return perr(m, "memo index %llu was never stored", (unsigned long long)idx);
    return push(m, m->memo[idx]);
}

static tz_value *new_str(pvm *m, const unsigned char *s, size_t n)
{
    tz_value *v = val_new(m->f, TZ_STR);
    if (!v) return NULL;
    v->s = malloc(n + 1);
    if (!v->s) return NULL;
    memcpy(v->s, s, n);
    v->s[n] = 0;
    v->slen = n;
    return v;
}

static tz_value *new_int(pvm *m, int64_t i, int kind)
{
    tz_value *v = val_new(m->f, kind);
    if (v) v->i = i;
    return v;
}

/* The allow-list: callables a torch.save pickle may name.  Their effect is
 * re-implemented in reduce(); none is looked up or executed. */
static const struct {
    const char *name;
    int dtype;
} allowed_globals[] = {
    { "torch._utils._rebuild_tensor_v2", -1 },
    { "torch._utils._rebuild_parameter", -1 },
    { "collections.OrderedDict", -1 },
    { "torch.FloatStorage", TZ_F32 },
    { "torch.HalfStorage", TZ_F16 },
    { "torch.BFloat16Storage", TZ_BF16 },
    { "torch.DoubleStorage", TZ_F64 },
    { "torch.LongStorage", TZ_I64 },
    { "torch.IntStorage", TZ_I32 },
    { "torch.ShortStorage", TZ_I16 },
    { "torch.CharStorage", TZ_I8 },
    { "torch.ByteStorage", TZ_U8 },
    { "torch.BoolStorage", TZ_BOOL_T },
};

static int storage_dtype(const tz_value *g)
{
    for (size_t i = 0; i < sizeof allowed_globals / sizeof allowed_globals[0]; i++)
        if (strcmp(g->s, allowed_globals[i].name) == 0) return allowed_globals[i].dtype;
    return -1;
}

static int op_global(pvm *m, const char *mod, size_t mlen, const char *name, size_t nlen)
{
    tz_value *g = val_new(m->f, TZ_GLOBAL);
    if (!g) return MODEL_ENOMEM;
    g->s = malloc(mlen + nlen + 2);
    if (!g->s) return MODEL_ENOMEM;
    memcpy(g->s, mod, mlen);
    g->s[mlen] = '.';
    memcpy(g->s + mlen + 1, name, nlen);
    g->s[mlen + 1 + nlen] = 0;
    g->slen = mlen + 1 + nlen;
    int ok = 0;
    for (size_t i = 0; i < sizeof allowed_globals / sizeof allowed_globals[0]; i++)
        if (strcmp(g->s, allowed_globals[i].name) == 0) ok = 1;
    if (!ok || strlen(g->s) != g->slen) {
        /* Print it safely: stop at control bytes. */
        char shown[96];
        size_t k = 0;
        for (size_t i = 0; i < g->slen && k + 1 < sizeof shown; i++)
            shown[k++] = (g->s[i] >= 32 && g->s[i] < 127) ? g->s[i] : '?';
        shown[k] = 0;
        return perr(m,
                    "pickle calls forbidden global '%s' (only torch tensor/storage rebuilds "
                    "and collections.OrderedDict are accepted; nothing is executed)",
                    shown);
    }
    return push(m, g);
}

static int as_int(const tz_value *v, int64_t *out)
{
    if (!v || (v->kind != TZ_INT && v->kind != TZ_BOOL)) return -1;
    *out = v->i;
    return 0;
}

static int rebuild_tensor(pvm *m, tz_value *args, tz_value **out)
{
    /* (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
    if (args->kind != TZ_TUPLE || args->n < 4) return perr(m, "_rebuild_tensor_v2 called with %zu arguments", args->n);
    tz_value *st = args->items[0], *sz = args->items[2], *sd = args->items[3];
    int64_t off;
    if (st->kind != TZ_STORAGE) return perr(m, "_rebuild_tensor_v2: first argument is not a storage");
    if (as_int(args->items[1], &off) || off < 0) return perr(m, "_rebuild_tensor_v2: bad storage offset");
    if ((sz->kind != TZ_TUPLE && sz->kind != TZ_LIST) || (sd->kind != TZ_TUPLE && sd->kind != TZ_LIST) ||
        sz->n != sd->n)
        return perr(m, "_rebuild_tensor_v2: size and stride must be tuples of equal length");
    if (sz->n > TZ_MAX_DIMS) return perr(m, "tensor has %zu dimensions (at most %d supported)", sz->n, TZ_MAX_DIMS);
    tz_value *t = val_new(m->f, TZ_TENSOR);
    if (!t) return MODEL_ENOMEM;
    t->t.dtype = st->t.dtype;
    t->t.storage = st->t.storage;
    t->t.storage_numel = st->t.storage_numel;
    t->t.ndim = (int)sz->n;
    t->t.offset = off;
    int64_t numel = 1, last = off; /* last element index reached */
    int empty = 0;
    for (size_t d = 0; d < sz->n; d++) {
        int64_t n, s;
        if (as_int(sz->items[d], &n) || as_int(sd->items[d], &s) || n < 0 || s < 0)
            return perr(m, "tensor dimension %zu has a bad size or stride", d);
        if (n > ((int64_t)1 << 40) || s > ((int64_t)1 << 40))
            return perr(m, "tensor dimension %zu has an absurd size %lld", d, (long long)n);
        t->t.shape[d] = n;
        t->t.stride[d] = s;
        if (n == 0)
            empty = 1;
        else
            last += (n - 1) * s;
        if (numel > ((int64_t)1 << 40) / (n ? n : 1)) return perr(m, "tensor has absurdly many elements");
        numel *= n;
    }
    t->t.numel = numel;
    if (!empty && last >= st->t.storage_numel)
        return perr(m, "tensor reaches element %lld of a storage holding %lld", (long long)last,
                    (long long)st->t.storage_numel);
    *out = t;
    return 0;
}

static int op_reduce(pvm *m)
{
    tz_value *args = pop(m), *fn = pop(m);
    if (!args || !fn) return perr(m, "REDUCE with too few stack items");
    if (fn->kind != TZ_GLOBAL) return perr(m, "REDUCE on something that is not an allowed global");
    if (args->kind != TZ_TUPLE) return perr(m, "REDUCE arguments are not a tuple");
    tz_value *res = NULL;
    if (strcmp(fn->s, "collections.OrderedDict") == 0) {
        if (args->n != 0) return perr(m, "OrderedDict with arguments is not supported");
        res = val_new(m->f, TZ_DICT);
        if (!res) return MODEL_ENOMEM;
    } else if (strcmp(fn->s, "torch._utils._rebuild_tensor_v2") == 0) {
        int rc = rebuild_tensor(m, args, &res);
        if (rc) return rc;
    } else if (strcmp(fn->s, "torch._utils._rebuild_parameter") == 0) {
        if (args->n < 1 || args->items[0]->kind != TZ_TENSOR) return perr(m, "_rebuild_parameter without a tensor");
        res = args->items[0];
    } else {
        return perr(m, "REDUCE may not call '%s'", fn->s);
    }
    return push(m, res);
}

static int op_persid(pvm *m)
{
    tz_value *pid = pop(m);
    if (!pid) return perr(m, "BINPERSID with an empty stack");
    /* ('storage', <StorageType>, key, location, numel) */
    if (pid->kind != TZ_TUPLE || pid->n != 5 || pid->items[0]->kind != TZ_STR ||
        strcmp(pid->items[0]->s, "storage") != 0 || pid->items[1]->kind != TZ_GLOBAL)
        return perr(m, "persistent id is not a ('storage', type, key, location, numel) tuple");
    int dtype = storage_dtype(pid->items[1]);
    if (dtype < 0) return perr(m, "'%s' is not a storage type", pid->items[1]->s);
    tz_value *key = pid->items[2];
    char kbuf[32];
    const char *k;
    if (key->kind == TZ_STR)
        k = key->s;
    else if (key->kind == TZ_INT) {
        snprintf(kbuf, sizeof kbuf, "%lld", (long long)key->i);
        k = kbuf;
    } else
        return perr(m, "storage key is neither a string nor an int");
    int64_t numel;
    if (as_int(pid->items[4], &numel) || numel < 0) return perr(m, "storage has a bad element count");
    size_t plen = strlen(m->f->prefix), klen = strlen(k);
    char *path = malloc(plen + 5 + klen + 1);
    if (!path) return MODEL_ENOMEM;
    sprintf(path, "%sdata/%s", m->f->prefix, k);
    const tz_entry *e = zip_find(m->f, path);
    free(path);
    if (!e) return perr(m, "storage '%s' has no data/%s entry in the archive", k, k);
    size_t es = tz_dtype_size(dtype);
    if ((uint64_t)numel > e->size / es)
        return perr(m, "storage '%s' claims %lld elements of %zu bytes but its entry holds %llu bytes", k,
                    (long long)numel, es, (unsigned long long)e->size);
    tz_value *s = val_new(m->f, TZ_STORAGE);
    if (!s) return MODEL_ENOMEM;
    s->t.dtype = dtype;
    s->t.storage = m->f->buf + e->data_off;
    s->t.storage_numel = numel;
    return push(m, s);
}

/* ---- Opcodes, by group (each after its opcode byte was read) ---- */

static int op_proto(pvm *m) /* PROTO: the protocol number */
{
    int rc = need(m, 1);
    if (!rc && *m->p > 5) rc = perr(m, "pickle protocol %u is unknown", *m->p);
    m->p++;
    return rc;
}

static int op_mark(pvm *m) /* MARK */
{
    size_t *na = model_grow(m->marks, m->n_marks, &m->cap_marks, sizeof *na, 16);
    if (!na) return MODEL_ENOMEM;
    m->marks = na;
    m->marks[m->n_marks++] = m->sp;
    return 0;
}

static int op_int(pvm *m, unsigned op) /* BININT1, BININT2, BININT, LONG1 */
{
    static const unsigned width[4] = { 1, 2, 4, 0 }; /* K M J; LONG1 reads its width */
    unsigned w = width[op == 'K' ? 0 : op == 'M' ? 1 : op == 'J' ? 2 : 3];
    int rc;
    int64_t i;
    if (w) {
        if ((rc = need(m, w))) return rc;
        i = w == 1 ? *m->p : w == 2 ? rd16(m->p) : (int32_t)rd32(m->p); /* BININT is signed */
        m->p += w;
        return push(m, new_int(m, i, TZ_INT));
    }
    /* LONG1: n bytes little-endian two's complement */
    if ((rc = need(m, 1))) return rc;
    unsigned n = *m->p++;
    if ((rc = need(m, n))) return rc;
    if (n > 8) return perr(m, "integer of %u bytes is too large", n);
    uint64_t u = 0;
    for (unsigned k = 0; k < n; k++) u |= (uint64_t)m->p[k] << (8 * k);
    if (n && n < 8 && (m->p[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
    m->p += n;
    return push(m, new_int(m, (int64_t)u, TZ_INT));
}

static int op_binfloat(pvm *m) /* BINFLOAT: big-endian double */
{
    int rc = need(m, 8);
    if (rc) return rc;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u = u << 8 | m->p[i];
    m->p += 8;
    double d;
    memcpy(&d, &u, 8);
    tz_value *v = val_new(m->f, TZ_FLOAT);
    if (v) v->f = d;
    return push(m, v);
}

/* Strings and bytes: a 1-byte (SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES),
 * 8-byte (BINBYTES8) or 4-byte length, then the bytes. */
static int op_string(pvm *m, unsigned op)
{
    int rc;
    uint64_t n;
    if (op == 0x8c || op == 'U' || op == 'C') {
        if ((rc = need(m, 1))) return rc;
        n = *m->p++;
    } else if (op == 0x8d) {
        if ((rc = need(m, 8))) return rc;
        n = rd64(m->p);
        m->p += 8;
    } else {
        if ((rc = need(m, 4))) return rc;
        n = rd32(m->p);
        m->p += 4;
    }
    if ((uint64_t)(m->end - m->p) < n) return perr(m, "string runs past the pickle");
    rc = push(m, new_str(m, m->p, (size_t)n));
    m->p += n;
    return rc;
}

static int op_global_line(pvm *m) /* GLOBAL "module\nname\n" */
{
    const unsigned char *a = m->p, *nl1 = memchr(a, '\n', (size_t)(m->end - a));
    if (!nl1) return perr(m, "GLOBAL without a newline");
    const unsigned char *b = nl1 + 1, *nl2 = memchr(b, '\n', (size_t)(m->end - b));
    if (!nl2) return perr(m, "GLOBAL without a second newline");
    m->p = nl2 + 1;
    return op_global(m, (const char *)a, (size_t)(nl1 - a), (const char *)b, (size_t)(nl2 - b));
}

static int op_stack_global(pvm *m) /* STACK_GLOBAL: module and name from the stack */
{
    tz_value *w = pop(m), *v = pop(m);
    if (!v || !w || v->kind != TZ_STR || w->kind != TZ_STR) return perr(m, "STACK_GLOBAL needs two strings");
    return op_global(m, v->s, v->slen, w->s, w->slen);
}

/* TUPLE, LIST, DICT: the items since the last MARK into a new container. */
static int op_collect(pvm *m, unsigned op)
{
    size_t from;
    int rc = pop_mark(m, &from);
    if (rc) return rc;
    if (op == 'd' && (m->sp - from) % 2) return perr(m, "DICT with an odd item count");
    tz_value *c = val_new(m->f, op == 't' ? TZ_TUPLE : op == 'l' ? TZ_LIST : TZ_DICT);
    if (!c) return MODEL_ENOMEM;
    for (size_t i = from; i < m->sp && !rc; i++) rc = val_push(c, m->stack[i]);
    m->sp = from;
    return rc ? rc : push(m, c);
}

static int op_tuple_n(pvm *m, size_t n) /* TUPLE1..3: the top n items */
{
    tz_value *c = val_new(m->f, TZ_TUPLE), *it[3];
    if (!c) return MODEL_ENOMEM;
    for (size_t i = n; i-- > 0;)
        if (!(it[i] = pop(m))) return perr(m, "TUPLE%zu with too few items", n);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) rc = val_push(c, it[i]);
    return rc ? rc : push(m, c);
}

/* SETITEM, APPEND: one pair / item into the dict / list below it; SETITEMS,
 * APPENDS: every item since the last MARK. */
static int op_fill(pvm *m, unsigned op)
{
    int is_dict = op == 's' || op == 'u';
    if (op == 's' || op == 'a') {
        tz_value *w = is_dict ? pop(m) : NULL, *v = pop(m), *c = top(m);
        if (is_dict ? !w || !v || !c || c->kind != TZ_DICT : !v || !c || c->kind != TZ_LIST)
            return perr(m, is_dict ? "SETITEM without a dict" : "APPEND without a list");
        int rc = val_push(c, v);
        return rc || !is_dict ? rc : val_push(c, w);
    }
    size_t from;
    int rc = pop_mark(m, &from);
    if (rc) return rc;
    if (from == 0 || m->stack[from - 1]->kind != (is_dict ? TZ_DICT : TZ_LIST) || (is_dict && (m->sp - from) % 2))
        return perr(m, is_dict ? "SETITEMS without a dict or with an odd item count" : "APPENDS without a list");
    tz_value *c = m->stack[from - 1];
    for (size_t i = from; i < m->sp && !rc; i++) rc = val_push(c, m->stack[i]);
    m->sp = from;
    return rc;
}

/* BINPUT, LONG_BINPUT, MEMOIZE (stores at index len(memo)); BINGET, LONG_BINGET. */
static int op_memo(pvm *m, unsigned op)
{
    if (op == 0x94) return memo_put(m, m->memo_count);
    int rc;
    uint64_t idx;
    if (op == 'q' || op == 'h') {
        if ((rc = need(m, 1))) return rc;
        idx = *m->p++;
    } else {
        if ((rc = need(m, 4))) return rc;
        idx = rd32(m->p);
        m->p += 4;
    }
    return op == 'q' || op == 'r' ? memo_put(m, idx) : memo_get(m, idx);
}

static int op_stack(pvm *m, unsigned op) /* POP, POP_MARK, DUP */
{
    size_t from;
    tz_value *v;
    switch (op) {
    case '0': return pop(m) ? 0 : perr(m, "POP with an empty stack");
    case '1': {
        int rc = pop_mark(m, &from);
        if (!rc) m->sp = from;
        return rc;
    }
    default: v = top(m); return v ? push(m, v) : perr(m, "DUP with an empty stack");
    }
}

static int op_build(pvm *m) /* BUILD: state for the object below; data only, so it is dropped */
{
    tz_value *v = pop(m), *c = top(m);
    if (!v || !c) return perr(m, "BUILD with too few stack items");
    if (c->kind != TZ_DICT && c->kind != TZ_TENSOR) return perr(m, "BUILD on a value that is not a dict or tensor");
    return 0;
}

/* Run one opcode (STOP is run_pickle's). */
static int step(pvm *m, unsigned op)
{
    switch (op) {
    case 0x80: return op_proto(m);
    case 0x95:                                /* FRAME: an 8-byte frame length, not needed */
        if (need(m, 8)) return MODEL_EFORMAT; /* need wrote the message */
        m->p += 8;
        return 0;
    case '(': return op_mark(m);
    case '}': return push(m, val_new(m->f, TZ_DICT));  /* EMPTY_DICT */
    case ']': return push(m, val_new(m->f, TZ_LIST));  /* EMPTY_LIST */
    case ')': return push(m, val_new(m->f, TZ_TUPLE)); /* EMPTY_TUPLE */
    case 'N': return push(m, val_new(m->f, TZ_NONE));  /* NONE */
    case 0x88: return push(m, new_int(m, 1, TZ_BOOL)); /* NEWTRUE */
    case 0x89: return push(m, new_int(m, 0, TZ_BOOL)); /* NEWFALSE */
    case 'K':
    case 'M':
    case 'J':
    case 0x8a: return op_int(m, op);
    case 'G': return op_binfloat(m);
    case 'X':
    case 0x8c:
    case 'T':
    case 'U':
    case 'B':
    case 'C':
    case 0x8d: return op_string(m, op);
    case 'c': return op_global_line(m);
    case 0x93: return op_stack_global(m);
    case 't':
    case 'l':
    case 'd': return op_collect(m, op);
    case 0x85:
    case 0x86:
    case 0x87: return op_tuple_n(m, op - 0x84);
    case 's':
    case 'u':
    case 'a':
    case 'e': return op_fill(m, op);
    case 'q':
    case 'r':
    case 0x94:
    case 'h':
    case 'j': return op_memo(m, op);
    case '0':
    case '1':
    case '2': return op_stack(m, op);
    case 'R': return op_reduce(m);
    case 'Q': return op_persid(m);
    case 'b': return op_build(m);
    default: return perr(m, "pickle opcode 0x%02x is not one torch.save emits; refusing", op);
    }
}

static int run_pickle(tz_file *f, const unsigned char *p, size_t len, char *err, size_t errlen)
{
    pvm m = { .f = f, .p = p, .end = p + len, .start = p, .err = err, .errlen = errlen };
    int rc = 0;
    while (!rc) {
        if (m.p >= m.end) {
            rc = perr(&m, "pickle ends without STOP (truncated)");
            break;
        }
        unsigned op = *m.p++;
        if (op == '.') { /* STOP: the one value left is the result */
            tz_value *v = pop(&m);
            if (!v || m.sp != 0)
                rc = perr(&m, "STOP with %zu stack items", m.sp + (v != NULL));
            else
                f->root = v;
            break;
        }
        rc = step(&m, op);
    }
    free(m.stack);
    free(m.marks);
    free(m.memo);
    return rc;
}

/* ---- Open / close ---------------------------------------------------------------- */

static int tz_parse(tz_file *f, char *err, size_t errlen)
{
    if (f->len >= 2 && f->buf[0] == 0x80 && f->buf[1] <= 5)
        return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                          "legacy (pre-1.6, non-zip) torch.save format "
                          "is not supported; re-save it with a current torch (zip format)");
    if (f->len < 4 || rd32(f->buf) != 0x04034b50)
        return model_errf(err, errlen, MODEL_EFORMAT, f->name, "not a zip archive (torch.save zip format)");
    int rc = zip_read(f, err, errlen);
    if (rc) return rc;
    const tz_entry *pkl = NULL;
    for (size_t i = 0; i < f->n_entries; i++) {
        const char *n = f->entries[i].name, *slash = strchr(n, '/');
        if (slash && strcmp(slash + 1, "data.pkl") == 0) {
            if (pkl) return model_errf(err, errlen, MODEL_EFORMAT, f->name, "archive holds two data.pkl records");
            pkl = &f->entries[i];
        }
    }
    if (!pkl)
        return model_errf(err, errlen, MODEL_EFORMAT, f->name,
                          "zip archive has no <prefix>/data.pkl "
                          "record: not a torch.save file");
    size_t plen = (size_t)(strchr(pkl->name, '/') - pkl->name) + 1;
    f->prefix = malloc(plen + 1);
    if (!f->prefix) return model_errf(err, errlen, MODEL_ENOMEM, f->name, "out of memory");
    memcpy(f->prefix, pkl->name, plen);
    f->prefix[plen] = 0;
    return run_pickle(f, f->buf + pkl->data_off, (size_t)pkl->size, err, errlen);
}

int tz_open_mem(tz_file **out, const void *buf, size_t len, const char *name, char *err, size_t errlen)
{
    *out = NULL;
    tz_file *f = calloc(1, sizeof *f);
    if (!f) return model_errf(err, errlen, MODEL_ENOMEM, name, "out of memory");
    f->buf = buf;
    f->len = len;
    snprintf(f->name, sizeof f->name, "%s", name ? name : "(memory)");
    int rc = tz_parse(f, err, errlen);
    if (rc) {
        tz_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int tz_open(tz_file **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return model_errf(err, errlen, MODEL_EIO, path, "cannot open: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) return model_errf(err, errlen, MODEL_EIO, path, "not a regular file");
    /* a private copy, not a file mapping: see model_map_file (truncation = SIGBUS) */
    const uint8_t *data;
    size_t len;
    int mrc = model_map_file(NULL, path, &data, &len, err, errlen);
    if (mrc) return mrc;
    if (len == 0) return model_errf(err, errlen, MODEL_EFORMAT, path, "empty file");
    void *map = (void *)data;
    tz_file *f = calloc(1, sizeof *f);
    if (!f) {
        model_unmap(data, len);
        return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    }
    f->buf = map;
    f->len = len;
    f->map = map;
    snprintf(f->name, sizeof f->name, "%s", path);
    int rc = tz_parse(f, err, errlen);
    if (rc) {
        tz_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void tz_close(tz_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n_all; i++) val_free(f->all[i]);
    free(f->all);
    for (size_t i = 0; i < f->n_entries; i++) free(f->entries[i].name);
    free(f->entries);
    free(f->prefix);
    if (f->map) model_unmap(f->map, f->len);
    free(f);
}

const tz_value *tz_root(const tz_file *f) { return f ? f->root : NULL; }

/* ---- Tensor access ---------------------------------------------------------------- */

int tz_tensor_is_contiguous(const tz_tensor *t)
{
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expect) return 0;
        expect *= t->shape[d];
    }
    return 1;
}

static double elem_at(const tz_tensor *t, int64_t idx)
{
    const unsigned char *p = t->storage + (size_t)idx * tz_dtype_size(t->dtype);
    switch (t->dtype) {
    case TZ_F32: {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    case TZ_F16: return model_f16_to_f32(rd16(p));
    case TZ_BF16: return model_bf16_to_f32(rd16(p));
    case TZ_F64: {
        double v;
        memcpy(&v, p, 8);
        return v;
    }
    case TZ_I64: return (double)(int64_t)rd64(p);
    case TZ_I32: return (double)(int32_t)rd32(p);
    case TZ_I16: return (double)(int16_t)rd16(p);
    case TZ_I8: return (double)(int8_t)p[0];
    default: return (double)p[0]; /* U8, BOOL */
    }
}

#define TZ_WALK(T, OUT, CONV)                                                \
    do {                                                                     \
        int64_t ix[TZ_MAX_DIMS] = { 0 };                                     \
        for (int64_t k = 0; k < (T)->numel; k++) {                           \
            int64_t e = (T)->offset;                                         \
            for (int d = 0; d < (T)->ndim; d++) e += ix[d] * (T)->stride[d]; \
            (OUT)[k] = CONV(elem_at((T), e));                                \
            for (int d = (T)->ndim - 1; d >= 0; d--) {                       \
                if (++ix[d] < (T)->shape[d]) break;                          \
                ix[d] = 0;                                                   \
            }                                                                \
        }                                                                    \
    } while (0)

void tz_tensor_to_f32(const tz_tensor *t, float *out)
{
    if (t->dtype == TZ_F32 && tz_tensor_is_contiguous(t)) {
        memcpy(out, t->storage + (size_t)t->offset * 4, (size_t)t->numel * 4);
        return;
    }
    TZ_WALK(t, out, (float));
}

void tz_tensor_to_f64(const tz_tensor *t, double *out) { TZ_WALK(t, out, (double)); }
