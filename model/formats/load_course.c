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
static int want(const tz_value *ps, size_t i, int ndim, long long a, long long b, const char *what, const char *path,
                char *err, size_t errlen)
{
    const tz_value *v = ps->items[i];
    if (v->kind != TZ_TENSOR)
        return model_errf(err, errlen, MODEL_EFORMAT, path, "params[%zu] (%s) is not a tensor", i, what);
    const tz_tensor *t = &v->t;
    if (t->dtype != TZ_F32 && t->dtype != TZ_F16 && t->dtype != TZ_BF16 && t->dtype != TZ_F64)
        return model_errf(err, errlen, MODEL_EFORMAT, path, "params[%zu] (%s) is %s, not a float tensor", i, what,
                          tz_dtype_name(t->dtype));
    if (t->ndim != ndim || t->shape[0] != a || (ndim == 2 && t->shape[1] != b)) {
        char got[64] = "";
        for (int d = 0; d < t->ndim && d < 4; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), d ? ", %lld" : "%lld", (long long)t->shape[d]);
        if (ndim == 1)
            return model_errf(err, errlen, MODEL_EFORMAT, path, "params[%zu] (%s) has shape (%s), expected (%lld)", i,
                              what, got, a);
        return model_errf(err, errlen, MODEL_EFORMAT, path,
                          "params[%zu] (%s) has shape (%s), expected "
                          "(%lld, %lld)",
                          i, what, got, a, b);
    }
    return 0;
}

static float *as_f32(model *m, const tz_value *v)
{
    float *d = model_calloc_owned(m, (size_t)v->t.numel, sizeof *d);
    if (d) tz_tensor_to_f32(&v->t, d);
    return d;
}

static int cfg_int(const json_t *cfg, const tz_value *mc, const char *key, long long dflt, int *out, const char *path,
                   char *err, size_t errlen)
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

/* Hyper-parameters: config.json's model_config keys (flat or under "model_config"),
 * else the checkpoint's own model_config; the vocabulary size from the checkpoint. */
static int read_hparams(model *m, const tz_value *root, const char *dir, const char *pt, char *err, size_t errlen)
{
    model_info *in = &m->info;
    const tz_value *vs = tz_dict_get(root, "vocab_size"), *mc = tz_dict_get(root, "model_config");
    if (err && errlen) err[0] = 0;
    json_t *cfg = fmt_json_load(dir, "config.json", 0, err, errlen);
    if (!cfg && err && errlen && err[0]) return MODEL_EFORMAT;
    const json_t *cj =
        json_is_object(json_object_get(cfg, "model_config")) ? json_object_get(cfg, "model_config") : cfg;
    int rc;
    if ((rc = cfg_int(cj, mc, "embedding_dim", -1, &in->dim, pt, err, errlen)) ||
        (rc = cfg_int(cj, mc, "num_layers", -1, &in->n_layers, pt, err, errlen)) ||
        (rc = cfg_int(cj, mc, "num_heads", -1, &in->n_heads, pt, err, errlen)) ||
        (rc = cfg_int(cj, mc, "max_seq_len", -1, &in->ctx_len, pt, err, errlen)) ||
        (rc = cfg_int(cj, mc, "hidden_dim", 4LL * in->dim, &in->hidden_dim, pt, err, errlen))) {
        json_decref(cfg);
        return rc;
    }
    json_decref(cfg);
    if (vs->i <= 0 || vs->i > (1 << 22))
        return model_errf(err, errlen, MODEL_EFORMAT, pt, "vocab_size %lld is out of range", (long long)vs->i);
    in->vocab_size = (int)vs->i;
    in->n_kv_heads = in->n_heads;
    in->head_dim = in->n_heads > 0 ? in->dim / in->n_heads : 0;
    in->norm_eps = 1e-5f;
    in->rope_dim = 0;
    in->rope_theta = 0;
    m->arch = ARCH_GPT2;
    m->gelu_tanh = 0; /* exact erf GELU */
    return gpt2_check_hparams(m, pt, err, errlen);
}

/* Every params[] shape, in the file's order (see the top of this file), before
 * anything is converted. */
static int check_params(const tz_value *ps, const model_info *in, const char *pt, char *err, size_t errlen)
{
    int D = in->dim, H = in->hidden_dim, V = in->vocab_size, L = in->n_layers, rc;
    size_t need = 2 + 16 * (size_t)L + 3, k = 0;
    if (ps->n != need)
        return model_errf(err, errlen, MODEL_EFORMAT, pt, "params has %zu tensors; a %d-layer model has %zu", ps->n, L,
                          need);
#define W(nd, a, b, what)                                                     \
    do {                                                                      \
        if ((rc = want(ps, k++, nd, a, b, what, pt, err, errlen))) return rc; \
    } while (0)
    W(2, V, D, "token embedding");
    W(2, in->ctx_len, D, "position embedding");
    for (int l = 0; l < L; l++) {
        W(1, D, 0, "ln1 gamma");
        W(1, D, 0, "ln1 beta");
        for (int j = 0; j < 4; j++) {
            W(2, D, D, "attention W");
            W(1, D, 0, "attention b");
        }
        W(1, D, 0, "ln2 gamma");
        W(1, D, 0, "ln2 beta");
        W(2, D, H, "fc1 W");
        W(1, H, 0, "fc1 b");
        W(2, H, D, "fc2 W");
        W(1, D, 0, "fc2 b");
    }
    W(1, D, 0, "final gamma");
    W(1, D, 0, "final beta");
    W(1, V, 0, "output bias");
#undef W
    return 0;
}

/* params[*k] as a heap F32 (rows, cols) matrix owned by m, transposed from its
 * (cols, rows) = (in, out) storage; NULL when out of memory. */
