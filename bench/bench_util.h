/* bench_util.h -- what the benchmark programs share besides cli_seconds (cli/cli.h):
 * header-only, since every file of bench/ is a program of its own. */
#ifndef LMSERVE_BENCH_UTIL_H
#define LMSERVE_BENCH_UTIL_H

#include "cli/cli.h"

/* qsort order of doubles, ascending (for medians and percentiles). */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
