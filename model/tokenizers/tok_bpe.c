/* tok_bpe.c -- GPT-2 byte-level BPE and g2c BPE (see tok_bpe.h).
 *
 * Facts used: GPT-2's byte-to-unicode table and pre-tokenizer pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * are from OpenAI's gpt-2 release (src/encoder.py); the tokenizer.json layout
 * (model.vocab / model.merges / added_tokens / pre_tokenizer / post_processor)
 * from Hugging Face tokenizers' documentation; \s is Unicode White_Space
 * (PropList.txt), \p{L} and \p{N} come from model/tokenizers/unicode_tables.h.
 */
#include "model/tokenizers/tok_bpe.h"
#include "model/loader.h"
#include "model/tokenizers/tokenizer.h"
#include "model/tokenizers/unicode_tables.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Tables ---------------------------------------------------------------- */

typedef struct {
    /* raw bytes -> id */
    int32_t *vslot;
    uint32_t vmask;
    /* (left, right) -> merge */
    uint64_t *pkey;
    int32_t *prank, *pres;
    uint32_t pmask;
    int n_merges;
    /* special / added tokens, matched before pre-splitting, longest first */
    int32_t *special;
    int n_special;
    int digits_split; /* HF Digits(individual_digits=true) before ByteLevel */
    int prefix_space; /* ByteLevel add_prefix_space */
    int pre_split;    /* 1 = GPT-2 regex, 0 = none (g2c) */
} bpe_impl;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_pair(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static void impl_free(void *p)
{
    bpe_impl *b = p;
    if (!b) return;
    free(b->vslot);
    free(b->pkey);
    free(b->prank);
    free(b->pres);
    free(b->special);
    free(b);
}

static int32_t vocab_find(const tokenizer *t, const bpe_impl *b, const char *s, size_t n)
{
    for (uint32_t i = (uint32_t)hash_bytes(s, n) & b->vmask;; i = (i + 1) & b->vmask) {
        int32_t id = b->vslot[i];
        if (id < 0) return -1;
        if ((size_t)t->bytes_len[id] == n && memcmp(t->bytes[id], s, n) == 0) return id;
    }
}

/* Index every token's bytes (first id wins for duplicates). */
static int vocab_index(tokenizer *t, bpe_impl *b)
{
    uint32_t cap = 16;
    while (cap < (uint32_t)t->n_vocab * 2u) cap *= 2;
    b->vslot = malloc(cap * sizeof *b->vslot);
    if (!b->vslot) return MODEL_ENOMEM;
    memset(b->vslot, 0xff, cap * sizeof *b->vslot);
    b->vmask = cap - 1;
    for (int id = 0; id < t->n_vocab; id++) {
        if (t->types[id] == TT_UNUSED) continue;
        if (vocab_find(t, b, t->bytes[id], (size_t)t->bytes_len[id]) >= 0) continue;
        uint32_t i = (uint32_t)hash_bytes(t->bytes[id], (size_t)t->bytes_len[id]) & b->vmask;
        while (b->vslot[i] >= 0) i = (i + 1) & b->vmask;
        b->vslot[i] = id;
    }
    for (int c = 0; c < 256; c++) {
        char ch = (char)c;
        t->byte_id[c] = vocab_find(t, b, &ch, 1);
    }
    return 0;
}

static int pairs_alloc(bpe_impl *b, int n)
{
    uint32_t cap = 16;
    while (cap < (uint32_t)n * 2u + 2u) cap *= 2;
    b->pkey = malloc(cap * sizeof *b->pkey);
    b->prank = malloc(cap * sizeof *b->prank);
    b->pres = malloc(cap * sizeof *b->pres);
    if (!b->pkey || !b->prank || !b->pres) return MODEL_ENOMEM;
    memset(b->pkey, 0xff, cap * sizeof *b->pkey);
    b->pmask = cap - 1;
    return 0;
}

/* Returns 1 if added, 0 if the pair already had a (better) rank. */
static int pair_add(bpe_impl *b, int32_t l, int32_t r, int32_t rank, int32_t res)
{
    uint64_t k = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    uint32_t i = (uint32_t)hash_pair(k) & b->pmask;
    while (b->pkey[i] != ~0ull) {
        if (b->pkey[i] == k) return 0;
        i = (i + 1) & b->pmask;
    }
    b->pkey[i] = k;
    b->prank[i] = rank;
    b->pres[i] = res;
    b->n_merges++;
    return 1;
}

static int pair_find(const bpe_impl *b, int32_t l, int32_t r, int32_t *res)
{
    uint64_t k = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    for (uint32_t i = (uint32_t)hash_pair(k) & b->pmask;; i = (i + 1) & b->pmask) {
        if (b->pkey[i] == ~0ull) return -1;
        if (b->pkey[i] == k) {
            *res = b->pres[i];
            return b->prank[i];
        }
    }
}

/* ---- GPT-2 byte <-> unicode ------------------------------------------------------ */

static void byte_unicode_table(uint32_t cp_of[256])
{
    int n = 0;
    for (int c = 0; c < 256; c++) {
        int printable = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
        cp_of[c] = printable ? (uint32_t)c : (uint32_t)(256 + n++);
    }
}

static int cp_to_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    /* the n-th non-printable byte */
    int n = (int)cp - 256;
    for (int c = 0; c < 256; c++) {
        int printable = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
        if (!printable && n-- == 0) return c;
    }
    return -1;
}

/* One character of s[0..len) (len >= 1): its code point, or for an ill-formed part
 * (model_utf8_decode's rule) MODEL_UTF8_INVALID / _PARTIAL, which is in no class
 * ("other"); its length in *n. */
static uint32_t utf8_next(const unsigned char *s, size_t len, size_t *n)
{
    uint32_t cp;
    *n = model_utf8_decode((const char *)s, len, &cp);
    return cp;
}

static size_t utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    o[0] = (char)(0xE0 | cp >> 12);
    o[1] = (char)(0x80 | ((cp >> 6) & 63));
    o[2] = (char)(0x80 | (cp & 63));
    return 3;
}

