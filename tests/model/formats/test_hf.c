/* test_hf.c -- Hugging Face folders: the real tiny GPT-2 and tiny Llama fixtures, an
 * F16/BF16 re-encoding of the Llama, and broken folders.  Logits are compared with
 * the double reference (ref_forward.h) built from the safetensors data read here,
 * independently of the loader.  Tolerance: tol * max(1, max |reference|), tol 1e-4 for
 * F32.  For F16/BF16 weights the reference uses the same rounded weights, but the kernels
 * also round the activations they multiply to half / bfloat16 (as ggml does; relative error
 * up to 2^-11 / 2^-8 per activation) and the reference does not: tol 1e-3 / 1e-2. */
#include <criterion/criterion.h>

#include "model/formats/formats.h"
#include "model/half.h"
#include "model/formats/safetensors.h"
#include "tests/model/fmt_util.h"
#include "tests/model/ref_forward.h"

#include <math.h>

static double *st_d(const st_file *f, const char *name, long long expect_numel)
{
    const st_tensor *t = st_find(f, name);
    cr_assert_not_null(t, "no %s", name);
    cr_assert_eq(t->numel, expect_numel, "%s", name);
    double *d = malloc((size_t)t->numel * sizeof *d);
    for (long long i = 0; i < t->numel; i++) {
        uint16_t h;
        float v;
        if (t->mt_type == MT_F32)
            memcpy(&v, (const char *)t->data + 4 * i, 4);
        else {
            memcpy(&h, (const char *)t->data + 2 * i, 2);
            v = t->mt_type == MT_F16 ? model_f16_to_f32(h) : model_bf16_to_f32(h);
        }
        d[i] = v;
    }
    return d;
}

/* Columns [c0, c0 + n) of an (in, out) Conv1D weight as an (n, in) matrix. */
static double *conv_cols(const double *w, int in, int out, int c0, int n)
{
    double *d = malloc((size_t)n * in * sizeof *d);
    for (int o = 0; o < n; o++)
        for (int i = 0; i < in; i++) d[(size_t)o * in + i] = w[(size_t)i * out + c0 + o];
    return d;
}

