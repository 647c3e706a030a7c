/* tokenizer.c -- the tokenizer API of model.h: encoding dispatched by the
 * vocabulary's kind (spm.c, tok_bpe.c), token strings and bytes, and incremental,
 * UTF-8-safe detokenization.
 *
 * Decoding: a token's bytes are its string with the space marker turned into
 * ' ', byte tokens turned into their byte, and control tokens empty.  The
 * detokenizer holds back an incomplete UTF-8 character until it completes and
 * turns invalid sequences into U+FFFD. */
#include "model/tokenizers/tok_bpe.h"
#include "model/tokenizers/tokenizer.h"

#include <stdlib.h>
#include <string.h>

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    if (t && (t->kind == TOK_BPE_BYTES || t->kind == TOK_G2C))
        return (!text && len) || cap < 0 || (cap > 0 && !out) ? MODEL_EINVAL
                                                              : tok_bpe_encode(t, text, len, add_bos, out, cap);
    return spm_encode(t, text, len, add_bos, out, cap);
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
    return tokenizer_type_is_special(m->tok.types[id]);
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
    if (tokenizer_type_is_special(t->types[id])) {
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
