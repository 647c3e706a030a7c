/* kernels.h -- matrix products, attention and element conversions (kernels.c).
 *
 * Included only by the model module and its tests.  kernel_matmul is
 * kernel_matmul_multi with one job.  Every kernel here
 * computes each output element with one fixed sequence of floating-point
 * operations, whatever the number of rows, the row's place in the batch and
 * the thread count: results are bit-identical across batch compositions.
 */
#ifndef LMSERVE_MODEL_KERNELS_H
#define LMSERVE_MODEL_KERNELS_H

#include "model/compute/pool.h"
#include "model/compute/quant.h"
#include "model/model_internal.h"

#include <stddef.h>

/* out[r, :] = W x[r, :] for r in [0, n_rows): x is (n_rows, W.cols), out (n_rows, W.rows). */
void kernel_matmul(model_pool *pool, float *out, const float *x, int n_rows, const mtensor *w);
/* Row `row` of W as floats (embedding lookup). */
void mtensor_get_row(const mtensor *w, int row, float *out);

/* One matrix of a grouped matmul: out (n_rows, w->rows) = x (n_rows, w->cols) W^T. */
typedef struct {
    float *out;
    const mtensor *w;
} kernel_job;

/* Run several matmuls that share the same input x in one pool dispatch
 * (e.g. Q, K and V).  All jobs must have w->cols equal. */
void kernel_matmul_multi(model_pool *pool, const kernel_job *jobs, int n_jobs, const float *x, int n_rows);
/* A grouped matmul prepared to be run by row ranges from the caller's own pool tasks
 * (e.g. a task that makes one head's q, k and v rows and then attends with them):
 * kernel_mm_prepare converts x once into every format the jobs' types multiply
 * with (in the pool's scratch memory: valid until the next matmul on that pool);
 * kernel_mm_rows then computes rows [j0, j1) of job i's output for every x row,
 * with the same operations per element as kernel_matmul_multi (j0 a multiple of
 * kernel_mm_unit(w), j1 too or w->rows).  prepare returns 0, or -1 when it cannot
 * (no scratch memory, too many jobs): then nothing was done. */
#define KERNEL_MAX_JOBS 8
typedef struct kernel_mm {
    const kernel_job *jobs;
    int n_jobs;
    const float *x;
    int n_rows, cols;
    quant_act act[QACT_COUNT];      /* x quantized in each format some job needs (quant.h) */
    int unit[KERNEL_MAX_JOBS];      /* per job: tasks start at multiples of this many W rows */
    int first[KERNEL_MAX_JOBS + 1]; /* first task of each job */
    int swiglu;                     /* jobs (w1, w3): a task does both for its rows, then the gate */
} kernel_mm;
int kernel_mm_prepare(kernel_mm *c, model_pool *pool, const kernel_job *jobs, int n_jobs, const float *x, int n_rows);
void kernel_mm_rows(const kernel_mm *c, int i, int j0, int j1);
/* Row ranges of w's output start at multiples of this (its kernels' register blocks). */
int kernel_mm_unit(const mtensor *w);

/* g (n_rows, w1->rows) = silu(x W1^T) * (x W3^T), u = x W3^T (scratch): the two
 * matmuls and the gate in one pool dispatch (each task gates the rows it made).
 * Per element the same operations as kernel_matmul twice, then kernel_swiglu. */
void kernel_matmul_swiglu(model_pool *pool, float *g, float *u, const float *x, int n_rows, const mtensor *w1,
                          const mtensor *w3);
/* g[i] = g[i] / (1 + exp(-g[i])) * u[i] (SwiGLU's silu gate) over a whole row of n,
 * with ggml's arithmetic: exp by kernel_expf_ggml for the first n - n % 16 elements,
 * libm's expf for the last n % 16 (kernels.c). */
void kernel_swiglu(float *g, const float *u, int n);
/* exp(x) with the arithmetic of ggml's vectorized CPU exp (kernels.c): within about
 * 2 ulp of expf, and the same bits as llama.cpp's softmax and SiLU take. */
float kernel_expf_ggml(float x);

/* F32 weights packed in 16-row panels (mtensor.panel): the batched kernel reads
 * one sequential stream per panel and keeps 6 x rows x 16 outputs in registers.
 * Every output element is then sum_k x[k] * w[k] accumulated by fma in k order
 * from 0 (one lane of one accumulator), whatever the batch: bit-identical across
 * batch compositions, like the row-major kernels, but not bitwise equal to
 * them (the row-major F32 kernel sums 8 lanes, then a tree). */
#define KERNEL_PANEL 16
/* 1 if this build has a packed kernel for tensors of this type: F32 (16-row panels,
 * above) and the block-quantized types (8-row panels of interleaved blocks,
 * model/compute/quant.h), with AVX2. */
int kernel_can_pack(int type);
/* Write w's data into dst (w->rows * w->cols floats, 32-byte aligned) in the
 * packed layout and describe it in *out (which may be w). */
void kernel_pack_f32(const mtensor *w, float *dst, mtensor *out);
/* Rows per panel of the packed layout of this type (KERNEL_PANEL for F32,
 * QUANT_PANEL for the block-quantized types); 0 if this build does not pack it.
 * The layout is panel-local: the packed bytes of rows [p n, (p + 1) n) take
 * exactly the bytes those rows take row-major and depend on those rows only, and
 * the rows after the last whole panel stay row-major where they were.  So a matrix
 * may be packed one panel at a time, and in place (model.c does both). */
int kernel_pack_rows(int type);
#define KERNEL_PACK_ALIGN 32 /* packed data starts on this boundary (aligned loads) */
/* Write w (a type kernel_pack_rows accepts) into dst (the same byte count,
 * KERNEL_PACK_ALIGN-aligned) in the packed layout and describe it in *out (which
 * may be w): kernel_pack_f32, or quant_pack for the block-quantized types. */
void kernel_pack(const mtensor *w, void *dst, mtensor *out);

/* sum_i a[i] * b[i] with a fixed order (8 lanes, then a fixed tree, then the tail). */
float kernel_dot(const float *a, const float *b, int n);

/* y[i] += a * x[i] */
void kernel_axpy(float *y, float a, const float *x, int n);

/* One query row of causal attention over n cached positions (k, v: (n, hd) rows):
 * out = softmax(q.k_t * scale) . v, with scores (n floats) as scratch, in the
 * order llama.cpp's CPU backend takes for one row (kernels.c: ggml_vec_dot_f32's
 * lanes for q.k and p.V, ggml's exp and softmax sums).  Fixed order throughout,
 * so a row's result does not depend on its batch. */
void kernel_attend(float *out, const float *q, const float *k, const float *v, int n, int hd, float scale,
                   float *scores);

/* kernel_attend over an F16 (IEEE half) cache: the same operations on the
 * converted values, so the result equals kernel_attend on F32 copies of k and v. */
void kernel_attend_f16(float *out, const float *q, const uint16_t *k, const uint16_t *v, int n, int hd, float scale,
                       float *scores);

/* dst[i] = src[i] as an IEEE half, rounded to nearest even. */
void kernel_to_f16(uint16_t *dst, const float *src, int n);

#endif /* LMSERVE_MODEL_KERNELS_H */