/* Byte-level spelling -> raw bytes.  Returns length or -1 if a code point is outside
 * the 256-symbol alphabet. */
static int unmap_bytes(const char *s, size_t n, char *out)
{
    size_t i = 0, k = 0;
    while (i < n) {
        size_t m;
        uint32_t cp = utf8_next((const unsigned char *)s + i, n - i, &m);
        int b = cp > 0x10FFFF ? -1 : cp_to_byte(cp);
        if (b < 0) return -1;
        out[k++] = (char)b;
        i += m;
    }
    return (int)k;
}

/* ---- Unicode classes --------------------------------------------------------------- */

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_letter(uint32_t cp)
{
    if (cp < 128) return (cp | 32) >= 'a' && (cp | 32) <= 'z';
    return cp <= 0x10FFFF && in_ranges(uc_letter_ranges, sizeof uc_letter_ranges / sizeof uc_letter_ranges[0], cp);
}

static int is_number(uint32_t cp)
{
    if (cp < 128) return cp >= '0' && cp <= '9';
    return cp <= 0x10FFFF && in_ranges(uc_number_ranges, sizeof uc_number_ranges / sizeof uc_number_ranges[0], cp);
}

static int is_space(uint32_t cp) /* Unicode White_Space */
{
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

enum { C_OTHER, C_LETTER, C_NUMBER, C_SPACE };

static int cls(uint32_t cp)
{
    return is_letter(cp) ? C_LETTER : is_number(cp) ? C_NUMBER : is_space(cp) ? C_SPACE : C_OTHER;
}

/* End of the GPT-2 pattern's match starting at i (< len). */
static size_t gpt2_match(const unsigned char *s, size_t len, size_t i)
{
    size_t n;
    uint32_t c = utf8_next(s + i, len - i, &n);
    /* 's 't 're 've 'm 'll 'd */
    if (c == '\'' && i + 1 < len) {
        unsigned a = s[i + 1], b = i + 2 < len ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    /* ' ?' then a run of one class */
    size_t j = i;
    uint32_t d = c;
    size_t dn = n;
    if (c == ' ' && i + 1 < len) {
        j = i + 1;
        d = utf8_next(s + j, len - j, &dn);
    }
    int k = cls(d);
    if (k != C_SPACE && (j == i || c == ' ')) {
        if (!(j == i && c == ' ')) {
            size_t e = j + dn;
            while (e < len) {
                size_t m;
                uint32_t x = utf8_next(s + e, len - e, &m);
                if (cls(x) != k) break;
                e += m;
            }
            return e;
        }
    }
    /* whitespace: \s+(?!\S) | \s+ */
    size_t e = i;
    int count = 0;
    size_t last = i;
    while (e < len) {
        size_t m;
        uint32_t x = utf8_next(s + e, len - e, &m);
        if (!is_space(x)) break;
        last = e;
        e += m;
        count++;
    }
    if (count == 0) return i + n; /* cannot happen: every char is in one class */
    if (e == len || count == 1) return e;
    return last; /* leave the last space to prefix the next word */
}

/* ---- BPE on one piece -------------------------------------------------------------- */

typedef struct {
    int32_t rank, pos, l, r;
} hent;

static int hless(const hent *a, const hent *b) { return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos); }

static void hpush(hent *h, int *n, hent e)
{
    int i = (*n)++;
    h[i] = e;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!hless(&h[i], &h[p])) break;
        hent t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static hent hpop(hent *h, int *n)
{
    hent top = h[0];
    h[0] = h[--(*n)];
    for (int i = 0;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && hless(&h[l], &h[m])) m = l;
        if (r < *n && hless(&h[r], &h[m])) m = r;
        if (m == i) break;
        hent t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

typedef struct {
    int32_t *out;
    int cap, n;
} emit_t;

static void emit(emit_t *e, int32_t id)
{
    if (e->n < e->cap) e->out[e->n] = id;
    e->n++;
}

static int bpe_piece(const tokenizer *t, const bpe_impl *b, const unsigned char *s, size_t n, emit_t *e)
{
    if (n == 0) return 0;
    /* Small pieces (almost all) work on the stack; long ones on the heap. */
    enum { SMALL = 64 };
    int32_t s_id[SMALL], s_nx[SMALL], s_pv[SMALL];
    hent s_h[2 * SMALL + 1];
    int heap = n > SMALL;
    int32_t *id = heap ? malloc(n * sizeof *id) : s_id;
    int32_t *nx = heap ? malloc(n * sizeof *nx) : s_nx, *pv = heap ? malloc(n * sizeof *pv) : s_pv;
    hent *h = heap ? malloc((2 * n + 1) * sizeof *h) : s_h;
    if (!id || !nx || !pv || !h) {
        if (heap) {
            free(id);
            free(nx);
            free(pv);
            free(h);
        }
        return MODEL_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        id[i] = t->byte_id[s[i]];
        if (id[i] < 0) id[i] = t->unk_id; /* a vocabulary without this byte */
        nx[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        pv[i] = (int32_t)i - 1;
    }
    int hn = 0;
    int32_t res;
    for (size_t i = 0; i + 1 < n; i++) {
        if (id[i] < 0 || id[i + 1] < 0) continue;
        int rk = pair_find(b, id[i], id[i + 1], &res);
        if (rk >= 0) hpush(h, &hn, (hent){ rk, (int32_t)i, id[i], id[i + 1] });
    }
    while (hn > 0) {
        hent x = hpop(h, &hn);
        int32_t l = x.pos, r = nx[l];
        if (id[l] != x.l || r < 0 || id[r] != x.r) continue; /* stale */
        pair_find(b, x.l, x.r, &res);
        id[l] = res;
        id[r] = -2; /* dead */
        nx[l] = nx[r];
        if (nx[r] >= 0) pv[nx[r]] = l;
        /* A heap slot frees with every merge, so 2n entries always suffice. */
        if (pv[l] >= 0) {
            int rk = pair_find(b, id[pv[l]], id[l], &res);
            if (rk >= 0) hpush(h, &hn, (hent){ rk, pv[l], id[pv[l]], id[l] });
        }
        if (nx[l] >= 0) {
            int rk = pair_find(b, id[l], id[nx[l]], &res);
            if (rk >= 0) hpush(h, &hn, (hent){ rk, l, id[l], id[nx[l]] });
        }
    }
    for (int32_t i = 0; i >= 0; i = nx[i])
        if (id[i] >= 0) emit(e, id[i]);
    if (heap) {
        free(id);
        free(nx);
        free(pv);
        free(h);
    }
    return 0;
}

/* A segment without special tokens. */
static int encode_segment(const tokenizer *t, const bpe_impl *b, const unsigned char *s, size_t len, emit_t *e)
{
    if (!b->pre_split) return bpe_piece(t, b, s, len, e);
    size_t i = 0;
    while (i < len) {
        /* Digits(individual_digits): each number char alone; runs between stay whole. */
        size_t end = len;
        if (b->digits_split) {
            size_t m;
            uint32_t c = utf8_next(s + i, len - i, &m);
            if (is_number(c)) {
                end = i + m;
            } else {
                end = i;
                while (end < len) {
                    uint32_t x = utf8_next(s + end, len - end, &m);
                    if (is_number(x)) break;
                    end += m;
                }
            }
        }
        while (i < end) {
            size_t j = gpt2_match(s, end, i);
            int rc = bpe_piece(t, b, s + i, j - i, e);
            if (rc) return rc;
            i = j;
        }
    }
    return 0;
}

int tok_bpe_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    const bpe_impl *b = t->impl;
    if (!b || (t->kind != TOK_BPE_BYTES && t->kind != TOK_G2C)) return MODEL_EINVAL;
    if (len > (size_t)1 << 30) return MODEL_EINVAL;
    emit_t e = { out, cap < 0 ? 0 : cap, 0 };
    if (add_bos && t->bos_id >= 0) emit(&e, t->bos_id);
    const unsigned char *s = (const unsigned char *)text;
    char *tmp = NULL;
    if (b->prefix_space && len > 0 && s[0] != ' ') {
        tmp = malloc(len + 1);
        if (!tmp) return MODEL_ENOMEM;
        tmp[0] = ' ';
        memcpy(tmp + 1, text, len);
        s = (const unsigned char *)tmp;
        len++;
    }
    size_t seg = 0, i = 0;
    int rc = 0;
    while (i < len && !rc) {
        int32_t hit = -1;
        for (int k = 0; k < b->n_special; k++) { /* sorted longest first */
            int32_t id = b->special[k];
            size_t n = (size_t)t->bytes_len[id];
            if (n && n <= len - i && (unsigned char)t->bytes[id][0] == s[i] && memcmp(t->bytes[id], s + i, n) == 0) {
                hit = id;
                break;
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        rc = encode_segment(t, b, s + seg, i - seg, &e);
        emit(&e, hit);
        i += (size_t)t->bytes_len[hit];
        seg = i;
    }
    if (!rc) rc = encode_segment(t, b, s + seg, len - seg, &e);
    free(tmp);
    if (rc) return rc;
    return e.n;
}

/* ---- Building ---------------------------------------------------------------------- */

static int vocab_alloc(tokenizer *t, int n)
{
    t->n_vocab = n;
    t->str = calloc((size_t)n, sizeof *t->str);
    t->str_len = calloc((size_t)n, sizeof *t->str_len);
    t->bytes = calloc((size_t)n, sizeof *t->bytes);
    t->bytes_len = calloc((size_t)n, sizeof *t->bytes_len);
    t->types = calloc((size_t)n, sizeof *t->types);
    t->bos_id = t->eos_id = t->unk_id = -1;
    if (!t->str || !t->str_len || !t->bytes || !t->bytes_len || !t->types) return MODEL_ENOMEM;
    for (int i = 0; i < n; i++) t->types[i] = TT_UNUSED;
    return 0;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Set token id from its stored (byte-level) spelling; raw = 1: s is literal text. */
static int set_token(tokenizer *t, int id, const char *s, size_t n, int type, int raw)
{
    free(t->str[id]);
    free(t->bytes[id]);
    t->str[id] = dupn(s, n);
    t->bytes[id] = malloc(n + 1);
    if (!t->str[id] || !t->bytes[id]) return MODEL_ENOMEM;
    t->str_len[id] = (int)n;
    int k = raw ? -1 : unmap_bytes(s, n, t->bytes[id]);
    if (k < 0) { /* not in the byte alphabet: a literal (added or special) token */
        memcpy(t->bytes[id], s, n);
        k = (int)n;
    }
    t->bytes[id][k] = 0;
    t->bytes_len[id] = k;
    t->types[id] = (uint8_t)type;
    if ((int)n > t->max_str_len) t->max_str_len = (int)n;
    if (k > t->max_str_len) t->max_str_len = k;
    return 0;
}

static int cmp_special_len(const void *a, const void *b, void *ctx)
{
    const tokenizer *t = ctx;
    int x = *(const int32_t *)a, y = *(const int32_t *)b;
    return t->bytes_len[y] - t->bytes_len[x];
}

/* After vocab and types are set: index, collect specials (types CONTROL/USER with
 * non-empty text), fill placeholders. */
static int finish(tokenizer *t, bpe_impl *b)
{
    for (int id = 0; id < t->n_vocab; id++)
        if (!t->str[id]) {
            if (set_token(t, id, "", 0, TT_UNUSED, 1)) return MODEL_ENOMEM;
        }
    int rc = vocab_index(t, b);
    if (rc) return rc;
    b->special = malloc(((size_t)t->n_vocab + 1) * sizeof *b->special);
    if (!b->special) return MODEL_ENOMEM;
    b->n_special = 0;
    for (int id = 0; id < t->n_vocab; id++)
        if ((t->types[id] == TT_CONTROL || t->types[id] == TT_USER) && t->bytes_len[id] > 0)
            b->special[b->n_special++] = id;
    qsort_r(b->special, (size_t)b->n_special, sizeof *b->special, cmp_special_len, t);
    return 0;
}

static bpe_impl *impl_new(tokenizer *t, int kind)
{
    bpe_impl *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    t->kind = kind;
    t->impl = b;
    t->impl_free = impl_free;
    b->pre_split = kind == TOK_BPE_BYTES;
    return b;
}

/* Add merge "a b" (byte-level spellings) with the given rank. */
static int add_merge_str(tokenizer *t, bpe_impl *b, const char *a, size_t an, const char *c, size_t cn, int rank,
                         char *scratch)
{
    int ka = unmap_bytes(a, an, scratch);
    if (ka < 0) return -1;
    int kc = unmap_bytes(c, cn, scratch + ka);
    if (kc < 0) return -1;
    int32_t l = vocab_find(t, b, scratch, (size_t)ka), r = vocab_find(t, b, scratch + ka, (size_t)kc);
    int32_t res = vocab_find(t, b, scratch, (size_t)(ka + kc));
    if (l < 0 || r < 0 || res < 0) return -1;
    pair_add(b, l, r, rank, res);
    return 0;
}

static int merges_from_strings(tokenizer *t, bpe_impl *b, int n, const char *const *m, const char *name, char *err,
                               size_t errlen)
{
    int rc = pairs_alloc(b, n);
    if (rc) return model_errf(err, errlen, rc, name, "out of memory");
    char *scratch = malloc((size_t)t->max_str_len * 2 + 64);
    if (!scratch) return model_errf(err, errlen, MODEL_ENOMEM, name, "out of memory");
    for (int i = 0; i < n; i++) {
        const char *sp = strchr(m[i], ' ');
        if (!sp || sp == m[i] || strlen(m[i]) > (size_t)t->max_str_len * 2 + 8 ||
            add_merge_str(t, b, m[i], (size_t)(sp - m[i]), sp + 1, strlen(sp + 1), i, scratch)) {
            free(scratch);
            return model_errf(err, errlen, MODEL_EFORMAT, name,
                              "merge %d ('%.40s') does not join two "
                              "vocabulary tokens into a third",
                              i, m[i]);
        }
    }
    free(scratch);
    return 0;
}

int tok_bpe_load_lists(tokenizer *t, int n_vocab, const char *const *tokens, const int32_t *types, int n_merges,
                       const char *const *merges, char *err, size_t errlen)
{
    const char *name = "gguf vocabulary";
    memset(t, 0, sizeof *t);
    if (n_vocab <= 0 || n_vocab > (1 << 24) || n_merges < 0)
        return model_errf(err, errlen, MODEL_EFORMAT, name, "bad vocabulary size %d", n_vocab);
    bpe_impl *b = impl_new(t, TOK_BPE_BYTES);
    if (!b || vocab_alloc(t, n_vocab)) {
        tok_bpe_clear(t);
        return model_errf(err, errlen, MODEL_ENOMEM, name, "out of memory");
    }
    for (int i = 0; i < n_vocab; i++) {
        int ty = types ? types[i] : TT_NORMAL;
        if (ty < TT_NORMAL || ty > TT_BYTE) ty = TT_NORMAL;
        int raw = ty == TT_CONTROL || ty == TT_USER;
        if (set_token(t, i, tokens[i], strlen(tokens[i]), ty, raw)) {
            tok_bpe_clear(t);
            return model_errf(err, errlen, MODEL_ENOMEM, name, "out of memory");
        }
    }
    int rc = finish(t, b);
    if (!rc)
        rc = merges_from_strings(t, b, n_merges, merges, name, err, errlen);
    else
        model_errf(err, errlen, rc, name, "out of memory");
    if (rc) {
        tok_bpe_clear(t);
        return rc;
    }
    return 0;
}

static json_t *load_json(const char *path, char *err, size_t errlen, int *rc)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        *rc = model_errf(err, errlen, je.line < 0 && je.position == 0 ? MODEL_EIO : MODEL_EFORMAT, path, "%s (line %d)",
                         je.text, je.line);
    return j;
}

/* One tokenizer.json merge in either spelling, "a b" or ["a", "b"]: its two halves
 * into *a and *c (lengths *an, *cn).  -1 when the entry is neither spelling or the
 * halves together are longer than max. */
static int merge_pair(json_t *p, size_t max, const char **a, size_t *an, const char **c, size_t *cn)
{
    *a = *c = NULL;
    *an = *cn = 0;
    if (json_is_string(p)) {
        const char *s = json_string_value(p);
        const char *sp = strchr(s, ' ');
        if (sp) {
            *a = s;
            *an = (size_t)(sp - s);
            *c = sp + 1;
            *cn = strlen(*c);
        }
    } else if (json_is_array(p) && json_array_size(p) == 2) {
        *a = json_string_value(json_array_get(p, 0));
        *c = json_string_value(json_array_get(p, 1));
        *an = *a ? strlen(*a) : 0;
        *cn = *c ? strlen(*c) : 0;
    }
    return *a && *c && *an + *cn <= max ? 0 : -1;
}

/* ---- tokenizer.json: the parts both kinds read ---- */

/* A component (pre_tokenizer, normalizer, post_processor) as a list: the items of a
 * "Sequence" (under seq_key), else the component itself, else nothing.  A new
 * array (json_decref it), or NULL when out of memory. */
static json_t *hf_list(const json_t *o, const char *seq_key)
{
    json_t *list = json_array();
    if (!list) return NULL;
    const char *ty = json_string_value(json_object_get(o, "type"));
    int rc = 0;
    if (ty && strcmp(ty, "Sequence") == 0)
        rc = json_array_extend(list, json_object_get(o, seq_key));
    else if (o && !json_is_null(o))
        rc = json_array_append(list, (json_t *)o);
    if (rc && json_is_array(json_object_get(o, seq_key))) { /* extend fails on a non-array: nothing */
        json_decref(list);
        return NULL;
    }
    return list;
}

/* Vocabulary size: the largest id among model.vocab and added_tokens, plus one. */
static int hf_vocab_size(json_t *vocab, json_t *added, const char *path, int *n, char *err, size_t errlen)
{
    const char *key;
    json_t *v, *p;
    size_t k;
    *n = 0;
    json_object_foreach(vocab, key, v)
    {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || id >= (1 << 24))
            return model_errf(err, errlen, MODEL_EFORMAT, path, "vocab entry '%.40s' has a bad id", key);
        if (id + 1 > *n) *n = (int)id + 1;
    }
    json_array_foreach(added, k, p)
    {
        json_int_t id = json_integer_value(json_object_get(p, "id"));
        if (!json_is_string(json_object_get(p, "content")) || id < 0 || id >= (1 << 24))
            return model_errf(err, errlen, MODEL_EFORMAT, path, "added_tokens[%zu] needs an id and content", k);
        if (id + 1 > *n) *n = (int)id + 1;
    }
    return 0;
}

/* BOS from the post-processor: a TemplateProcessing (alone or in a Sequence) whose
 * single-sequence template starts with a special token means "add BOS". */
static int hf_template_bos(tokenizer *t, json_t *j, const char *path, char *err, size_t errlen)
{
    json_t *procs = hf_list(json_object_get(j, "post_processor"), "processors"), *p;
    if (!procs) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    size_t k;
    json_array_foreach(procs, k, p)
    {
        const char *ty = json_string_value(json_object_get(p, "type"));
        if (!ty || strcmp(ty, "TemplateProcessing") != 0) continue;
        json_t *first = json_array_get(json_object_get(p, "single"), 0);
        const char *sid = json_string_value(json_object_get(json_object_get(first, "SpecialToken"), "id"));
        if (!sid) continue;
        json_t *ids = json_object_get(json_object_get(json_object_get(p, "special_tokens"), sid), "ids");
        json_int_t bid = json_integer_value(json_array_get(ids, 0));
        if (json_is_integer(json_array_get(ids, 0)) && bid >= 0 && bid < t->n_vocab) {
            t->add_bos = 1;
            t->bos_id = (int32_t)bid;
        }
    }
    json_decref(procs);
    return 0;
}

/* ---- tokenizer.json, SentencePiece-converted (byte_fallback) ---- */

/* The vocabulary and added tokens into t (n ids; unnamed ids unused). */
static int spm_vocab(tokenizer *t, json_t *vocab, json_t *added, int n, const char *path, char *err, size_t errlen)
{
    const char *key;
    json_t *v, *p;
    size_t k;
    if (tokenizer_alloc(t, n)) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    t->kind = TOK_SPM;
    json_object_foreach(vocab, key, v)
    {
        int id = (int)json_integer_value(v);
        if (t->str[id]) return model_errf(err, errlen, MODEL_EFORMAT, path, "id %d appears twice in the vocab", id);
        if (strlen(key) > TOKENIZER_MAX_TOKEN_LEN || tokenizer_set_token(t, id, key, (int)strlen(key)))
            return model_errf(err, errlen, MODEL_EFORMAT, path, "vocab entry %d is unusable", id);
    }
    for (int id = 0; id < n; id++)
        if (!t->str[id] && tokenizer_set_token(t, id, "", 0))
            return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    tokenizer_guess_types(t);
    for (int id = 0; id < n; id++)
        if (!json_object_get(vocab, t->str[id]) && !t->str_len[id]) t->types[id] = TT_UNUSED;
    json_array_foreach(added, k, p)
    {
        int id = (int)json_integer_value(json_object_get(p, "id"));
        const char *c = json_string_value(json_object_get(p, "content"));
        if (tokenizer_set_token(t, id, c, (int)strlen(c)))
            return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
        if (t->types[id] != TT_UNKNOWN)
            t->types[id] = json_is_true(json_object_get(p, "special")) ? TT_CONTROL : TT_USER;
    }
    return 0;
}

/* Scores from merge ranks: a token's score is minus the rank of the first merge
 * producing it (through a temporary string -> id table); tokens no merge makes
 * score -1e30. */
static int spm_scores(tokenizer *t, json_t *merges, const char *path, char *err, size_t errlen)
{
    int n = t->n_vocab, rc = 0;
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n) cap *= 2;
    int32_t *slot = malloc(cap * sizeof *slot);
    char *buf = malloc(2 * TOKENIZER_MAX_TOKEN_LEN + 2);
    if (!slot || !buf) {
        free(slot);
        free(buf);
        return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    }
    memset(slot, 0xff, cap * sizeof *slot);
    for (int id = 0; id < n; id++) {
        uint32_t h = (uint32_t)hash_bytes(t->str[id], (size_t)t->str_len[id]) & (cap - 1);
        while (slot[h] >= 0) h = (h + 1) & (cap - 1);
        slot[h] = id;
    }
    for (int id = 0; id < n; id++) t->scores[id] = -1e30f;
    size_t k;
    json_t *p;
    json_array_foreach(merges, k, p)
    {
        const char *a, *c;
        size_t an, cn;
        if (merge_pair(p, 2 * TOKENIZER_MAX_TOKEN_LEN, &a, &an, &c, &cn)) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path, "merges[%zu] is not a pair of strings", k);
            break;
        }
        memcpy(buf, a, an);
        memcpy(buf + an, c, cn);
        int32_t res = -1;
        for (uint32_t h = (uint32_t)hash_bytes(buf, an + cn) & (cap - 1); slot[h] >= 0; h = (h + 1) & (cap - 1))
            if ((size_t)t->str_len[slot[h]] == an + cn && memcmp(t->str[slot[h]], buf, an + cn) == 0) {
                res = slot[h];
                break;
            }
        if (res < 0) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path, "merges[%zu] makes a string that is not in the vocab", k);
            break;
        }
        if (t->scores[res] == -1e30f) t->scores[res] = -(float)k;
    }
    free(slot);
    free(buf);
    return rc;
}

