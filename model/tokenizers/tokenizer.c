/* tokenizer.c -- SentencePiece-style BPE (the llama vocabularies of llama2.c's
 * tokenizer.bin and GGUF's tokenizer.ggml.model = "llama"), and incremental,
 * UTF-8-safe detokenization.
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
 *
 * Decoding: a token's bytes are its string with the space marker turned into
 * ' ', byte tokens turned into their byte, and control tokens empty.  The
 * detokenizer holds back an incomplete UTF-8 character until it completes and
 * turns invalid sequences into U+FFFD. */
#include "model/loader.h"
#include "model/tokenizers/tokenizer.h"
#include "model/tokenizers/tok_bpe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t mask;   /* hash table of mergeable token ids (-1 = empty), size mask+1 */
    int32_t *slots;
    int marker;      /* 1: the vocabulary writes spaces as U+2581 */
} spm_impl;

static const char SPACE_MARK[] = "\xe2\x96\x81"; /* U+2581 */

/* ---- Construction ------------------------------------------------------------------ */

int tokenizer_alloc(tokenizer *t, int n)
{
    size_t un = n > 0 ? (size_t)n : 1;
    t->n_vocab = n;
    t->str = calloc(un, sizeof *t->str);
    t->str_len = calloc(un, sizeof *t->str_len);
    t->bytes = calloc(un, sizeof *t->bytes);
    t->bytes_len = calloc(un, sizeof *t->bytes_len);
    t->scores = calloc(un, sizeof *t->scores);
    t->types = malloc(un);
    if (!t->str || !t->str_len || !t->bytes || !t->bytes_len || !t->scores || !t->types) return MODEL_ENOMEM;
    memset(t->types, TT_NORMAL, un);
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    t->bos_id = t->eos_id = t->unk_id = -1;
    return MODEL_OK;
}

int tokenizer_set_token(tokenizer *t, int id, const char *s, int len)
{
    if (id < 0 || id >= t->n_vocab || len < 0) return MODEL_EINVAL;
    char *c = malloc((size_t)len + 1);
    if (!c) return MODEL_ENOMEM;
    memcpy(c, s, (size_t)len);
    c[len] = '\0';
    free(t->str[id]);
    t->str[id] = c;
    t->str_len[id] = len;
    return MODEL_OK;
}

