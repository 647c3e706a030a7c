/* fmt_util.c -- helpers shared by the course-artifact, Hugging Face and GPT-2 GGUF readers. */
#include "model/formats/formats.h"
#include "model/half.h"
#include "model/loader.h"
#include "model/tokenizers/tok_bpe.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static float elem(const unsigned char *p, int type, size_t i)
{
    uint16_t h;
    switch (type) {
    case MT_F16: memcpy(&h, p + 2 * i, 2); return model_f16_to_f32(h);
    case MT_BF16: memcpy(&h, p + 2 * i, 2); return model_bf16_to_f32(h);
    default: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    }
}

float *fmt_f32_copy(model *m, const void *src, int type, size_t n)
{
    float *d = model_calloc_owned(m, n, sizeof *d);
    if (!d) return NULL;
    if (type == MT_F32)
        memcpy(d, src, n * sizeof *d);
    else
        for (size_t i = 0; i < n; i++) d[i] = elem(src, type, i);
    return d;
}

float *fmt_f32_transpose(model *m, const float *src, int in, int out)
{
    float *d = model_calloc_owned(m, (size_t)in * out, sizeof *d);
    if (!d) return NULL;
    for (int i = 0; i < in; i++)
        for (int o = 0; o < out; o++) d[(size_t)o * in + i] = src[(size_t)i * out + o];
    return d;
}

const float *fmt_f32_view(model *m, const void *src, int type, size_t n)
{
    if (type == MT_F32 && (uintptr_t)src % sizeof(float) == 0) return src;
    return fmt_f32_copy(m, src, type, n);
}

json_t *fmt_json_load(const char *dir, const char *name, int required, char *err, size_t errlen)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (access(p, F_OK) != 0) {
        if (required) model_errf(err, errlen, MODEL_EFORMAT, dir, "no %s in the folder", name);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    if (!j || !json_is_object(j)) {
        model_errf(err, errlen, MODEL_EFORMAT, p, "not a JSON object (%s, line %d)", je.text, je.line);
        json_decref(j);
        return NULL;
    }
    return j;
}

long long fmt_json_int(const json_t *o, const char *key, long long dflt)
{
    json_t *v = json_object_get(o, key);
    if (json_is_array(v)) v = json_array_get(v, 0);
    if (!v || json_is_null(v)) return dflt;
    if (!json_is_integer(v)) return -(1LL << 62);
    return (long long)json_integer_value(v);
}

double fmt_json_num(const json_t *o, const char *key, double dflt)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return dflt;
    return json_is_number(v) ? json_number_value(v) : -1.0;
}

int fmt_tok_fit(tokenizer *t, int n, const char *path, char *err, size_t errlen)
{
    if (t->n_vocab > n) {
        if (t->kind == TOK_SPM || tok_bpe_trim(t, n))
            return model_errf(err, errlen, MODEL_EFORMAT, path,
                              "the tokenizer has %d tokens but the "
                              "model only %d",
                              t->n_vocab, n);
        return 0;
    }
    if (t->n_vocab == n) return 0;
    /* Grow every per-token array; the new ids are unused placeholders ("" when decoded). */
    size_t un = (size_t)n;
    char **s = realloc(t->str, un * sizeof *s);
    if (s) t->str = s;
    char **b = realloc(t->bytes, un * sizeof *b);
    if (b) t->bytes = b;
    int *sl = realloc(t->str_len, un * sizeof *sl);
    if (sl) t->str_len = sl;
    int *bl = realloc(t->bytes_len, un * sizeof *bl);
    if (bl) t->bytes_len = bl;
    uint8_t *ty = realloc(t->types, un);
    if (ty) t->types = ty;
    float *sc = t->scores ? realloc(t->scores, un * sizeof *sc) : NULL;
    if (sc) t->scores = sc;
    if (!s || !b || !sl || !bl || !ty || (t->scores && !sc))
        return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    for (int i = t->n_vocab; i < n; i++) {
        t->str[i] = calloc(1, 1);
        t->bytes[i] = calloc(1, 1);
        t->str_len[i] = t->bytes_len[i] = 0;
        t->types[i] = TT_UNUSED;
        if (t->scores) t->scores[i] = 0;
        if (!t->str[i] || !t->bytes[i]) {
            free(t->str[i]);
            free(t->bytes[i]);
            t->n_vocab = i;
            return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
        }
    }
    t->n_vocab = n;
    return 0;
}