/* Space prefix: a Prepend("\u2581") normalizer, or a Metaspace pre-tokenizer that
 * adds one.  Other normalizers than Prepend/Replace, other pre-tokenizers: refused. */
static int spm_space_prefix(tokenizer *t, json_t *norm, json_t *pre, const char *path, char *err, size_t errlen)
{
    json_t *ns = hf_list(norm, "normalizers"), *p;
    if (!ns) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    int rc = 0;
    size_t k;
    json_array_foreach(ns, k, p)
    {
        const char *ty = json_string_value(json_object_get(p, "type"));
        if (ty && !strcmp(ty, "Prepend"))
            t->add_space_prefix = 1;
        else if (ty && !strcmp(ty, "Replace"))
            continue;
        else {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path, "normalizer '%s' is not supported", ty ? ty : "?");
            break;
        }
    }
    json_decref(ns);
    if (rc) return rc;
    const char *pt = json_string_value(json_object_get(pre, "type"));
    if (pt && !strcmp(pt, "Metaspace")) {
        const char *scheme = json_string_value(json_object_get(pre, "prepend_scheme"));
        if (json_is_true(json_object_get(pre, "add_prefix_space")) || (scheme && strcmp(scheme, "never")))
            t->add_space_prefix = 1;
    } else if (pre && !json_is_null(pre)) {
        return model_errf(err, errlen, MODEL_EFORMAT, path, "pre_tokenizer '%s' is not supported with byte_fallback",
                          pt ? pt : "?");
    }
    return 0;
}

