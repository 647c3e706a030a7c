/* seq.c -- sequences: a KV cache and the tokens it was computed from.
 *
 * Memory grows on demand (doubling, from 64 positions), so many sequences of
 * a long-context model cost only what they use.  Growing copies the filled
 * positions into the new (n_layers, n_kv_heads, cap, head_dim) layout.
 * model_seq_copy copies a prefix from one sequence to another the same way: per
 * (layer, kv head), one contiguous run of positions.
 */
#include "model/compute/seq.h"

#include <stdlib.h>
#include <string.h>

int model_set_kv_f16(model *m, int on)
{
    if (!m || (on != 0 && on != 1)) return MODEL_EINVAL;
    m->kv_f16 = on;
    return MODEL_OK;
}

int model_parse_kv_type(const char *name)
{
    return !name ? -1 : !strcmp(name, "f32") ? 0 : !strcmp(name, "f16") ? 1 : -1;
}

model_seq *model_seq_new(const model *m, int n_ctx)
{
    if (!m || m->info.ctx_len <= 0) return NULL;
    model_seq *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->kv_f16 = m->kv_f16;
    s->cap_max = n_ctx <= 0 || n_ctx > m->info.ctx_len ? m->info.ctx_len : n_ctx;
    return s;
}

void model_seq_free(model_seq *s)
{
    if (!s) return;
    free(s->tokens);
    free(s->k);
    free(s->v);
    free(s);
}

int model_seq_capacity(const model_seq *s) { return s ? s->cap_max : 0; }

int model_seq_len(const model_seq *s) { return s ? s->len : 0; }

const int32_t *model_seq_tokens(const model_seq *s) { return s ? s->tokens : NULL; }

void model_seq_truncate(model_seq *s, int n)
{
    if (s && n >= 0 && n < s->len) s->len = n;
}

int seq_reserve(model_seq *s, int n)
{
    if (n <= s->cap) return 0;
    if (n > s->cap_max) return MODEL_ERANGE;
    int cap = s->cap ? s->cap * 2 : 64;
    if (cap < n) cap = n;
    if (cap > s->cap_max) cap = s->cap_max;
    const model_info *in = &s->m->info;
    size_t lh = (size_t)in->n_layers * in->n_kv_heads, row = (size_t)in->head_dim * seq_esz(s);
    int32_t *tok = malloc((size_t)cap * sizeof *tok);
    char *k = malloc(lh * cap * row);
    char *v = malloc(lh * cap * row);
    if (!tok || !k || !v) {
        free(tok);
        free(k);
        free(v);
        return MODEL_ENOMEM;
    }
    if (s->len > 0) {
        memcpy(tok, s->tokens, (size_t)s->len * sizeof *tok);
        for (size_t i = 0; i < lh; i++) {
            memcpy(k + i * cap * row, (char *)s->k + i * s->cap * row, (size_t)s->len * row);
            memcpy(v + i * cap * row, (char *)s->v + i * s->cap * row, (size_t)s->len * row);
        }
    }
    free(s->tokens);
    free(s->k);
    free(s->v);
    s->tokens = tok;
    s->k = k;
    s->v = v;
    s->cap = cap;
    return 0;
}

/* Bytes of one position: K and V for every (layer, kv head), and its token id. */
static size_t position_bytes(const model_info *in, size_t esz)
{
    return 2 * (size_t)in->n_layers * in->n_kv_heads * in->head_dim * esz + sizeof(int32_t);
}

size_t model_seq_position_bytes(const model *m) { return m ? position_bytes(&m->info, m->kv_f16 ? 2 : 4) : 0; }

size_t model_seq_bytes(const model_seq *s) { return s ? (size_t)s->cap * position_bytes(&s->m->info, seq_esz(s)) : 0; }

int model_seq_copy(model_seq *dst, const model_seq *src, int n)
{
    if (!dst || !src || dst == src || dst->m != src->m || dst->kv_f16 != src->kv_f16 || n < 0 || n > src->len)
        return MODEL_EINVAL;
    if (n > dst->cap_max) return MODEL_ERANGE;
    int p = 0; /* positions dst already holds with the same tokens */
    while (p < dst->len && p < n && dst->tokens[p] == src->tokens[p]) p++;
    /* the capacity growth would have given it, so the next position does not
     * reallocate (and copy) at once */
    int want = dst->cap ? dst->cap : 64;
    while (want < n) want *= 2;
    int rc = seq_reserve(dst, want < dst->cap_max ? want : dst->cap_max);
    if (rc) return rc;
    if (n > p) {
        const model_info *in = &dst->m->info;
        size_t row = (size_t)in->head_dim * seq_esz(dst), run = (size_t)(n - p) * row;
        for (int l = 0; l < in->n_layers; l++)
            for (int h = 0; h < in->n_kv_heads; h++) {
                memcpy(seq_k(dst, l, h, p), seq_k(src, l, h, p), run);
                memcpy(seq_v(dst, l, h, p), seq_v(src, l, h, p), run);
            }
        memcpy(dst->tokens + p, src->tokens + p, (size_t)(n - p) * sizeof *dst->tokens);
    }
    dst->len = n;
    return 0;
}
