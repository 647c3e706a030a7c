/* spm.c -- SentencePiece-style BPE (the llama vocabularies of llama2.c's
 * tokenizer.bin and GGUF's tokenizer.ggml.model = "llama").
 *
 * Encoding, as llama2.c's run.c and llama.cpp's SPM tokenizer do it (our own
 * code; the algorithm is described in their sources):
 *   1. optionally prepend a space (the "dummy prefix"); if the vocabulary
 *      writes spaces as U+2581 ("▁"), replace every ' ' by it;
 *   2. split the text into UTF-8 characters, one symbol each;
 *   3. repeatedly merge the adjacent pair of symbols whose concatenation is a
 *      vocabulary token with the highest score (ties: the leftmost pair) --
 *      a max-heap of candidate pairs over a linked list of symbols, with
 *      stale entries skipped when popped, so this is O(n log n);
 *   4. each final symbol becomes its token, or, if it is not in the
 *      vocabulary, one byte token <0xNN> per byte (unknown if none exists).
 * Only normal and user-defined tokens take part in lookups: control tokens
 * (<s>, </s>), <unk> and byte tokens are never produced from text.
 */
#include "model/tokenizers/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t mask; /* hash table of mergeable token ids (-1 = empty), size mask+1 */
    int32_t *slots;
    int marker; /* 1: the vocabulary writes spaces as U+2581 */
} spm_impl;

static const char SPACE_MARK[] = "\xe2\x96\x81"; /* U+2581 */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static int mergeable(const tokenizer *t, int id) { return t->types[id] == TT_NORMAL || t->types[id] == TT_USER; }

static int32_t lookup(const tokenizer *t, const char *s, size_t n)
{
    const spm_impl *im = t->impl;
    for (uint32_t h = hash_bytes(s, n) & im->mask;; h = (h + 1) & im->mask) {
        int32_t id = im->slots[h];
        if (id < 0) return -1;
        if ((size_t)t->str_len[id] == n && memcmp(t->str[id], s, n) == 0) return id;
    }
}

static void spm_impl_free(void *p)
{
    spm_impl *im = p;
    if (im) free(im->slots);
    free(im);
}

int tokenizer_finish(tokenizer *t, char *err, size_t errlen)
{
    int n = t->n_vocab;
    if (n <= 0) {
        snprintf(err, errlen, "the vocabulary is empty");
        return MODEL_EFORMAT;
    }
    int32_t *ids[3] = { &t->bos_id, &t->eos_id, &t->unk_id };
    for (int k = 0; k < 3; k++)
        if (*ids[k] < -1 || *ids[k] >= n) *ids[k] = -1;
    spm_impl *im = calloc(1, sizeof *im);
    if (!im) return MODEL_ENOMEM;
    t->impl = im;
    t->impl_free = spm_impl_free;

    /* space convention: U+2581 if more tokens carry it than start with ' ' */
    int n_mark = 0, n_space = 0;
    for (int i = 0; i < n; i++) {
        if (!t->str[i]) {
            snprintf(err, errlen, "token %d is missing", i);
            return MODEL_EFORMAT;
        }
        if (t->str_len[i] > t->max_str_len) t->max_str_len = t->str_len[i];
        if (strstr(t->str[i], SPACE_MARK)) n_mark++;
        if (t->str[i][0] == ' ') n_space++;
    }
    im->marker = n_mark > n_space;

    /* decoded bytes and the byte table (byte tokens are found by their string) */
    for (int i = 0; i < n; i++) {
        const char *s = t->str[i];
        int len = t->str_len[i];
        int bv = tokenizer_byte_token(s, len);
        char *b = malloc((size_t)len + 1);
        if (!b) return MODEL_ENOMEM;
        int bl = 0;
        if (bv >= 0 && t->types[i] == TT_BYTE) {
            b[bl++] = (char)bv;
        } else if (tokenizer_type_is_special(t->types[i])) {
            int a = 0, e = len; /* llama2.c writes "\n<s>\n": show "<s>" */
            while (a < e && s[a] == '\n') a++;
            while (e > a && s[e - 1] == '\n') e--;
            memcpy(b, s + a, (size_t)(e - a));
            bl = e - a;
        } else {
            for (int j = 0; j < len;) {
                if (im->marker && j + 3 <= len && memcmp(s + j, SPACE_MARK, 3) == 0) {
                    b[bl++] = ' ';
                    j += 3;
                } else {
                    b[bl++] = s[j++];
                }
            }
        }
        b[bl] = '\0';
        t->bytes[i] = b;
        t->bytes_len[i] = bl;
        if (bv >= 0 && t->byte_id[bv] < 0) t->byte_id[bv] = i;
    }

    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n) cap *= 2;
    im->mask = cap - 1;
    im->slots = malloc(cap * sizeof *im->slots);
    if (!im->slots) return MODEL_ENOMEM;
    for (uint32_t i = 0; i < cap; i++) im->slots[i] = -1;
    for (int i = 0; i < n; i++) {
        if (!mergeable(t, i)) continue;
        uint32_t h = hash_bytes(t->str[i], (size_t)t->str_len[i]) & im->mask;
        int dup = 0;
        for (; im->slots[h] >= 0; h = (h + 1) & im->mask) {
            int32_t o = im->slots[h];
            if (t->str_len[o] == t->str_len[i] && memcmp(t->str[o], t->str[i], (size_t)t->str_len[i]) == 0) {
                dup = 1; /* the lower id keeps the string */
                break;
            }
        }
        if (!dup) im->slots[h] = i;
    }
    return MODEL_OK;
}

