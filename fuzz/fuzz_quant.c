/* fuzz_quant.c -- libFuzzer target: the block decoders and kernels of model/quant.h on
 * arbitrary block bytes and activations.
 *
 * Input: byte 0 picks the type, byte 1 the weight rows (1..12; 8 makes Q4_0 / Q4_K use
 * the serial arithmetic), byte 2 the activation rows (1..3), byte 3 the blocks per row
 * (1..3), byte 4 bit 0 whether the activations are the input's raw floats (NaN and
 * infinity included) or its bytes / 16; the rest is cycled into the weight blocks and
 * the activations.  Checks: the kernels (through kernel_matmul, pool-less and on two
 * threads; row-major and, from 8 rows, packed in panels) equal quant_dot_ref bit for bit (both NaN counts as equal); dequantizing
 * and quantizing any of it neither crashes nor trips the sanitizers; quantizing finite
 * floats of moderate size and dequantizing gives finite values. */
#include "model/compute/kernels.h"
#include "model/compute/pool.h"
#include "model/compute/quant.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const int types[] = { MT_Q4_0, MT_Q4_1, MT_Q5_0, MT_Q5_1, MT_Q8_0, MT_Q2_K, MT_Q3_K, MT_Q4_K, MT_Q5_K, MT_Q6_K };

static model_pool *pool;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6) return 0;
    if (!pool) pool = model_pool_new(2);
    int t = types[data[0] % 10];
    int rows = 1 + data[1] % 12, n = 1 + data[2] % 3, nb = 1 + data[3] % 3, raw = data[4] & 1;
    int cols = nb * quant_block_elems(t);
    const uint8_t *p = data + 5;
    size_t len = size - 5, at = 0;
    size_t rb = quant_bytes(t, (uint64_t)cols, NULL);
    uint8_t *w = malloc(rb * (size_t)rows);
    float *x = malloc((size_t)n * cols * sizeof *x), *y = malloc((size_t)n * rows * sizeof *y);
    float *deq = malloc((size_t)cols * sizeof *deq);
    void *abuf = malloc(quant_act_bytes(quant_act_format(t), cols, n));
    uint8_t *qb = malloc(rb);
    if (!w || !x || !y || !deq || !abuf || !qb || !pool) abort();
    for (size_t i = 0; i < rb * (size_t)rows; i++) w[i] = p[at++ % len];
    for (size_t i = 0; i < (size_t)n * cols; i++) {
        if (raw) {
            uint8_t b[4];
            for (int k = 0; k < 4; k++) b[k] = p[at++ % len];
            memcpy(&x[i], b, 4);
        } else {
            x[i] = (float)(int8_t)p[at++ % len] / 16.0f;
        }
    }
    mtensor m = { .data = w, .type = t, .rows = rows, .cols = cols };
    quant_act a;
    quant_act_init(&a, quant_act_format(t), cols, n, abuf);
    quant_act_rows(&a, x, 0, n);
    for (int pass = 0; pass < 2; pass++) {
        kernel_matmul(pass ? pool : NULL, y, x, n, &m);
        for (int r = 0; r < n; r++)
            for (int j = 0; j < rows; j++) {
                float ref = quant_dot_ref(&a, r, &m, j), got = y[(size_t)r * rows + j];
                if (memcmp(&ref, &got, 4) != 0 && !(isnan(ref) && isnan(got))) abort();
            }
    }
    /* the same matrix packed in 8-row panels (as a model's is at load): the decoding
     * and batched kernels of the packed layout, on a buffer of exactly its size */
    if (rows >= QUANT_PANEL) {
        uint8_t *wp = malloc(rb * (size_t)rows);
        if (!wp) abort();
        mtensor mp;
        quant_pack(&m, wp, &mp);
        for (int pass = 0; pass < 2; pass++) {
            kernel_matmul(pass ? pool : NULL, y, x, n, &mp);
            for (int r = 0; r < n; r++)
                for (int j = 0; j < rows; j++) {
                    float ref = quant_dot_ref(&a, r, &mp, j), got = y[(size_t)r * rows + j];
                    if (memcmp(&ref, &got, 4) != 0 && !(isnan(ref) && isnan(got))) abort();
                }
        }
        for (int j = 0; j < rows; j++) mtensor_get_row(&mp, j, deq);
        free(wp);
    }
    for (int j = 0; j < rows; j++) mtensor_get_row(&m, j, deq);
    /* quantize the activations as weights, and back */
    int finite = 1;
    for (int i = 0; i < cols; i++) finite &= isfinite(x[i]) && fabsf(x[i]) < 1e30f;
    if (quant_quantize_rows(t, x, qb, 1, cols) != rb) abort();
    quant_dequantize_row(t, qb, deq, cols);
    if (finite)
        for (int i = 0; i < cols; i++)
            if (!isfinite(deq[i])) {
                /* a scale stored as a half overflows for values above 65504 * the type's
                 * step count: that is the format's limit, not a fault */
                float amax = 0;
                for (int k = 0; k < cols; k++) amax = fmaxf(amax, fabsf(x[k]));
                if (amax < 60000.0f) abort();
            }
    free(w);
    free(x);
    free(y);
    free(deq);
    free(abuf);
    free(qb);
    return 0;
}
