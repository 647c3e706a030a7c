/* vocab.c -- a tokenizer's vocabulary: the arrays every kind fills (strings, their
 * bytes, scores, types), token types guessed from the strings, and release. */
#include "model/tokenizers/tokenizer.h"

#include <stdlib.h>
#include <string.h>

int tokenizer_alloc(tokenizer *t, int n)
{
    size_t un = n > 0 ? (size_t)n : 1;
    t->n_vocab = n;
    t->str = calloc(un, sizeof *t->str);
    t->str_len = calloc(un, sizeof *t->str_len);
    t->bytes = calloc(un, sizeof *t->bytes);
    t->bytes_len = calloc(un, sizeof *t->bytes_len);
    t->scores = calloc(un, sizeof *t->scores);
    t->types = malloc(un);
    if (!t->str || !t->str_len || !t->bytes || !t->bytes_len || !t->scores || !t->types) return MODEL_ENOMEM;
    memset(t->types, TT_NORMAL, un);
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    t->bos_id = t->eos_id = t->unk_id = -1;
    return MODEL_OK;
}

int tokenizer_set_token(tokenizer *t, int id, const char *s, int len)
{
    if (id < 0 || id >= t->n_vocab || len < 0) return MODEL_EINVAL;
    char *c = malloc((size_t)len + 1);
    if (!c) return MODEL_ENOMEM;
    memcpy(c, s, (size_t)len);
    c[len] = '\0';
    free(t->str[id]);
    t->str[id] = c;
    t->str_len[id] = len;
    return MODEL_OK;
}

int tokenizer_byte_token(const char *s, int len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

void tokenizer_guess_types(tokenizer *t)
{
    for (int i = 0; i < t->n_vocab; i++) {
        const char *s = t->str[i] ? t->str[i] : "";
        if (!strcmp(s, "<unk>"))
            t->types[i] = TT_UNKNOWN;
        else if (!strcmp(s, "<s>") || !strcmp(s, "</s>") || !strcmp(s, "\n<s>\n") || !strcmp(s, "\n</s>\n"))
            t->types[i] = TT_CONTROL;
        else if (tokenizer_byte_token(s, t->str_len[i]) >= 0)
            t->types[i] = TT_BYTE;
        else
            t->types[i] = TT_NORMAL;
    }
}

void tokenizer_free(tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_vocab; i++) {
        if (t->str) free(t->str[i]);
        if (t->bytes) free(t->bytes[i]);
    }
    free(t->str);
    free(t->str_len);
    free(t->bytes);
    free(t->bytes_len);
    free(t->scores);
    free(t->types);
    if (t->impl_free) t->impl_free(t->impl);
    t->str = t->bytes = NULL;
    t->str_len = t->bytes_len = NULL;
    t->scores = NULL;
    t->types = NULL;
    t->impl = NULL;
    t->impl_free = NULL;
    t->n_vocab = 0;
}
