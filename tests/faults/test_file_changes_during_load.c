/* test_file_changes_during_load.c -- a model file that changes while model_load is
 * reading it gives a clear error, never a crash and never a model made of two
 * versions of the file.
 *
 * The loaders copy the file into private memory (model/loader.c); a file that is
 * truncated, rewritten in place (what `cp new.gguf served.gguf` does) or extended
 * while that copy is read would leave a copy that mixes old and new bytes -- a
 * header that the format checks accept, with part of the weights from another
 * model.  To change the file at an exact point of the read, this test binary
 * defines pread itself (the loader's reads in the static libraries resolve to it):
 * it passes every call through to the kernel and, once armed, changes the file
 * right after the first read of the model file's first chunk.  Each case then
 * checks the error, that the hook fired, and that the same file, restored, loads
 * again to the same weights as before. */
#include "model/loader.h"
#include "tests/faults/weights_hash.h"
#include "tests/model/helpers.h"

#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/time.h>

enum { TRUNCATE, REWRITE, EXTEND };

static atomic_int hook_left; /* reads of the target to let through before acting (0: off) */
static atomic_int hook_fired;
static int hook_how;
static dev_t hook_dev;
static ino_t hook_ino;
static char hook_path[128];
static const unsigned char *hook_other; /* REWRITE: the bytes written over the file */
static size_t hook_other_len;

static void change_file(void)
{
    if (hook_how == TRUNCATE) {
        cr_assert_eq(truncate(hook_path, 100), 0);
    } else if (hook_how == REWRITE) { /* like cp: open with O_TRUNC, then write */
        int fd = open(hook_path, O_WRONLY | O_TRUNC);
        cr_assert_geq(fd, 0);
        size_t off = 0;
        while (off < hook_other_len) {
            ssize_t n = write(fd, hook_other + off, hook_other_len - off);
            cr_assert_gt(n, 0);
            off += (size_t)n;
        }
        cr_assert_eq(close(fd), 0);
    } else {
        int fd = open(hook_path, O_WRONLY | O_APPEND);
        cr_assert_geq(fd, 0);
        static const char tail[4096];
        cr_assert_eq(write(fd, tail, sizeof tail), (ssize_t)sizeof tail);
        cr_assert_eq(close(fd), 0);
    }
    atomic_fetch_add(&hook_fired, 1);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    ssize_t r = syscall(SYS_pread64, fd, buf, n, off);
    int left = atomic_load(&hook_left);
    struct stat st;
    if (left > 0 && fstat(fd, &st) == 0 && st.st_dev == hook_dev && st.st_ino == hook_ino) {
        while (left > 0 && !atomic_compare_exchange_weak(&hook_left, &left, left - 1)) {}
        if (left == 1) change_file();
    }
    return r;
}

/* A llama2.c checkpoint of about 21 MB (three 8 MiB read chunks), random weights
 * from seed: two seeds give files of the same size with the same header. */
static unsigned char *large_llama2c(uint64_t seed, size_t *len)
{
    int32_t h[7] = { 256, 512, 8, 4, 4, 512, 64 }; /* dim hidden layers heads kv vocab seq_len */
    uint64_t dim = 256, hid = 512, L = 8, V = 512, hd = 64;
    uint64_t n = V * dim + L * dim + 4 * L * dim * dim + L * dim + 3 * L * hid * dim + dim + 64 * hd;
    *len = sizeof h + n * sizeof(float);
    unsigned char *b = malloc(*len);
    cr_assert_not_null(b);
    memcpy(b, h, sizeof h);
    for (uint64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        float w = (float)((double)(seed >> 11) / 9007199254740992.0 - 0.5);
        memcpy(b + sizeof h + i * sizeof w, &w, sizeof w);
    }
    return b;
}

static int try_load(const char *path, const char *tok, int threads, model **m, char *err, size_t errlen)
{
    model_load_opts opts = { .tokenizer_path = tok, .n_threads = threads };
    *m = NULL;
    return model_load(m, path, &opts, err, errlen);
}