/* A SentencePiece-converted BPE tokenizer.json (byte_fallback, "\u2581" spaces, as HF
 * writes Llama/TinyLlama vocabularies) becomes a TOK_SPM tokenizer: such merge lists
 * are generated in the order of the merged tokens' SentencePiece scores, so a token's
 * score is minus the rank of the first merge producing it, and spm.c's
 * highest-score-first merging reproduces merge-rank order. */
static int load_hf_spm(tokenizer *t, json_t *j, const char *path, char *err, size_t errlen)
{
    json_t *mdl = json_object_get(j, "model"), *vocab = json_object_get(mdl, "vocab");
    json_t *added = json_object_get(j, "added_tokens");
    int n, rc;
    if ((rc = hf_vocab_size(vocab, added, path, &n, err, errlen))) return rc;
    if (n == 0) return model_errf(err, errlen, MODEL_EFORMAT, path, "empty vocabulary");
    if ((rc = spm_vocab(t, vocab, added, n, path, err, errlen)) ||
        (rc = spm_scores(t, json_object_get(mdl, "merges"), path, err, errlen)))
        return rc;
    const char *unk = json_string_value(json_object_get(mdl, "unk_token"));
    if (unk && json_is_integer(json_object_get(vocab, unk)))
        t->unk_id = (int32_t)json_integer_value(json_object_get(vocab, unk));
    if ((rc = spm_space_prefix(t, json_object_get(j, "normalizer"), json_object_get(j, "pre_tokenizer"), path, err,
                               errlen)) ||
        (rc = hf_template_bos(t, j, path, err, errlen)))
        return rc;
    char why[160] = "";
    if ((rc = tokenizer_finish(t, why, sizeof why)))
        return model_errf(err, errlen, rc, path, "%s", rc == MODEL_ENOMEM ? "out of memory" : why);
    return 0;
}

