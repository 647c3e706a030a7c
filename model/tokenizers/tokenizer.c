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

static const char REPLACEMENT[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Append one part model_utf8_decode found: a character's bytes, or U+FFFD for an
 * ill-formed part.  MODEL_ERANGE if out is too small. */
static int put_part(uint32_t cp, const uint8_t *src, size_t len, char *out, size_t cap, size_t *w)
{
    if (cp == MODEL_UTF8_INVALID) {
        src = (const uint8_t *)REPLACEMENT;
        len = 3;
    }
    if (*w + len > cap) return MODEL_ERANGE;
    memcpy(out + *w, src, len);
    *w += len;
    return MODEL_OK;
}

/* Feed bytes through the held-back state st: whole characters go out, each
 * ill-formed part becomes one U+FFFD, and a well-formed start cut off by the end
 * of p is held back for the next call.  MODEL_ERANGE if out is too small (then
 * st is unusable: callers pass a copy). */
static int utf8_feed(model_detok *st, const uint8_t *p, size_t n, char *out, size_t cap, size_t *w)
{
    size_t i = 0;
    uint32_t cp;
    int rc;
    if (st->n_pending > 0) { /* the held bytes are decoded together with the first new ones */
        uint8_t tmp[8];
        size_t k = (size_t)st->n_pending, take = n < 4 ? n : 4;
        memcpy(tmp, st->pending, k);
        memcpy(tmp + k, p, take);
        size_t len = model_utf8_decode((const char *)tmp, k + take, &cp);
        if (cp == MODEL_UTF8_PARTIAL) { /* still cut off: all of p joins the held bytes */
            memcpy(st->pending + k, p, take);
            st->n_pending = (int)(k + take);
            return MODEL_OK;
        }
        if ((rc = put_part(cp, tmp, len, out, cap, w))) return rc;
        st->n_pending = 0;
        i = len > k ? len - k : 0; /* held bytes start a well-formed sequence: len >= k */
    }
    while (i < n) {
        size_t len = model_utf8_decode((const char *)p + i, n - i, &cp);
        if (cp == MODEL_UTF8_PARTIAL) {
            memcpy(st->pending, p + i, len);
            st->n_pending = (int)len;
            break;
        }
        if ((rc = put_part(cp, p + i, len, out, cap, w))) return rc;
        i += len;
    }
    return MODEL_OK;
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