/* ---- Encoding ------------------------------------------------------------------------ */

typedef struct {
    float score;
    int left, size; /* left symbol index, byte size of the merged string */
} bigram;

/* max-heap: higher score first, then smaller left index */
static int bigram_before(const bigram *a, const bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
    bigram *v;
    int n, cap;
} bigram_heap;

static int heap_push(bigram_heap *h, bigram b)
{
    if (h->n == h->cap) {
        int cap = h->cap ? 2 * h->cap : 64;
        bigram *v = realloc(h->v, (size_t)cap * sizeof *v);
        if (!v) return MODEL_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    int i = h->n++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!bigram_before(&b, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return MODEL_OK;
}

static bigram heap_pop(bigram_heap *h)
{
    bigram top = h->v[0], last = h->v[--h->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bigram_before(&h->v[c + 1], &h->v[c])) c++;
        if (!bigram_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

typedef struct {
    int start, len, prev, next;
} symbol;

static int try_pair(const tokenizer *t, const char *text, const symbol *sym, int l, int r, bigram_heap *h)
{
    if (l < 0 || r < 0) return MODEL_OK;
    size_t n = (size_t)sym[l].len + (size_t)sym[r].len;
    int32_t id = lookup(t, text + sym[l].start, n);
    if (id < 0) return MODEL_OK;
    return heap_push(h, (bigram){ t->scores[id], l, (int)n });
}

int spm_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    if (!t || !t->impl || (!text && len) || cap < 0 || (cap > 0 && !out)) return MODEL_EINVAL;
    if (len > (size_t)(1 << 28)) return MODEL_EINVAL;
    const spm_impl *im = t->impl;
    int count = 0;
#define EMIT(id)                            \
    do {                                    \
        if (count < cap) out[count] = (id); \
        count++;                            \
    } while (0)
    if (add_bos && t->bos_id >= 0) EMIT(t->bos_id);
    if (len == 0) return count;

    /* 1. normalise: dummy prefix, spaces as the vocabulary writes them */
    char *buf = malloc(3 * (len + 1));
    symbol *sym = NULL;
    bigram_heap heap = { 0 };
    int rc = MODEL_ENOMEM;
    if (!buf) goto out;
    size_t n = 0;
    if (t->add_space_prefix) {
        if (im->marker) {
            memcpy(buf, SPACE_MARK, 3);
            n = 3;
        } else
            buf[n++] = ' ';
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ' && im->marker) {
            memcpy(buf + n, SPACE_MARK, 3);
            n += 3;
        } else
            buf[n++] = text[i];
    }

    /* 2. one symbol per UTF-8 character */
    sym = malloc(n * sizeof *sym);
    if (!sym) goto out;
    int n_sym = 0;
    for (size_t i = 0; i < n;) {
        /* an ill-formed part is one symbol of its own (model_utf8_decode's rule), so it
         * never swallows the character after it ("\xc9 " must not glue the lead byte to
         * the first byte of the U+2581 space marker); not being in the vocabulary, it
         * ends up as byte tokens */
        uint32_t cp;
        size_t cl = model_utf8_decode(buf + i, n - i, &cp);
        sym[n_sym] = (symbol){ (int)i, (int)cl, n_sym - 1, n_sym + 1 };
        n_sym++;
        i += cl;
    }
    sym[n_sym - 1].next = -1;

    /* 3. merge the best pair until none is left */
    for (int i = 0; i + 1 < n_sym; i++)
        if ((rc = try_pair(t, buf, sym, i, i + 1, &heap)) != MODEL_OK) goto out;
    while (heap.n > 0) {
        bigram b = heap_pop(&heap);
        int l = b.left, r = sym[l].next;
        if (sym[l].len == 0 || r < 0 || sym[l].len + sym[r].len != b.size) continue; /* stale */
        sym[l].len += sym[r].len;
        sym[r].len = 0;
        sym[l].next = sym[r].next;
        if (sym[l].next >= 0) sym[sym[l].next].prev = l;
        if ((rc = try_pair(t, buf, sym, sym[l].prev, l, &heap)) != MODEL_OK) goto out;
        if ((rc = try_pair(t, buf, sym, l, sym[l].next, &heap)) != MODEL_OK) goto out;
    }

    /* 4. symbols to ids, with byte fallback */
    for (int i = 0; i >= 0; i = sym[i].next) {
        int32_t id = lookup(t, buf + sym[i].start, (size_t)sym[i].len);
        if (id >= 0) {
            EMIT(id);
            continue;
        }
        for (int j = 0; j < sym[i].len; j++) {
            int32_t bid = t->byte_id[(uint8_t)buf[sym[i].start + j]];
            if (bid < 0) bid = t->unk_id;
            if (bid < 0) {
                rc = MODEL_EINVAL;
                goto out;
            }
            EMIT(bid);
        }
    }
    rc = count;
#undef EMIT
out:
    free(buf);
    free(sym);
    free(heap.v);
    return rc;
}