/* ---- tokenizer.json, byte-level BPE ---- */

/* The pre-tokenizer must be ByteLevel with its regex, optionally after
 * Digits(individual_digits); *digits and *prefix (add_prefix_space) from it. */
static int bytes_pretokenizer(json_t *pre, const char *path, int *digits, int *prefix, char *err, size_t errlen)
{
    *digits = *prefix = 0;
    json_t *list = hf_list(pre, "pretokenizers"), *p;
    if (!list) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    int bytelevel = 0, rc = 0;
    size_t k;
    json_array_foreach(list, k, p)
    {
        const char *ty = json_string_value(json_object_get(p, "type"));
        if (ty && strcmp(ty, "ByteLevel") == 0 && !json_is_false(json_object_get(p, "use_regex")) && !bytelevel) {
            bytelevel = 1;
            *prefix = json_is_true(json_object_get(p, "add_prefix_space"));
        } else if (ty && strcmp(ty, "Digits") == 0 && json_is_true(json_object_get(p, "individual_digits")) &&
                   !bytelevel) {
            *digits = 1;
        } else {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path,
                            "pre_tokenizer '%s' is not supported (ByteLevel "
                            "with its regex, optionally after Digits(individual_digits))",
                            ty ? ty : "?");
            break;
        }
    }
    json_decref(list);
    if (!rc && !bytelevel)
        rc = model_errf(err, errlen, MODEL_EFORMAT, path, "no ByteLevel pre_tokenizer: not a byte-level BPE");
    return rc;
}

