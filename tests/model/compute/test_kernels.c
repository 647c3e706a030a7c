/* test_kernels.c -- kernel_matmul on F32, F16, BF16 and Q8_0 against naive double
 * dot products; bit-identity across batch sizes, row positions and thread counts;
 * mtensor_get_row; the thread pool.
 *
 * Tolerances, per output element with S = sum_k |x_k w_k| (w as stored; for F16 and
 * BF16 weights x_k rounded to that type first, as the kernels do, following ggml):
 *   F32/F16/BF16: |out - exact| <= 2e-6 * S   (float accumulation over <= 700 terms)
 *   Q8_0: |out - exact| <= B + 2e-6 * S where B = sum_k |w_k| * d_k * (1/2 + 127 * 2^-11)
 *         bounds the activation rounding (d_k: the row's block scale max|x| / 127; the
 *         int8 value is off by at most 1/2 step, and the scale is kept as an IEEE half,
 *         relative error <= 2^-11, times |q| <= 127).
 *   Q8_0 also exactly: q8_0_equals_the_ggml_formula.
 */
#include <criterion/criterion.h>

#include <stdatomic.h>
#include <unistd.h>

#include "tests/model/fixture.h"
#include "model/loader.h"

typedef struct {
    int rows, cols, n;
} shape3;

/* F32 in the kernels' 16-row panel layout (a test-only pseudo type) */
#define PACKED_F32 (-1)

/* Repack w in place of its data when type is PACKED_F32; returns the block to free. */
static float *maybe_pack(mtensor *w, int type)
{
    if (type != PACKED_F32 || !kernel_can_pack(MT_F32)) return NULL;
    size_t n = (size_t)w->rows * w->cols;
    float *pk = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
    cr_assert(pk);
    kernel_pack_f32(w, pk, w);
    cr_assert_eq(w->panel, KERNEL_PANEL);
    return pk;
}

static void check_type(int type, const shape3 *shapes, int n_shapes, model_pool *pool)
{
    int packed = type == PACKED_F32;
    if (packed) type = MT_F32;
    uint64_t rng = 1234 + type;
    for (int si = 0; si < n_shapes; si++) {
        int R = shapes[si].rows, C = shapes[si].cols, N = shapes[si].n;
        double *src = malloc((size_t)R * C * 8), *deq = malloc((size_t)R * C * 8);
        for (size_t i = 0; i < (size_t)R * C; i++) src[i] = fx_unif(&rng);
        void *data = fx_pack(src, R, C, type, deq);
        mtensor w = { .data = data, .type = type, .rows = R, .cols = C };
        float *pk = maybe_pack(&w, packed ? PACKED_F32 : type);
        float *x = malloc((size_t)N * C * 4), *out = malloc((size_t)N * R * 4);
        for (size_t i = 0; i < (size_t)N * C; i++) x[i] = (float)(fx_unif(&rng) * 2.0);
        kernel_matmul(pool, out, x, N, &w);
        double worst = 0;
        for (int r = 0; r < N; r++) {
            const float *xr = x + (size_t)r * C;
            for (int j = 0; j < R; j++) {
                double exact = 0, S = 0, B = 0;
                for (int k = 0; k < C; k++) {
                    double wk = deq[(size_t)j * C + k];
                    /* F16 / BF16 weights multiply x rounded to their type (ggml's convention) */
                    double xk = type == MT_F16    ? fx_f16_to_f64(fx_f32_to_f16(xr[k]))
                                : type == MT_BF16 ? fx_bf16_to_f64(fx_f32_to_bf16(xr[k]))
                                                  : xr[k];
                    exact += xk * wk;
                    S += fabs(xk * wk);
                    if (type == MT_Q8_0) {
                        double amax = 0;
                        for (int i = k / 32 * 32; i < k / 32 * 32 + 32; i++) amax = fmax(amax, fabs(xr[i]));
                        B += fabs(wk) * amax / 127.0 * (0.5 + 127.0 * 0x1p-11) * 1.0001;
                    }
                }
                /* packed: one float accumulator over k (bound C * 2^-24 * S); else 8 lanes + tree */
                double rel = packed ? C * 0x1p-24 * 1.01 : 2e-6;
                double err = fabs(out[(size_t)r * R + j] - exact), lim = B + rel * S + 1e-30;
                worst = fmax(worst, err / lim);
                cr_assert(err <= lim, "type %d shape %dx%d n=%d: out[%d][%d]=%.9g exact %.9g (lim %g)", type, R, C, N,
                          r, j, out[(size_t)r * R + j], exact, lim);
                if (pk) { /* the packed layout's per-element sequence: fmaf over k from 0 */
                    float f = 0.0f;
                    for (int k = 0; k < C; k++) f = fmaf(xr[k], (float)deq[(size_t)j * C + k], f);
                    cr_assert(out[(size_t)r * R + j] == f, "packed %dx%d n=%d: out[%d][%d] %.9g, fmaf chain %.9g", R, C,
                              N, r, j, out[(size_t)r * R + j], f);
                }
            }
        }
        /* get_row gives the stored values (every row when packed: panels and tail) */
        float *row = malloc((size_t)C * 4);
        for (int j = 0; j < R; j += packed ? 1 : R / 3 + 1) {
            mtensor_get_row(&w, j, row);
            for (int k = 0; k < C; k++) cr_assert_eq((double)row[k], deq[(size_t)j * C + k], "get_row type %d", type);
        }
        free(row);
        free(pk);
        free(src), free(deq), free(data), free(x), free(out);
    }
}