/* "<0xNN>" -> NN, else -1 */
static int parse_byte_token(const char *s, int len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

void tokenizer_guess_types(tokenizer *t)
{
    for (int i = 0; i < t->n_vocab; i++) {
        const char *s = t->str[i] ? t->str[i] : "";
        if (!strcmp(s, "<unk>")) t->types[i] = TT_UNKNOWN;
        else if (!strcmp(s, "<s>") || !strcmp(s, "</s>") || !strcmp(s, "\n<s>\n") || !strcmp(s, "\n</s>\n"))
            t->types[i] = TT_CONTROL;
        else if (parse_byte_token(s, t->str_len[i]) >= 0) t->types[i] = TT_BYTE;
        else t->types[i] = TT_NORMAL;
    }
}

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static int mergeable(const tokenizer *t, int id)
{
    return t->types[id] == TT_NORMAL || t->types[id] == TT_USER;
}

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

static int is_special_type(int type)
{
    return type == TT_CONTROL || type == TT_UNKNOWN || type == TT_UNUSED;
}

int tokenizer_finish(tokenizer *t, char *err, size_t errlen)
{
    int n = t->n_vocab;
    if (n <= 0) {
        snprintf(err, errlen, "the vocabulary is empty");
        return MODEL_EFORMAT;
    }
    int32_t *ids[3] = {&t->bos_id, &t->eos_id, &t->unk_id};
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
        int bv = parse_byte_token(s, len);
        char *b = malloc((size_t)len + 1);
        if (!b) return MODEL_ENOMEM;
        int bl = 0;
        if (bv >= 0 && t->types[i] == TT_BYTE) {
            b[bl++] = (char)bv;
        } else if (is_special_type(t->types[i])) {
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

void tokenizer_free(tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_vocab; i++) {
        if (t->str) free(t->str[i]);
        if (t->bytes) free(t->bytes[i]);
    }
    free(t->str);
    free(t->str_len);
    free(t->bytes);
    free(t->bytes_len);
    free(t->scores);
    free(t->types);
    if (t->impl_free) t->impl_free(t->impl);
    t->str = t->bytes = NULL;
    t->str_len = t->bytes_len = NULL;
    t->scores = NULL;
    t->types = NULL;
    t->impl = NULL;
    t->impl_free = NULL;
    t->n_vocab = 0;
}

/* ---- llama2.c tokenizer.bin ------------------------------------------------------------
 * Layout (llama2.c run.c, build_tokenizer): u32 max_token_length, then for each id:
 * f32 score, i32 len, len bytes. */
int tokenizer_load_llama2c(tokenizer *t, const char *path, int vocab_size, char *err, size_t errlen)
{
    const uint8_t *d;
    size_t size;
    int rc = model_map_file(NULL, path, &d, &size, err, errlen);
    if (rc) return rc;
#define TERR(...) do { rc = model_errf(err, errlen, MODEL_EFORMAT, path, __VA_ARGS__); goto done; } while (0)
    size_t off = 4;
    if (size < 4) TERR("truncated tokenizer (file is %zu bytes)", size);
    if (vocab_size <= 0) TERR("vocabulary size %d is not positive", vocab_size);
    if ((rc = tokenizer_alloc(t, vocab_size)) != MODEL_OK) {
        rc = model_errf(err, errlen, rc, path, "out of memory");
        goto done;
    }
    t->kind = TOK_SPM;
    for (int i = 0; i < vocab_size; i++) {
        float score;
        int32_t len;
        if (size - off < 8) TERR("truncated at token %d of %d (file is %zu bytes)", i, vocab_size, size);
        memcpy(&score, d + off, 4);
        memcpy(&len, d + off + 4, 4);
        off += 8;
        if (len < 0 || len > TOKENIZER_MAX_TOKEN_LEN) TERR("token %d has length %d (0 to %d allowed)", i, (int)len, TOKENIZER_MAX_TOKEN_LEN);
        if ((size_t)len > size - off) TERR("token %d (length %d) runs past the end of the file (%zu bytes)", i, (int)len, size);
        if (isnan(score)) TERR("token %d has a NaN score", i);
        if (memchr(d + off, '\0', (size_t)len)) TERR("token %d contains a NUL byte", i);
        if ((rc = tokenizer_set_token(t, i, (const char *)d + off, len)) != MODEL_OK) {
            rc = model_errf(err, errlen, rc, path, "out of memory");
            goto done;
        }
        t->scores[i] = score;
        off += (size_t)len;
    }
    if (off != size)
        TERR("%zu bytes follow the last of the model's %d tokens (a tokenizer for another vocabulary?)",
             size - off, vocab_size);
    tokenizer_guess_types(t);
    t->unk_id = 0;
    t->bos_id = 1;
    t->eos_id = 2;
    t->add_bos = 1;
    t->add_space_prefix = 1;
    char why[160] = "";
    if ((rc = tokenizer_finish(t, why, sizeof why)) != MODEL_OK) {
        rc = model_errf(err, errlen, rc, path, "%s", rc == MODEL_ENOMEM ? "out of memory" : why);
        goto done;
    }
    rc = MODEL_OK;
#undef TERR
done:
    model_unmap(d, size);
    if (rc) tokenizer_free(t);
    return rc;
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
    return heap_push(h, (bigram){t->scores[id], l, (int)n});
}

static int utf8_char_len(uint8_t b)
{
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[b >> 4];
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    if (t && (t->kind == TOK_BPE_BYTES || t->kind == TOK_G2C)) /* model/tokenizers/tok_bpe.c */
        return (!text && len) || cap < 0 || (cap > 0 && !out) ? MODEL_EINVAL
                                                              : tok_bpe_encode(t, text, len, add_bos, out, cap);
    if (!t || !t->impl || (!text && len) || cap < 0 || (cap > 0 && !out)) return MODEL_EINVAL;
    if (len > (size_t)(1 << 28)) return MODEL_EINVAL;
    const spm_impl *im = t->impl;
    int count = 0;
#define EMIT(id) do { if (count < cap) out[count] = (id); count++; } while (0)
    if (add_bos && t->bos_id >= 0) EMIT(t->bos_id);
    if (len == 0) return count;

    /* 1. normalise: dummy prefix, spaces as the vocabulary writes them */
    char *buf = malloc(3 * (len + 1));
    symbol *sym = NULL;
    bigram_heap heap = {0};
    int rc = MODEL_ENOMEM;
    if (!buf) goto out;
    size_t n = 0;
    if (t->add_space_prefix) {
        if (im->marker) { memcpy(buf, SPACE_MARK, 3); n = 3; }
        else buf[n++] = ' ';
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ' && im->marker) { memcpy(buf + n, SPACE_MARK, 3); n += 3; }
        else buf[n++] = text[i];
    }

    /* 2. one symbol per UTF-8 character */
    sym = malloc(n * sizeof *sym);
    if (!sym) goto out;
    int n_sym = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = (size_t)utf8_char_len((uint8_t)buf[i]);
        if (cl > n - i) cl = n - i;
        /* a lead byte takes only the continuation bytes that really follow it: an
         * invalid sequence must not swallow the next character (found by
         * fuzz_tokenizer: "\xc9 " glued the lead byte to the first byte of the
         * U+2581 space marker, and the decoded text showed a literal U+2581) */
        for (size_t k = 1; k < cl; k++)
            if (((uint8_t)buf[i + k] & 0xC0) != 0x80) { cl = k; break; }
        sym[n_sym] = (symbol){(int)i, (int)cl, n_sym - 1, n_sym + 1};
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

/* ---- Public tokenizer API ----------------------------------------------------------------- */

int model_tokenize(const model *m, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    if (!m) return MODEL_EINVAL;
    return tokenizer_encode(&m->tok, text, len, add_bos, out, cap);
}

const char *model_token_bytes(const model *m, int32_t id, size_t *len)
{
    if (!m || id < 0 || id >= m->tok.n_vocab) return NULL;
    if (len) *len = (size_t)m->tok.bytes_len[id];
    return m->tok.bytes[id];
}

const char *model_token_str(const model *m, int32_t id)
{
    if (!m || id < 0 || id >= m->tok.n_vocab) return NULL;
    return m->tok.str[id];
}

int model_token_is_special(const model *m, int32_t id)
{
    if (!m || id < 0 || id >= m->tok.n_vocab) return 0;
    return is_special_type(m->tok.types[id]);
}

/* ---- Incremental detokenization -------------------------------------------------------------- */

void model_detok_init(model_detok *d)
{
    memset(d, 0, sizeof *d);
    d->prev = -1;
}

/* Total length of a UTF-8 sequence from its first byte; 0 if it cannot start one. */
static int utf8_need(uint8_t b)
{
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0;
}

/* Is b valid at position pos (>= 1) of a sequence starting with lead? */
static int utf8_cont_ok(uint8_t lead, int pos, uint8_t b)
{
    if (pos == 1) {
        if (lead == 0xE0) return b >= 0xA0 && b <= 0xBF;
        if (lead == 0xED) return b >= 0x80 && b <= 0x9F;
        if (lead == 0xF0) return b >= 0x90 && b <= 0xBF;
        if (lead == 0xF4) return b >= 0x80 && b <= 0x8F;
    }
    return (b & 0xC0) == 0x80;
}

static const char REPLACEMENT[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Feed bytes through the held-back state st; MODEL_ERANGE if out is too small
 * (then st is unusable: callers pass a copy). */
static int utf8_feed(model_detok *st, const uint8_t *p, size_t n, char *out, size_t cap, size_t *w)
{
#define PUT(src, k) do { if (*w + (k) > cap) return MODEL_ERANGE; memcpy(out + *w, (src), (k)); *w += (k); } while (0)
    for (size_t i = 0; i < n;) {
        uint8_t b = p[i];
        if (st->n_pending == 0) {
            int need = utf8_need(b);
            if (need == 1) PUT(&b, 1);
            else if (need == 0) PUT(REPLACEMENT, 3);
            else st->pending[st->n_pending++] = b;
            i++;
            continue;
        }
        if (utf8_cont_ok(st->pending[0], st->n_pending, b)) {
            st->pending[st->n_pending++] = b;
            i++;
            if (st->n_pending == utf8_need(st->pending[0])) {
                PUT(st->pending, (size_t)st->n_pending);
                st->n_pending = 0;
            }
        } else { /* broken sequence: one U+FFFD, then look at b afresh */
            PUT(REPLACEMENT, 3);
            st->n_pending = 0;
        }
    }
    return MODEL_OK;
#undef PUT
}

int model_detok_push(const model *m, model_detok *d, int32_t id, char *out, size_t cap)
{
    if (!m || !d || (cap && !out)) return MODEL_EINVAL;
    const tokenizer *t = &m->tok;
    if (id < 0 || id >= t->n_vocab || d->n_pending < 0 || d->n_pending >= 4) return MODEL_EINVAL;
    if (is_special_type(t->types[id])) {
        d->prev = id;
        return 0;
    }
    const uint8_t *p = (const uint8_t *)t->bytes[id];
    size_t n = (size_t)t->bytes_len[id];
    /* The space prefix the encoder added after BOS is dropped from the first piece
     * with text, as SentencePiece decodes a sequence -- only there: a BOS in the middle
     * of a text (a TinyStories model ends one story and starts the next with BOS) does
     * not drop the space of the piece after it (" Once" after "fun.", as SentencePiece
     * and llama.cpp print it).  Without a BOS first, the space is kept, so the texts of
     * consecutive id lists concatenate (llama.cpp's /detokenize does the same). */
    if (!d->emitted && d->prev >= 0 && d->prev == t->bos_id && t->add_space_prefix && n > 0 &&
        p[0] == ' ') {
        p++;
        n--;
    }
    model_detok st = *d;
    st.emitted = 1;
    size_t w = 0;
    int rc = utf8_feed(&st, p, n, out, cap, &w);
    if (rc) return rc;
    st.prev = id;
    *d = st;
    return (int)w;
}

int model_detok_flush(const model *m, model_detok *d, char *out, size_t cap)
{
    (void)m;
    if (!d) return MODEL_EINVAL;
    if (d->n_pending <= 0) {
        d->n_pending = 0;
        return 0;
    }
    if (cap < 3 || !out) return MODEL_ERANGE;
    memcpy(out, REPLACEMENT, 3);
    d->n_pending = 0;
    return 3;
}

char *model_detokenize(const model *m, const int32_t *ids, int n, size_t *len_out)
{
    if (!m || n < 0 || (n > 0 && !ids)) return NULL;
    size_t step = 3 * ((size_t)m->tok.max_str_len + 8);
    size_t cap = step + 64, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    model_detok d;
    model_detok_init(&d);
    for (int i = 0; i <= n; i++) {
        if (cap - len < step + 1) {
            size_t nc = 2 * cap + step;
            char *ns = realloc(s, nc);
            if (!ns) { free(s); return NULL; }
            s = ns;
            cap = nc;
        }
        int w = i < n ? model_detok_push(m, &d, ids[i], s + len, cap - len - 1)
                      : model_detok_flush(m, &d, s + len, cap - len - 1);
        if (w < 0) { free(s); return NULL; }
        len += (size_t)w;
    }
    s[len] = '\0';
    if (len_out) *len_out = len;
    return s;
}