/* The vocabulary (byte-level spellings) and added tokens (literal) into t. */
static int bytes_vocab(tokenizer *t, json_t *vocab, json_t *added, const char *path, char *err, size_t errlen)
{
    const char *key;
    json_t *v, *p;
    size_t k;
    json_object_foreach(vocab, key, v)
    {
        int id = (int)json_integer_value(v);
        if (t->str[id]) return model_errf(err, errlen, MODEL_EFORMAT, path, "id %d appears twice in the vocab", id);
        if (set_token(t, id, key, strlen(key), TT_NORMAL, 0))
            return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    }
    json_array_foreach(added, k, p)
    {
        int id = (int)json_integer_value(json_object_get(p, "id"));
        const char *c = json_string_value(json_object_get(p, "content"));
        int special = json_is_true(json_object_get(p, "special"));
        if (set_token(t, id, c, strlen(c), special ? TT_CONTROL : TT_USER, 1))
            return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    }
    return 0;
}

/* Merges ("a b" strings or ["a", "b"] pairs), ranked in list order. */
static int bytes_merges(tokenizer *t, bpe_impl *b, json_t *merges, const char *path, char *err, size_t errlen)
{
    int rc = pairs_alloc(b, (int)json_array_size(merges));
    if (rc) return model_errf(err, errlen, rc, path, "out of memory");
    char *scratch = malloc((size_t)t->max_str_len * 2 + 64);
    if (!scratch) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    size_t k;
    json_t *p;
    json_array_foreach(merges, k, p)
    {
        const char *a, *c;
        size_t an, cn;
        if (merge_pair(p, (size_t)t->max_str_len * 2, &a, &an, &c, &cn) ||
            add_merge_str(t, b, a, an, c, cn, (int)k, scratch)) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path,
                            "merges[%zu] does not join two vocabulary "
                            "tokens into a third",
                            k);
            break;
        }
    }
    free(scratch);
    return rc;
}

