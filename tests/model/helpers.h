/* helpers.h -- small helpers shared by the tests in tests/model/ (header-only). */
#ifndef LMSERVE_TESTS_MODEL_HELPERS_H
#define LMSERVE_TESTS_MODEL_HELPERS_H

#include "model/model_internal.h"
#include "tests/testdata.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* $LMSERVE_MODELS/name (tests/testdata.h), malloc'd; fails the test when it is missing. */
static inline char *th_model_path(const char *name)
{
    char *p = malloc(4096);
    cr_assert_not_null(p);
    td_model(p, 4096, name);
    return p;
}

/* Whole file into memory (cr_assert on failure). */
static inline unsigned char *th_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    cr_assert_not_null(b);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static inline void th_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot create %s", path);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

/* A fresh temporary folder; th_tmp_file gives a path inside it. */
typedef struct {
    char dir[64];
    char path[128];
} th_tmp;

static inline void th_tmp_init(th_tmp *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/lmserve-test-XXXXXX");
    cr_assert_not_null(mkdtemp(t->dir));
}

static inline const char *th_tmp_file(th_tmp *t, const char *name)
{
    snprintf(t->path, sizeof t->path, "%s/%s", t->dir, name);
    return t->path;
}

static inline void th_tmp_cleanup(th_tmp *t)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    cr_assert_eq(system(cmd), 0);
}

/* Expect model_load to fail cleanly: a negative code, no model, and one line
 * that starts with "PATH: ".  Returns the message (static buffer). */
static inline const char *th_expect_load_error(const char *path, const model_load_opts *opts)
{
    static char err[1024];
    model *m = (model *)0x1;
    err[0] = '\0';
    int rc = model_load(&m, path, opts, err, sizeof err);
    cr_assert_lt(rc, 0, "%s: expected an error, got a model", path);
    cr_assert_null(m);
    size_t n = strlen(path);
    cr_assert(strncmp(err, path, n) == 0 && err[n] == ':' && err[n + 1] == ' ',
              "message does not start with the path: '%s'", err);
    cr_assert(strlen(err) > n + 2, "empty message");
    cr_assert_null(strchr(err, '\n'), "message is not one line: '%s'", err);
    return err;
}

/* The piece of token i in the tests' synthetic SentencePiece vocabularies: <unk>,
 * <s>, </s>, then "\u2581t<i>"; malloc'd (the caller frees it), NULL when out of memory. */
static inline char *th_fake_piece(int i)
{
    char *p = malloc(16);
    if (!p) return NULL;
    if (i < 3)
        strcpy(p, i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
    else
        snprintf(p, 16, "\xe2\x96\x81t%d", i);
    return p;
}

#endif
