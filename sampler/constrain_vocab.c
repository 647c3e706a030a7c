/* constrain_vocab.c -- a vocabulary's token bytes as a byte trie, for the constraint's masks.
 *
 * The tokens that can appear in a constrained text (the callback gives their
 * bytes; control tokens and empty tokens are left out) are sorted by their bytes
 * and laid out as a trie in preorder: in sorted order, consecutive tokens share
 * their common prefix's nodes, so one pass builds it, and the tokens of each node
 * come out grouped by node.  Several tokens may spell the same bytes (a
 * SentencePiece vocabulary has both "A" and its byte token <0x41>); they share the
 * node.  The end tokens (EOS, ...) are kept apart: they are allowed by the
 * automaton's accepting states, not by bytes.
 */
#include "sampler/grammar_internal.h"

#include <stdlib.h>
#include <string.h>

#define TOKEN_MAX_BYTES 65535 /* vnode.depth is 16 bits; longer tokens are never allowed */

void sampler_vocab_free(sampler_vocab *v)
{
    if (!v) return;
    free(v->node);
    free(v->extra_at);
    free(v->extra);
    free(v->tok_off);
    free(v->bytes);
    free(v->tok_kind);
    free(v->end_ids);
    free(v);
}

int sampler_vocab_size(const sampler_vocab *v) { return v ? v->n_vocab : 0; }

int sampler_vocab_has_byte(const sampler_vocab *v, unsigned char b) { return v ? gset_has(v->single, b) : 0; }

typedef struct {
    const char *b;
    int32_t len, id;
} tok_ref;

static int cmp_tok(const void *pa, const void *pb)
{
    const tok_ref *a = pa, *b = pb;
    int c = memcmp(a->b, b->b, (size_t)(a->len < b->len ? a->len : b->len));
    if (c) return c;
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id; /* equal bytes: by id, so the build is deterministic */
}

int sampler_vocab_new(sampler_vocab **out, int n_vocab, sampler_token_bytes_fn bytes_of, void *user,
                      const int32_t *end_ids, int n_end)
{
    if (!out || n_vocab <= 0 || !bytes_of || n_end < 0 || (n_end > 0 && !end_ids)) return SAMPLER_EINVAL;
    *out = NULL;
    for (int k = 0; k < n_end; k++)
        if (end_ids[k] < 0 || end_ids[k] >= n_vocab) return SAMPLER_EINVAL;
    sampler_vocab *v = calloc(1, sizeof *v);
    if (!v) return SAMPLER_ENOMEM;
    tok_ref *order = NULL;
    int32_t *path = NULL;
    v->n_vocab = n_vocab;
    v->tok_off = malloc(((size_t)n_vocab + 1) * sizeof *v->tok_off);
    v->tok_kind = calloc((size_t)n_vocab, 1);
    v->end_ids = malloc(((size_t)n_end + 1) * sizeof *v->end_ids);
    if (!v->tok_off || !v->tok_kind || !v->end_ids) goto nomem;
    if (n_end) memcpy(v->end_ids, end_ids, (size_t)n_end * sizeof *end_ids);
    v->n_end = n_end;
    for (int k = 0; k < n_end; k++) v->tok_kind[end_ids[k]] = TK_END;

    /* pass 1: sizes; pass 2: copy the bytes */
    int64_t total = 0;
    int n_text = 0;
    for (int pass = 0; pass < 2; pass++) {
        total = 0;
        n_text = 0;
        for (int i = 0; i < n_vocab; i++) {
            v->tok_off[i] = total;
            if (v->tok_kind[i] == TK_END) continue;
            size_t len = 0;
            const char *b = bytes_of(user, i, &len);
            if (!b || len == 0 || len > TOKEN_MAX_BYTES) continue;
            if (pass == 1) {
                memcpy(v->bytes + total, b, len);
                v->tok_kind[i] = TK_TEXT;
                if (len == 1) v->single[(unsigned char)b[0] >> 6] |= 1ull << ((unsigned char)b[0] & 63);
            }
            total += (int64_t)len;
            n_text++;
        }
        v->tok_off[n_vocab] = total;
        if (pass == 0) {
            v->bytes = malloc((size_t)total + 1);
            if (!v->bytes) goto nomem;
        }
    }

    order = malloc(((size_t)n_text + 1) * sizeof *order);
    /* at most one node per byte; the extra tokens at most one each plus an end mark */
    v->node = malloc(((size_t)total + 1) * sizeof *v->node);
    v->extra_at = malloc(((size_t)total + 1) * sizeof *v->extra_at);
    v->extra = malloc(2 * ((size_t)n_text + 1) * sizeof *v->extra);
    if (!order || !v->node || !v->extra_at || !v->extra) goto nomem;
    int m = 0;
    for (int i = 0; i < n_vocab; i++)
        if (v->tok_kind[i] == TK_TEXT)
            order[m++] = (tok_ref){ v->bytes + v->tok_off[i], (int32_t)(v->tok_off[i + 1] - v->tok_off[i]), i };
    qsort(order, (size_t)m, sizeof *order, cmp_tok);
    int max_len = 0;
    for (int k = 0; k < m; k++)
        if (order[k].len > max_len) max_len = order[k].len;
    path = malloc(((size_t)max_len + 1) * sizeof *path);
    if (!path) goto nomem;
    int n_nodes = 0, depth = 0, n_extra = 0; /* depth: length of the open path */
    const char *prev = NULL;
    int prev_len = 0;
    for (int k = 0; k < m; k++) {
        int id = order[k].id, len = order[k].len;
        const char *s = order[k].b;
        int lcp = 0;
        while (prev && lcp < len && lcp < prev_len && s[lcp] == prev[lcp]) lcp++;
        for (; depth > lcp; depth--) /* close the nodes not shared */
            v->node[path[depth - 1]].end = n_nodes;
        for (; depth < len; depth++) {
            int nd = n_nodes++;
            v->node[nd] =
                (vnode){ .end = -1, .tok = -1, .depth = (uint16_t)(depth + 1), .byte = (uint8_t)s[depth], .more = 0 };
            path[depth] = nd;
        }
        vnode *nd = &v->node[path[len - 1]];
        if (nd->tok < 0) {
            nd->tok = id;
        } else { /* same bytes as the previous token (sorted order): its run continues */
            if (!nd->more) {
                nd->more = 1;
                v->extra_at[path[len - 1]] = n_extra;
            } else {
                n_extra--; /* drop the run's end mark, re-added below */
            }
            v->extra[n_extra++] = id;
            v->extra[n_extra++] = -1;
        }
        prev = s;
        prev_len = len;
    }
    for (; depth > 0; depth--) v->node[path[depth - 1]].end = n_nodes;
    v->n_nodes = n_nodes;
    v->max_depth = max_len;
    free(order);
    free(path);
    *out = v;
    return SAMPLER_OK;
nomem:
    free(order);
    free(path);
    sampler_vocab_free(v);
    return SAMPLER_ENOMEM;
}