static model *load_opts(const char *path, const char *tok)
{
    char err[512] = "";
    model *m = NULL;
    model_load_opts o = { .n_threads = 2, .tokenizer_path = tok };
    int rc = model_load(&m, path, &o, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    return m;
}

static void compare(model *m, const ref_model *r, const int32_t *toks, int n, double min_scale, double tol)
{
    int V = r->V;
    float *lg = malloc((size_t)n * V * sizeof *lg);
    double *want = malloc((size_t)n * V * sizeof *want);
    int ti[64];
    for (int i = 0; i < n; i++) ti[i] = toks[i];
    model_seq *s = model_seq_new(m, 0);
    model_batch_item it = { .seq = s, .tokens = toks, .n_tokens = n, .logits = lg, .all_logits = 1 };
    cr_assert_eq(model_forward(m, &it, 1), 0);
    ref_forward(r, ti, n, want);
    double bmax, d = ref_maxdiff(lg, want, (size_t)n * V, &bmax);
    cr_assert_leq(d, tol * fmax(1.0, bmax), "max diff %g (max |ref| %g)", d, bmax);
    cr_assert_gt(bmax, min_scale, "reference logits are suspiciously flat (%g)", bmax);
    model_seq_free(s);
    free(lg);
    free(want);
}

Test(hf, tiny_gpt2_folder)
{
    char dir[512], p[600], err[256];
    fx_path(dir, sizeof dir, "hf/tiny-gpt2");
    model *m = load_opts(dir, NULL);
    const model_info *in = model_get_info(m);
    cr_assert_str_eq(in->arch, "gpt2");
    cr_assert_str_eq(in->format, "safetensors");
    cr_assert_str_eq(in->weight_type, "F32");
    cr_assert_eq(in->ctx_len, 1024);
    cr_assert_eq(in->dim, 2);
    cr_assert_eq(in->vocab_size, 50257);
    cr_assert_eq(in->eos_id, 50256);
    cr_assert_eq(in->add_bos, 0);
    cr_assert(m->gelu_tanh); /* gelu_new */
    int32_t ids[16];
    int n = model_tokenize(m, "Hello world", 11, in->add_bos, ids, 16);
    cr_assert_eq(n, 2); /* no BOS: the GPT-2 post-processor adds none */
    cr_assert_eq(ids[0], 15496);
    cr_assert_eq(ids[1], 995);
    /* Byte-level tokens split characters; the incremental detokenizer emits whole ones. */
    const char *text = "caf\xc3\xa9 \xf0\x9f\xa6\x99\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xe6\x97\xa5\xe6\x9c\xac";
    int32_t t2[64];
    int n2 = model_tokenize(m, text, strlen(text), 0, t2, 64);
    cr_assert_gt(n2, 6);
    model_detok d;
    model_detok_init(&d);
    char acc[256], piece[256];
    size_t al = 0;
    int held = 0;
    for (int i = 0; i < n2; i++) {
        int w = model_detok_push(m, &d, t2[i], piece, sizeof piece);
        cr_assert_geq(w, 0);
        if (w == 0) held++;
        if (w > 0) { /* every emitted chunk ends on a character boundary */
            unsigned char lead = 0;
            for (int j = w - 1; j >= 0; j--)
                if (((unsigned char)piece[j] & 0xC0) != 0x80) {
                    lead = (unsigned char)piece[j];
                    break;
                }
            int need = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
            int tail = 0;
            for (int j = w - 1; j >= 0 && ((unsigned char)piece[j] & 0xC0) == 0x80; j--) tail++;
            cr_assert_eq(tail + 1, need, "chunk %d ends inside a character", i);
        }
        memcpy(acc + al, piece, (size_t)w);
        al += (size_t)w;
    }
    cr_assert_gt(held, 0); /* some token held back part of a character */
    cr_assert_eq(model_detok_flush(m, &d, piece, sizeof piece), 0);
    cr_assert_eq(al, strlen(text));
    cr_assert(memcmp(acc, text, al) == 0);

    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_file *f;
    cr_assert_eq(st_open(&f, p, err, sizeof err), 0, "%s", err);
    ref_model r = { .D = 2, .H = 8, .L = 2, .nh = 2, .nkv = 2, .V = 50257, .T = 1024, .eps = 1e-5, .gelu_tanh = 1 };
    r.tok = st_d(f, "transformer.wte.weight", 50257LL * 2);
    r.pos = st_d(f, "transformer.wpe.weight", 1024LL * 2);
    r.lnfg = st_d(f, "transformer.ln_f.weight", 2);
    r.lnfb = st_d(f, "transformer.ln_f.bias", 2);
    r.out = r.tok;
    r.layers = calloc(2, sizeof *r.layers);
    char k[128];
#define G(s, n) (snprintf(k, sizeof k, "transformer.h.%d.%s", l, s), st_d(f, k, n))
    for (int l = 0; l < 2; l++) {
        ref_layer *w = &r.layers[l];
        w->ln1g = G("ln_1.weight", 2);
        w->ln1b = G("ln_1.bias", 2);
        w->ln2g = G("ln_2.weight", 2);
        w->ln2b = G("ln_2.bias", 2);
        double *ca = G("attn.c_attn.weight", 12), *cb = G("attn.c_attn.bias", 6);
        w->wq = conv_cols(ca, 2, 6, 0, 2);
        w->wk = conv_cols(ca, 2, 6, 2, 2);
        w->wv = conv_cols(ca, 2, 6, 4, 2);
        w->bq = malloc(2 * sizeof(double));
        w->bk = malloc(2 * sizeof(double));
        w->bv = malloc(2 * sizeof(double));
        memcpy(w->bq, cb, 16);
        memcpy(w->bk, cb + 2, 16);
        memcpy(w->bv, cb + 4, 16);
        double *cp = G("attn.c_proj.weight", 4), *fc = G("mlp.c_fc.weight", 16), *fp = G("mlp.c_proj.weight", 16);
        w->wo = conv_cols(cp, 2, 2, 0, 2);
        w->bo = G("attn.c_proj.bias", 2);
        w->w1 = conv_cols(fc, 2, 8, 0, 8);
        w->b1 = G("mlp.c_fc.bias", 8);
        w->w2 = conv_cols(fp, 8, 2, 0, 2);
        w->b2 = G("mlp.c_proj.bias", 2);
        free(ca);
        free(cb);
        free(cp);
        free(fc);
        free(fp);
    }
#undef G
    st_close(f);
    int32_t toks[24];
    for (int i = 0; i < 24; i++) toks[i] = (int32_t)((i * 7919 + 13) % 50257);
    compare(m, &r, toks, 24, 1e-6, 1e-4);
    for (int l = 0; l < 2; l++) {
        ref_layer *w = &r.layers[l];
        double *ps[] = { w->ln1g, w->ln1b, w->ln2g, w->ln2b, w->wq, w->wk, w->wv, w->bq,
                         w->bk,   w->bv,   w->wo,   w->bo,   w->w1, w->b1, w->w2, w->b2 };
        for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
    }
    free(r.layers);
    free(r.tok);
    free(r.pos);
    free(r.lnfg);
    free(r.lnfb);
    model_free(m);
}

/* ---- Llama ---- */

static void ref_llama(ref_model *r, const st_file *f)
{
    memset(r, 0, sizeof *r);
    r->D = 16;
    r->H = 64;
    r->L = 2;
    r->nh = 4;
    r->nkv = 4;
    r->V = 32000;
    r->T = 2048;
    r->eps = 1e-6;
    r->llama = 1;
    r->rope_theta = 10000.0;
    r->tok = st_d(f, "model.embed_tokens.weight", 32000LL * 16);
    r->out = st_d(f, "lm_head.weight", 32000LL * 16);
    r->lnfg = st_d(f, "model.norm.weight", 16);
    r->layers = calloc(2, sizeof *r->layers);
    char k[128];
#define G(s, n) (snprintf(k, sizeof k, "model.layers.%d.%s.weight", l, s), st_d(f, k, n))
    for (int l = 0; l < 2; l++) {
        ref_layer *w = &r->layers[l];
        w->ln1g = G("input_layernorm", 16);
        w->ln2g = G("post_attention_layernorm", 16);
        w->wq = G("self_attn.q_proj", 256);
        w->wk = G("self_attn.k_proj", 256);
        w->wv = G("self_attn.v_proj", 256);
        w->wo = G("self_attn.o_proj", 256);
        w->w1 = G("mlp.gate_proj", 1024);
        w->w3 = G("mlp.up_proj", 1024);
        w->w2 = G("mlp.down_proj", 1024);
    }
#undef G
}

static void ref_llama_free(ref_model *r)
{
    for (int l = 0; l < r->L; l++) {
        ref_layer *w = &r->layers[l];
        double *ps[] = { w->ln1g, w->ln2g, w->wq, w->wk, w->wv, w->wo, w->w1, w->w2, w->w3 };
        for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
    }
    free(r->layers);
    free(r->tok);
    free(r->out);
    free(r->lnfg);
}

static char tokbin[512];
static const char *tok_bin(void) { return td_model(tokbin, sizeof tokbin, "tokenizer.bin"); }

Test(hf, tiny_llama_folder_rotate_halves)
{
    char dir[512], err[256];
    fx_path(dir, sizeof dir, "hf/tiny-random-llama");
    model *m = load_opts(dir, tok_bin());
    const model_info *in = model_get_info(m);
    cr_assert_str_eq(in->arch, "llama");
    cr_assert_str_eq(in->format, "safetensors");
    cr_assert_eq(in->ctx_len, 2048);
    cr_assert_eq(in->bos_id, 0); /* from config.json */
    cr_assert_eq(in->eos_id, 1);
    cr_assert(m->rope_neox);
    cr_assert_float_eq(in->norm_eps, 1e-6f, 1e-12);
    st_file *f;
    cr_assert_eq(st_open(&f, dir, err, sizeof err), 0, "%s", err);
    ref_model r;
    ref_llama(&r, f);
    st_close(f);
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = (int32_t)((i * 104729 + 17) % 32000);
    compare(m, &r, toks, 40, 1e-3, 1e-4);
    ref_llama_free(&r);
    model_free(m);
}

/* Rewrite tiny-random-llama's safetensors with every tensor in `dtype` (F16 or BF16). */
static void write_converted(const char *src_dir, const char *dst_dir, const char *dtype)
{
    char p[600], err[256];
    st_file *f;
    cr_assert_eq(st_open(&f, src_dir, err, sizeof err), 0);
    size_t n = st_count(f), off = 0, cap = 1 << 16, hl = 0;
    char *hdr = malloc(cap);
    hl += (size_t)snprintf(hdr, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(f, i);
        char shape[64];
        if (t->ndim == 1)
            snprintf(shape, sizeof shape, "%lld", (long long)t->shape[0]);
        else
            snprintf(shape, sizeof shape, "%lld,%lld", (long long)t->shape[0], (long long)t->shape[1]);
        hl += (size_t)snprintf(hdr + hl, cap - hl,
                               ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],"
                               "\"data_offsets\":[%zu,%zu]}",
                               t->name, dtype, shape, off, off + 2 * (size_t)t->numel);
        off += 2 * (size_t)t->numel;
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
    while (hl % 8) hdr[hl++] = ' ';
    unsigned char *buf = malloc(8 + hl + off);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    size_t at = 8 + hl;
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(f, i);
        for (long long k = 0; k < t->numel; k++) {
            float v;
            memcpy(&v, (const char *)t->data + 4 * k, 4);
            uint16_t h;
            if (!strcmp(dtype, "F16"))
                h = model_f32_to_f16(v);
            else {
                uint32_t b;
                memcpy(&b, &v, 4);
                h = (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
            }
            memcpy(buf + at, &h, 2);
            at += 2;
        }
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dst_dir);
    cr_assert_eq(fx_write(p, buf, at), 0);
    snprintf(p, sizeof p, "%s/config.json", src_dir);
    size_t cl = 0;
    unsigned char *cfg = fx_read(p, &cl);
    snprintf(p, sizeof p, "%s/config.json", dst_dir);
    cr_assert_eq(fx_write(p, cfg, cl), 0);
    free(cfg);
    free(buf);
    free(hdr);
    st_close(f);
}

Test(hf, llama_in_f16_and_bf16)
{
    const char *types[] = { "F16", "BF16" };
    for (int ti = 0; ti < 2; ti++) {
        char src[512], dst[128], err[256];
        fx_path(src, sizeof src, "hf/tiny-random-llama");
        cr_assert_not_null(fx_tmpdir(dst, sizeof dst));
        write_converted(src, dst, types[ti]);
        model *m = load_opts(dst, tok_bin());
        cr_assert_str_eq(model_get_info(m)->weight_type, types[ti]);
        st_file *f;
        cr_assert_eq(st_open(&f, dst, err, sizeof err), 0, "%s", err);
        cr_assert_eq(st_find(f, "model.norm.weight")->ndim, 1);
        ref_model r;
        ref_llama(&r, f); /* the reference sees the same rounded weights */
        st_close(f);
        int32_t toks[16];
        for (int i = 0; i < 16; i++) toks[i] = (int32_t)((i * 7727 + 5) % 32000);
        compare(m, &r, toks, 16, 1e-3, ti == 0 ? 1e-3 : 1e-2);
        ref_llama_free(&r);
        model_free(m);
        fx_rmtree(dst);
    }
}

static void expect_load_error(const char *path, const char *tok, const char *needle)
{
    char err[512] = "";
    model *m = NULL;
    model_load_opts o = { .tokenizer_path = tok };
    int rc = model_load(&m, path, &o, err, sizeof err);
    cr_assert_lt(rc, 0, "%s loaded", path);
    cr_assert_null(m);
    cr_assert_not_null(strstr(err, needle), "'%s' lacks '%s'", err, needle);
}

Test(hf, broken_folders_rejected)
{
    char src[512], dst[128], p[300];
    fx_path(src, sizeof src, "hf/tiny-random-llama");
    expect_load_error(src, NULL, "no tokenizer.json");
    cr_assert_not_null(fx_tmpdir(dst, sizeof dst));
    write_converted(src, dst, "F16");
    snprintf(p, sizeof p, "%s/config.json", dst);
    const char *cfg = "{\"architectures\":[\"MistralForCausalLM\"]}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(dst, tok_bin(), "unsupported architecture 'MistralForCausalLM'");
    cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":64,"
          "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":32001}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(dst, tok_bin(), "expected [32001, 16]");
    cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":64,"
          "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":32000}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(dst, tok_bin(), "missing tensor 'model.layers.2.");
    cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":-16}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(dst, tok_bin(), "'hidden_size' is missing or out of range");
    cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":64,"
          "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":32000,\"rope_scaling\":{\"type\":"
          "\"linear\"}}";
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(dst, tok_bin(), "rope_scaling");
    /* truncated weights */
    snprintf(p, sizeof p, "%s/model.safetensors", dst);
    cr_assert_eq(truncate(p, 5000), 0);
    cfg = "{\"architectures\":[\"LlamaForCausalLM\"]}";
    snprintf(p, sizeof p, "%s/config.json", dst);
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    expect_load_error(dst, tok_bin(), "outside the");
    fx_rmtree(dst);
}

