/* fuzz_bpe.c -- libFuzzer target: arbitrary bytes through the GPT-2 byte-level BPE
 * ($LMSERVE_FIXTURES/tokenizers/gpt2).  Every input must encode, and the tokens'
 * bytes must concatenate back to the input exactly. */
#include "model/tokenizers/tok_bpe.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tokenizer g_tok;
static int g_ok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *fx = getenv("LMSERVE_FIXTURES");
    char e[512], v[512], err[256];
    snprintf(e, sizeof e, "%s/tokenizers/gpt2/encoder.json", fx ? fx : "tests/data/fixtures");
    snprintf(v, sizeof v, "%s/tokenizers/gpt2/vocab.bpe", fx ? fx : "tests/data/fixtures");
    g_ok = tok_bpe_load_gpt2_files(&g_tok, e, v, err, sizeof err) == 0;
    if (!g_ok) fprintf(stderr, "fuzz_bpe: %s\n", err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_ok) abort();
    int32_t ids[4096];
    int n = tok_bpe_encode(&g_tok, (const char *)data, size, 0, ids, 4096);
    if (n < 0 || n > 4096) return 0;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t l = (size_t)g_tok.bytes_len[ids[i]];
        if (at + l > size || memcmp(data + at, g_tok.bytes[ids[i]], l) != 0) abort();
        at += l;
    }
    if (at != size) abort();
    return 0;
}
