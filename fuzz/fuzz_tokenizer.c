/* fuzz_tokenizer.c -- libFuzzer target: arbitrary bytes through the tokenizers.
 *
 * Loads the real stories260K vocabularies once ($LMSERVE_MODELS: the GGUF one with
 * U+2581 spaces and the llama2.c tok512.bin one), encodes the input with each, and
 * checks what must hold for any input:
 *   - every id is in [0, vocab);
 *   - for valid UTF-8 input, decoding the ids gives the input back exactly;
 *   - the incremental detokenizer, fed the ids one by one, emits only whole UTF-8
 *     characters and the same bytes as the whole-list decoder. */
#include "model/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static model *g_models[2];

static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    const char *dir = getenv("LMSERVE_MODELS");
    if (!dir) dir = "../shared/models";
    char path[512], tok[512], err[512];
    model_load_opts opts = {.n_threads = 1};
    snprintf(path, sizeof path, "%s/stories260K.gguf", dir);
    if (model_load(&g_models[0], path, &opts, err, sizeof err)) { fprintf(stderr, "%s\n", err); abort(); }
    snprintf(path, sizeof path, "%s/stories260K.bin", dir);
    snprintf(tok, sizeof tok, "%s/tok512.bin", dir);
    opts.tokenizer_path = tok;
    if (model_load(&g_models[1], path, &opts, err, sizeof err)) { fprintf(stderr, "%s\n", err); abort(); }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    int valid = utf8_valid(data, size);
    for (int k = 0; k < 2; k++) {
        model *m = g_models[k];
        int vocab = model_get_info(m)->vocab_size;
        int cap = (int)size + 8;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
        int n = model_tokenize(m, (const char *)data, size, 1, ids, cap); /* BOS: a leading dummy space is dropped after it */
        if (n < 0 || n > cap) abort();
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= vocab) abort();
        size_t len = 0;
        char *text = model_detokenize(m, ids, n, &len);
        if (!text) abort();
        if (valid && (len != size || memcmp(text, data, size) != 0)) abort();
        /* incremental: concatenation of pushes + flush equals the whole decode */
        model_detok d;
        model_detok_init(&d);
        size_t cap_out = len + 64 * (size_t)n + 128, got = 0;
        char *out = malloc(cap_out);
        for (int i = 0; i < n; i++) {
            int w = model_detok_push(m, &d, ids[i], out + got, cap_out - got);
            if (w < 0) abort();
            got += (size_t)w;
        }
        int w = model_detok_flush(m, &d, out + got, cap_out - got);
        if (w < 0) abort();
        got += (size_t)w;
        if (valid && (got != len || memcmp(out, text, len) != 0)) abort();
        free(out);
        free(text);
        free(ids);
    }
    return 0;
}