Test(kernels, f32_f16_bf16_against_double)
{
    const shape3 shapes[] = { { 1, 1, 1 },    { 1, 8, 1 },     { 3, 7, 2 },   { 5, 9, 5 },    { 17, 40, 3 },
                              { 33, 100, 7 }, { 130, 257, 9 }, { 64, 64, 4 }, { 2, 700, 13 }, { 300, 24, 1 } };
    model_pool *p = model_pool_new(2);
    check_type(MT_F32, shapes, 10, p);
    check_type(MT_F16, shapes, 10, p);
    check_type(MT_BF16, shapes, 10, p);
    check_type(MT_F32, shapes, 10, NULL);
    check_type(PACKED_F32, shapes, 10, p);
    check_type(PACKED_F32, shapes, 10, NULL);
    model_pool_free(p);
}

Test(kernels, q8_0_against_double)
{
    const shape3 shapes[] = { { 1, 32, 1 },    { 3, 32, 2 },   { 5, 64, 5 },  { 37, 96, 6 },
                              { 130, 320, 9 }, { 300, 64, 1 }, { 2, 704, 13 } };
    model_pool *p = model_pool_new(2);
    check_type(MT_Q8_0, shapes, 7, p);
    check_type(MT_Q8_0, shapes, 7, NULL);
    model_pool_free(p);
}

/* Q8_0 x float rows, bit for bit, as llama.cpp's CPU backend computes them (its AVX2
 * quantize_row_q8_0 + ggml_vec_dot_q8_0_q8_0; the arithmetic is restated here, not taken
 * from the kernel): per block of 32 the activations become q = nearest-even(x * 127/amax)
 * with the scale amax/127 rounded to IEEE half; eight lanes each take the integer sum of
 * four products w*q and accumulate fma(d_w * d_x, sum, lane) over the blocks; the lanes
 * are then added as (l0+l4 + l2+l6) + (l1+l5 + l3+l7).  This is what makes greedy text on
 * llama-quantize'd Q8_0 files equal llama.cpp's.  Fails with a float activation scale, with
 * 1/(amax/127) as the multiplier, or with another lane order. */
Test(kernels, q8_0_equals_the_ggml_formula)
{
    const shape3 shapes[] = { { 1, 32, 1 }, { 37, 96, 1 }, { 19, 256, 5 }, { 130, 320, 16 }, { 64, 2048, 3 } };
    model_pool *p = model_pool_new(2);
    uint64_t rng = 77;
    for (int si = 0; si < 5; si++) {
        int R = shapes[si].rows, C = shapes[si].cols, N = shapes[si].n, nb = C / 32;
        double *src = malloc((size_t)R * C * 8), *deq = malloc((size_t)R * C * 8);
        for (size_t i = 0; i < (size_t)R * C; i++) src[i] = fx_unif(&rng);
        const uint8_t *w = fx_pack(src, R, C, MT_Q8_0, deq);
        mtensor t = { .data = w, .type = MT_Q8_0, .rows = R, .cols = C };
        float *x = malloc((size_t)N * C * 4), *out = malloc((size_t)N * R * 4);
        for (size_t i = 0; i < (size_t)N * C; i++) /* magnitudes over 2^-12 .. 2^3 */
            x[i] = (float)(fx_unif(&rng) * ldexp(1.0, (int)(fx_unif(&rng) * 7.5) - 4));
        /* and blocks of halfway values: x = amax * (k + 1/2) / 127, where the rounding of
         * the multiplier decides which integer x * mul goes to */
        for (size_t b = 0; b < (size_t)N * C / 32; b += 2) {
            float amax = (float)(1.0 + fx_unif(&rng)) * 0.37f;
            x[b * 32] = amax;
            for (int i = 1; i < 32; i++)
                x[b * 32 + i] = amax * (float)((i * 4 % 127) + 0.5) / 127.0f * (i & 1 ? 1.0f : -1.0f);
        }
        for (int pass = 0; pass < 2; pass++) {
            kernel_matmul(pass ? p : NULL, out, x, N, &t);
            int bad = 0;
            for (int r = 0; r < N; r++) {
                const float *xr = x + (size_t)r * C;
                for (int j = 0; j < R; j++) {
                    const uint8_t *wr = w + (size_t)j * nb * 34;
                    float lane[8] = { 0 };
                    for (int b = 0; b < nb; b++) {
                        float amax = 0.0f;
                        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xr[b * 32 + i]));
                        float mul = amax != 0.0f ? 127.0f / amax : 0.0f;
                        float dx = (float)(_Float16)(amax / 127.0f);
                        uint16_t hb = (uint16_t)(wr[b * 34] | wr[b * 34 + 1] << 8);
                        _Float16 hw;
                        memcpy(&hw, &hb, 2);
                        float dd = (float)hw * dx;
                        for (int l = 0; l < 8; l++) {
                            int sum = 0;
                            for (int i = 4 * l; i < 4 * l + 4; i++)
                                sum += (int8_t)wr[b * 34 + 2 + i] * (int)nearbyintf(xr[b * 32 + i] * mul);
                            lane[l] = fmaf(dd, (float)sum, lane[l]);
                        }
                    }
                    float want =
                        ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
                    float got = out[(size_t)r * R + j];
                    if (memcmp(&got, &want, 4) != 0 && bad++ < 5)
                        cr_log_error("shape %dx%d n=%d pool=%d: out[%d][%d] = %.9g, formula %.9g", R, C, N, pass, r, j,
                                     got, want);
                }
            }
            cr_expect_eq(bad, 0, "%d outputs differ from the formula (shape %dx%d, n=%d)", bad, R, C, N);
        }
        free(x);
        free(out);
        free(src);
        free(deq);
        free((void *)w);
    }
    model_pool_free(p);
}

