/* testdata.h -- where the Criterion tests find their data files (header-only).
 *
 * Models: $LMSERVE_MODELS, else tests/data/models; fixtures: $LMSERVE_FIXTURES, else
 * tests/data/fixtures (the tests run from the repository root, as `make test` runs them;
 * the Makefile passes both folders as absolute paths).  A file that is not there fails
 * the test at once with its path and how to get it back, instead of a loader error
 * further on. */
#ifndef LMSERVE_TESTS_TESTDATA_H
#define LMSERVE_TESTS_TESTDATA_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline const char *td_path(char *buf, size_t n, const char *var, const char *dflt, const char *rel)
{
    const char *root = getenv(var);
    if (!root || !*root) root = dflt;
    int w = snprintf(buf, n, "%s/%s", root, rel);
    cr_assert(w > 0 && (size_t)w < n, "path too long: %s/%s", root, rel);
    cr_assert(access(buf, R_OK) == 0,
              "missing test data %s: tests/data comes with the repository (restore it with "
              "`git checkout -- tests/data`), or set %s to a folder that has %s",
              buf, var, rel);
    return buf;
}

/* A model file: $LMSERVE_MODELS/name. */
static inline const char *td_model(char *buf, size_t n, const char *name)
{
    return td_path(buf, n, "LMSERVE_MODELS", "tests/data/models", name);
}

/* A fixture (file or folder): $LMSERVE_FIXTURES/rel. */
static inline const char *td_fixture(char *buf, size_t n, const char *rel)
{
    return td_path(buf, n, "LMSERVE_FIXTURES", "tests/data/fixtures", rel);
}

#endif
