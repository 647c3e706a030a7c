/* fuzz_tokenizer.c -- libFuzzer target: arbitrary bytes through the tokenizers.
 *
 * Loads the real stories260K vocabularies once ($LMSERVE_MODELS: the GGUF one with
 * U+2581 spaces and the llama2.c tok512.bin one), encodes the input with each, and
 * checks what must hold for any input:
 *   - every id is in [0, vocab);
 *   - for valid UTF-8 input, decoding the ids gives the input back exactly --
 *     except that a vocabulary writing spaces as U+2581 cannot tell a literal
 *     U+2581 in the text from a space (SentencePiece and llama.cpp behave the
 *     same), so for such a vocabulary the expected text has every U+2581 as ' ';
 *   - for any input, decoding gives the input with each invalid UTF-8 sequence
 *     replaced by U+FFFD as the Unicode standard recommends ("maximal subparts",
 *     section 3.9 / U+FFFD substitution of maximal subparts), then U+2581 -> ' '
 *     as above (independent reference below);
 *   - a too-small output buffer gives the same count and the first cap ids;
 *   - the incremental detokenizer, fed the ids one by one, emits only whole UTF-8
 *     characters and the same bytes as the whole-list decoder. */
#include "model/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static model *g_models[2];
static int g_marker[2]; /* the vocabulary writes spaces as U+2581 */

static const char MARK[] = "\xe2\x96\x81";

/* The text a round trip gives back: data, with U+2581 -> ' ' when marker is set. */
static size_t expected_text(const uint8_t *data, size_t size, int marker, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < size;) {
        if (marker && i + 3 <= size && memcmp(data + i, MARK, 3) == 0) {
            out[n++] = ' ';
            i += 3;
        } else {
            out[n++] = (char)data[i++];
        }
    }
    return n;
}


/* Reference: s with every maximal invalid subpart replaced by U+FFFD.  out has
 * room for 3 * n bytes.  Lead bytes C2..F4 start a sequence; the second byte's
 * range depends on the lead (E0: A0..BF, ED: 80..9F, F0: 90..BF, F4: 80..8F),
 * later ones are 80..BF (Unicode Table 3-7). */
static size_t sanitize_utf8(const uint8_t *s, size_t n, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint8_t b = s[i];
        int need = b < 0x80                 ? 1
                   : b >= 0xC2 && b <= 0xDF ? 2
                   : b >= 0xE0 && b <= 0xEF ? 3
                   : b >= 0xF0 && b <= 0xF4 ? 4
                                            : 0;
        if (need == 1) {
            out[o++] = b;
            i++;
            continue;
        }
        size_t k = 1;
        if (need > 0) {
            for (; k < (size_t)need && i + k < n; k++) {
                uint8_t c = s[i + k], lo = 0x80, hi = 0xBF;
                if (k == 1 && b == 0xE0) lo = 0xA0;
                if (k == 1 && b == 0xED) hi = 0x9F;
                if (k == 1 && b == 0xF0) lo = 0x90;
                if (k == 1 && b == 0xF4) hi = 0x8F;
                if (c < lo || c > hi) break;
            }
            if (k == (size_t)need) {
                memcpy(out + o, s + i, k);
                o += k;
                i += k;
                continue;
            }
        }
        memcpy(out + o, "\xef\xbf\xbd", 3); /* the maximal subpart s[i..i+k) */
        o += 3;
        i += k;
    }
    return o;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("LMSERVE_MODELS");
    if (!dir) dir = "tests/data/models";
    char path[512], tok[512], err[512];
    model_load_opts opts = { .n_threads = 1 };
    snprintf(path, sizeof path, "%s/stories260K.gguf", dir);
    if (model_load(&g_models[0], path, &opts, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    snprintf(path, sizeof path, "%s/stories260K.bin", dir);
    snprintf(tok, sizeof tok, "%s/tok512.bin", dir);
    opts.tokenizer_path = tok;
    if (model_load(&g_models[1], path, &opts, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    for (int k = 0; k < 2; k++) {
        int n_mark = 0, n_space = 0;
        for (int id = 0; id < model_get_info(g_models[k])->vocab_size; id++) {
            const char *s = model_token_str(g_models[k], id);
            n_mark += strstr(s, MARK) != NULL;
            n_space += s[0] == ' ';
        }
        g_marker[k] = n_mark > n_space;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    uint8_t clean[3 * 4096];
    char want[3 * 4096];
    size_t clean_len = sanitize_utf8(data, size, clean);
    for (int k = 0; k < 2; k++) {
        model *m = g_models[k];
        int vocab = model_get_info(m)->vocab_size;
        /* at most: BOS, the dummy prefix, and one byte token per byte of the text with
         * spaces written as 3-byte U+2581 */
        int cap = 3 * (int)size + 8;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
        int n = model_tokenize(m, (const char *)data, size, 1, ids,
                               cap); /* BOS: a leading dummy space is dropped after it */
        if (n < 0 || n > cap) abort();
        if (n >= 2) { /* a too-small buffer: same count, the first cap ids written */
            int half = n / 2;
            int32_t *small = malloc(sizeof(int32_t) * (size_t)half);
            if (!small) abort();
            if (model_tokenize(m, (const char *)data, size, 1, small, half) != n) abort();
            if (memcmp(small, ids, sizeof(int32_t) * (size_t)half) != 0) abort();
            free(small);
        }
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= vocab) abort();
        size_t len = 0;
        char *text = model_detokenize(m, ids, n, &len);
        if (!text) abort();
        size_t want_len = expected_text(clean, clean_len, g_marker[k], want);
        if (len != want_len || memcmp(text, want, want_len) != 0) abort();
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
        if (got != len || memcmp(out, text, len) != 0) abort();
        free(out);
        free(text);
        free(ids);
    }
    return 0;
}
