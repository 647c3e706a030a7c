/* load_hf.c -- Hugging Face save_pretrained folders: config.json + model.safetensors
 * (or shards via model.safetensors.index.json) + tokenizer.json.
 *
 * LlamaForCausalLM: model.embed_tokens, model.layers.N.{self_attn.{q,k,v,o}_proj,
 *   mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}, model.norm,
 *   lm_head (absent when tied).  nn.Linear weights are (out, in): used in place
 *   (mmapped, F32/F16/BF16).  HF's q/k use the rotate-halves RoPE layout: rope_neox = 1.
 * GPT2LMHeadModel: [transformer.]{wte, wpe, h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2,
 *   mlp.c_fc, mlp.c_proj}, ln_f}; Conv1D weights are (in, out): copied transposed to
 *   F32; c_attn is q, k, v fused along out.  The head is tied to wte unless lm_head exists.
 * Names and layouts: transformers' modeling_llama.py / modeling_gpt2.py, as the fixture
 * files show them (tests/data/SOURCES.md). */
#include "model/formats/formats.h"
#include "model/loader.h"
#include "model/formats/safetensors.h"
#include "model/tokenizers/tok_bpe.h"
#include "model/tokenizers/tokenizer.h"

#include <jansson.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int probe_hf_dir(const char *dir)
{
    char p[4096], q[4096], c[4096];
    snprintf(c, sizeof c, "%s/config.json", dir);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    snprintf(q, sizeof q, "%s/model.safetensors.index.json", dir);
    return access(c, F_OK) == 0 && (access(p, F_OK) == 0 || access(q, F_OK) == 0);
}

typedef struct {
    model *m;
    st_file *st;
    const char *dir;
    const char *prefix; /* "transformer." or "" (gpt2) */
    char *err;
    size_t errlen;
} hf_ctx;

static const st_tensor *get(hf_ctx *c, const char *name, int optional, int ndim, long long a, long long b)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", c->prefix, name);
    const st_tensor *t = st_find(c->st, full);
    if (!t) {
        if (!optional) model_errf(c->err, c->errlen, MODEL_EFORMAT, c->dir, "missing tensor '%s'", full);
        return NULL;
    }
    if (t->mt_type < 0) {
        model_errf(c->err, c->errlen, MODEL_EFORMAT, c->dir, "tensor '%s' is %s (F32, F16 or BF16 only)", full,
                   t->dtype);
        return NULL;
    }
    if (t->ndim != ndim || t->shape[0] != a || (ndim == 2 && t->shape[1] != b)) {
        if (ndim == 1)
            model_errf(c->err, c->errlen, MODEL_EFORMAT, c->dir,
                       "tensor '%s' has %d dims [%lld, ...], "
                       "expected [%lld]",
                       full, t->ndim, (long long)t->shape[0], a);
        else
            model_errf(c->err, c->errlen, MODEL_EFORMAT, c->dir,
                       "tensor '%s' has %d dims [%lld, %lld], "
                       "expected [%lld, %lld]",
                       full, t->ndim, (long long)t->shape[0], t->ndim > 1 ? (long long)t->shape[1] : 0LL, a, b);
        return NULL;
    }
    return t;
}

/* An (rows, cols) matrix used in place when its data is aligned for its type. */
static int mat(hf_ctx *c, const char *name, int rows, int cols, int optional, mtensor *out)
{
    memset(out, 0, sizeof *out);
    char full[256];
    snprintf(full, sizeof full, "%s%s", c->prefix, name);
    if (optional && !st_find(c->st, full)) return 0;
    const st_tensor *t = get(c, name, 0, 2, rows, cols);
    if (!t) return MODEL_EFORMAT;
    const void *d = t->data;
    size_t es = t->mt_type == MT_F32 ? 4 : 2;
    if ((uintptr_t)d % es) { /* unaligned: an F32 copy */
        d = fmt_f32_copy(c->m, t->data, t->mt_type, (size_t)t->numel);
        if (!d) return model_errf(c->err, c->errlen, MODEL_ENOMEM, c->dir, "out of memory");
        *out = (mtensor){ d, MT_F32, rows, cols, 0 };
        return 0;
    }
    *out = (mtensor){ d, t->mt_type, rows, cols, 0 };
    return 0;
}

