/* load_gguf.c -- model_load_gguf: a GGUF file (gguf.h) with the llama architecture
 * (tensor and key names as llama.cpp writes them: token_embd, blk.N.attn_q ...,
 * llama.* shape keys, a "llama" SentencePiece vocabulary), or another one
 * dispatched through arches[] (gpt2: gguf_gpt2.c). */
#include "model/formats/formats.h"
#include "model/formats/gguf.h"
#include "model/loader.h"
#include "model/tokenizers/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GERR(...) model_errf(err, errlen, MODEL_EFORMAT, g->path, __VA_ARGS__)

/* ---- The llama architecture ------------------------------------------------------------- */

static int load_tokenizer_llama(model *m, const gguf_file *g, char *err, size_t errlen)
{
    tokenizer *t = &m->tok;
    char show[96];
    const gguf_kv *kv = gguf_find(g, "tokenizer.ggml.model");
    gguf_str s;
    if (!kv) return GERR("no tokenizer in the file (missing 'tokenizer.ggml.model')");
    if (!gguf_kv_string(g, kv, &s)) return GERR("metadata 'tokenizer.ggml.model' is not a string");
    /* a llama model with a byte-level BPE vocabulary: SmolLM, Qwen, Llama 3 as converted */
    if (gguf_str_eq(s, "gpt2")) return gguf_load_bpe_tokenizer(t, g, m->info.vocab_size, err, errlen);
    if (!gguf_str_eq(s, "llama"))
        return GERR("unsupported tokenizer model '%s' (supported: llama, gpt2)", gguf_str_show(s, show, sizeof show));
    int n = m->info.vocab_size, rc;
    const gguf_kv *tokens, *scores, *types;
    if ((rc = gguf_get_array(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, (uint64_t)n, &tokens, err, errlen)))
        return rc;
    if (!tokens) return GERR("missing metadata 'tokenizer.ggml.tokens'");
    if ((rc = gguf_get_array(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, (uint64_t)n, &scores, err, errlen)))
        return rc;
    if ((rc = gguf_get_array(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, (uint64_t)n, &types, err, errlen)))
        return rc;

    if ((rc = tokenizer_alloc(t, n)) != MODEL_OK) return model_errf(err, errlen, rc, g->path, "out of memory");
    t->kind = TOK_SPM;
    gguf_str_iter it;
    gguf_str_iter_init(&it, g, tokens);
    for (int i = 0; i < n; i++) {
        if (!gguf_str_iter_next(&it, &s))
            return GERR("token %d runs past the end of the file", i); /* validated already */
        if (s.len > 4096) return GERR("token %d is %zu bytes long (at most 4096)", i, s.len);
        if (memchr(s.s, '\0', s.len)) return GERR("token %d contains a NUL byte", i);
        if ((rc = tokenizer_set_token(t, i, s.s, (int)s.len)) != MODEL_OK)
            return model_errf(err, errlen, rc, g->path, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        float sc = 0;
        if (scores) memcpy(&sc, gguf_array_data(g, scores) + 4 * (size_t)i, 4);
        if (isnan(sc)) return GERR("token %d has a NaN score", i);
        t->scores[i] = sc;
        int32_t ty = TT_NORMAL;
        if (types) memcpy(&ty, gguf_array_data(g, types) + 4 * (size_t)i, 4);
        if (ty < 0 || ty > TT_BYTE) return GERR("token %d has invalid token type %d", i, ty);
        t->types[i] = (uint8_t)(ty == 0 ? TT_NORMAL : ty);
    }
    if (!types) tokenizer_guess_types(t);
    /* special ids: absent -> the SentencePiece llama defaults; 0xFFFFFFFF -> none */
    static const struct {
        const char *key;
        int dflt;
    } ids[3] = { { "tokenizer.ggml.bos_token_id", 1 },
                 { "tokenizer.ggml.eos_token_id", 2 },
                 { "tokenizer.ggml.unknown_token_id", 0 } };
    int32_t *dst[3] = { &t->bos_id, &t->eos_id, &t->unk_id };
    for (int k = 0; k < 3; k++) {
        const gguf_kv *e = gguf_find(g, ids[k].key);
        uint64_t v = (uint64_t)ids[k].dflt;
        if (e && !gguf_kv_uint(g, e, &v)) return GERR("metadata '%s' is not an unsigned integer", ids[k].key);
        if (v == 0xFFFFFFFFu)
            *dst[k] = -1;
        else if (v >= (uint64_t)n)
            return GERR("metadata '%s' = %llu is not a token id (vocabulary has %d)", ids[k].key, (unsigned long long)v,
                        n);
        else
            *dst[k] = (int32_t)v;
        if (!e && *dst[k] >= n) *dst[k] = -1;
    }
    t->add_bos = 1;
    t->add_space_prefix = 1;
    kv = gguf_find(g, "tokenizer.ggml.add_bos_token");
    if (kv && !gguf_kv_bool(g, kv, &t->add_bos)) return GERR("metadata 'tokenizer.ggml.add_bos_token' is not a bool");
    kv = gguf_find(g, "tokenizer.ggml.add_space_prefix");
    if (kv && !gguf_kv_bool(g, kv, &t->add_space_prefix))
        return GERR("metadata 'tokenizer.ggml.add_space_prefix' is not a bool");
    char why[160] = "";
    if ((rc = tokenizer_finish(t, why, sizeof why)) != MODEL_OK)
        return model_errf(err, errlen, rc, g->path, "tokenizer: %s", why);
    return MODEL_OK;
}

static int load_llama(model *m, const gguf_file *g, const model_load_opts *opts, char *err, size_t errlen)
{
    (void)opts;
    model_info *in = &m->info;
    char key[96];
    int rc;
    m->arch = ARCH_LLAMA;
    m->rope_neox = 0; /* llama.cpp's llama GGUFs rotate adjacent pairs */
#define GETI(name, req, dflt, lo, hi, dst)                                               \
    do {                                                                                 \
        snprintf(key, sizeof key, "llama.%s", name);                                     \
        if ((rc = gguf_get_int(g, key, req, dflt, lo, hi, dst, err, errlen))) return rc; \
    } while (0)
    GETI("context_length", 1, 0, 1, 1 << 20, &in->ctx_len);
    GETI("embedding_length", 1, 0, 1, 1 << 16, &in->dim);
    GETI("block_count", 1, 0, 1, 1024, &in->n_layers);
    GETI("feed_forward_length", 1, 0, 1, 1 << 18, &in->hidden_dim);
    GETI("attention.head_count", 1, 0, 1, 1 << 16, &in->n_heads);
    GETI("attention.head_count_kv", 0, in->n_heads, 1, 1 << 16, &in->n_kv_heads);
    in->head_dim = in->dim / in->n_heads;
    GETI("rope.dimension_count", 0, in->head_dim, 1, 1 << 16, &in->rope_dim);
#undef GETI
    if ((rc = gguf_get_float(g, "llama.rope.freq_base", 10000.0, &in->rope_theta, err, errlen))) return rc;
    if ((rc = gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", 1e-5, &in->norm_eps, err, errlen))) return rc;

    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return GERR("missing tensor 'token_embd.weight'");
    if (emb->n_dims != 2 || emb->ne[1] > (1 << 22))
        return GERR("tensor 'token_embd.weight' is not a (vocab, dim) matrix");
    in->vocab_size = (int)emb->ne[1];
    const gguf_kv *vkv = gguf_find(g, "llama.vocab_size");
    if (vkv) {
        uint64_t v;
        if (!gguf_kv_uint(g, vkv, &v) || v != (uint64_t)in->vocab_size)
            return GERR("metadata 'llama.vocab_size' does not match token_embd.weight's %d rows", in->vocab_size);
    }
    if ((rc = model_check_hparams(m, g->path, err, errlen))) return rc;

    int dim = in->dim, hd = in->head_dim, q_dim = in->n_heads * hd, kv_dim = in->n_kv_heads * hd;
    if ((rc = gguf_get_matrix(g, "token_embd.weight", in->vocab_size, dim, 0, &m->tok_embd, err, errlen))) return rc;
    if ((rc = gguf_get_vector(m, g, "output_norm.weight", dim, 0, &m->out_norm, err, errlen))) return rc;
    if ((rc = gguf_get_matrix(g, "output.weight", in->vocab_size, dim, 1, &m->output, err, errlen))) return rc;
    if (!m->output.data) m->output = m->tok_embd; /* tied classifier */

    m->layers = model_calloc_owned(m, (size_t)in->n_layers, sizeof *m->layers);
    if (!m->layers) return model_errf(err, errlen, MODEL_ENOMEM, g->path, "out of memory");
    for (int l = 0; l < in->n_layers; l++) {
        layer_weights *w = &m->layers[l];
        struct {
            const char *suffix;
            mtensor *t;
            int rows, cols;
        } mats[] = {
            { "attn_q", &w->wq, q_dim, dim },
            { "attn_k", &w->wk, kv_dim, dim },
            { "attn_v", &w->wv, kv_dim, dim },
            { "attn_output", &w->wo, dim, q_dim },
            { "ffn_gate", &w->w1, in->hidden_dim, dim },
            { "ffn_down", &w->w2, dim, in->hidden_dim },
            { "ffn_up", &w->w3, in->hidden_dim, dim },
        };
        for (size_t k = 0; k < sizeof mats / sizeof mats[0]; k++) {
            snprintf(key, sizeof key, "blk.%d.%s.weight", l, mats[k].suffix);
            if ((rc = gguf_get_matrix(g, key, mats[k].rows, mats[k].cols, 0, mats[k].t, err, errlen))) return rc;
        }
        snprintf(key, sizeof key, "blk.%d.attn_norm.weight", l);
        if ((rc = gguf_get_vector(m, g, key, dim, 0, &w->attn_norm, err, errlen))) return rc;
        snprintf(key, sizeof key, "blk.%d.ffn_norm.weight", l);
        if ((rc = gguf_get_vector(m, g, key, dim, 0, &w->ffn_norm, err, errlen))) return rc;
    }
    if ((rc = load_tokenizer_llama(m, g, err, errlen))) return rc;
    snprintf(m->arch_name, sizeof m->arch_name, "llama");
    model_fill_weight_stats(m);
    return MODEL_OK;
}

/* Architectures this reader knows; add a row for each new one. */
static const struct {
    const char *name;
    int (*load)(model *, const gguf_file *, const model_load_opts *, char *, size_t);
} arches[] = {
    { "llama", load_llama }, { "gpt2", gguf_load_gpt2 }, /* model/formats/gguf_gpt2.c */
};

/* A string value of the metadata as a NUL-terminated copy owned by m; NULL if the key is
 * absent, not a string, contains a NUL, or memory runs out (the text is optional). */
static const char *gguf_meta_copy(model *m, const gguf_file *g, const char *key)
{
    const gguf_kv *kv = gguf_find(g, key);
    gguf_str v;
    if (!kv || !gguf_kv_string(g, kv, &v) || memchr(v.s, 0, v.len)) return NULL;
    char *s = malloc(v.len + 1);
    if (!s) return NULL;
    memcpy(s, v.s, v.len);
    s[v.len] = '\0';
    if (model_own(m, s) != MODEL_OK) return NULL; /* model_own frees s on failure */
    return s;
}

int model_load_gguf(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen)
{
    gguf_file gf, *g = &gf;
    int rc = gguf_open(g, m, path, err, errlen);
    if (rc) return rc;
    snprintf(m->format_name, sizeof m->format_name, "gguf");
    const gguf_kv *kv = gguf_find(g, "general.architecture");
    gguf_str arch;
    char show[96];
    if (!kv)
        rc = GERR("missing metadata 'general.architecture'");
    else if (!gguf_kv_string(g, kv, &arch))
        rc = GERR("metadata 'general.architecture' is not a string");
    else {
        rc = GERR("unsupported architecture '%s' (supported: llama, gpt2)", gguf_str_show(arch, show, sizeof show));
        for (size_t i = 0; i < sizeof arches / sizeof arches[0]; i++)
            if (gguf_str_eq(arch, arches[i].name)) {
                if (err && errlen) err[0] = '\0';
                rc = arches[i].load(m, g, opts, err, errlen);
                break;
            }
    }
    if (!rc) {
        m->info.name = gguf_meta_copy(m, g, "general.name");
        m->info.chat_template = gguf_meta_copy(m, g, "tokenizer.chat_template");
        m->info.sample_prompt = gguf_meta_copy(m, g, "lmserve.sample_prompt");
    }
    gguf_close(g);
    return rc;
}