/* ---- A SmolLM-shaped folder: tied head, grouped-query attention, the SmolLM tokenizer ---- */

typedef struct {
    const char *name;
    int r, c;
    double *d;
} st_in;

/* Write tensors as F32 safetensors (header padded with spaces to 8). */
static void st_write(const char *path, st_in *ts, int n)
{
    size_t cap = 1 << 16, hl = 0, off = 0;
    char *hdr = malloc(cap);
    hl += (size_t)snprintf(hdr, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)ts[i].r * ts[i].c * 4;
        if (ts[i].r == 1)
            hl += (size_t)snprintf(hdr + hl, cap - hl,
                                   ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]}", ts[i].name,
                                   ts[i].c, off, off + bytes);
        else
            hl += (size_t)snprintf(hdr + hl, cap - hl,
                                   ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]}",
                                   ts[i].name, ts[i].r, ts[i].c, off, off + bytes);
        off += bytes;
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
    while (hl % 8) hdr[hl++] = ' ';
    unsigned char *buf = malloc(8 + hl + off);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    size_t at = 8 + hl;
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < (size_t)ts[i].r * ts[i].c; k++) {
            float v = (float)ts[i].d[k];
            memcpy(buf + at, &v, 4);
            at += 4;
        }
    cr_assert_eq(fx_write(path, buf, at), 0);
    free(buf);
    free(hdr);
}

