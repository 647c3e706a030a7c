/* test_load.c -- model_load's memory (model/model.c, model/loader.c): the file is
 * read into private memory by several threads, the F32 matrices are repacked in
 * place inside that copy (no second block), the result equals the row-major
 * weights exactly, the weights are read-only afterwards, and the loaded model no
 * longer depends on its file (truncated after a multi-threaded load of a file
 * large enough to be read in several chunks). */
#include "model/compute/kernels.h"
#include "model/loader.h"
#include "tests/model/helpers.h"

#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>

static model *load(const char *path, const char *tok, int threads, int pack)
{
    if (pack)
        unsetenv("LMSERVE_NO_PACK");
    else
        setenv("LMSERVE_NO_PACK", "1", 1);
    model_load_opts opts = { .tokenizer_path = tok, .n_threads = threads };
    model *m = NULL;
    char err[512];
    int rc = model_load(&m, path, &opts, err, sizeof err);
    unsetenv("LMSERVE_NO_PACK");
    cr_assert_eq(rc, 0, "%s", err);
    return m;
}

/* Every matrix of a and b has the same rows (whatever the layouts). */
static void same_matrices(const model *a, const model *b)
{
    float *ra = malloc(sizeof(float) * (size_t)a->info.hidden_dim * 4 + 4096);
    float *rb = malloc(sizeof(float) * (size_t)a->info.hidden_dim * 4 + 4096);
    cr_assert(ra && rb);
    for (int l = -1; l < a->info.n_layers; l++) {
        const mtensor *ta[7], *tb[7];
        int n = 0;
        if (l < 0) {
            ta[n] = &a->tok_embd, tb[n++] = &b->tok_embd;
            ta[n] = &a->output, tb[n++] = &b->output;
        } else {
            const layer_weights *x = &a->layers[l], *y = &b->layers[l];
            ta[n] = &x->wq, tb[n++] = &y->wq;
            ta[n] = &x->wk, tb[n++] = &y->wk;
            ta[n] = &x->wv, tb[n++] = &y->wv;
            ta[n] = &x->wo, tb[n++] = &y->wo;
            ta[n] = &x->w1, tb[n++] = &y->w1;
            ta[n] = &x->w2, tb[n++] = &y->w2;
            ta[n] = &x->w3, tb[n++] = &y->w3;
        }
        for (int i = 0; i < n; i++) {
            cr_assert_eq(ta[i]->rows, tb[i]->rows);
            cr_assert_eq(ta[i]->cols, tb[i]->cols);
            for (int r = 0; r < ta[i]->rows; r++) {
                mtensor_get_row(ta[i], r, ra);
                mtensor_get_row(tb[i], r, rb);
                cr_assert_eq(memcmp(ra, rb, sizeof(float) * (size_t)ta[i]->cols), 0,
                             "layer %d matrix %d row %d differs", l, i, r);
            }
        }
    }
    free(ra);
    free(rb);
}

/* The F32 matrices of m are packed and lie inside its file copy (no packed block). */
static void packed_in_place(const model *m)
{
    if (!kernel_can_pack(MT_F32)) return; /* row-major build: nothing to pack */
    cr_assert_null(m->packed, "a second block was allocated for the packed matrices");
    for (int l = 0; l < m->info.n_layers; l++) {
        const mtensor *t = &m->layers[l].wq;
        cr_assert_eq(t->panel, KERNEL_PANEL, "layer %d wq is not packed", l);
        int inside = 0;
        for (int i = 0; i < m->n_maps; i++)
            inside |= (const char *)t->data >= (const char *)m->maps[i].addr &&
                      (const char *)t->data < (const char *)m->maps[i].addr + m->maps[i].len;
        cr_assert(inside, "layer %d wq is not in the file copy", l);
    }
}

Test(load, gguf_packed_in_place_equals_row_major)
{
    char *path = th_model_path("stories260K.gguf");
    model *a = load(path, NULL, 2, 1), *b = load(path, NULL, 1, 0);
    packed_in_place(a);
    same_matrices(a, b);
    model_free(a);
    model_free(b);
    free(path);
}

Test(load, llama2c_packed_in_place_equals_row_major)
{
    char *path = th_model_path("stories260K.bin"), *tok = th_model_path("tok512.bin");
    model *a = load(path, tok, 2, 1), *b = load(path, tok, 1, 0);
    packed_in_place(a);
    same_matrices(a, b);
    model_free(a);
    model_free(b);
    free(path);
    free(tok);
}

/* A llama2.c checkpoint of about 21 MB (three read chunks), random weights. */
static void write_large_llama2c(const char *path)
{
    int32_t h[7] = { 256, 512, 8, 4, 4, 512, 64 }; /* dim hidden layers heads kv vocab seq_len */
    uint64_t dim = 256, hid = 512, L = 8, V = 512, hd = 64;
    uint64_t n = V * dim + L * dim + 4 * L * dim * dim + L * dim + 3 * L * hid * dim + dim + 64 * hd;
    float *w = malloc(n * sizeof *w);
    cr_assert_not_null(w);
    uint64_t s = 7;
    for (uint64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        w[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    }
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(h, sizeof h, 1, f), 1);
    cr_assert_eq(fwrite(w, sizeof *w, n, f), n);
    cr_assert_eq(fclose(f), 0);
    free(w);
}

Test(load, large_file_read_by_threads_then_truncated)
{
    th_tmp t;
    th_tmp_init(&t);
    char path[128];
    snprintf(path, sizeof path, "%s", th_tmp_file(&t, "large.bin"));
    write_large_llama2c(path);
    char *tok = th_model_path("tok512.bin");
    model *one = load(path, tok, 1, 0), *three = load(path, tok, 3, 1);
    packed_in_place(three);
    same_matrices(three, one);
    model_settle(three); /* the huge-page thread has finished: nothing changed */
    same_matrices(three, one);
    cr_assert_eq(truncate(path, 100), 0);
    same_matrices(three, one); /* would be SIGBUS with a file mapping */
    model_free(one);
    model_free(three);
    free(tok);
    th_tmp_cleanup(&t);
}

Test(load, weights_are_read_only_after_load)
{
    char *path = th_model_path("stories260K.gguf");
    model *m = load(path, NULL, 2, 1);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        *(volatile float *)m->layers[0].wq.data = 1.0f;
        _exit(0);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "writing a weight did not fault (status %d)", st);
    model_free(m);
    free(path);
}
