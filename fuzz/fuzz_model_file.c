/* fuzz_model_file.c -- libFuzzer target: arbitrary bytes as a model file.
 *
 * The bytes are written to a temporary file and handed to model_load, which
 * detects the format from the content (GGUF, llama2.c checkpoint, ...).  Every
 * input must either load or be rejected with an error line; with a loaded model
 * one token is run through the forward pass so the tensors the loader accepted
 * are really read.  A tokenizer for llama2.c checkpoints comes from
 * $LMSERVE_MODELS/tok512.bin when present. */
#include "model/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_path[256];
static char g_tok[512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(g_path, sizeof g_path, "/tmp/lmserve-fuzz-model-%d.bin", (int)getpid());
    const char *dir = getenv("LMSERVE_MODELS");
    snprintf(g_tok, sizeof g_tok, "%s/tok512.bin", dir ? dir : "tests/data/models");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(g_path, "wb");
    if (!f) return 0;
    if (size && fwrite(data, 1, size, f) != size) {
        fclose(f);
        return 0;
    }
    fclose(f);

    model_load_opts opts = { .tokenizer_path = g_tok, .n_threads = 1 };
    char err[512] = "";
    model *m = NULL;
    int rc = model_load(&m, g_path, &opts, err, sizeof err);
    if (rc != 0) {
        if (m != NULL || err[0] == '\0') abort(); /* contract: NULL model and a message */
        return 0;
    }
    const model_info *info = model_get_info(m);
    /* Keep the forward pass cheap: only run small models. */
    if ((size_t)info->dim * (size_t)info->n_layers <= 4096 && info->vocab_size <= 4096) {
        model_seq *s = model_seq_new(m, 8);
        if (s) {
            int32_t tok = info->bos_id >= 0 && info->bos_id < info->vocab_size ? info->bos_id : 0;
            float *logits = malloc(sizeof(float) * (size_t)info->vocab_size);
            if (logits) model_seq_eval(m, s, &tok, 1, logits);
            free(logits);
            model_seq_free(s);
        }
    }
    model_free(m);
    return 0;
}