static int vec(hf_ctx *c, const char *name, int n, const float **out)
{
    const st_tensor *t = get(c, name, 0, 1, n, 0);
    if (!t) return MODEL_EFORMAT;
    *out = fmt_f32_view(c->m, t->data, t->mt_type, (size_t)n);
    return *out ? 0 : model_errf(c->err, c->errlen, MODEL_ENOMEM, c->dir, "out of memory");
}

/* A Conv1D weight stored (in, out) as an F32 (out, in) heap matrix. */
static float *conv1d(hf_ctx *c, const char *name, int in, int out)
{
    const st_tensor *t = get(c, name, 0, 2, in, out);
    if (!t) return NULL;
    const float *src = fmt_f32_view(c->m, t->data, t->mt_type, (size_t)t->numel);
    float *d = src ? fmt_f32_transpose(c->m, src, in, out) : NULL;
    if (!d) model_errf(c->err, c->errlen, MODEL_ENOMEM, c->dir, "out of memory");
    return d;
}

#define CFG_INT(key, dflt, lo, hi, dst)                               \
    do {                                                              \
        long long v_ = fmt_json_int(cfg, key, dflt);                  \
        if (v_ < (lo) || v_ > (hi))                                   \
            return model_errf(err, errlen, MODEL_EFORMAT, dir,        \
                              "config.json '%s' is missing or "       \
                              "out of range [%lld, %lld]",            \
                              key, (long long)(lo), (long long)(hi)); \
        dst = (int)v_;                                                \
    } while (0)

static int load_llama(hf_ctx *c, const json_t *cfg)
{
    model *m = c->m;
    model_info *in = &m->info;
    const char *dir = c->dir;
    char *err = c->err;
    size_t errlen = c->errlen;
    CFG_INT("hidden_size", -1, 1, 1 << 16, in->dim);
    CFG_INT("intermediate_size", -1, 1, 1 << 18, in->hidden_dim);
    CFG_INT("num_hidden_layers", -1, 1, 1024, in->n_layers);
    CFG_INT("num_attention_heads", -1, 1, 1 << 16, in->n_heads);
    CFG_INT("num_key_value_heads", in->n_heads, 1, 1 << 16, in->n_kv_heads);
    CFG_INT("max_position_embeddings", 2048, 1, 1 << 20, in->ctx_len);
    CFG_INT("vocab_size", -1, 1, 1 << 22, in->vocab_size);
    in->head_dim = in->dim / in->n_heads;
    int hd;
    CFG_INT("head_dim", in->head_dim, 1, 1 << 16, hd);
    if (hd != in->head_dim)
        return model_errf(err, errlen, MODEL_EFORMAT, dir, "head_dim %d != hidden_size / heads is not supported", hd);
    in->rope_dim = in->head_dim;
    in->rope_theta = (float)fmt_json_num(cfg, "rope_theta", 10000.0);
    in->norm_eps = (float)fmt_json_num(cfg, "rms_norm_eps", 1e-6);
    json_t *rs = json_object_get(cfg, "rope_scaling");
    if (rs && !json_is_null(rs)) return model_errf(err, errlen, MODEL_EFORMAT, dir, "rope_scaling is not supported");
    if (json_is_true(json_object_get(cfg, "attention_bias")) || json_is_true(json_object_get(cfg, "mlp_bias")))
        return model_errf(err, errlen, MODEL_EFORMAT, dir, "attention/mlp biases are not supported for llama");
    const char *act = json_string_value(json_object_get(cfg, "hidden_act"));
    if (act && strcmp(act, "silu") != 0)
        return model_errf(err, errlen, MODEL_EFORMAT, dir, "hidden_act '%s' is not supported (silu only)", act);
    m->arch = ARCH_LLAMA;
    m->rope_neox = 1;
    int rc;
    if ((rc = model_check_hparams(m, dir, err, errlen))) return rc;
    int D = in->dim, F = in->hidden_dim, V = in->vocab_size, qd = in->n_heads * hd, kvd = in->n_kv_heads * hd;
    char name[160];
    if ((rc = mat(c, "model.embed_tokens.weight", V, D, 0, &m->tok_embd))) return rc;
    if ((rc = vec(c, "model.norm.weight", D, &m->out_norm))) return rc;
    int tied = json_is_true(json_object_get(cfg, "tie_word_embeddings"));
    if ((rc = mat(c, "lm_head.weight", V, D, 1, &m->output))) return rc;
    if (!m->output.data) {
        if (!tied && json_object_get(cfg, "tie_word_embeddings"))
            return model_errf(err, errlen, MODEL_EFORMAT, dir,
                              "missing tensor 'lm_head.weight' (the "
                              "config says the head is not tied)");
        m->output = m->tok_embd;
    }
    m->layers = model_calloc_owned(m, (size_t)in->n_layers, sizeof *m->layers);
    if (!m->layers) return model_errf(err, errlen, MODEL_ENOMEM, dir, "out of memory");
    for (int l = 0; l < in->n_layers; l++) {
        layer_weights *w = &m->layers[l];
        struct {
            const char *s;
            mtensor *t;
            int r, k;
        } mats[] = {
            { "self_attn.q_proj", &w->wq, qd, D },  { "self_attn.k_proj", &w->wk, kvd, D },
            { "self_attn.v_proj", &w->wv, kvd, D }, { "self_attn.o_proj", &w->wo, D, qd },
            { "mlp.gate_proj", &w->w1, F, D },      { "mlp.down_proj", &w->w2, D, F },
            { "mlp.up_proj", &w->w3, F, D },
        };
        for (size_t k = 0; k < sizeof mats / sizeof mats[0]; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, mats[k].s);
            if ((rc = mat(c, name, mats[k].r, mats[k].k, 0, mats[k].t))) return rc;
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if ((rc = vec(c, name, D, &w->attn_norm))) return rc;
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if ((rc = vec(c, name, D, &w->ffn_norm))) return rc;
    }
    snprintf(m->arch_name, sizeof m->arch_name, "llama");
    return 0;
}