/* Row r's result must not depend on n_rows, the row's position or the threads. */
Test(kernels, bit_identical_across_batches_and_threads)
{
    /* F16 twice: 203 columns take ggml_vec_dot_f16's order, 224 (a multiple of 16) the
     * 8-lane kernels, which decode one row with 512-bit vectors on AVX-512 builds */
    const int types[] = { MT_F32, MT_F16, MT_BF16, MT_Q8_0, PACKED_F32, MT_F16 };
    const int cols_of[] = { 203, 203, 203, 224, 203, 224 };
    model_pool *p1 = model_pool_new(1), *p2 = model_pool_new(2);
    uint64_t rng = 99;
    for (int ti = 0; ti < 6; ti++) {
        int R = 77, C = cols_of[ti], maxn = 19; /* packed: 4 panels + 13 tail rows */
        double *src = malloc((size_t)R * C * 8), *deq = malloc((size_t)R * C * 8);
        for (size_t i = 0; i < (size_t)R * C; i++) src[i] = fx_unif(&rng);
        int type = types[ti] == PACKED_F32 ? MT_F32 : types[ti];
        void *data = fx_pack(src, R, C, type, deq);
        mtensor w = { .data = data, .type = type, .rows = R, .cols = C };
        float *pk = maybe_pack(&w, types[ti]);
        float *probe = malloc((size_t)C * 4), *x = malloc((size_t)maxn * C * 4);
        float *ref = malloc((size_t)R * 4), *out = malloc((size_t)maxn * R * 4);
        for (int k = 0; k < C; k++) probe[k] = (float)fx_unif(&rng);
        kernel_matmul(p1, ref, probe, 1, &w);
        for (int n = 1; n <= maxn; n++)
            for (int at = 0; at < n; at += (n > 6 ? 3 : 1)) {
                for (size_t i = 0; i < (size_t)n * C; i++) x[i] = (float)fx_unif(&rng);
                memcpy(x + (size_t)at * C, probe, (size_t)C * 4);
                kernel_matmul(n % 2 ? p2 : p1, out, x, n, &w);
                cr_assert_eq(memcmp(out + (size_t)at * R, ref, (size_t)R * 4), 0, "type %d: row %d of %d differs",
                             types[ti], at, n);
            }
        /* grouped dispatch gives the same bits as separate calls */
        mtensor w2 = w;
        w2.rows = 50;
        float *o1 = malloc((size_t)maxn * R * 4), *o2 = malloc((size_t)maxn * 50 * 4);
        kernel_job jobs[2] = { { o1, &w }, { o2, &w2 } };
        kernel_matmul_multi(p2, jobs, 2, x, maxn);
        kernel_matmul(p1, out, x, maxn, &w);
        cr_assert_eq(memcmp(o1, out, (size_t)maxn * R * 4), 0);
        kernel_matmul(NULL, out, x, maxn, &w2);
        cr_assert_eq(memcmp(o2, out, (size_t)maxn * 50 * 4), 0);
        free(o1), free(o2), free(pk);
        free(src), free(deq), free(data), free(probe), free(x), free(ref), free(out);
    }
    model_pool_free(p1);
    model_pool_free(p2);
}

/* The packed F32 product for every batch size from 1 to 70 x rows (the batched
 * kernel's register blocks of every height and every split of the rows into blocks,
 * x blocks cut for L2 when cols is large), on W row counts that give panel groups of
 * each width and a row-major tail, on 1 and 2 threads: every element equals one fmaf
 * chain over k from 0, bit for bit -- the arithmetic of the tail rows and of
 * single-row decoding, so a sequence's logits do not depend on its batch. */
Test(kernels, packed_f32_every_batch_size_is_one_fmaf_chain)
{
    if (!kernel_can_pack(MT_F32)) cr_skip_test("no packed F32 kernel in this build");
    static const shape3 shapes[] = { { 117, 203, 70 }, { 131, 203, 70 }, { 64, 2048, 70 },
                                     { 40, 1, 70 },    { 50, 16, 70 },   { 13, 37, 20 } };
    model_pool *p2 = model_pool_new(2);
    cr_assert(p2);
    uint64_t rng = 4242;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int R = shapes[si].rows, C = shapes[si].cols, N = shapes[si].n;
        float *wsrc = malloc((size_t)R * C * 4), *x = malloc((size_t)N * C * 4);
        float *ref = malloc((size_t)N * R * 4), *out = malloc((size_t)N * R * 4);
        float *pk = aligned_alloc(64, ((size_t)R * C * 4 + 63) / 64 * 64);
        cr_assert(wsrc && x && ref && out && pk);
        for (size_t i = 0; i < (size_t)R * C; i++) wsrc[i] = (float)fx_unif(&rng);
        for (size_t i = 0; i < (size_t)N * C; i++) x[i] = (float)(fx_unif(&rng) * 3.0);
        for (int r = 0; r < N; r++)
            for (int j = 0; j < R; j++) {
                float f = 0.0f;
                for (int k = 0; k < C; k++) f = fmaf(x[(size_t)r * C + k], wsrc[(size_t)j * C + k], f);
                ref[(size_t)r * R + j] = f;
            }
        mtensor w = { .data = wsrc, .type = MT_F32, .rows = R, .cols = C };
        kernel_pack_f32(&w, pk, &w);
        for (int n = 1; n <= N; n++) {
            kernel_matmul(n % 2 ? p2 : NULL, out, x, n, &w);
            for (size_t e = 0; e < (size_t)n * R; e++)
                cr_assert(memcmp(&out[e], &ref[e], 4) == 0, "%dx%d, %d rows: out[%zu][%zu] %a, fmaf chain %a", R, C, n,
                          e / R, e % R, out[e], ref[e]);
        }
        free(wsrc), free(x), free(ref), free(out), free(pk);
    }
    model_pool_free(p2);
}

