/* llama2c.c -- read llama2.c checkpoints (the "legacy" v0 export of run.c).
 *
 * Layout (llama2.c run.c, read_checkpoint / memory_map_weights): seven int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
 * negative vocab_size means the classifier is not shared with the embedding),
 * then float32 arrays in this order:
 *   token_embedding (vocab, dim); rms_att (L, dim); wq (L, dim, n_heads*hd);
 *   wk, wv (L, dim, n_kv_heads*hd); wo (L, n_heads*hd, dim); rms_ffn (L, dim);
 *   w1 (L, hidden, dim); w2 (L, dim, hidden); w3 (L, hidden, dim); rms_final (dim);
 *   freq_cis_real, freq_cis_imag (seq_len * hd/2 each, unused);
 *   wcls (vocab, dim) only if unshared.
 * (Shapes above as run.c writes them, "out, in" for every matrix.)
 * The file size must equal what the header implies exactly.  The tokenizer
 * is llama2.c's tokenizer.bin, from opts->tokenizer_path or beside the model;
 * its reader is at the end of this file. */
#include "model/formats/formats.h"
#include "model/loader.h"
#include "model/tokenizers/tokenizer.h"

#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L2_HEADER 28

int model_load_llama2c(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen)
{
    const uint8_t *d;
    size_t size;
    int rc = model_map_file_at(m, path, L2_HEADER, &d, &size, err, errlen); /* weights 64-byte aligned */
    if (rc) return rc;
    snprintf(m->format_name, sizeof m->format_name, "llama2c");
    snprintf(m->arch_name, sizeof m->arch_name, "llama");
    m->arch = ARCH_LLAMA;
    m->rope_neox = 0;
    if (size < L2_HEADER)
        return model_errf(err, errlen, MODEL_EFORMAT, path, "truncated llama2.c header (%zu of 28 bytes)", size);
    int32_t h[7];
    memcpy(h, d, sizeof h);
    model_info *in = &m->info;
    int shared = h[5] > 0;
    if (h[5] == INT32_MIN)
        return model_errf(err, errlen, MODEL_EFORMAT, path, "vocabulary size %d is out of range", (int)h[5]);
    in->dim = h[0];
    in->hidden_dim = h[1];
    in->n_layers = h[2];
    in->n_heads = h[3];
    in->n_kv_heads = h[4];
    in->vocab_size = shared ? h[5] : -h[5];
    in->ctx_len = h[6];
    in->head_dim = in->n_heads > 0 ? in->dim / in->n_heads : 0;
    in->rope_dim = in->head_dim;
    in->rope_theta = 10000.0f;
    in->norm_eps = 1e-5f;
    char why[256];
    if ((rc = model_check_hparams(m, "llama2.c header", why, sizeof why)))
        return model_errf(err, errlen, rc, path, "%s", why);

    /* element counts, in file order; all small enough (checked above) for 64-bit math */
    uint64_t dim = (uint64_t)in->dim, hid = (uint64_t)in->hidden_dim, L = (uint64_t)in->n_layers;
    uint64_t hd = (uint64_t)in->head_dim, vocab = (uint64_t)in->vocab_size;
    uint64_t q = (uint64_t)in->n_heads * hd, kv = (uint64_t)in->n_kv_heads * hd;
    uint64_t counts[] = {
        vocab * dim,                    /* token embedding */
        L * dim,                        /* rms_att */
        L * q * dim,                    /* wq */
        L * kv * dim,                   /* wk */
        L * kv * dim,                   /* wv */
        L * dim * q,                    /* wo */
        L * dim,                        /* rms_ffn */
        L * hid * dim,                  /* w1 */
        L * dim * hid,                  /* w2 */
        L * hid * dim,                  /* w3 */
        dim,                            /* rms_final */
        (uint64_t)in->ctx_len * hd / 2, /* freq_cis_real */
        (uint64_t)in->ctx_len * hd / 2, /* freq_cis_imag */
        shared ? 0 : vocab * dim,       /* wcls */
    };
    enum { EMB, RMS_ATT, WQ, WK, WV, WO, RMS_FFN, W1, W2, W3, RMS_FINAL, FREQ_RE, FREQ_IM, WCLS, N_PARTS };
    const float *part[N_PARTS];
    uint64_t off = L2_HEADER;
    for (int k = 0; k < N_PARTS; k++) {
        part[k] = (const float *)(d + (off <= size ? off : 0));
        off += 4 * counts[k];
    }
    if (off != size)
        return model_errf(err, errlen, MODEL_EFORMAT, path,
                          "file is %zu bytes but its llama2.c header (dim %d, hidden %d, %d layers, %d heads, "
                          "%d kv heads, vocab %d%s, seq_len %d) implies %llu",
                          size, in->dim, in->hidden_dim, in->n_layers, in->n_heads, in->n_kv_heads, in->vocab_size,
                          shared ? "" : " unshared", in->ctx_len, (unsigned long long)off);

    m->tok_embd = (mtensor){ part[EMB], MT_F32, in->vocab_size, in->dim, 0 };
    m->output = shared ? m->tok_embd : (mtensor){ part[WCLS], MT_F32, in->vocab_size, in->dim, 0 };
    m->out_norm = part[RMS_FINAL];
    m->layers = model_calloc_owned(m, (size_t)L, sizeof *m->layers);
    if (!m->layers) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    for (uint64_t l = 0; l < L; l++) {
        layer_weights *w = &m->layers[l];
        w->attn_norm = part[RMS_ATT] + l * dim;
        w->ffn_norm = part[RMS_FFN] + l * dim;
        /* each matrix part holds L (rows, cols) matrices, layer after layer */
        const struct {
            mtensor *dst;
            int part;
            uint64_t rows, cols;
        } mats[] = { { &w->wq, WQ, q, dim },  { &w->wk, WK, kv, dim },  { &w->wv, WV, kv, dim },
                     { &w->wo, WO, dim, q },  { &w->w1, W1, hid, dim }, { &w->w3, W3, hid, dim },
                     { &w->w2, W2, dim, hid } };
        for (size_t k = 0; k < sizeof mats / sizeof mats[0]; k++)
            *mats[k].dst = (mtensor){ .data = part[mats[k].part] + l * mats[k].rows * mats[k].cols,
                                      .type = MT_F32,
                                      .rows = (int)mats[k].rows,
                                      .cols = (int)mats[k].cols };
    }
    model_fill_weight_stats(m);

    /* the tokenizer: given, or tokenizer.bin beside the model */
    char *tok_path = NULL;
    const char *tp = opts ? opts->tokenizer_path : NULL;
    if (!tp) {
        char *copy = strdup(path);
        if (!copy) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
        const char *dir = dirname(copy);
        size_t n = strlen(dir) + sizeof "/tokenizer.bin";
        tok_path = malloc(n);
        if (tok_path) snprintf(tok_path, n, "%s/tokenizer.bin", dir);
        free(copy);
        if (!tok_path) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
        tp = tok_path;
    }
    char why_tok[512];
    rc = tokenizer_load_llama2c(&m->tok, tp, in->vocab_size, why_tok, sizeof why_tok);
    if (rc)
        model_errf(err, errlen, rc, path, "tokenizer %s%s", why_tok,
                   tok_path ? " (give one with --tokenizer / tokenizer_path)" : "");
    free(tok_path);
    return rc;
}