static float *next_matrix(model *m, const tz_value *ps, size_t *k, int in, int out)
{
    float *raw = as_f32(m, ps->items[(*k)++]);
    return raw ? fmt_f32_transpose(m, raw, in, out) : NULL;
}

/* One block's 16 tensors from params[*k]; MODEL_ENOMEM or 0. */
static int copy_layer(model *m, layer_weights *w, const tz_value *ps, size_t *k)
{
    int D = m->info.dim, H = m->info.hidden_dim;
    if (!(w->attn_norm = as_f32(m, ps->items[(*k)++])) || !(w->attn_norm_b = as_f32(m, ps->items[(*k)++])))
        return MODEL_ENOMEM;
    mtensor *mats[4] = { &w->wq, &w->wk, &w->wv, &w->wo };
    const float **bias[4] = { &w->bq, &w->bk, &w->bv, &w->bo };
    for (int j = 0; j < 4; j++) {
        float *t = next_matrix(m, ps, k, D, D);
        if (!t || !(*bias[j] = as_f32(m, ps->items[(*k)++]))) return MODEL_ENOMEM;
        *mats[j] = (mtensor){ t, MT_F32, D, D, 0 };
    }
    if (!(w->ffn_norm = as_f32(m, ps->items[(*k)++])) || !(w->ffn_norm_b = as_f32(m, ps->items[(*k)++])))
        return MODEL_ENOMEM;
    float *f1t = next_matrix(m, ps, k, D, H);
    if (!f1t || !(w->b1 = as_f32(m, ps->items[(*k)++]))) return MODEL_ENOMEM;
    float *f2t = next_matrix(m, ps, k, H, D);
    if (!f2t || !(w->b2 = as_f32(m, ps->items[(*k)++]))) return MODEL_ENOMEM;
    w->w1 = (mtensor){ f1t, MT_F32, H, D, 0 };
    w->w2 = (mtensor){ f2t, MT_F32, D, H, 0 };
    return 0;
}

/* All params into m as F32 (shapes checked already); MODEL_ENOMEM or 0. */
static int copy_params(model *m, const tz_value *ps)
{
    int D = m->info.dim, V = m->info.vocab_size, L = m->info.n_layers;
    size_t k = 0;
    m->layers = model_calloc_owned(m, (size_t)L, sizeof *m->layers);
    if (!m->layers) return MODEL_ENOMEM;
    float *e = as_f32(m, ps->items[k++]), *p = as_f32(m, ps->items[k++]);
    if (!e || !p) return MODEL_ENOMEM;
    m->tok_embd = (mtensor){ e, MT_F32, V, D, 0 };
    m->pos_embd = (mtensor){ p, MT_F32, m->info.ctx_len, D, 0 };
    for (int l = 0; l < L; l++)
        if (copy_layer(m, &m->layers[l], ps, &k)) return MODEL_ENOMEM;
    if (!(m->out_norm = as_f32(m, ps->items[k++])) || !(m->out_norm_b = as_f32(m, ps->items[k++])) ||
        !(m->output_bias = as_f32(m, ps->items[k++])))
        return MODEL_ENOMEM;
    m->output = m->tok_embd; /* tied unembedding */
    return 0;
}

/* The tokenizer manifest.json names: ../../tokenizers/<tokenizer_artifact>/tokenizer.json */
static int load_tokenizer(model *m, const char *dir, char *err, size_t errlen)
{
    json_t *man = fmt_json_load(dir, "manifest.json", 1, err, errlen);
    if (!man) return MODEL_EFORMAT;
    const char *tname = json_string_value(json_object_get(man, "tokenizer_artifact"));
    int rc = 0;
    char tp[4096];
    if (!tname || !*tname || strchr(tname, '/') || strcmp(tname, "..") == 0 || strcmp(tname, ".") == 0)
        rc = model_errf(err, errlen, MODEL_EFORMAT, dir, "manifest.json has no usable 'tokenizer_artifact'");
    else
        snprintf(tp, sizeof tp, "%s/../../tokenizers/%s/tokenizer.json", dir, tname);
    json_decref(man);
    if (rc || (rc = tok_g2c_load(&m->tok, tp, err, errlen)) ||
        (rc = fmt_tok_fit(&m->tok, m->info.vocab_size, tp, err, errlen)))
        return rc;
    m->tok.bos_id = -1;
    m->tok.add_bos = 0;
    return 0;
}

int model_load_course(model *m, const char *dir, const model_load_opts *opts, char *err, size_t errlen)
{
    (void)opts;
    char pt[4096];
    snprintf(pt, sizeof pt, "%s/model.pt", dir);
    tz_file *tz = NULL;
    int rc = tz_open(&tz, pt, err, errlen);
    if (rc) return rc;
    const tz_value *root = tz_root(tz);
    const tz_value *ps = tz_dict_get(root, "params"), *vs = tz_dict_get(root, "vocab_size");
    if (!ps || ps->kind != TZ_LIST || !vs || vs->kind != TZ_INT)
        rc = model_errf(err, errlen, MODEL_EFORMAT, pt,
                        "not a course checkpoint (expected a dict with "
                        "'vocab_size' and a 'params' list)");
    if (!rc) rc = read_hparams(m, root, dir, pt, err, errlen);
    if (!rc) rc = check_params(ps, &m->info, pt, err, errlen);
    if (!rc && copy_params(m, ps)) rc = model_errf(err, errlen, MODEL_ENOMEM, pt, "out of memory");
    if (!rc) rc = load_tokenizer(m, dir, err, errlen);
    tz_close(tz);
    if (rc) return rc;
    snprintf(m->arch_name, sizeof m->arch_name, "gpt2");
    snprintf(m->format_name, sizeof m->format_name, "torch");
    model_fill_weight_stats(m);
    return 0;
}
