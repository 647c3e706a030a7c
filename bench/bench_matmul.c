/* bench_matmul.c -- how fast does one matrix kernel stream its weights?
 *
 *   bench_matmul [--type TYPE] [--mb SIZE] [--cols K] [--rows-x N] [--threads T] [--runs R]
 *                [--no-pack]
 *
 * Builds a (rows, K) matrix of TYPE (F32, F16, BF16, Q8_0, Q4_K, ...) of about SIZE MiB
 * in the memory the model's weights get (model_alloc_weights: huge pages), from one
 * quantized block of 8 MiB repeated (the speed does not depend on the values), then
 * runs kernel_matmul over all of it R times with N activation rows on T threads.  Prints
 * the best and median pass in GB/s of weights read (10^9 bytes/s) and in tokens/s for N
 * rows.  The matrix is packed as a model's would be (kernel_pack: F32 16-row panels,
 * quantized 8-row panels) unless --no-pack.  With SIZE well above the last-level cache this is the kernel's streaming rate,
 * to compare with bench/membw's read rate measured in the same minutes; with a small
 * SIZE (e.g. 1) it is the arithmetic rate on cached weights.
 */
#include "bench/bench_util.h"
#include "cli/opt.h"
#include "model/compute/kernels.h"
#include "model/compute/pool.h"
#include "model/loader.h"
#include "model/compute/quant.h"
#include "model/half.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv)
{
    const char *type_s = "Q8_0";
    int mb_i = 512, cols_i = 2048, nx_i = 1, threads_i = 2, runs_i = 10, pack = 1;
    const cli_opt opts[] = {
        OPT_STR("--type", &type_s),
        OPT_INT("--mb", &mb_i, 1, 1 << 16),
        OPT_INT("--cols", &cols_i, 256, 1 << 16),
        OPT_INT("--rows-x", &nx_i, 1, 1024),
        OPT_INT("--threads", &threads_i, 1, 256),
        OPT_INT("--runs", &runs_i, 1, 100000),
        OPT_FLAG("--no-pack", &pack, 0),
    };
    int prc = cli_parse("bench_matmul", opts, sizeof opts / sizeof opts[0], argc, argv);
    if (prc != CLI_OK) {
        fprintf(prc == CLI_HELP ? stdout : stderr,
                "usage: bench_matmul [--type TYPE] [--mb SIZE] [--cols K] [--rows-x N] [--threads T] [--runs R] "
                "[--no-pack]\n");
        return prc == CLI_HELP ? 0 : 2;
    }
    long mb = mb_i, cols = cols_i, nx = nx_i, threads = threads_i, runs = runs_i;
    int type = quant_type_from_name(type_s);
    size_t rb = type >= 0 ? mtensor_row_bytes(type, (int)cols) : 0;
    if (!rb) {
        fprintf(stderr, "bench_matmul: type %s with %ld columns is not supported\n", type_s, cols);
        return 2;
    }
    /* one 8 MiB (or smaller) tile of valid rows, repeated */
    long tile_rows = (long)((8u << 20) / rb);
    long rows = (long)(((size_t)mb << 20) / rb);
    rows = rows / 8 * 8;
    if (rows < 8) rows = 8;
    if (tile_rows < 1) tile_rows = 1;
    if (tile_rows > rows) tile_rows = rows; /* after the rounding: the tile must fit the matrix */
    size_t maplen, total = (size_t)rows * rb;
    uint8_t *w = model_alloc_weights(total, &maplen);
    float *src = malloc((size_t)tile_rows * cols * sizeof *src);
    float *x = malloc((size_t)nx * cols * sizeof *x), *out = malloc((size_t)nx * rows * sizeof *out);
    if (!w || !src || !x || !out) {
        fprintf(stderr, "bench_matmul: out of memory\n");
        return 1;
    }
    uint64_t s = 12345;
    for (size_t i = 0; i < (size_t)tile_rows * cols; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        src[i] = (float)((int64_t)(s >> 33) - (1ll << 30)) * 0x1p-30f * 0.05f;
    }
    for (size_t i = 0; i < (size_t)nx * cols; i++) x[i] = src[i % ((size_t)tile_rows * cols)] * 20.0f;
    uint8_t *tile = w;
    if (type == MT_F32) {
        memcpy(tile, src, (size_t)tile_rows * rb);
    } else if (type == MT_F16 || type == MT_BF16) {
        for (size_t i = 0; i < (size_t)tile_rows * cols; i++) {
            uint16_t h;
            if (type == MT_F16) {
                h = model_f32_to_f16(src[i]);
            } else {
                uint32_t b;
                memcpy(&b, &src[i], 4);
                h = (uint16_t)(b >> 16);
            }
            memcpy(tile + 2 * i, &h, 2);
        }
    } else {
        quant_quantize_rows(type, src, tile, tile_rows, (int)cols);
    }
    for (long r = tile_rows; r < rows; r += tile_rows) {
        long n = rows - r < tile_rows ? rows - r : tile_rows;
        memcpy(w + (size_t)r * rb, tile, (size_t)n * rb);
    }
    mtensor m = { .data = w, .type = type, .rows = (int)rows, .cols = (int)cols };
    size_t plen = 0;
    void *pk = NULL;
    int panel = kernel_pack_rows(type);
    if (pack && panel && rows >= panel) {
        pk = model_alloc_weights((size_t)rows * rb, &plen);
        if (!pk) {
            fprintf(stderr, "bench_matmul: out of memory\n");
            return 1;
        }
        kernel_pack(&m, pk, &m);
        munmap(w, maplen);
        w = pk;
        maplen = plen;
    }
    model_pool *pool = model_pool_new((int)threads);
    double *t = malloc((size_t)runs * sizeof *t);
    kernel_matmul(pool, out, x, (int)nx, &m); /* warm-up */
    for (long r = 0; r < runs; r++) {
        double t0 = cli_seconds(CLOCK_MONOTONIC);
        kernel_matmul(pool, out, x, (int)nx, &m);
        t[r] = cli_seconds(CLOCK_MONOTONIC) - t0;
    }
    qsort(t, (size_t)runs, sizeof *t, bench_cmp_double);
    double gb = (double)total / 1e9;
    printf("%s%s %ld x %ld (%.1f MiB), %ld activation row(s), %ld thread(s): best %.2f GB/s, median %.2f GB/s "
           "(%.3f ms per pass, %.1f tokens/s)\n",
           quant_type_name(type), m.panel ? " (packed)" : "", rows, cols, (double)total / 1048576.0, nx, threads,
           gb / t[0], gb / t[runs / 2], t[runs / 2] * 1e3, (double)nx / t[runs / 2]);
    volatile float sink = out[0];
    (void)sink;
    model_pool_free(pool);
    munmap(w, maplen);
    free(src);
    free(x);
    free(out);
    free(t);
    return 0;
}
