/* load_course.c -- a course artifact folder: a GPT-2-style TransformerLM saved by
 * PyTorch with its config and tokenizer (README, "Bring your own model").
 *
 * Layout: artifacts/models/<name>/{model.pt, config.json, manifest.json};
 * the tokenizer is artifacts/tokenizers/<manifest.tokenizer_artifact>/tokenizer.json.
 * model.pt holds {"vocab_size", "model_config", "params": [tensor, ...]} with params
 * in the model's parameters() order:
 *   tok (V, D), pos (T, D); per block: ln1 g, b; q W, b; k W, b; v W, b; out W, b
 *   (each W (in, out), y = x W + b); ln2 g, b; fc1 W (D, H), b; fc2 W (H, D), b;
 *   then final LN g, b; then the output bias (V).  Logits = LN_f(x) tok^T + bias. */
#include "model/formats/formats.h"
#include "model/loader.h"
#include "model/tokenizers/tok_bpe.h"
#include "model/formats/torchzip.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int probe_course_dir(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/model.pt", dir);
    return access(p, F_OK) == 0;
}

/* Shape check of params[i] against (a) or (a, b). */
static int want(const tz_value *ps, size_t i, int ndim, long long a, long long b, const char *what,
                const char *path, char *err, size_t errlen)
{
    const tz_value *v = ps->items[i];
    if (v->kind != TZ_TENSOR)
        return model_errf(err, errlen, MODEL_EFORMAT, path, "params[%zu] (%s) is not a tensor", i, what);
    const tz_tensor *t = &v->t;
    if (t->dtype != TZ_F32 && t->dtype != TZ_F16 && t->dtype != TZ_BF16 && t->dtype != TZ_F64)
        return model_errf(err, errlen, MODEL_EFORMAT, path, "params[%zu] (%s) is %s, not a float tensor", i,
                          what, tz_dtype_name(t->dtype));
    if (t->ndim != ndim || t->shape[0] != a || (ndim == 2 && t->shape[1] != b)) {
        char got[64] = "";
        for (int d = 0; d < t->ndim && d < 4; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), d ? ", %lld" : "%lld", (long long)t->shape[d]);
        if (ndim == 1)
            return model_errf(err, errlen, MODEL_EFORMAT, path, "params[%zu] (%s) has shape (%s), expected (%lld)",
                              i, what, got, a);
        return model_errf(err, errlen, MODEL_EFORMAT, path, "params[%zu] (%s) has shape (%s), expected "
                          "(%lld, %lld)", i, what, got, a, b);
    }
    return 0;
}

static float *as_f32(model *m, const tz_value *v)
{
    float *d = model_calloc_owned(m, (size_t)v->t.numel, sizeof *d);
    if (d) tz_tensor_to_f32(&v->t, d);
    return d;
}

static int cfg_int(const json_t *cfg, const tz_value *mc, const char *key, long long dflt, int *out,
                   const char *path, char *err, size_t errlen)
{
    long long v = fmt_json_int(cfg, key, -(1LL << 61));
    if (v == -(1LL << 61)) {
        const tz_value *x = tz_dict_get(mc, key);
        v = x && x->kind == TZ_INT ? x->i : x && x->kind == TZ_NONE ? dflt : x ? -(1LL << 62) : dflt;
    }
    if (v < 0 || v > (1LL << 30))
        return model_errf(err, errlen, MODEL_EFORMAT, path, "config '%s' is missing or not a sane integer", key);
    *out = (int)v;
    return 0;
}