static void check_change_during_read(int how, int threads)
{
    th_tmp t;
    th_tmp_init(&t);
    snprintf(hook_path, sizeof hook_path, "%s", th_tmp_file(&t, "model.bin"));
    size_t len, other_len;
    unsigned char *bytes = large_llama2c(7, &len), *other = large_llama2c(8, &other_len);
    cr_assert_eq(other_len, len);
    hook_other = other;
    hook_other_len = other_len;
    hook_how = how;
    char *tok = th_model_path("tok512.bin");

    /* the file as it is before: its weights, for comparison at the end */
    th_write_file(hook_path, bytes, len);
    char err[512] = "";
    model *ref = NULL;
    cr_assert_eq(try_load(hook_path, tok, threads, &ref, err, sizeof err), 0, "%s", err);
    uint64_t ref_hash = weights_hash(ref);
    model_free(ref);

    /* The file was written an hour ago, as a served file would have been: a change
     * made now has another modification time even on a coarse clock. */
    struct timeval old[2];
    gettimeofday(&old[0], NULL);
    old[0].tv_sec -= 3600;
    old[1] = old[0];
    cr_assert_eq(utimes(hook_path, old), 0);
    struct stat st;
    cr_assert_eq(stat(hook_path, &st), 0);
    hook_dev = st.st_dev;
    hook_ino = st.st_ino;
    atomic_store(&hook_fired, 0);
    atomic_store(&hook_left, 1);
    model *m = NULL;
    err[0] = '\0';
    int rc = try_load(hook_path, tok, threads, &m, err, sizeof err);
    atomic_store(&hook_left, 0);
    cr_assert_eq(atomic_load(&hook_fired), 1, "the file was not changed during the read");
    cr_assert_eq(rc, MODEL_EIO, "a load across a change returned %d (%s)", rc, err);
    cr_assert_null(m);
    cr_assert(strstr(err, hook_path), "the error does not name the file: %s", err);
    cr_assert(strstr(err, "while it was being read"), "the error does not say what happened: %s", err);

    /* written again, whole: loads, and to the same weights as before */
    th_write_file(hook_path, bytes, len);
    cr_assert_eq(try_load(hook_path, tok, threads, &m, err, sizeof err), 0, "%s", err);
    cr_assert_eq(weights_hash(m), ref_hash, "the reloaded weights differ");
    model_free(m);
    free(bytes);
    free(other);
    free(tok);
    th_tmp_cleanup(&t);
}

Test(load_during_change, truncated_one_reader) { check_change_during_read(TRUNCATE, 1); }
Test(load_during_change, truncated_three_readers) { check_change_during_read(TRUNCATE, 3); }
Test(load_during_change, rewritten_in_place_one_reader) { check_change_during_read(REWRITE, 1); }
Test(load_during_change, rewritten_in_place_three_readers) { check_change_during_read(REWRITE, 3); }
Test(load_during_change, extended_one_reader) { check_change_during_read(EXTEND, 1); }

/* Without the check after the read, the rewrite case would load: the two versions
 * share their header.  This is what such a mixed copy looks like -- a model that
 * loads and differs from both files -- so the error above is the only protection. */
Test(load_during_change, a_mixed_copy_would_pass_the_format_checks)
{
    th_tmp t;
    th_tmp_init(&t);
    size_t len, other_len;
    unsigned char *a = large_llama2c(7, &len), *b = large_llama2c(8, &other_len);
    memcpy(b, a, (size_t)8 << 20); /* the first read chunk from the old file */
    char path[128];
    snprintf(path, sizeof path, "%s", th_tmp_file(&t, "mixed.bin"));
    th_write_file(path, b, len);
    char *tok = th_model_path("tok512.bin");
    char err[512] = "";
    model *m = NULL;
    cr_assert_eq(try_load(path, tok, 1, &m, err, sizeof err), 0, "%s", err);
    model_free(m);
    free(a);
    free(b);
    free(tok);
    th_tmp_cleanup(&t);
}