static int load_hf_bytes(tokenizer *t, json_t *j, const char *path, char *err, size_t errlen)
{
    json_t *mdl = json_object_get(j, "model"), *norm = json_object_get(j, "normalizer");
    json_t *vocab = json_object_get(mdl, "vocab"), *added = json_object_get(j, "added_tokens");
    if (norm && !json_is_null(norm)) {
        const char *ty = json_string_value(json_object_get(norm, "type"));
        return model_errf(err, errlen, MODEL_EFORMAT, path,
                          "normalizer '%s' is not supported (byte-level BPE "
                          "without normalizer only)",
                          ty ? ty : "?");
    }
    int digits, prefix, n, rc;
    if ((rc = bytes_pretokenizer(json_object_get(j, "pre_tokenizer"), path, &digits, &prefix, err, errlen)) ||
        (rc = hf_vocab_size(vocab, added, path, &n, err, errlen)))
        return rc;
    bpe_impl *b = impl_new(t, TOK_BPE_BYTES);
    if (!b || vocab_alloc(t, n)) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    b->digits_split = digits;
    b->prefix_space = prefix;
    if ((rc = bytes_vocab(t, vocab, added, path, err, errlen))) return rc;
    if ((rc = finish(t, b))) return model_errf(err, errlen, rc, path, "out of memory");
    if ((rc = bytes_merges(t, b, json_object_get(mdl, "merges"), path, err, errlen)) ||
        (rc = hf_template_bos(t, j, path, err, errlen)))
        return rc;
    /* Default EOS: <|endoftext|> when present (the model's config may override). */
    for (int id = 0; id < t->n_vocab; id++)
        if (t->types[id] == TT_CONTROL && strcmp(t->str[id], "<|endoftext|>") == 0) {
            t->eos_id = id;
            break;
        }
    return 0;
}

int tok_bpe_load_hf(tokenizer *t, const char *path, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    int rc = 0;
    json_t *j = load_json(path, err, errlen, &rc);
    if (!j) return rc;
    json_t *mdl = json_object_get(j, "model");
    const char *mtype = json_string_value(json_object_get(mdl, "type"));
    if (!mtype || strcmp(mtype, "BPE") != 0 || !json_is_object(json_object_get(mdl, "vocab")) ||
        !json_is_array(json_object_get(mdl, "merges")))
        rc = model_errf(err, errlen, MODEL_EFORMAT, path,
                        "model is not a BPE model with vocab and merges "
                        "(type '%s')",
                        mtype ? mtype : "?");
    else if (json_is_true(json_object_get(mdl, "byte_fallback"))) /* Llama / TinyLlama style */
        rc = load_hf_spm(t, j, path, err, errlen);
    else
        rc = load_hf_bytes(t, j, path, err, errlen);
    json_decref(j);
    if (rc) tok_bpe_clear(t);
    return rc;
}

int tok_bpe_load_gpt2_files(tokenizer *t, const char *encoder_json, const char *vocab_bpe, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    int rc = 0;
    json_t *j = load_json(encoder_json, err, errlen, &rc);
    if (!j) return rc;
    if (!json_is_object(j)) {
        json_decref(j);
        return model_errf(err, errlen, MODEL_EFORMAT, encoder_json, "not a JSON object of token -> id");
    }
    int n = 0;
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || id >= (1 << 24)) {
            json_decref(j);
            return model_errf(err, errlen, MODEL_EFORMAT, encoder_json, "entry '%.40s' has a bad id", key);
        }
        if (id + 1 > n) n = (int)id + 1;
    }
    bpe_impl *b = impl_new(t, TOK_BPE_BYTES);
    char *text = NULL, **lines = NULL;
    if (!b || vocab_alloc(t, n)) {
        rc = model_errf(err, errlen, MODEL_ENOMEM, encoder_json, "out of memory");
        goto out;
    }
    json_object_foreach(j, key, v)
    {
        int id = (int)json_integer_value(v);
        int special = strcmp(key, "<|endoftext|>") == 0;
        if (set_token(t, id, key, strlen(key), special ? TT_CONTROL : TT_NORMAL, special)) {
            rc = MODEL_ENOMEM;
            goto out;
        }
        if (special) t->eos_id = t->bos_id = id;
    }
    if ((rc = finish(t, b))) goto out;
    FILE *f = fopen(vocab_bpe, "rb");
    if (!f) {
        rc = model_errf(err, errlen, MODEL_EIO, vocab_bpe, "cannot open");
        goto out;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc(sz > 0 ? (size_t)sz + 1 : 1);
    if (!text || fread(text, 1, (size_t)sz, f) != (size_t)sz) {
        fclose(f);
        rc = model_errf(err, errlen, MODEL_EIO, vocab_bpe, "cannot read");
        goto out;
    }
    fclose(f);
    text[sz] = 0;
    int nl = 0, cap = 1024;
    lines = malloc((size_t)cap * sizeof *lines);
    if (!lines) {
        rc = MODEL_ENOMEM;
        goto out;
    }
    for (char *p = text, *e; p && *p; p = e ? e + 1 : NULL) {
        e = strchr(p, '\n');
        if (e) *e = 0;
        size_t L = strlen(p);
        if (L && p[L - 1] == '\r') p[L - 1] = 0;
        if (!*p || (p == text && strncmp(p, "#version", 8) == 0)) continue; /* header line only */
        if (nl == cap) {
            char **nlines = realloc(lines, (size_t)cap * 2 * sizeof *lines);
            if (!nlines) {
                rc = MODEL_ENOMEM;
                goto out;
            }
            lines = nlines;
            cap *= 2;
        }
        lines[nl++] = p;
    }
    rc = merges_from_strings(t, b, nl, (const char *const *)lines, vocab_bpe, err, errlen);
out:
    free(lines);
    free(text);
    json_decref(j);
    if (rc) tok_bpe_clear(t);
    return rc;
}

