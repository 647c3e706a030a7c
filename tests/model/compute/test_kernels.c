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
    const int types[] = { MT_F32, MT_F16, MT_BF16, MT_Q8_0, PACKED_F32 };
    const int cols_of[] = { 203, 203, 203, 224, 203 };
    model_pool *p1 = model_pool_new(1), *p2 = model_pool_new(2);
    uint64_t rng = 99;
    for (int ti = 0; ti < 5; ti++) {
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

/* kernel_attend has fast paths (four positions per block, the value sum kept in
 * registers for head sizes 32/48/64/96): each must give exactly what the plain
 * composition kernel_dot -> softmax -> kernel_axpy gives, and be close to a
 * double-precision softmax attention. */
Test(kernels, attend_equals_plain_composition)
{
    static const int hds[] = { 32, 48, 64, 96, 40, 8, 13 };
    uint64_t rng = 11;
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
        int hd = hds[hi];
        for (int n = 1; n <= 23; n += 3) {
            float *q = malloc(sizeof(float) * hd), *k = malloc(sizeof(float) * hd * n),
                  *v = malloc(sizeof(float) * hd * n), *out = malloc(sizeof(float) * hd),
                  *plain = calloc((size_t)hd, sizeof(float)), *sc = malloc(sizeof(float) * n),
                  *sc2 = malloc(sizeof(float) * n);
            for (int i = 0; i < hd; i++) q[i] = (float)fx_unif(&rng);
            for (int i = 0; i < hd * n; i++) k[i] = (float)fx_unif(&rng), v[i] = (float)fx_unif(&rng);
            float scale = 1.0f / sqrtf((float)hd);
            kernel_attend(out, q, k, v, n, hd, scale, sc);
            float mx = -INFINITY, sum = 0.0f;
            for (int t = 0; t < n; t++) {
                sc2[t] = kernel_dot(q, k + (size_t)t * hd, hd) * scale;
                mx = sc2[t] > mx ? sc2[t] : mx;
            }
            for (int t = 0; t < n; t++) sc2[t] = expf(sc2[t] - mx), sum += sc2[t];
            float isum = 1.0f / sum;
            for (int t = 0; t < n; t++) kernel_axpy(plain, sc2[t] * isum, v + (size_t)t * hd, hd);
            cr_assert(memcmp(out, plain, sizeof(float) * hd) == 0, "hd=%d n=%d: not bit-identical", hd, n);
            /* double reference */
            double dm = -INFINITY, ds = 0, *p = malloc(sizeof(double) * n);
            for (int t = 0; t < n; t++) {
                double d = 0;
                for (int i = 0; i < hd; i++) d += (double)q[i] * k[(size_t)t * hd + i];
                p[t] = d * scale;
                dm = p[t] > dm ? p[t] : dm;
            }
            for (int t = 0; t < n; t++) p[t] = exp(p[t] - dm), ds += p[t];
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int t = 0; t < n; t++) o += p[t] / ds * v[(size_t)t * hd + i];
                cr_assert(fabs(out[i] - o) < 1e-5, "hd=%d n=%d i=%d: %g vs %g", hd, n, i, out[i], o);
            }
            free(p), free(q), free(k), free(v), free(out), free(plain), free(sc), free(sc2);
        }
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
