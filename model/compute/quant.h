/* quant.h -- GGML's block-quantized tensor types: layouts, conversions and the
 * matrix products on them.  Internal to the model module (and its tests).
 *
 * Design
 * ------
 * A quantized matrix stays in its file's bytes: rows of blocks (32 or 256
 * weights each) as ggml lays them out (ggml-common.h; the GGUF specification
 * names the types).  A product out = x W^T quantizes each activation row x once
 * into the block format ggml's CPU backend pairs with W's type (its "vec_dot
 * type": Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants),
 * multiplies blocks in exact integer arithmetic, and accumulates in floats with
 * the same operations, in the same order, as llama.cpp on x86 with AVX2:
 *
 *   - "lane" types (ggml_vec_dot_*): each W row has an 8-lane float accumulator;
 *     lane u collects, per block, the integer sum over the weights whose index
 *     within their 32 has (i % 32) / 4 == u, scaled by one fused multiply-add;
 *     the lanes are added by ggml's hsum_float_8 tree at the end of the row.
 *   - "serial" types: Q4_0 and Q4_K matrices whose row count is a multiple of 8,
 *     which llama.cpp repacks at load into 8-row interleaved blocks on AVX2
 *     machines (its CPU_REPACK buffers, on by default) and multiplies with
 *     ggml_gemv/gemm_*_8x8: each output has one accumulator fed one fused
 *     multiply-add per block with the block's whole integer sum.
 *
 * Every output element thus has one fixed sequence of float operations,
 * whatever the batch, the element's row in it, the register blocking or the
 * thread count (the module's bit-identity rule), and equals llama.cpp's value
 * bit for bit (tests/model/compute/test_quant.c checks golden values of llama.cpp).  The portable
 * build computes the same lanes in scalar code and gives the same bits.
 *
 * Activation rows are quantized by quant_act_rows into a quant_act (one layout
 * per format, described below); quant_matmul_rows then computes a rectangle of
 * outputs.  A matrix may be repacked at load (quant_pack, mtensor.panel =
 * QUANT_PANEL): the same blocks, those of 8 consecutive rows interleaved, so that
 * the kernels, which take weight rows 8 at a time when decoding, read one
 * sequential stream; the arithmetic does not change.  quant_quantize_rows is the other direction, for `lmserve quantize`:
 * the reference quantizers (ggml's quantize_row_*_ref algorithms, no importance
 * matrix), so a file made here holds what llama-quantize writes.
 */
#ifndef LMSERVE_MODEL_QUANT_H
#define LMSERVE_MODEL_QUANT_H

#include "model/model_internal.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Types ------------------------------------------------------------------ */

#define QK_K 256 /* weights per K-quant super-block */

/* Activation formats (what x is quantized to for a weight type). */
enum {
    QACT_NONE = 0, /* F32/F16/BF16 weights: x stays float */
    QACT_Q8_0 = 1, /* per 32: int8 q, scale d = half(amax / 127) */
    QACT_Q8_1 = 2, /* Q8_0 plus s = half(d * sum q) per 32 */
    QACT_Q8_K = 3, /* per 256: int8 q, float d = 1 / (-127 / max), int16 sums per 16 */
    QACT_F16 = 4,  /* F16 weights: x rounded to IEEE half (kept as floats in xr) */
    QACT_BF16 = 5, /* BF16 weights: x rounded to bfloat16 (floats in xr) */
    QACT_COUNT
};

/* Quantized activation rows, structure of arrays (n_rows rows, cols each):
 *   q   int8  (n_rows, cols)            the quants
 *   d   float (n_rows, cols / blk)       blk = 32 (Q8_0, Q8_1) or 256 (Q8_K); the scale
 *                                        as ggml stores it (Q8_0/Q8_1: a half's value)
 *   s   float (n_rows, cols / 32)        Q8_1 only: half(d * sum of the block's q)
 *   bs  int16 (n_rows, cols / 16)        Q8_K only: sum of each 16 q
 *   x32 int32 (n_rows, cols / 32)        sum of each 32 q (Q8_0: for Q4_0's offset trick)
 * or, for QACT_F16 / QACT_BF16 (ggml multiplies F16 / BF16 weights by activations
 * converted to the weights' type, rounding to nearest even):
 *   xr  float (n_rows, cols)             x rounded to that type, as floats */
