/* fuzz_tokenizer_file.c -- libFuzzer target: arbitrary bytes as a llama2.c
 * tokenizer.bin, through tokenizer_load_llama2c alone.
 *
 * The vocabulary size a model would ask for is derived from the input: the number
 * of well-formed records the bytes hold, plus -1, 0 or +1 (size % 3 - 1), so the
 * happy path, "bytes follow the last token" and "truncated at token" are all
 * reached.  A tokenizer that loads is then used: a few fixed texts are encoded
 * and decoded, and what must hold for any vocabulary is checked:
 *   - encoding succeeds (or reports MODEL_EINVAL when no byte/unk token exists),
 *     every id is in [0, vocab);
 *   - the incremental detokenizer gives the same bytes as the whole-list decoder;
 *   - when the vocabulary is "complete" (a byte token for every byte, BOS a
 *     control token) decoding gives back exactly the text. */
#include "model/model_internal.h"
#include "model/formats/formats.h"
#include "model/tokenizers/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FZ_CHECK(cond, what)                                    \
    do {                                                        \
        if (!(cond)) {                                          \
            fprintf(stderr, "fuzz_tokenizer_file: %s\n", what); \
            abort();                                            \
        }                                                       \
    } while (0)

static char g_tok_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(g_tok_path, sizeof g_tok_path, "/tmp/lmserve-fuzz-tok-%d.bin", (int)getpid());
    return 0;
}

/* Number of complete (score, len, bytes) records after the 4-byte header. */
static int count_records(const uint8_t *d, size_t size)
{
    size_t off = 4;
    int n = 0;
    if (size < 4) return 0;
    while (size - off >= 8 && n < 100000) {
        int32_t len;
        memcpy(&len, d + off + 4, 4);
        if (len < 0 || (size_t)len > size - off - 8) break;
        off += 8 + (size_t)len;
        n++;
    }
    return n;
}

static const char *const texts[] = {
    "Once upon a time, there was a little girl named Lily.",
    "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80",
    "  two  spaces\n\ttab <s> </s> <0x41>",
    "\xe2\x96\x81marker",
};

static void exercise(const tokenizer *t)
{
    model m;
    memset(&m, 0, sizeof m);
    m.tok = *t; /* model_detok_* and model_tokenize only read m->tok */
    int complete = t->bos_id >= 0 && t->types[t->bos_id] == TT_CONTROL;
    for (int b = 0; b < 256 && complete; b++) complete = t->byte_id[b] >= 0;
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        const char *s = texts[k];
        size_t len = strlen(s);
        int32_t ids[512];
        int n = model_tokenize(&m, s, len, 1, ids, 512);
        if (n == MODEL_EINVAL && t->unk_id < 0) continue; /* a byte with no token and no <unk> */
        FZ_CHECK(n >= 1 && n <= 512, "token count out of range");
        for (int i = 0; i < n; i++) FZ_CHECK(ids[i] >= 0 && ids[i] < t->n_vocab, "id out of range");
        size_t dlen = 0;
        char *text = model_detokenize(&m, ids, n, &dlen);
        FZ_CHECK(text != NULL, "model_detokenize failed");
        /* the expected text: a vocabulary with U+2581 spaces decodes a literal U+2581 as ' ' */
        if (complete && k != 3) FZ_CHECK(dlen == len && memcmp(text, s, len) == 0, "round trip differs");
        model_detok d;
        model_detok_init(&d);
        size_t cap = dlen + 64 * (size_t)n + 4096 + 128, got = 0;
        char *out = malloc(cap);
        FZ_CHECK(out != NULL, "malloc");
        for (int i = 0; i < n; i++) {
            int w = model_detok_push(&m, &d, ids[i], out + got, cap - got);
            FZ_CHECK(w >= 0, "model_detok_push failed");
            got += (size_t)w;
        }
        int w = model_detok_flush(&m, &d, out + got, cap - got);
        FZ_CHECK(w >= 0, "model_detok_flush failed");
        got += (size_t)w;
        FZ_CHECK(got == dlen && memcmp(out, text, dlen) == 0, "incremental decode differs");
        free(out);
        free(text);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(g_tok_path, "wb");
    if (!f) return 0;
    if (size && fwrite(data, 1, size, f) != size) {
        fclose(f);
        return 0;
    }
    fclose(f);
    int vocab = count_records(data, size) + (int)(size % 3) - 1;
    tokenizer t;
    memset(&t, 0, sizeof t);
    char err[512] = "";
    int rc = tokenizer_load_llama2c(&t, g_tok_path, vocab, err, sizeof err);
    if (rc != 0) {
        FZ_CHECK(rc < 0 && err[0] != '\0', "error without a message");
        FZ_CHECK(t.str == NULL && t.n_vocab == 0, "failed load left a tokenizer behind");
        return 0;
    }
    FZ_CHECK(t.n_vocab == vocab, "vocabulary size differs from the one asked for");
    exercise(&t);
    tokenizer_free(&t);
    return 0;
}
