/* fmt_util.h -- small helpers shared by the format tests (fixtures, temp dirs, the
 * Python writer).  Header-only: each test binary is built from its one source. */
#ifndef LMSERVE_TESTS_FMT_UTIL_H
#define LMSERVE_TESTS_FMT_UTIL_H

#include "tests/testdata.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* $LMSERVE_FIXTURES/rel into buf (tests/testdata.h); fails the test when it is missing. */
static inline const char *fx_path(char *buf, size_t n, const char *rel) { return td_fixture(buf, n, rel); }

/* Whole file into a malloc'd buffer (NULL on error). */
static inline unsigned char *fx_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) *len = (size_t)n;
    return b;
}

static inline int fx_write(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(buf, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

/* A fresh temporary directory (caller removes it with fx_rmtree). */
static inline char *fx_tmpdir(char *buf, size_t n)
{
    snprintf(buf, n, "/tmp/lmserve-fmt-XXXXXX");
    return mkdtemp(buf);
}

static inline void fx_rmtree(const char *dir)
{
    char cmd[512];
    if (strncmp(dir, "/tmp/lmserve-fmt-", 17) != 0) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* Run tests/tools/write_course_pt.py with args (the tests run from the repo root). */
static inline int fx_pywrite(const char *args)
{
    char cmd[1024];
    const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    snprintf(cmd, sizeof cmd, "%s tests/tools/write_course_pt.py %s", py, args);
    return system(cmd);
}

#endif