/* ---- llama2.c tokenizer.bin ------------------------------------------------------------
 * Layout (llama2.c run.c, build_tokenizer): u32 max_token_length, then for each id:
 * f32 score, i32 len, len bytes. */
int tokenizer_load_llama2c(tokenizer *t, const char *path, int vocab_size, char *err, size_t errlen)
{
    const uint8_t *d;
    size_t size;
    int rc = model_map_file(NULL, path, &d, &size, err, errlen);
    if (rc) return rc;
#define TERR(...)                                                       \
    do {                                                                \
        rc = model_errf(err, errlen, MODEL_EFORMAT, path, __VA_ARGS__); \
        goto done;                                                      \
    } while (0)
    size_t off = 4;
    if (size < 4) TERR("truncated tokenizer (file is %zu bytes)", size);
    if (vocab_size <= 0) TERR("vocabulary size %d is not positive", vocab_size);
    if ((rc = tokenizer_alloc(t, vocab_size)) != MODEL_OK) {
        rc = model_errf(err, errlen, rc, path, "out of memory");
        goto done;
    }
    t->kind = TOK_SPM;
    for (int i = 0; i < vocab_size; i++) {
        float score;
        int32_t len;
        if (size - off < 8) TERR("truncated at token %d of %d (file is %zu bytes)", i, vocab_size, size);
        memcpy(&score, d + off, 4);
        memcpy(&len, d + off + 4, 4);
        off += 8;
        if (len < 0 || len > TOKENIZER_MAX_TOKEN_LEN)
            TERR("token %d has length %d (0 to %d allowed)", i, (int)len, TOKENIZER_MAX_TOKEN_LEN);
        if ((size_t)len > size - off)
            TERR("token %d (length %d) runs past the end of the file (%zu bytes)", i, (int)len, size);
        if (isnan(score)) TERR("token %d has a NaN score", i);
        if (memchr(d + off, '\0', (size_t)len)) TERR("token %d contains a NUL byte", i);
        if ((rc = tokenizer_set_token(t, i, (const char *)d + off, len)) != MODEL_OK) {
            rc = model_errf(err, errlen, rc, path, "out of memory");
            goto done;
        }
        t->scores[i] = score;
        off += (size_t)len;
    }
    if (off != size)
        TERR("%zu bytes follow the last of the model's %d tokens (a tokenizer for another vocabulary?)", size - off,
             vocab_size);
    tokenizer_guess_types(t);
    t->unk_id = 0;
    t->bos_id = 1;
    t->eos_id = 2;
    t->add_bos = 1;
    t->add_space_prefix = 1;
    char why[160] = "";
    if ((rc = tokenizer_finish(t, why, sizeof why)) != MODEL_OK) {
        rc = model_errf(err, errlen, rc, path, "%s", rc == MODEL_ENOMEM ? "out of memory" : why);
        goto done;
    }
    rc = MODEL_OK;
#undef TERR
done:
    model_unmap(d, size);
    if (rc) tokenizer_free(t);
    return rc;
}