static int load_gpt2(hf_ctx *c, const json_t *cfg)
{
    model *m = c->m;
    model_info *in = &m->info;
    const char *dir = c->dir;
    char *err = c->err;
    size_t errlen = c->errlen;
    CFG_INT("n_embd", -1, 1, 1 << 16, in->dim);
    CFG_INT("n_layer", -1, 1, 1024, in->n_layers);
    CFG_INT("n_head", -1, 1, 1 << 16, in->n_heads);
    CFG_INT("n_positions", fmt_json_int(cfg, "n_ctx", 1024), 1, 1 << 20, in->ctx_len);
    CFG_INT("vocab_size", -1, 1, 1 << 22, in->vocab_size);
    CFG_INT("n_inner", 4LL * in->dim, 1, 1 << 18, in->hidden_dim);
    in->n_kv_heads = in->n_heads;
    in->head_dim = in->dim / in->n_heads;
    in->norm_eps = (float)fmt_json_num(cfg, "layer_norm_epsilon", 1e-5);
    const char *act = json_string_value(json_object_get(cfg, "activation_function"));
    if (!act || !strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh") || !strcmp(act, "gelu_fast"))
        m->gelu_tanh = 1;
    else if (!strcmp(act, "gelu"))
        m->gelu_tanh = 0;
    else
        return model_errf(err, errlen, MODEL_EFORMAT, dir, "activation_function '%s' is not supported", act);
    if (json_is_true(json_object_get(cfg, "scale_attn_by_inverse_layer_idx")) ||
        json_is_false(json_object_get(cfg, "scale_attn_weights")))
        return model_errf(err, errlen, MODEL_EFORMAT, dir, "non-standard attention scaling is not supported");
    m->arch = ARCH_GPT2;
    int rc;
    if ((rc = gpt2_check_hparams(m, dir, err, errlen))) return rc;
    c->prefix = st_find(c->st, "transformer.wte.weight") ? "transformer." : "";
    int D = in->dim, F = in->hidden_dim, V = in->vocab_size;
    char name[160];
    if ((rc = mat(c, "wte.weight", V, D, 0, &m->tok_embd))) return rc;
    if ((rc = mat(c, "wpe.weight", in->ctx_len, D, 0, &m->pos_embd))) return rc;
    if ((rc = vec(c, "ln_f.weight", D, &m->out_norm)) || (rc = vec(c, "ln_f.bias", D, &m->out_norm_b))) return rc;
    c->prefix = "";
    if ((rc = mat(c, "lm_head.weight", V, D, 1, &m->output))) return rc;
    if (!m->output.data) m->output = m->tok_embd;
    c->prefix = st_find(c->st, "transformer.wte.weight") ? "transformer." : "";
    m->layers = model_calloc_owned(m, (size_t)in->n_layers, sizeof *m->layers);
    if (!m->layers) return model_errf(err, errlen, MODEL_ENOMEM, dir, "out of memory");
    for (int l = 0; l < in->n_layers; l++) {
        layer_weights *w = &m->layers[l];
#define NM(s) (snprintf(name, sizeof name, "h.%d.%s", l, s), name)
        if ((rc = vec(c, NM("ln_1.weight"), D, &w->attn_norm)) || (rc = vec(c, NM("ln_1.bias"), D, &w->attn_norm_b)) ||
            (rc = vec(c, NM("ln_2.weight"), D, &w->ffn_norm)) || (rc = vec(c, NM("ln_2.bias"), D, &w->ffn_norm_b)))
            return rc;
        float *qkv = conv1d(c, NM("attn.c_attn.weight"), D, 3 * D); /* -> (3D, D) */
        const float *qkvb;
        if (!qkv || (rc = vec(c, NM("attn.c_attn.bias"), 3 * D, &qkvb))) return MODEL_EFORMAT;
        w->wq = (mtensor){ qkv, MT_F32, D, D, 0 };
        w->wk = (mtensor){ qkv + (size_t)D * D, MT_F32, D, D, 0 };
        w->wv = (mtensor){ qkv + 2 * (size_t)D * D, MT_F32, D, D, 0 };
        w->bq = qkvb;
        w->bk = qkvb + D;
        w->bv = qkvb + 2 * D;
        float *o = conv1d(c, NM("attn.c_proj.weight"), D, D);
        if (!o || (rc = vec(c, NM("attn.c_proj.bias"), D, &w->bo))) return MODEL_EFORMAT;
        w->wo = (mtensor){ o, MT_F32, D, D, 0 };
        float *f1 = conv1d(c, NM("mlp.c_fc.weight"), D, F);
        if (!f1 || (rc = vec(c, NM("mlp.c_fc.bias"), F, &w->b1))) return MODEL_EFORMAT;
        float *f2 = conv1d(c, NM("mlp.c_proj.weight"), F, D);
        if (!f2 || (rc = vec(c, NM("mlp.c_proj.bias"), D, &w->b2))) return MODEL_EFORMAT;
        w->w1 = (mtensor){ f1, MT_F32, F, D, 0 };
        w->w2 = (mtensor){ f2, MT_F32, D, F, 0 };
#undef NM
    }
    snprintf(m->arch_name, sizeof m->arch_name, "gpt2");
    return 0;
}

/* The folder's chat template: chat_template.jinja (where recent transformers save it), else
 * tokenizer_config.json's "chat_template", a string or a list of {"name", "template"} (the
 * one named "default", else the first).  A copy owned by m, or NULL if there is none (a
 * missing or unreadable template is not an error: the server then renders chats plainly). */
static const char *hf_chat_template(model *m, const char *dir)
{
    char p[4096];
    char *text = NULL;
    snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
    FILE *f = fopen(p, "rb");
    if (f) {
        long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
        if (n >= 0 && n < (1L << 24) && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1))) {
            if (fread(text, 1, (size_t)n, f) != (size_t)n || memchr(text, 0, (size_t)n)) {
                free(text);
                text = NULL;
            } else {
                text[n] = '\0';
            }
        }
        fclose(f);
    }
    if (!text) {
        snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
        json_t *j = json_load_file(p, 0, NULL);
        json_t *t = json_object_get(j, "chat_template");
        if (json_is_array(t)) {
            json_t *pick = NULL, *item;
            size_t i;
            json_array_foreach(t, i, item)
            {
                const char *name = json_string_value(json_object_get(item, "name"));
                if (!pick || (name && !strcmp(name, "default"))) pick = json_object_get(item, "template");
                if (name && !strcmp(name, "default")) break;
            }
            t = pick;
        }
        if (json_is_string(t) && strlen(json_string_value(t)) == json_string_length(t))
            text = strdup(json_string_value(t));
        json_decref(j);
    }
    if (!text || model_own(m, text) != MODEL_OK) return NULL;
    return text;
}

