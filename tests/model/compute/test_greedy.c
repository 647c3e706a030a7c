/* test_greedy.c -- the engine's acceptance test: stories260K in both
 * formats, greedy (argmax, lowest id on ties), prompt "Once upon a time", 60
 * new tokens, must print exactly the text llama2.c's run.c prints (-t 0).
 * Tolerance: none, the text must match byte for byte.
 */
#include "tests/model/helpers.h"

#include <math.h>

static const char expected[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily";

static void greedy(const char *name, const char *tok_name)
{
    char *p = th_model_path(name), *t = tok_name ? th_model_path(tok_name) : NULL;
    char err[512] = "";
    model *m = NULL;
    model_load_opts o = { .tokenizer_path = t, .n_threads = 2 };
    cr_assert_eq(model_load(&m, p, &o, err, sizeof err), 0, "%s", err);
    const model_info *info = model_get_info(m);
    int32_t ids[128];
    int n = model_tokenize(m, "Once upon a time", 16, 1, ids, 64);
    cr_assert_eq(n, 5);
    model_seq *s = model_seq_new(m, 0);
    cr_assert_not_null(s);
    float *logits = malloc((size_t)info->vocab_size * sizeof *logits);
    for (int step = 0; step < 60; step++) {
        cr_assert_eq(model_seq_eval(m, s, ids, n, logits), 0);
        int best = 0;
        for (int v = 1; v < info->vocab_size; v++)
            if (logits[v] > logits[best]) best = v;
        ids[n++] = best;
    }
    size_t len;
    char *text = model_detokenize(m, ids, n, &len);
    cr_assert_str_eq(text, expected);
    free(text);
    free(logits);
    model_seq_free(s);
    model_free(m);
    free(p);
    free(t);
}

Test(greedy, stories260k_llama2c) { greedy("stories260K.bin", "tok512.bin"); }
Test(greedy, stories260k_gguf) { greedy("stories260K.gguf", NULL); }