static double *rnd(unsigned *s, size_t n, double scale, double base)
{
    double *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) {
        *s = *s * 1664525u + 1013904223u;
        d[i] = base + scale * (((double)(*s >> 8) / 16777216.0) * 2.0 - 1.0);
        d[i] = (double)(float)d[i]; /* what the F32 file will hold */
    }
    return d;
}

Test(hf, smollm_shaped_llama_with_its_tokenizer)
{
    enum { V = 49152, D = 8, F = 16, NH = 2, NKV = 1, HD = 4 };
    char dir[128], p[300], src[512];
    cr_assert_not_null(fx_tmpdir(dir, sizeof dir));
    unsigned seed = 42;
    ref_model r = {
        .D = D, .H = F, .L = 1, .nh = NH, .nkv = NKV, .V = V, .T = 64, .eps = 1e-5, .llama = 1, .rope_theta = 10000.0
    };
    r.tok = rnd(&seed, (size_t)V * D, 1.0, 0);
    r.out = r.tok; /* tied */
    r.lnfg = rnd(&seed, D, 0.2, 1.0);
    r.layers = calloc(1, sizeof *r.layers);
    ref_layer *w = r.layers;
    w->ln1g = rnd(&seed, D, 0.2, 1.0);
    w->ln2g = rnd(&seed, D, 0.2, 1.0);
    w->wq = rnd(&seed, (size_t)NH * HD * D, 0.5, 0);
    w->wk = rnd(&seed, (size_t)NKV * HD * D, 0.5, 0);
    w->wv = rnd(&seed, (size_t)NKV * HD * D, 0.5, 0);
    w->wo = rnd(&seed, (size_t)D * NH * HD, 0.5, 0);
    w->w1 = rnd(&seed, (size_t)F * D, 0.5, 0);
    w->w3 = rnd(&seed, (size_t)F * D, 0.5, 0);
    w->w2 = rnd(&seed, (size_t)D * F, 0.5, 0);
    st_in ts[] = {
        { "model.embed_tokens.weight", V, D, r.tok },
        { "model.norm.weight", 1, D, r.lnfg },
        { "model.layers.0.input_layernorm.weight", 1, D, w->ln1g },
        { "model.layers.0.post_attention_layernorm.weight", 1, D, w->ln2g },
        { "model.layers.0.self_attn.q_proj.weight", NH * HD, D, w->wq },
        { "model.layers.0.self_attn.k_proj.weight", NKV * HD, D, w->wk },
        { "model.layers.0.self_attn.v_proj.weight", NKV * HD, D, w->wv },
        { "model.layers.0.self_attn.o_proj.weight", D, NH * HD, w->wo },
        { "model.layers.0.mlp.gate_proj.weight", F, D, w->w1 },
        { "model.layers.0.mlp.up_proj.weight", F, D, w->w3 },
        { "model.layers.0.mlp.down_proj.weight", D, F, w->w2 },
    };
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_write(p, ts, (int)(sizeof ts / sizeof ts[0]));
    const char *cfg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":8,\"intermediate_size\":16,"
                      "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
                      "\"max_position_embeddings\":64,\"rms_norm_eps\":1e-05,\"rope_theta\":10000.0,"
                      "\"tie_word_embeddings\":true,\"vocab_size\":49152,\"bos_token_id\":0,\"eos_token_id\":0,"
                      "\"hidden_act\":\"silu\",\"rope_scaling\":null}";
    snprintf(p, sizeof p, "%s/config.json", dir);
    cr_assert_eq(fx_write(p, cfg, strlen(cfg)), 0);
    size_t tl;
    unsigned char *tj = fx_read(fx_path(src, sizeof src, "tokenizers/smollm-135m-derived/tokenizer.json"), &tl);
    cr_assert_not_null(tj);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    cr_assert_eq(fx_write(p, tj, tl), 0);
    free(tj);

    model *m = load_opts(dir, NULL);
    const model_info *in = model_get_info(m);
    cr_assert_str_eq(in->arch, "llama");
    cr_assert_eq(in->vocab_size, V);
    cr_assert_eq(in->n_kv_heads, 1);
    cr_assert_eq(in->ctx_len, 64);
    cr_assert_eq(in->add_bos, 0);    /* SmolLM's tokenizer adds no BOS */
    cr_assert_eq(in->eos_id, 0);     /* <|endoftext|> */
    cr_assert_eq(m->tok.n_vocab, V); /* the saver's [PAD] (id 49152) is cut to the model */
    int32_t ids[64];
    int n = model_tokenize(m, "In 2024, 7 cats", 15, in->add_bos, ids, 64);
    int digits = 0;
    for (int i = 0; i < n; i++) {
        size_t bl;
        const char *b = model_token_bytes(m, ids[i], &bl);
        if (bl == 1 && b[0] >= '0' && b[0] <= '9') digits++;
        cr_assert(!(bl > 1 && b[0] >= '0' && b[0] <= '9'), "a multi-digit token");
    }
    cr_assert_eq(digits, 5);
    cr_assert_neq(ids[0], 0);
    compare(m, &r, ids, n, 1e-3, 1e-4);
    model_free(m);
    free(r.tok);
    free(r.lnfg);
    double *ps[] = { w->ln1g, w->ln2g, w->wq, w->wk, w->wv, w->wo, w->w1, w->w2, w->w3 };
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
    free(r.layers);
    fx_rmtree(dir);
}