int model_load_course(model *m, const char *dir, const model_load_opts *opts, char *err, size_t errlen)
{
    (void)opts;
    char pt[4096];
    snprintf(pt, sizeof pt, "%s/model.pt", dir);
    tz_file *tz = NULL;
    json_t *cfg = NULL, *man = NULL;
    int rc = tz_open(&tz, pt, err, errlen);
    if (rc) return rc;
    model_info *in = &m->info;
    const tz_value *root = tz_root(tz);
    const tz_value *ps = tz_dict_get(root, "params"), *vs = tz_dict_get(root, "vocab_size");
    const tz_value *mc = tz_dict_get(root, "model_config");
    if (!ps || ps->kind != TZ_LIST || !vs || vs->kind != TZ_INT) {
        rc = model_errf(err, errlen, MODEL_EFORMAT, pt, "not a course checkpoint (expected a dict with "
                        "'vocab_size' and a 'params' list)");
        goto out;
    }
    if (err && errlen) err[0] = 0;
    cfg = fmt_json_load(dir, "config.json", 0, err, errlen);
    if (!cfg && err && errlen && err[0]) { rc = MODEL_EFORMAT; goto out; }
    /* config.json holds the model_config keys, flat or under "model_config"; keys it
     * lacks come from the checkpoint's own model_config. */
    const json_t *cj = json_is_object(json_object_get(cfg, "model_config")) ? json_object_get(cfg, "model_config") : cfg;
    if ((rc = cfg_int(cj, mc, "embedding_dim", -1, &in->dim, pt, err, errlen)) ||
        (rc = cfg_int(cj, mc, "num_layers", -1, &in->n_layers, pt, err, errlen)) ||
        (rc = cfg_int(cj, mc, "num_heads", -1, &in->n_heads, pt, err, errlen)) ||
        (rc = cfg_int(cj, mc, "max_seq_len", -1, &in->ctx_len, pt, err, errlen)))
        goto out;
    if ((rc = cfg_int(cj, mc, "hidden_dim", 4LL * in->dim, &in->hidden_dim, pt, err, errlen))) goto out;
    if (vs->i <= 0 || vs->i > (1 << 22)) {
        rc = model_errf(err, errlen, MODEL_EFORMAT, pt, "vocab_size %lld is out of range", (long long)vs->i);
        goto out;
    }
    in->vocab_size = (int)vs->i;
    in->n_kv_heads = in->n_heads;
    in->head_dim = in->n_heads > 0 ? in->dim / in->n_heads : 0;
    in->norm_eps = 1e-5f;
    in->rope_dim = 0;
    in->rope_theta = 0;
    m->arch = ARCH_GPT2;
    m->gelu_tanh = 0; /* exact erf GELU */
    if ((rc = gpt2_check_hparams(m, pt, err, errlen))) goto out;
    int D = in->dim, H = in->hidden_dim, V = in->vocab_size, L = in->n_layers;
    size_t need = 2 + 16 * (size_t)L + 3;
    if (ps->n != need) {
        rc = model_errf(err, errlen, MODEL_EFORMAT, pt, "params has %zu tensors; a %d-layer model has %zu",
                        ps->n, L, need);
        goto out;
    }
    /* Check every shape before converting anything. */
    size_t k = 0;
#define W(nd, a, b, what) do { if ((rc = want(ps, k++, nd, a, b, what, pt, err, errlen))) goto out; } while (0)
    W(2, V, D, "token embedding");
    W(2, in->ctx_len, D, "position embedding");
    for (int l = 0; l < L; l++) {
        W(1, D, 0, "ln1 gamma"); W(1, D, 0, "ln1 beta");
        for (int j = 0; j < 4; j++) { W(2, D, D, "attention W"); W(1, D, 0, "attention b"); }
        W(1, D, 0, "ln2 gamma"); W(1, D, 0, "ln2 beta");
        W(2, D, H, "fc1 W"); W(1, H, 0, "fc1 b"); W(2, H, D, "fc2 W"); W(1, D, 0, "fc2 b");
    }
    W(1, D, 0, "final gamma"); W(1, D, 0, "final beta"); W(1, V, 0, "output bias");
#undef W
    m->layers = model_calloc_owned(m, (size_t)L, sizeof *m->layers);
    if (!m->layers) goto oom;
    k = 0;
    float *e = as_f32(m, ps->items[k++]), *p = as_f32(m, ps->items[k++]);
    if (!e || !p) goto oom;
    m->tok_embd = (mtensor){e, MT_F32, V, D, 0};
    m->pos_embd = (mtensor){p, MT_F32, in->ctx_len, D, 0};
    for (int l = 0; l < L; l++) {
        layer_weights *w = &m->layers[l];
        const float **vec[] = {&w->attn_norm, &w->attn_norm_b};
        for (int j = 0; j < 2; j++)
            if (!(*vec[j] = as_f32(m, ps->items[k++]))) goto oom;
        mtensor *mats[4] = {&w->wq, &w->wk, &w->wv, &w->wo};
        const float **bias[4] = {&w->bq, &w->bk, &w->bv, &w->bo};
        for (int j = 0; j < 4; j++) {
            float *raw = as_f32(m, ps->items[k++]);
            float *t = raw ? fmt_f32_transpose(m, raw, D, D) : NULL;
            if (!t || !(*bias[j] = as_f32(m, ps->items[k++]))) goto oom;
            *mats[j] = (mtensor){t, MT_F32, D, D, 0};
        }
        if (!(w->ffn_norm = as_f32(m, ps->items[k++])) || !(w->ffn_norm_b = as_f32(m, ps->items[k++]))) goto oom;
        float *f1 = as_f32(m, ps->items[k++]);
        float *f1t = f1 ? fmt_f32_transpose(m, f1, D, H) : NULL;
        if (!f1t || !(w->b1 = as_f32(m, ps->items[k++]))) goto oom;
        float *f2 = as_f32(m, ps->items[k++]);
        float *f2t = f2 ? fmt_f32_transpose(m, f2, H, D) : NULL;
        if (!f2t || !(w->b2 = as_f32(m, ps->items[k++]))) goto oom;
        w->w1 = (mtensor){f1t, MT_F32, H, D, 0};
        w->w2 = (mtensor){f2t, MT_F32, D, H, 0};
    }
    if (!(m->out_norm = as_f32(m, ps->items[k++])) || !(m->out_norm_b = as_f32(m, ps->items[k++])) ||
        !(m->output_bias = as_f32(m, ps->items[k++])))
        goto oom;
    m->output = m->tok_embd; /* tied unembedding */

    /* Tokenizer: ../../tokenizers/<tokenizer_artifact>/tokenizer.json */
    man = fmt_json_load(dir, "manifest.json", 1, err, errlen);
    if (!man) { rc = MODEL_EFORMAT; goto out; }
    const char *tname = json_string_value(json_object_get(man, "tokenizer_artifact"));
    if (!tname || !*tname || strchr(tname, '/') || strcmp(tname, "..") == 0 || strcmp(tname, ".") == 0) {
        rc = model_errf(err, errlen, MODEL_EFORMAT, dir, "manifest.json has no usable 'tokenizer_artifact'");
        goto out;
    }
    char tp[4096];
    snprintf(tp, sizeof tp, "%s/../../tokenizers/%s/tokenizer.json", dir, tname);
    if ((rc = tok_g2c_load(&m->tok, tp, err, errlen))) goto out;
    if ((rc = fmt_tok_fit(&m->tok, V, tp, err, errlen))) goto out;
    m->tok.bos_id = -1;
    m->tok.add_bos = 0;
    snprintf(m->arch_name, sizeof m->arch_name, "gpt2");
    snprintf(m->format_name, sizeof m->format_name, "torch");
    model_fill_weight_stats(m);
    rc = 0;
    goto out;
oom:
    rc = model_errf(err, errlen, MODEL_ENOMEM, pt, "out of memory");
out:
    json_decref(cfg);
    json_decref(man);
    tz_close(tz);
    return rc;
}