int model_load_hf(model *m, const char *dir, const model_load_opts *opts, char *err, size_t errlen)
{
    if (err && errlen) err[0] = 0;
    json_t *cfg = fmt_json_load(dir, "config.json", 1, err, errlen);
    if (!cfg) return MODEL_EFORMAT;
    st_file *st = NULL;
    int rc = st_open(&st, dir, err, errlen);
    if (rc) {
        json_decref(cfg);
        return rc;
    }
    hf_ctx c = { m, st, dir, "", err, errlen };
    const char *arch = json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0));
    const char *mt = json_string_value(json_object_get(cfg, "model_type"));
    if ((arch && !strcmp(arch, "LlamaForCausalLM")) || (!arch && mt && !strcmp(mt, "llama")))
        rc = load_llama(&c, cfg);
    else if ((arch && !strcmp(arch, "GPT2LMHeadModel")) || (!arch && mt && !strcmp(mt, "gpt2")))
        rc = load_gpt2(&c, cfg);
    else
        rc = model_errf(err, errlen, MODEL_EFORMAT, dir,
                        "unsupported architecture '%s' (supported: "
                        "LlamaForCausalLM, GPT2LMHeadModel)",
                        arch ? arch
                        : mt ? mt
                             : "?");
    if (!rc && (rc = st_give_maps(st, m)))
        model_errf(err, errlen, rc, dir, "too many safetensors shards for one model");
    st_close(st);
    /* Tokenizer: opts->tokenizer_path when given, else tokenizer.json beside the weights. */
    char tp[4096];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", dir);
    if (!rc) {
        if (opts && opts->tokenizer_path) {
            snprintf(tp, sizeof tp, "%s", opts->tokenizer_path);
            const char *dot = strrchr(tp, '.');
            if (dot && !strcmp(dot, ".json"))
                rc = tok_bpe_load_hf(&m->tok, tp, err, errlen);
            else
                rc = tokenizer_load_llama2c(&m->tok, tp, m->info.vocab_size, err, errlen);
        } else if (access(tp, F_OK) == 0) {
            rc = tok_bpe_load_hf(&m->tok, tp, err, errlen);
        } else {
            rc = model_errf(err, errlen, MODEL_EFORMAT, dir,
                            "no tokenizer.json in the folder (pass a "
                            "tokenizer path to use another)");
        }
    }
    if (!rc) rc = fmt_tok_fit(&m->tok, m->info.vocab_size, tp, err, errlen);
    if (!rc) {
        /* The config's special ids win over the tokenizer's guesses. */
        long long bos = fmt_json_int(cfg, "bos_token_id", -1), eos = fmt_json_int(cfg, "eos_token_id", -1);
        if (bos >= 0 && bos < m->tok.n_vocab) m->tok.bos_id = (int32_t)bos;
        if (eos >= 0 && eos < m->tok.n_vocab) m->tok.eos_id = (int32_t)eos;
        if (m->tok.add_bos && m->tok.bos_id < 0) m->tok.add_bos = 0;
        snprintf(m->format_name, sizeof m->format_name, "safetensors");
        m->info.chat_template = hf_chat_template(m, dir);
        model_fill_weight_stats(m);
    }
    json_decref(cfg);
    return rc;
}
