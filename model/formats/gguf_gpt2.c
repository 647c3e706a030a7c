/* gguf_gpt2.c -- GGUF general.architecture = "gpt2" (tensor names as llama.cpp's
 * converter writes them: token_embd, position_embd, blk.N.{attn_norm, attn_qkv,
 * attn_output, ffn_norm, ffn_up, ffn_down}.{weight,bias}, output_norm, output) and
 * tokenizer.ggml.model = "gpt2" (tokens, token_type, merges in the file). */
#include "model/formats/formats.h"
#include "model/formats/gguf.h"
#include "model/loader.h"
#include "model/tokenizers/tok_bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GERR(...) model_errf(err, errlen, MODEL_EFORMAT, g->path, __VA_ARGS__)

/* The strings of an array (kv, n of them) as NUL-terminated copies in one block,
 * freed by the caller. */
static char **read_strings(const gguf_file *g, const gguf_kv *kv, uint64_t n, char *err, size_t errlen)
{
    gguf_str_iter it;
    gguf_str s;
    size_t total = 0;
    gguf_str_iter_init(&it, g, kv);
    for (uint64_t i = 0; gguf_str_iter_next(&it, &s); i++) {
        if (s.len > 65536) {
            GERR("string %llu of '%.*s' is too long", (unsigned long long)i, (int)kv->key.len, kv->key.s);
            return NULL;
        }
        if (memchr(s.s, 0, s.len)) {
            GERR("string %llu of '%.*s' contains a NUL byte", (unsigned long long)i, (int)kv->key.len, kv->key.s);
            return NULL;
        }
        total += s.len + 1;
    }
    char **v = malloc((size_t)n * sizeof *v + total);
    if (!v) {
        model_errf(err, errlen, MODEL_ENOMEM, g->path, "out of memory");
        return NULL;
    }
    char *d = (char *)(v + n);
    gguf_str_iter_init(&it, g, kv);
    for (uint64_t i = 0; i < n && gguf_str_iter_next(&it, &s); i++) {
        memcpy(d, s.s, s.len);
        d[s.len] = 0;
        v[i] = d;
        d += s.len + 1;
    }
    return v;
}

int gguf_load_bpe_tokenizer(tokenizer *t, const gguf_file *g, int n_vocab, char *err, size_t errlen)
{
    const gguf_kv *kv = gguf_find(g, "tokenizer.ggml.model");
    gguf_str s;
    if (!kv || !gguf_kv_string(g, kv, &s)) return GERR("missing metadata 'tokenizer.ggml.model'");
    if (s.len != 4 || memcmp(s.s, "gpt2", 4) != 0)
        return GERR("tokenizer model '%.*s' is not supported with gpt2 (gpt2 BPE only)", (int)(s.len > 40 ? 40 : s.len),
                    s.s);
    const gguf_kv *tk = gguf_find(g, "tokenizer.ggml.tokens");
    if (!tk || tk->arr_n == 0 || tk->arr_n > (1u << 22)) return GERR("missing or bad 'tokenizer.ggml.tokens'");
    uint64_t n = tk->arr_n;
    if (n_vocab > 0 && n != (uint64_t)n_vocab)
        return GERR("tokenizer has %llu tokens but the model %d", (unsigned long long)n, n_vocab);
    int rc;
    const gguf_kv *ty, *mg;
    if ((rc = gguf_get_array(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, n, &tk, err, errlen))) return rc;
    if ((rc = gguf_get_array(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, n, &ty, err, errlen))) return rc;
    mg = gguf_find(g, "tokenizer.ggml.merges");
    if (!mg) return GERR("missing metadata 'tokenizer.ggml.merges'");
    if ((rc = gguf_get_array(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, mg->arr_n, &mg, err, errlen))) return rc;
    char **tokens = read_strings(g, tk, n, err, errlen);
    if (!tokens) return MODEL_EFORMAT;
    char **merges = read_strings(g, mg, mg->arr_n, err, errlen);
    int32_t *types = ty ? malloc((size_t)n * sizeof *types) : NULL;
    if (!merges || (ty && !types)) {
        free(tokens);
        free(merges);
        free(types);
        return merges ? model_errf(err, errlen, MODEL_ENOMEM, g->path, "out of memory") : MODEL_EFORMAT;
    }
    if (ty) memcpy(types, gguf_array_data(g, ty), (size_t)n * 4);
    char why[256] = "";
    rc = tok_bpe_load_lists(t, (int)n, (const char *const *)tokens, types, (int)mg->arr_n, (const char *const *)merges,
                            why, sizeof why);
    free(tokens);
    free(merges);
    free(types);
    if (rc) return model_errf(err, errlen, rc, g->path, "tokenizer: %s", why);
    static const char *keys[2] = { "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id" };
    int32_t *dst[2] = { &t->bos_id, &t->eos_id };
    for (int k = 0; k < 2; k++) {
        const gguf_kv *e = gguf_find(g, keys[k]);
        uint64_t v;
        if (e && gguf_kv_uint(g, e, &v) && v < n) *dst[k] = (int32_t)v;
    }
    t->add_bos = 0;
    const gguf_kv *ab = gguf_find(g, "tokenizer.ggml.add_bos_token");
    if (ab && !gguf_kv_bool(g, ab, &t->add_bos)) return GERR("metadata 'tokenizer.ggml.add_bos_token' is not a bool");
    return MODEL_OK;
}

