/* stub_forward.c -- TEMPORARY stand-ins for the forward-pass side (branch
 * model-fwd: pool.c, forward.c, seq.c).  They let the loaders, the tokenizer
 * and their tests build and run before that branch is merged.  Delete this file
 * when model-fwd lands: it defines the same symbols.
 * model_forward_is_stub lets tests skip what needs the real forward pass. */
#include "model/model_internal.h"

#include <stdlib.h>

const int model_forward_is_stub = 1;

struct model_pool { int n; };

model_pool *model_pool_new(int n_threads)
{
    model_pool *p = malloc(sizeof *p);
    if (p) p->n = n_threads > 0 ? n_threads : 1;
    return p;
}

void model_pool_free(model_pool *p) { free(p); }
int model_pool_size(const model_pool *p) { return p ? p->n : 0; }

void model_pool_run(model_pool *p, model_pool_fn fn, void *arg, int n_tasks)
{
    (void)p;
    for (int t = 0; t < n_tasks; t++) fn(arg, t, n_tasks);
}

void forward_scratch_free(void *scratch) { free(scratch); }

model_seq *model_seq_new(const model *m, int n_ctx) { (void)m; (void)n_ctx; return NULL; }
void model_seq_free(model_seq *s) { (void)s; }
int model_seq_capacity(const model_seq *s) { (void)s; return 0; }
int model_seq_len(const model_seq *s) { (void)s; return 0; }
const int32_t *model_seq_tokens(const model_seq *s) { (void)s; return NULL; }
void model_seq_truncate(model_seq *s, int n) { (void)s; (void)n; }

int model_forward(model *m, model_batch_item *items, int n_items)
{
    (void)m; (void)items; (void)n_items;
    return MODEL_EINVAL;
}

int model_seq_eval(model *m, model_seq *s, const int32_t *ctx, int n_ctx, float *logits)
{
    (void)m; (void)s; (void)ctx; (void)n_ctx; (void)logits;
    return MODEL_EINVAL;
}