/* The packed F32 layout element by element (k-major 16-row panels, the tail rows
 * row-major after them), and panel-local: packing each panel alone, in place
 * through a copy of it (as model_load does), gives the same bytes as packing the
 * whole matrix at once.  Column counts cover the 8-wide transpose and its tail. */
Test(kernels, pack_f32_layout_and_panel_local)
{
    if (!kernel_can_pack(MT_F32)) cr_skip_test("no packed F32 kernel in this build");
    cr_assert_eq(kernel_pack_rows(MT_F32), KERNEL_PANEL);
    cr_assert_eq(kernel_pack_rows(MT_F16), 0);
    static const int rows_s[] = { 16, 37, 48 }, cols_s[] = { 1, 7, 8, 13, 64, 100 };
    uint64_t rng = 99;
    for (size_t a = 0; a < sizeof rows_s / sizeof *rows_s; a++)
        for (size_t b = 0; b < sizeof cols_s / sizeof *cols_s; b++) {
            int R = rows_s[a], C = cols_s[b], full = R / KERNEL_PANEL;
            size_t n = (size_t)R * C;
            float *src = malloc(n * 4), *whole = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
            float *inplace = aligned_alloc(64, (n * 4 + 63) / 64 * 64), *tmp = malloc((size_t)KERNEL_PANEL * C * 4);
            cr_assert(src && whole && inplace && tmp);
            for (size_t i = 0; i < n; i++) src[i] = (float)fx_unif(&rng);
            mtensor w = { .data = src, .type = MT_F32, .rows = R, .cols = C }, pw;
            kernel_pack_f32(&w, whole, &pw);
            cr_assert_eq(pw.panel, KERNEL_PANEL);
            for (int r = 0; r < R; r++)
                for (int k = 0; k < C; k++) {
                    size_t at = r < full * KERNEL_PANEL ? (size_t)(r / KERNEL_PANEL) * KERNEL_PANEL * C +
                                                              (size_t)k * KERNEL_PANEL + r % KERNEL_PANEL
                                                        : (size_t)r * C + k;
                    cr_assert_eq(whole[at], src[(size_t)r * C + k], "%dx%d: row %d col %d", R, C, r, k);
                }
            memcpy(inplace, src, n * 4);
            for (int p = 0; p < full; p++) {
                float *panel = inplace + (size_t)p * KERNEL_PANEL * C;
                memcpy(tmp, panel, (size_t)KERNEL_PANEL * C * 4);
                mtensor one = { .data = tmp, .type = MT_F32, .rows = KERNEL_PANEL, .cols = C }, unused;
                kernel_pack_f32(&one, panel, &unused);
            }
            cr_assert_eq(memcmp(inplace, whole, n * 4), 0, "%dx%d: panel by panel differs from whole", R, C);
            float *row = malloc((size_t)C * 4);
            for (int r = 0; r < R; r++) {
                mtensor_get_row(&pw, r, row);
                cr_assert_eq(memcmp(row, src + (size_t)r * C, (size_t)C * 4), 0, "get_row %d of %dx%d", r, R, C);
            }
            free(row);
            free(src);
            free(whole);
            free(inplace);
            free(tmp);
        }
}

Test(kernels, dot_and_axpy)
{
    uint64_t rng = 5;
    float a[77], b[77], y[77], y0[77];
    for (int i = 0; i < 77; i++) {
        a[i] = (float)fx_unif(&rng);
        b[i] = (float)fx_unif(&rng);
        y[i] = y0[i] = (float)fx_unif(&rng);
    }
    for (int n = 0; n <= 77; n += 7) {
        double e = 0, S = 0;
        for (int i = 0; i < n; i++) e += (double)a[i] * b[i], S += fabs((double)a[i] * b[i]);
        cr_assert(fabs(kernel_dot(a, b, n) - e) <= 1e-6 * S + 1e-30, "n=%d", n);
    }
    kernel_axpy(y, 0.5f, a, 77);
    for (int i = 0; i < 77; i++) cr_assert(fabs(y[i] - (y0[i] + 0.5 * a[i])) < 1e-6);
    cr_assert_eq(mtensor_row_bytes(MT_Q8_0, 64), 68);
    cr_assert_eq(mtensor_row_bytes(MT_Q8_0, 65), 0);
    cr_assert_eq(mtensor_row_bytes(MT_F16, 10), 20);
    cr_assert_eq(mtensor_row_bytes(MT_F32, 10), 40);
    cr_assert_eq(mtensor_row_bytes(MT_BF16, 3), 6);
    cr_assert_eq(mtensor_row_bytes(99, 3), 0);
}

/* ---- ggml's arithmetic for the steps between the matmuls ------------------------------ */

/* Golden values computed with llama.cpp's ggml (commit de3ff81, CPU backend built for
 * AVX-512: ggml_vec_soft_max_f32 with max 0 for exp, ggml_vec_swiglu_f32, and
 * ggml_vec_soft_max_f32 then the scale by 1 / sum for the softmax), as hex floats. */
