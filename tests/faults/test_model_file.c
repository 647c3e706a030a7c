/* test_model_file.c -- a loaded model does not depend on its file any more.
 *
 * A server keeps a model for days; in that time someone may truncate the file,
 * overwrite it in place (`cp new.gguf served.gguf` truncates first), or delete
 * it.  With a file mapping, touching a weight page after a truncation raises
 * SIGBUS and kills the server; the loaders therefore copy the file into private
 * memory (model_map_file).  These tests load a temporary copy, change the file
 * in each of those ways, and check that every weight byte still reads back the
 * same (a crash here means the weights are still mapped from the file). */
#include "model/model_internal.h"
#include "model/loader.h"
#include "tests/faults/weights_hash.h"
#include "tests/model/helpers.h"

#include <stdint.h>

enum { TRUNCATE, OVERWRITE, UNLINK };

static void check_change(const char *name, const char *tok_name, int how)
{
    th_tmp t;
    th_tmp_init(&t);
    char *src = th_model_path(name);
    size_t len;
    unsigned char *bytes = th_read_file(src, &len);
    char path[128];
    snprintf(path, sizeof path, "%s", th_tmp_file(&t, name));
    th_write_file(path, bytes, len);

    char *tok = tok_name ? th_model_path(tok_name) : NULL;
    model_load_opts opts = { .tokenizer_path = tok, .n_threads = 1 };
    model *m = NULL;
    char err[512];
    cr_assert_eq(model_load(&m, path, &opts, err, sizeof err), 0, "%s", err);
    uint64_t before = weights_hash(m);
    int32_t ids[16];
    int n_before = model_tokenize(m, "Once upon a time", 16, 1, ids, 16);

    if (how == TRUNCATE) {
        cr_assert_eq(truncate(path, 64), 0);
    } else if (how == OVERWRITE) { /* what cp does: truncate, then write other bytes */
        memset(bytes, 0x7f, len);
        th_write_file(path, bytes, len);
    } else {
        cr_assert_eq(unlink(path), 0);
    }

    cr_assert_eq(weights_hash(m), before, "weights changed when the file did");
    int32_t ids2[16];
    cr_assert_eq(model_tokenize(m, "Once upon a time", 16, 1, ids2, 16), n_before);
    cr_assert_arr_eq(ids, ids2, sizeof(int32_t) * (size_t)n_before);
    model_free(m);
    free(bytes);
    free(src);
    free(tok);
    th_tmp_cleanup(&t);
}

/* A Hugging Face folder (safetensors weights): copy it, load it, truncate the weights. */
Test(model_file, safetensors_truncated_while_loaded)
{
    th_tmp t;
    th_tmp_init(&t);
    const char *files[2] = { "config.json", "model.safetensors" };
    for (int i = 0; i < 2; i++) {
        char rel[128], src[512];
        snprintf(rel, sizeof rel, "hf/tiny-random-llama/%s", files[i]);
        td_fixture(src, sizeof src, rel);
        size_t len;
        unsigned char *b = th_read_file(src, &len);
        th_write_file(th_tmp_file(&t, files[i]), b, len);
        free(b);
    }
    char *tok = th_model_path("tokenizer.bin");
    model_load_opts opts = { .tokenizer_path = tok, .n_threads = 1 };
    model *m = NULL;
    char err[512];
    cr_assert_eq(model_load(&m, t.dir, &opts, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(model_get_info(m)->format, "safetensors");
    uint64_t before = weights_hash(m);
    cr_assert_eq(truncate(th_tmp_file(&t, "model.safetensors"), 16), 0);
    cr_assert_eq(weights_hash(m), before, "weights changed when the file did");
    model_free(m);
    free(tok);
    th_tmp_cleanup(&t);
}

Test(model_file, gguf_truncated_while_loaded) { check_change("stories260K.gguf", NULL, TRUNCATE); }
Test(model_file, gguf_overwritten_while_loaded) { check_change("stories260K.gguf", NULL, OVERWRITE); }
Test(model_file, gguf_deleted_while_loaded) { check_change("stories260K.gguf", NULL, UNLINK); }
Test(model_file, llama2c_truncated_while_loaded) { check_change("stories260K.bin", "tok512.bin", TRUNCATE); }
Test(model_file, llama2c_overwritten_while_loaded) { check_change("stories260K.bin", "tok512.bin", OVERWRITE); }