typedef struct {
    int fmt, cols;
    float *xr;
    int8_t *q;
    float *d;
    float *s;
    int16_t *bs;
    int32_t *x32;
} quant_act;

/* Rows per panel of a packed quantized matrix (mtensor.panel == QUANT_PANEL): the
 * first rows / 8 * 8 rows are stored in panels of 8 rows, where block b of the
 * panel's row c sits at (b * 8 + c) * block bytes; the remaining rows follow
 * row-major. */
#define QUANT_PANEL 8

/* ---- Type facts ---------------------------------------------------------------- */

/* Weights per block (1 for F32/F16/BF16), bytes per block; 0 for an unknown type. */
int quant_block_elems(int type);
size_t quant_block_bytes(int type);
/* 1 if the type is one of the block-quantized types handled here. */
int quant_is_quantized(int type);
/* ggml's name ("Q4_K"); NULL if unknown.  quant_type_from_name: -1 if unknown
 * (case-insensitive; F32, F16, BF16 included). */
const char *quant_type_name(int type);
int quant_type_from_name(const char *name);
/* Bytes of n weights of a quantized type (n a multiple of its block); sets *ok = 0 on
 * overflow or a partial block. */
size_t quant_bytes(int type, uint64_t n, int *ok);
/* The activation format W's type multiplies with. */
int quant_act_format(int type);
/* 1 if this (type, rows) pair uses the serial (repacked-kernel) arithmetic. */
int quant_is_serial(int type, int rows);

/* ---- Conversions ---------------------------------------------------------------- */

/* dst[0..n) = the weights of n / block blocks at src, as ggml's dequantize_row_*
 * computes them (the embedding lookup and the tests use it). */
void quant_dequantize_row(int type, const void *src, float *dst, int n);

/* Quantize nrows rows of n_per_row floats into type (reference algorithms, see the
 * header comment).  Returns the bytes written, 0 if the type is not a quantized
 * type or n_per_row is not a multiple of its block. */
size_t quant_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int n_per_row);

/* The element of x[0..n) of largest magnitude, with its sign (the first of equals; 0
 * when every element is 0 or NaN): the "max" from which ggml's quantizers derive a
 * block's scale. */
static inline float quant_signed_max(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            max = x[i];
        }
    }
    return max;
}

/* Bytes of the quant_act arrays for n_rows rows of cols in format fmt (0 if cols does
 * not fit the format), and carving them from one buffer (16-byte aligned pieces). */
size_t quant_act_bytes(int fmt, int cols, int n_rows);
void quant_act_init(quant_act *a, int fmt, int cols, int n_rows, void *buf);
/* Quantize rows [r0, r1) of x (row stride cols) into a. */
void quant_act_rows(quant_act *a, const float *x, int r0, int r1);

/* Where row j's blocks are in w (either layout): returns its first block; *stride is
 * the distance between its consecutive blocks. */
const uint8_t *quant_row_blocks(const mtensor *w, int j, size_t *stride);
/* Row j of w as floats (quant_dequantize_row's operations, either layout). */
void quant_get_row(const mtensor *w, int j, float *out);
/* Write w's blocks (row-major, rows >= QUANT_PANEL) into dst (the same byte count)
 * in the packed layout, and describe it in *out (which may be w). */
void quant_pack(const mtensor *w, void *dst, mtensor *out);

/* ---- Products ------------------------------------------------------------------- */

/* out[r * ldo + j] = row r of the activations . row j of w, for r in [0, n_rows) and
 * j in [j0, j1).  a must be in quant_act_format(w->type) with a->cols == w->cols. */
void quant_matmul_rows(float *out, size_t ldo, const quant_act *a, int n_rows, const mtensor *w, int j0, int j1);

/* The same dot product for one activation row and one weight row, computed by the
 * portable code whatever the build (for tests: the kernels must equal it). */
float quant_dot_ref(const quant_act *a, int r, const mtensor *w, int j);

#endif /* LMSERVE_MODEL_QUANT_H */