static const float expf_golden[][2] = {
    { 0x0p+0, 0x1p+0 },
    { -0x1.ad7f2ap-24, 0x1.fffffcp-1 },
    { 0x1.ad7f2ap-24, 0x1.000002p+0 },
    { -0x1p-1, 0x1.368b2ep-1 },
    { 0x1p-1, 0x1.a61298p+0 },
    { -0x1p+0, 0x1.78b566p-2 },
    { 0x1p+0, 0x1.5bf0aap+1 },
    { -0x1.6p+1, 0x1.05d938p-4 },
    { 0x1.9p+1, 0x1.6c2886p+4 },
    { -0x1.49999ap+3, 0x1.1a228p-15 },
    { 0x1.49999ap+3, 0x1.d0927ep+14 },
    { -0x1.45999ap+5, 0x1.375506p-59 },
    { 0x1.45999ap+5, 0x1.a500f4p+58 },
    { -0x1.5cp+6, 0x1.666d0cp-126 },
    { 0x1.6p+6, 0x1.f1056ep+126 },
    { -0x1.5f999ap+6, 0x1.237324p-127 },
    { -0x1.7ep+6, 0x1.2acp-138 },
    { -0x1.9cccccp+6, 0x1p-149 },
    { -0x1.a2p+6, 0x0p+0 },
    { -0x1.ep+6, 0x0p+0 },
    { -0x1.2bccccp+7, 0x0p+0 },
    { 0x1.63999ap+6, INFINITY },
    { 0x1.ep+6, INFINITY },
    { -0x1.7ep+7, 0x0p+0 },
    { -0x1.9p+7, 0x0p+0 },
    { 0x1.9p+7, INFINITY },
    { -0x1.0624dep-10, 0x1.ff7cfep-1 },
    { 0x1.62e42ap-1, 0x1.fffffap+0 },
    { -0x1.8p+2, 0x1.44e52p-9 },
    { 0x1.ep+2, 0x1.c402b6p+10 },
    { -0x1.0a6666p+5, 0x1.f165d6p-49 },
    { 0x1p-2, 0x1.48b5e6p+0 },
};
static const float swiglu_golden[2][27] = {
    { -0x1.07bae4p-8, -0x1.9964aep-8, -0x1.38ac86p-7, -0x1.d454fep-7, -0x1.56466ap-6, -0x1.e4dd8p-6,  -0x1.496b56p-5,
      -0x1.a66946p-5, -0x1.f1352cp-5, -0x1.fdfe7ap-5, -0x1.9505ccp-5, -0x1.3f596p-6,  0x1.c18f0ep-7,  0x1.a490b4p-8,
      -0x1.bf308cp-4, -0x1.927afp-2,  -0x1.bdedfep-1, -0x1.89f1e8p+0, -0x1.30ebfap+1, -0x1.b1c35ep+1, -0x1.234fc8p+2,
      -0x1.779544p+2, -0x1.d5ad6cp+2, -0x1.1ed208p+3, -0x1.57c4bp+3,  -0x1.95b64p+3,  -0x1.d8acdap+3 },
    { -0x0p+0,         -0x0p+0,         -0x0p+0,         -0x0p+0,        -0x0p+0,        -0x1.42a02cp-109,
      -0x1.7b503cp-95, -0x1.b4c7c6p-81, -0x1.e8d7fcp-67, -0x1.067b5p-52, -0x1.07fddp-38, -0x1.d6d1cap-25,
      -0x1.37a4d8p-11, 0x1.60fp-3,      0x1.4996c4p+3,   0x1.44ccccp+4,  0x1.e4ccccp+4,  0x1.426666p+5,
      0x1.926666p+5,   0x1.e26666p+5,   0x1.193334p+6,   0x1.413334p+6,  0x1.693334p+6,  0x1.913334p+6,
      0x1.b93334p+6,   0x1.e13334p+6,   0x1.04999ap+7 },
};
static const float softmax_golden[21] = { 0x1.fbb1f8p-7, 0x1.29e49ap-6, 0x1.5d94ap-6,  0x1.9a3c92p-6, 0x1.e16accp-6,
                                          0x1.939b34p-4, 0x1.d9a2e4p-4, 0x1.4d9458p-7, 0x1.877592p-7, 0x1.a84cb4p-4,
                                          0x1.8121e4p-5, 0x1.c3f4fcp-5, 0x1.09303p-4,  0x1.373386p-4, 0x1.b65ad6p-8,
                                          0x1.6f8106p-6, 0x1.af451ap-6, 0x1.fa1994p-6, 0x1.28f4f8p-5, 0x1.5c7b6ap-5,
                                          0x1.24284ap-3 };

static double half_value(uint16_t h);

