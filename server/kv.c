/* kv.c -- a sequence's key/value cache as the engine sees it (server_internal.h).
 *
 * The engine only ever says "the next logits come from this window of tokens";
 * this file decides how much of the window is already computed.  An entry at
 * position p depends only on the tokens at positions 0..p, so whatever prefix
 * of the held tokens equals the window's is still exact, and only the rest has
 * to be fed to model_forward. */
#include "server/server_internal.h"
#include "model/model.h"

#include <stdlib.h>

int seq_kv_open(seq_kv *kv, struct model *m, int ctx)
{
    if (kv->seq) return 0;
    kv->seq = model_seq_new(m, ctx);
    return kv->seq ? 0 : -1;
}

void seq_kv_close(seq_kv *kv)
{
    model_seq_free(kv->seq);
    kv->seq = NULL;
    free(kv->scores);
    kv->scores = NULL;
    kv->n_scores = kv->cap_scores = 0;
}

int seq_kv_sync(seq_kv *kv, const int32_t *window, int n, int reuse)
{
    int keep = 0;
    if (reuse) {
        const int32_t *held = model_seq_tokens(kv->seq);
        int len = model_seq_len(kv->seq);
        /* the window's last token is always fed again: its logits are what the caller needs */
        while (keep < len && keep < n - 1 && held[keep] == window[keep]) keep++;
    }
    model_seq_truncate(kv->seq, keep);
    if (kv->n_scores > keep) kv->n_scores = keep; /* a score needs its token held */
    return keep;
}

int seq_kv_len(const seq_kv *kv) { return model_seq_len(kv->seq); }