int tok_g2c_load(tokenizer *t, const char *path, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    int rc = 0;
    json_t *j = load_json(path, err, errlen, &rc);
    if (!j) return rc;
    const char *fmt = json_string_value(json_object_get(j, "format"));
    json_int_t ver = json_integer_value(json_object_get(j, "version"));
    json_t *sp = json_object_get(j, "special_tokens"), *mg = json_object_get(j, "merges");
    bpe_impl *b = NULL;
    if (!fmt || strcmp(fmt, "g2c.bpe") != 0 || (ver != 1 && ver != 2)) {
        rc = model_errf(err, errlen, MODEL_EFORMAT, path,
                        "not a course tokenizer (format \"g2c.bpe\" "
                        "version 1 or 2)");
        goto out;
    }
    if ((sp && !json_is_array(sp)) || !json_is_array(mg)) {
        rc = model_errf(err, errlen, MODEL_EFORMAT, path, "special_tokens and merges must be arrays");
        goto out;
    }
    size_t ns = json_array_size(sp), nm = json_array_size(mg);
    if (ns > 4096 || nm > (1u << 22)) {
        rc = model_errf(err, errlen, MODEL_EFORMAT, path, "absurd sizes (%zu specials, %zu merges)", ns, nm);
        goto out;
    }
    int n = 256 + (int)ns + (int)nm;
    b = impl_new(t, TOK_G2C);
    if (!b || vocab_alloc(t, n) || pairs_alloc(b, (int)nm)) {
        rc = model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
        goto out;
    }
    uint32_t cp_of[256];
    byte_unicode_table(cp_of);
    for (int c = 0; c < 256; c++) {
        char s[4];
        size_t k = utf8_put(s, cp_of[c]);
        if (set_token(t, c, s, k, TT_BYTE, 0)) {
            rc = MODEL_ENOMEM;
            goto out;
        }
    }
    for (size_t i = 0; i < ns; i++) {
        const char *s = json_string_value(json_array_get(sp, i));
        if (!s || !*s) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path,
                            "special_tokens[%zu] is not a "
                            "non-empty string",
                            i);
            goto out;
        }
        if (set_token(t, 256 + (int)i, s, strlen(s), TT_CONTROL, 1)) {
            rc = MODEL_ENOMEM;
            goto out;
        }
    }
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(mg, i);
        json_int_t a = json_integer_value(json_array_get(m, 0)), c = json_integer_value(json_array_get(m, 1));
        json_int_t id = json_integer_value(json_array_get(m, 2));
        json_int_t want = 256 + (json_int_t)ns + (json_int_t)i;
        if (!json_is_array(m) || json_array_size(m) != 3 || id != want || a < 0 || c < 0 || a >= id || c >= id ||
            (a >= 256 && a < 256 + (json_int_t)ns) || (c >= 256 && c < 256 + (json_int_t)ns)) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path,
                            "merges[%zu] must be [a, b, %lld] with a, b "
                            "earlier non-special ids",
                            i, (long long)want);
            goto out;
        }
        /* The new token's bytes (and byte-level spelling) are the concatenation. */
        size_t la = (size_t)t->bytes_len[a], lc = (size_t)t->bytes_len[c];
        size_t sa = (size_t)t->str_len[a], sc = (size_t)t->str_len[c];
        char *s = malloc(sa + sc + 1), *by = malloc(la + lc + 1);
        if (!s || !by) {
            free(s);
            free(by);
            rc = MODEL_ENOMEM;
            goto out;
        }
        memcpy(s, t->str[a], sa);
        memcpy(s + sa, t->str[c], sc);
        s[sa + sc] = 0;
        memcpy(by, t->bytes[a], la);
        memcpy(by + la, t->bytes[c], lc);
        by[la + lc] = 0;
        t->str[id] = s;
        t->str_len[id] = (int)(sa + sc);
        t->bytes[id] = by;
        t->bytes_len[id] = (int)(la + lc);
        t->types[id] = TT_NORMAL;
        if ((int)(sa + sc) > t->max_str_len) t->max_str_len = (int)(sa + sc);
        if (!pair_add(b, (int32_t)a, (int32_t)c, (int32_t)id, (int32_t)id)) {
            rc = model_errf(err, errlen, MODEL_EFORMAT, path, "merges[%zu] repeats the pair (%lld, %lld)", i,
                            (long long)a, (long long)c);
            goto out;
        }
    }
    if ((rc = finish(t, b))) goto out;
    for (size_t i = 0; i < ns; i++)
        if (strcmp(t->str[256 + i], "<|endoftext|>") == 0) t->eos_id = (int32_t)(256 + i);
out:
    json_decref(j);
    if (rc) tok_bpe_clear(t);
    return rc;
}

int tok_bpe_trim(tokenizer *t, int n)
{
    if (n >= t->n_vocab) return 0;
    for (int id = n; id < t->n_vocab; id++)
        if (t->types[id] != TT_CONTROL && t->types[id] != TT_USER && t->types[id] != TT_UNUSED) return MODEL_EFORMAT;
    bpe_impl *b = t->impl;
    int k = 0;
    for (int i = 0; i < b->n_special; i++)
        if (b->special[i] < n) b->special[k++] = b->special[i];
    b->n_special = k;
    /* Drop the cut ids from the byte index by rebuilding it. */
    for (int id = n; id < t->n_vocab; id++) {
        free(t->str[id]);
        free(t->bytes[id]);
        t->str[id] = t->bytes[id] = NULL;
    }
    t->n_vocab = n;
    free(b->vslot);
    b->vslot = NULL;
    if (t->bos_id >= n) t->bos_id = -1;
    if (t->eos_id >= n) t->eos_id = -1;
    return vocab_index(t, b);
}

void tok_bpe_clear(tokenizer *t)
{
    if (!t) return;
    tokenizer_free(t); /* per-token strings, arrays and impl (model/tokenizers/vocab.c) */
    memset(t, 0, sizeof *t);
}