/* ggml's 16-float sum (AVX-512's horizontal add), written out. */
static float plain_sum16(const float *a)
{
    float h[8];
    for (int i = 0; i < 8; i++) h[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) h[i] = h[i] + h[i + 4];
    return (h[0] + h[2]) + (h[1] + h[3]);
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

Test(kernels, expf_ggml_equals_ggml)
{
    int differs_from_libm = 0;
    for (size_t i = 0; i < sizeof expf_golden / sizeof expf_golden[0]; i++) {
        float x = expf_golden[i][0], want = expf_golden[i][1], got = kernel_expf_ggml(x);
        cr_assert_eq(fbits(got), fbits(want), "exp(%a) = %a, ggml %a", x, got, want);
        differs_from_libm += fbits(expf(x)) != fbits(want);
    }
    cr_assert_gt(differs_from_libm, 0); /* the table tells the two apart */
    cr_assert(isnan(kernel_expf_ggml(NAN)));
    cr_assert_eq(kernel_expf_ggml(-INFINITY), 0.0f);
    cr_assert(isinf(kernel_expf_ggml(INFINITY)));
}

/* Rows of 27: the first 16 through the vector exp (whose lanes include ones far
 * out of range in the second row), the last 11 through libm's expf. */
Test(kernels, swiglu_equals_ggml)
{
    float g[27], u[27];
    for (int row = 0; row < 2; row++) {
        for (int i = 0; i < 27; i++) {
            g[i] = row ? -130.0f + 10.0f * i + 0.3f : -8.0f + 0.61f * i;
            u[i] = row ? 1.0f : 1.5f - 0.13f * i;
        }
        kernel_swiglu(g, u, 27);
        for (int i = 0; i < 27; i++)
            cr_assert_eq(fbits(g[i]), fbits(swiglu_golden[row][i]), "row %d [%d]: %a, ggml %a", row, i, g[i],
                         swiglu_golden[row][i]);
    }
}

/* kernel_attend's softmax against ggml's: q = e0 and k_t = (x_t, 0, ...) make the
 * scores x_t exactly (scale 1), v_t = e_t makes out[t] the probability of t. */
Test(kernels, attention_softmax_equals_ggml)
{
    enum { N = 21, HD = 32 };
    float q[HD] = { 1.0f }, k[N * HD] = { 0 }, v[N * HD] = { 0 }, out[HD], sc[N];
    for (int t = 0; t < N; t++) {
        k[t * HD] = 0.37f * (t % 7) - 0.21f * (t % 5) + (t == 9 ? 2.0f : 0.0f);
        v[t * HD + t] = 1.0f;
    }
    kernel_attend(out, q, k, v, N, HD, 1.0f, sc);
    for (int t = 0; t < N; t++)
        cr_assert_eq(fbits(out[t]), fbits(softmax_golden[t]), "p[%d] = %a, ggml %a", t, out[t], softmax_golden[t]);
    for (int t = N; t < HD; t++) cr_assert_eq(out[t], 0.0f);
}

/* F16 matrices whose rows are not a multiple of 16 long (llama.cpp's tinyBLAS takes
 * only multiples of 16; the rest go through ggml_vec_dot_f16): x rounded to half,
 * 4 x 16 fma chains over steps of 64 combined as (0 + 2) + (1 + 3), summed as 16
 * lanes into a double, the remaining products added in double, rounded to float. */
Test(kernels, f16_rows_not_a_multiple_of_16_follow_ggml_vec_dot_f16)
{
    static const int colss[] = { 172, 100, 40, 200 };
    uint64_t rng = 5;
    for (size_t ci = 0; ci < sizeof colss / sizeof colss[0]; ci++) {
        int R = 12, C = colss[ci], n = 3;
        double *src = malloc((size_t)R * C * 8), *deq = malloc((size_t)R * C * 8);
        for (size_t i = 0; i < (size_t)R * C; i++) src[i] = fx_unif(&rng);
        void *data = fx_pack(src, R, C, MT_F16, deq);
        mtensor w = { .data = data, .type = MT_F16, .rows = R, .cols = C };
        float *x = malloc((size_t)n * C * 4), *out = malloc((size_t)n * R * 4);
        for (size_t i = 0; i < (size_t)n * C; i++) x[i] = (float)(fx_unif(&rng) * 3.0);
        kernel_matmul(NULL, out, x, n, &w);
        for (int r = 0; r < n; r++)
            for (int j = 0; j < R; j++) {
                const float *xr = x + (size_t)r * C;
                float xh[256], wr[256];
                for (int i = 0; i < C; i++) {
                    xh[i] = (float)half_value(fx_f32_to_f16(xr[i]));
                    wr[i] = (float)deq[(size_t)j * C + i];
                }
                int np = C & ~63, i = 0;
                double s = 0;
                if (np) {
                    float acc[64] = { 0 }, lane[16];
                    for (; i < np; i++) acc[i % 64] = fmaf(xh[i], wr[i], acc[i % 64]);
                    for (int l = 0; l < 16; l++) lane[l] = (acc[l] + acc[l + 32]) + (acc[l + 16] + acc[l + 48]);
                    s = plain_sum16(lane);
                }
                for (; i < C; i++) s += (double)(xh[i] * wr[i]);
                float want = (float)s, got = out[(size_t)r * R + j];
                cr_assert_eq(fbits(got), fbits(want), "cols %d row %d out %d: %a, want %a", C, r, j, got, want);
            }
        free(src), free(deq), free(data), free(x), free(out);
    }
}

/* The test's own statement of ggml_vec_dot_f32's order (kernels.c, dot_ggml). */
static float plain_dot_ggml(const float *a, const float *b, int n)
{
    int np = n & ~63, i = 0;
    float s = 0.0f;
    if (np) {
        float acc[64] = { 0 }, lane[16];
        for (; i < np; i++) acc[i % 64] = fmaf(a[i], b[i], acc[i % 64]);
        for (int l = 0; l < 16; l++) lane[l] = (acc[l] + acc[l + 32]) + (acc[l + 16] + acc[l + 48]);
        s = plain_sum16(lane);
    }
    for (; i < n - (n - np) % 8; i++) s += a[i] * b[i];
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

/* kernel_attend (the vector paths for head sizes that are multiples of 8 up to 128,
 * the scalar one otherwise) gives exactly the plain statement of ggml's order: scores
 * by plain_dot_ggml, softmax by kernel_expf_ggml with sums of 16 in double, then
 * out[i] = sum of 64 fma chains (position t in chain t % 64) combined as ggml's
 * vec_dot does; and it is close to a double-precision softmax attention. */
Test(kernels, attend_equals_plain_composition)
{
    static const int hds[] = { 32, 48, 64, 96, 128, 40, 8, 13, 136, 192 };
    static const int ns[] = { 1, 2, 5, 16, 17, 23, 64, 65, 150 };
    uint64_t rng = 11;
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            int hd = hds[hi], n = ns[ni];
            float *q = malloc(sizeof(float) * hd), *k = malloc(sizeof(float) * hd * n),
                  *v = malloc(sizeof(float) * hd * n), *out = malloc(sizeof(float) * hd),
                  *plain = malloc(sizeof(float) * hd), *sc = malloc(sizeof(float) * n), *p = malloc(sizeof(float) * n);
            for (int i = 0; i < hd; i++) q[i] = (float)fx_unif(&rng);
            for (int i = 0; i < hd * n; i++) k[i] = (float)fx_unif(&rng), v[i] = (float)fx_unif(&rng);
            float scale = 1.0f / sqrtf((float)hd);
            kernel_attend(out, q, k, v, n, hd, scale, sc);
            float mx = -INFINITY;
            for (int t = 0; t < n; t++) {
                p[t] = plain_dot_ggml(q, k + (size_t)t * hd, hd) * scale;
                mx = p[t] > mx ? p[t] : mx;
            }
            double sum = 0;
            for (int t0 = 0; t0 < n; t0 += 16) {
                float a[16] = { 0 };
                for (int j = 0; j < 16 && t0 + j < n; j++) a[j] = p[t0 + j] = kernel_expf_ggml(p[t0 + j] - mx);
                sum += plain_sum16(a);
            }
            float inv = (float)(1.0 / sum);
            for (int t = 0; t < n; t++) p[t] *= inv;
            for (int i = 0; i < hd; i++) {
                float c[64] = { 0 }, lane[16];
                for (int t = 0; t < n; t++) c[t % 64] = fmaf(p[t], v[(size_t)t * hd + i], c[t % 64]);
                for (int l = 0; l < 16; l++) lane[l] = (c[l] + c[l + 32]) + (c[l + 16] + c[l + 48]);
                plain[i] = plain_sum16(lane);
            }
            cr_assert(memcmp(out, plain, sizeof(float) * hd) == 0, "hd=%d n=%d: not bit-identical", hd, n);
            /* double reference */
            double dm = -INFINITY, ds = 0, *pd = malloc(sizeof(double) * n);
            for (int t = 0; t < n; t++) {
                double d = 0;
                for (int i = 0; i < hd; i++) d += (double)q[i] * k[(size_t)t * hd + i];
                pd[t] = d * scale;
                dm = pd[t] > dm ? pd[t] : dm;
            }
            for (int t = 0; t < n; t++) pd[t] = exp(pd[t] - dm), ds += pd[t];
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int t = 0; t < n; t++) o += pd[t] / ds * v[(size_t)t * hd + i];
                cr_assert(fabs(out[i] - o) < 1e-5, "hd=%d n=%d i=%d: %g vs %g", hd, n, i, out[i], o);
            }
            free(pd), free(q), free(k), free(v), free(out), free(plain), free(sc), free(p);
        }
}