int gguf_load_gpt2(model *m, const gguf_file *g, const model_load_opts *opts, char *err, size_t errlen)
{
    (void)opts;
    model_info *in = &m->info;
    int rc;
    m->arch = ARCH_GPT2;
    m->gelu_tanh = 1; /* GPT-2 GGUFs come from HF GPT-2 (gelu_new) */
    if ((rc = gguf_get_int(g, "gpt2.context_length", 1, 0, 1, 1 << 20, &in->ctx_len, err, errlen)) ||
        (rc = gguf_get_int(g, "gpt2.embedding_length", 1, 0, 1, 1 << 16, &in->dim, err, errlen)) ||
        (rc = gguf_get_int(g, "gpt2.block_count", 1, 0, 1, 1024, &in->n_layers, err, errlen)) ||
        (rc = gguf_get_int(g, "gpt2.attention.head_count", 1, 0, 1, 1 << 16, &in->n_heads, err, errlen)) ||
        (rc = gguf_get_int(g, "gpt2.feed_forward_length", 0, 4LL * in->dim, 1, 1 << 18, &in->hidden_dim, err, errlen)))
        return rc;
    if ((rc = gguf_get_float(g, "gpt2.attention.layer_norm_epsilon", 1e-5, &in->norm_eps, err, errlen))) return rc;
    in->n_kv_heads = in->n_heads;
    in->head_dim = in->dim / in->n_heads;
    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return GERR("missing tensor 'token_embd.weight' (a vocabulary-only file cannot be served)");
    if (emb->n_dims != 2 || emb->ne[1] > (1 << 22))
        return GERR("tensor 'token_embd.weight' is not a (vocab, dim) matrix");
    in->vocab_size = (int)emb->ne[1];
    if ((rc = gpt2_check_hparams(m, g->path, err, errlen))) return rc;
    int D = in->dim, F = in->hidden_dim, V = in->vocab_size;
    if ((rc = gguf_get_matrix(g, "token_embd.weight", V, D, 0, &m->tok_embd, err, errlen)) ||
        (rc = gguf_get_matrix(g, "position_embd.weight", in->ctx_len, D, 0, &m->pos_embd, err, errlen)) ||
        (rc = gguf_get_matrix(g, "output.weight", V, D, 1, &m->output, err, errlen)) ||
        (rc = gguf_get_vector(m, g, "output_norm.weight", D, 0, &m->out_norm, err, errlen)) ||
        (rc = gguf_get_vector(m, g, "output_norm.bias", D, 0, &m->out_norm_b, err, errlen)))
        return rc;
    if (!m->output.data) m->output = m->tok_embd;
    m->layers = model_calloc_owned(m, (size_t)in->n_layers, sizeof *m->layers);
    if (!m->layers) return model_errf(err, errlen, MODEL_ENOMEM, g->path, "out of memory");
    char k[96];
#define K(fmt) (snprintf(k, sizeof k, "blk.%d." fmt, l), k)
    for (int l = 0; l < in->n_layers; l++) {
        layer_weights *w = &m->layers[l];
        mtensor qkv;
        const float *qkvb;
        if ((rc = gguf_get_vector(m, g, K("attn_norm.weight"), D, 0, &w->attn_norm, err, errlen)) ||
            (rc = gguf_get_vector(m, g, K("attn_norm.bias"), D, 0, &w->attn_norm_b, err, errlen)) ||
            (rc = gguf_get_matrix(g, K("attn_qkv.weight"), 3 * D, D, 0, &qkv, err, errlen)) ||
            (rc = gguf_get_vector(m, g, K("attn_qkv.bias"), 3 * D, 0, &qkvb, err, errlen)) ||
            (rc = gguf_get_matrix(g, K("attn_output.weight"), D, D, 0, &w->wo, err, errlen)) ||
            (rc = gguf_get_vector(m, g, K("attn_output.bias"), D, 0, &w->bo, err, errlen)) ||
            (rc = gguf_get_vector(m, g, K("ffn_norm.weight"), D, 0, &w->ffn_norm, err, errlen)) ||
            (rc = gguf_get_vector(m, g, K("ffn_norm.bias"), D, 0, &w->ffn_norm_b, err, errlen)) ||
            (rc = gguf_get_matrix(g, K("ffn_up.weight"), F, D, 0, &w->w1, err, errlen)) ||
            (rc = gguf_get_vector(m, g, K("ffn_up.bias"), F, 0, &w->b1, err, errlen)) ||
            (rc = gguf_get_matrix(g, K("ffn_down.weight"), D, F, 0, &w->w2, err, errlen)) ||
            (rc = gguf_get_vector(m, g, K("ffn_down.bias"), D, 0, &w->b2, err, errlen)))
            return rc;
        size_t rb = mtensor_row_bytes(qkv.type, D);
        const uint8_t *base = qkv.data;
        w->wq = (mtensor){ base, qkv.type, D, D, 0 };
        w->wk = (mtensor){ base + rb * (size_t)D, qkv.type, D, D, 0 };
        w->wv = (mtensor){ base + 2 * rb * (size_t)D, qkv.type, D, D, 0 };
        w->bq = qkvb;
        w->bk = qkvb + D;
        w->bv = qkvb + 2 * D;
    }
#undef K
    if ((rc = gguf_load_bpe_tokenizer(&m->tok, g, V, err, errlen))) return rc;
    snprintf(m->arch_name, sizeof m->arch_name, "gpt2");
    model_fill_weight_stats(m);
    return MODEL_OK;
}
