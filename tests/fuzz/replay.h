/* replay.h -- replay committed fuzz inputs through a libFuzzer target's own code.
 *
 * A test file defines FUZZ_TARGET ("fuzz_tokenizer", ...) and includes the
 * target's source with LLVMFuzzerTestOneInput / LLVMFuzzerInitialize renamed,
 * then calls fuzz_replay_all(), which feeds every file of
 * tests/fuzz-regressions/<target>/ (inputs that once failed) and
 * tests/fuzz-seeds/<target>/ (small hand-made seeds) through it.  A target
 * aborts (a crashing test) on any broken invariant; under SANITIZE=address the
 * same inputs are checked by ASan/UBSan.  The inputs are found relative to the
 * repository root (run-tests.sh runs from there) or $LMSERVE_SRC. */
#ifndef LMSERVE_TESTS_FUZZ_REPLAY_H
#define LMSERVE_TESTS_FUZZ_REPLAY_H

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*fuzz_one_fn)(const uint8_t *data, size_t size);

/* Feed every regular file of dir through fn; returns how many were fed. */
static inline int fuzz_replay_dir(const char *dir, fuzz_one_fn fn)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
        cr_assert_not_null(buf);
        size_t got = fread(buf, 1, (size_t)n, f);
        fclose(f);
        cr_assert_eq(got, (size_t)n, "short read of %s", path);
        fprintf(stderr, "replay %s (%ld bytes)\n", path, n); /* names the input if fn aborts */
        fn(buf, (size_t)n);
        free(buf);
        count++;
    }
    closedir(d);
    return count;
}

/* Regressions + seeds of target; returns the number of inputs replayed. */
static inline int fuzz_replay_all(const char *target, fuzz_one_fn fn)
{
    const char *root = getenv("LMSERVE_SRC");
    if (!root || !*root) root = ".";
    char dir[512];
    int n = 0;
    snprintf(dir, sizeof dir, "%s/tests/fuzz-regressions/%s", root, target);
    n += fuzz_replay_dir(dir, fn);
    snprintf(dir, sizeof dir, "%s/tests/fuzz-seeds/%s", root, target);
    n += fuzz_replay_dir(dir, fn);
    cr_log_info("%s: %d inputs replayed", target, n);
    return n;
}

#endif