typedef struct {
    _Atomic int hits[1000];
    _Atomic int calls;
    int expect_n;
} pool_probe;

/* Exact IEEE half -> double, written independently of the kernels. */
static double half_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

Test(kernels, to_f16_rounds_to_nearest_even)
{
    static const struct {
        float f;
        uint16_t h;
    } cases[] = {
        { 0.0f, 0x0000 },
        { -0.0f, 0x8000 },
        { 1.0f, 0x3c00 },
        { -2.0f, 0xc000 },
        { 65504.0f, 0x7bff },
        { 65519.0f, 0x7bff },
        { 65520.0f, 0x7c00 },
        { 1e6f, 0x7c00 },
        { -INFINITY, 0xfc00 },
        { 0x1p-24f, 0x0001 },
        { 0x1p-25f, 0x0000 },
        { 0x1.8p-25f, 0x0001 },
        { 0x1p-14f, 0x0400 },
        { 0x1.ff8p-15f, 0x03ff },
        { 0x1.ffap-15f, 0x03ff }, /* largest subnormal; below the tie */
        { 0x1.ffcp-15f, 0x0400 }, /* tie: to even, up into the normals */
        { 1.0f + 0x1p-11f, 0x3c00 },
        { 1.0f + 0x3p-11f, 0x3c02 },
        { 1.0f + 0x1.8p-11f, 0x3c01 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* through the vector path (8 at a time) and the scalar tail (1) */
        float in[9];
        uint16_t out[9];
        for (int j = 0; j < 9; j++) in[j] = cases[i].f;
        kernel_to_f16(out, in, 9);
        for (int j = 0; j < 9; j++)
            cr_assert_eq(out[j], cases[i].h, "%a -> %#x, want %#x (lane %d)", (double)cases[i].f, out[j], cases[i].h,
                         j);
    }
    uint16_t nan_h;
    float nan_f = NAN;
    kernel_to_f16(&nan_h, &nan_f, 1);
    cr_assert((nan_h & 0x7c00) == 0x7c00 && (nan_h & 0x3ff), "NaN -> %#x", nan_h);
    /* random values: the nearest half (within half an ulp) */
    uint64_t rng = 5;
    for (int i = 0; i < 20000; i++) {
        float x = (float)(fx_unif(&rng) * ldexp(1.0, (int)(fx_unif(&rng) * 20) - 10));
        uint16_t h;
        kernel_to_f16(&h, &x, 1);
        double err = fabs(half_value(h) - x), ulp = ldexp(1.0, (int)floor(log2(fabs(x))) - 10);
        if (fabs(x) < 0x1p-14) ulp = 0x1p-24;
        cr_assert(err <= ulp / 2, "%a -> %#x (%g): off by %g ulp", (double)x, h, half_value(h), err / ulp);
    }
}

/* Attention over an F16 cache == attention over F32 copies of the same values. */
Test(kernels, attend_f16_equals_attend_on_converted_values)
{
    static const int hds[] = { 32, 48, 64, 96, 40, 8, 13 };
    uint64_t rng = 17;
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
        int hd = hds[hi];
        for (int n = 1; n <= 40; n += 3) {
            size_t e = (size_t)hd * n;
            float *q = malloc(sizeof(float) * hd), *k = malloc(sizeof(float) * e), *v = malloc(sizeof(float) * e),
                  *o16 = malloc(sizeof(float) * hd), *o32 = malloc(sizeof(float) * hd), *sc = malloc(sizeof(float) * n);
            uint16_t *kh = malloc(2 * e), *vh = malloc(2 * e);
            for (int i = 0; i < hd; i++) q[i] = (float)fx_unif(&rng);
            for (size_t i = 0; i < e; i++) k[i] = (float)fx_unif(&rng), v[i] = (float)fx_unif(&rng);
            kernel_to_f16(kh, k, (int)e);
            kernel_to_f16(vh, v, (int)e);
            for (size_t i = 0; i < e; i++) k[i] = (float)half_value(kh[i]), v[i] = (float)half_value(vh[i]);
            float scale = 1.0f / sqrtf((float)hd);
            kernel_attend_f16(o16, q, kh, vh, n, hd, scale, sc);
            kernel_attend(o32, q, k, v, n, hd, scale, sc);
            cr_assert(memcmp(o16, o32, sizeof(float) * hd) == 0, "hd=%d n=%d: not bit-identical", hd, n);
            free(q), free(k), free(v), free(o16), free(o32), free(sc), free(kh), free(vh);
        }
    }
}

