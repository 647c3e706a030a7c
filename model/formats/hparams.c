/* hparams.c -- checks of a loaded model's hyper-parameters, and the weight
 * statistics model_info reports; called by every reader once it has filled *m. */
#include "model/formats/formats.h"
#include "model/loader.h"

#include <math.h>
#include <stdio.h>

/* The checks both architectures share, in one order; GPT-2 (gpt2 != 0) has no RoPE and
 * equal q and kv heads. */
static int check_hparams(const model *m, int gpt2, const char *path, char *err, size_t errlen)
{
    const model_info *i = &m->info;
#define HP(cond, ...)                                                                  \
    do {                                                                               \
        if (!(cond)) return model_errf(err, errlen, MODEL_EFORMAT, path, __VA_ARGS__); \
    } while (0)
    HP(i->dim > 0 && i->dim <= (1 << 16), "embedding width %d is out of range [1, 65536]", i->dim);
    HP(i->hidden_dim > 0 && i->hidden_dim <= (1 << 18), "feed-forward width %d is out of range [1, 262144]",
       i->hidden_dim);
    HP(i->n_layers > 0 && i->n_layers <= 1024, "layer count %d is out of range [1, 1024]", i->n_layers);
    if (gpt2) {
        HP(i->n_heads > 0 && i->n_heads <= i->dim && i->dim % i->n_heads == 0,
           "head count %d does not divide the width %d", i->n_heads, i->dim);
        HP(i->n_kv_heads == i->n_heads && i->head_dim * i->n_heads == i->dim, "inconsistent head sizes");
    } else {
        HP(i->n_heads > 0 && i->n_heads <= i->dim, "head count %d is out of range [1, dim %d]", i->n_heads, i->dim);
        HP(i->dim % i->n_heads == 0, "embedding width %d is not a multiple of the head count %d", i->dim, i->n_heads);
        HP(i->n_kv_heads > 0 && i->n_kv_heads <= i->n_heads, "kv head count %d is out of range [1, %d]", i->n_kv_heads,
           i->n_heads);
        HP(i->n_heads % i->n_kv_heads == 0, "head count %d is not a multiple of the kv head count %d", i->n_heads,
           i->n_kv_heads);
        HP(i->head_dim * i->n_heads == i->dim, "head size %d times head count %d is not the width %d", i->head_dim,
           i->n_heads, i->dim);
        HP(i->head_dim % 2 == 0, "head size %d is odd (RoPE needs pairs)", i->head_dim);
        HP(i->rope_dim > 0 && i->rope_dim <= i->head_dim && i->rope_dim % 2 == 0,
           "rope dimension count %d must be even and in [2, head size %d]", i->rope_dim, i->head_dim);
    }
    HP(i->vocab_size > 0 && i->vocab_size <= (1 << 22), "vocabulary size %d is out of range [1, 4194304]",
       i->vocab_size);
    HP(i->ctx_len > 0 && i->ctx_len <= (1 << 20), "context length %d is out of range [1, 1048576]", i->ctx_len);
    if (!gpt2)
        HP(isfinite(i->rope_theta) && i->rope_theta > 0, "rope frequency base %g is not a positive number",
           (double)i->rope_theta);
    HP(isfinite(i->norm_eps) && i->norm_eps > 0 && i->norm_eps < 1, "norm epsilon %g is out of range (0, 1)",
       (double)i->norm_eps);
#undef HP
    return MODEL_OK;
}

int model_check_hparams(const model *m, const char *path, char *err, size_t errlen)
{
    return check_hparams(m, 0, path, err, errlen);
}

int gpt2_check_hparams(const model *m, const char *path, char *err, size_t errlen)
{
    return check_hparams(m, 1, path, err, errlen);
}

#define N_TYPE_SLOTS 32 /* MT_* ids are below 32 */

static void count_tensor(const mtensor *t, size_t per_type[N_TYPE_SLOTS], size_t *params, size_t *bytes)
{
    if (!t->data) return;
    size_t n = (size_t)t->rows * (size_t)t->cols;
    *params += n;
    *bytes += (size_t)t->rows * mtensor_row_bytes(t->type, t->cols);
    if (t->type >= 0 && t->type < N_TYPE_SLOTS) per_type[t->type] += n;
}

void model_fill_weight_stats(model *m)
{
    size_t per[N_TYPE_SLOTS] = { 0 }, params = 0, bytes = 0;
    size_t vec = (size_t)m->info.dim * (2 * (size_t)m->info.n_layers + 1); /* norms, always F32 */
    count_tensor(&m->tok_embd, per, &params, &bytes);
    if (m->output.data != m->tok_embd.data) count_tensor(&m->output, per, &params, &bytes);
    for (int l = 0; l < m->info.n_layers && m->layers; l++) {
        const layer_weights *w = &m->layers[l];
        const mtensor *ts[] = { &w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3 };
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) count_tensor(ts[k], per, &params, &bytes);
    }
    /* the dominant type is the one holding most matrix weights (ties: the lower type id) */
    int best = 0;
    for (int k = 1; k < N_TYPE_SLOTS; k++)
        if (per[k] > per[best]) best = k;
    snprintf(m->type_name, sizeof m->type_name, "%s", mtensor_type_name(best));
    m->info.weight_type = m->type_name;
    m->info.n_params = params + vec;
    m->info.weight_bytes = bytes + vec * sizeof(float);
}
