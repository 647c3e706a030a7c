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

/* Longer spellings first, so "<|im_end|>" wins over a shorter token that prefixes it. */
static int cmp_len_desc(const void *a, const void *b, void *ctx)
{
    const tokenizer *t = ctx;
    return t->bytes_len[*(const int32_t *)b] - t->bytes_len[*(const int32_t *)a];
}

int model_tokenize_special(const model *m, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    if (!m || (!text && len) || cap < 0 || (cap > 0 && !out)) return MODEL_EINVAL;
    const tokenizer *t = &m->tok;
    /* the byte-level BPE tokenizers already turn their added tokens' spellings into the
     * tokens wherever they occur (as Hugging Face's tokenizers do) */
    if (t->kind != TOK_SPM) return tokenizer_encode(t, text, len, add_bos, out, cap);
    int32_t *sp = malloc(sizeof *sp * (size_t)(t->n_vocab ? t->n_vocab : 1));
    if (!sp) return MODEL_ENOMEM;
    int n_sp = 0;
    for (int id = 0; id < t->n_vocab; id++)
        if ((t->types[id] == TT_CONTROL || t->types[id] == TT_USER) && t->bytes_len[id] > 0) sp[n_sp++] = id;
    qsort_r(sp, (size_t)n_sp, sizeof *sp, cmp_len_desc, (void *)t);
    int count = 0;
    if (add_bos && t->bos_id >= 0) {
        if (count < cap) out[count] = t->bos_id;
        count++;
    }
    size_t seg = 0, i = 0;
    int rc = 0;
    for (;;) {
        int32_t hit = -1;
        if (i < len)
            for (int k = 0; k < n_sp; k++) {
                size_t n = (size_t)t->bytes_len[sp[k]];
                if (n <= len - i && t->bytes[sp[k]][0] == text[i] && memcmp(t->bytes[sp[k]], text + i, n) == 0) {
                    hit = sp[k];
                    break;
                }
            }
        if (hit < 0 && i < len) {
            i++;
            continue;
        }
        /* the text before the special token (or the end): a piece of its own, with the
         * vocabulary's space prefix as at the start of a text */
        if (i > seg) {
            rc = tokenizer_encode(t, text + seg, i - seg, 0, count < cap ? out + count : out,
                                  count < cap ? cap - count : 0);
            if (rc < 0) break;
            count += rc;
            rc = 0;
        }
        if (hit < 0) break;
        if (count < cap) out[count] = hit;
        count++;
        i += (size_t)t->bytes_len[hit];
        seg = i;
    }
    free(sp);
    return rc < 0 ? rc : count;
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
    if (!d->emitted && d->prev >= 0 && d->prev == t->bos_id && t->add_space_prefix && n > 0 && p[0] == ' ') {
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
            if (!ns) {
                free(s);
                return NULL;
            }
            s = ns;
            cap = nc;
        }
        int w = i < n ? model_detok_push(m, &d, ids[i], s + len, cap - len - 1)
                      : model_detok_flush(m, &d, s + len, cap - len - 1);
        if (w < 0) {
            free(s);
            return NULL;
        }
        len += (size_t)w;
    }
    s[len] = '\0';
    if (len_out) *len_out = len;
    return s;
}