static void probe_task(void *arg, int task, int n_tasks)
{
    pool_probe *pp = arg;
    if (n_tasks == pp->expect_n) atomic_fetch_add(&pp->hits[task], 1);
    atomic_fetch_add(&pp->calls, 1);
}

Test(kernels, pool_runs_every_task_once)
{
    for (int nt = 1; nt <= 3; nt++) {
        model_pool *p = model_pool_new(nt);
        cr_assert_eq(model_pool_size(p), nt);
        pool_probe *pp = calloc(1, sizeof *pp);
        for (int round = 0; round < 2000; round++) {
            int n = 1 + round % 97;
            pp->expect_n = n;
            for (int i = 0; i < n; i++) atomic_store(&pp->hits[i], 0);
            atomic_store(&pp->calls, 0);
            model_pool_run(p, probe_task, pp, n);
            cr_assert_eq(atomic_load(&pp->calls), n);
            for (int i = 0; i < n; i++)
                cr_assert_eq(atomic_load(&pp->hits[i]), 1, "threads %d round %d task %d", nt, round, i);
            if (round == 1000) usleep(2000); /* let the workers fall asleep once */
        }
        model_pool_run(p, probe_task, pp, 0);
        free(pp);
        model_pool_free(p);
    }
    model_pool_free(NULL);
    cr_assert_eq(model_pool_size(NULL), 1);
}

/* kernel_matmul_swiglu (w1, w3 and the gate in one dispatch) gives exactly what two
 * kernel_matmul calls and kernel_swiglu give, for matching types (packed F32, Q8_0,
 * F16: the fused path) and for mismatched ones (the fallback), over batch sizes that
 * exercise every register block, with one and three threads. */
Test(kernels, matmul_swiglu_equals_two_matmuls_and_the_gate)
{
    const int R = 80, C = 64; /* 5 panels: two tasks' worth at most, one row tail */
    const int pairs[][2] = { { PACKED_F32, PACKED_F32 },
                             { MT_Q8_0, MT_Q8_0 },
                             { MT_F16, MT_F16 },
                             { PACKED_F32, MT_Q8_0 },
                             { MT_F16, MT_F32 } };
    model_pool *pool3 = model_pool_new(3);
    cr_assert(pool3);
    uint64_t rng = 99;
    for (size_t pi = 0; pi < sizeof pairs / sizeof pairs[0]; pi++) {
        mtensor w[2];
        void *data[2];
        float *pk[2];
        for (int m = 0; m < 2; m++) {
            int type = pairs[pi][m], base = type == PACKED_F32 ? MT_F32 : type;
            double *src = malloc((size_t)R * C * 8), *deq = malloc((size_t)R * C * 8);
            for (size_t i = 0; i < (size_t)R * C; i++) src[i] = fx_unif(&rng);
            data[m] = fx_pack(src, R, C, base, deq);
            w[m] = (mtensor){ .data = data[m], .type = base, .rows = R, .cols = C };
            pk[m] = maybe_pack(&w[m], type);
            free(src);
            free(deq);
        }
        for (int n = 1; n <= 20; n += 3) {
            float *x = malloc((size_t)n * C * 4);
            for (size_t i = 0; i < (size_t)n * C; i++) x[i] = (float)(fx_unif(&rng) * 4.0);
            float *g = malloc((size_t)n * R * 4), *u = malloc((size_t)n * R * 4);
            float *g2 = malloc((size_t)n * R * 4), *u2 = malloc((size_t)n * R * 4);
            kernel_matmul(NULL, g, x, n, &w[0]);
            kernel_matmul(NULL, u, x, n, &w[1]);
            for (int r = 0; r < n; r++) kernel_swiglu(g + (size_t)r * R, u + (size_t)r * R, R);
            int gated_negative = 0;
            for (size_t i = 0; i < (size_t)n * R; i++) gated_negative += g[i] < 0.0f; /* silu(h) * u takes both signs */
            cr_assert_gt(gated_negative, 0);
            for (int t = 0; t < 2; t++) {
                model_pool *pool = t ? pool3 : NULL;
                memset(g2, 0xff, (size_t)n * R * 4);
                kernel_matmul_swiglu(pool, g2, u2, x, n, &w[0], &w[1]);
                cr_assert_eq(memcmp(g, g2, (size_t)n * R * 4), 0, "pair %zu, %d rows, %d threads: gated output differs",
                             pi, n, t ? 3 : 1);
            }
            free(x), free(g), free(u), free(g2), free(u2);
        }
        for (int m = 0; m < 2; m++) {
            free(pk[m]);
            free(data[m]);
        }
    }
    model_pool_free(pool3);
}
