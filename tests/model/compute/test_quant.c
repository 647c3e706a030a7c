/* test_quant.c -- the block-quantized types (model/quant.h) and `lmserve quantize`
 * (model_quantize).
 *
 *  - golden_values_of_llama_cpp: for every type, weights and activations made by the
 *    generator below (integer arithmetic and float sums only, so every machine makes the
 *    same floats) are quantized and multiplied; the quantized bytes' FNV-1a hash and
 *    every output's bits must equal what llama.cpp's ggml computed (de3ff81, built with
 *    -march=native on an AVX2/AVX-512 x86 machine: ggml_quantize_chunk, then ggml_mul_mat
 *    one activation row at a time on the CPU backend -- a matrix of 8 rows Q4_0 / Q4_K
 *    in its CPU_REPACK buffer, as llama.cpp places it).  Exact equality: the kernels
 *    restate ggml's arithmetic, so any other operation order fails this test.
 *  - kernels_equal_the_portable_statement: the AVX2 (and AVX-512) kernels equal
 *    quant_dot_ref (the portable code) bit for bit, for every type, for shapes that exercise every register
 *    block, 1..9 activation rows, 1 and 2 threads; a row's result is the same alone and
 *    inside any batch; a matrix packed in 8-row panels (quant_pack) gives the same
 *    outputs and rows.
 *  - every_batch_size_equals_one_row_and_the_statement: 2..70 activation rows against
 *    packed matrices with and without a row-major tail, every type: each output equals
 *    the row decoded alone and quant_dot_ref, bit for bit (the batched kernels' register
 *    blocks of 1..4 rows and the 64-row passes).
 *  - dot_against_double: each output against sum_k w_k x_k in double over the
 *    dequantized weights and the unquantized activations.  Tolerance per output:
 *      |out - exact| <= sum_k |w_k| e_k + 1e-5 S + M
 *    where e_k bounds the activation's quantization error (Q8_0 / Q8_1: step d_k =
 *    amax / 127 of x's block, e = d (1/2 + 127 * 2^-11): half a step plus the scale's
 *    rounding to an IEEE half; Q8_K: d (1/2 + 2^-16)), S = sum_k |w_k x_k| (float
 *    accumulation), and M (Q4_1 / Q5_1 only) = sum over blocks |m| * 32 amax * 2^-11 for
 *    the half-rounded block sum s.
 *  - round trip: quantize -> load -> the dequantized weights.  32-weight types, max
 *    error per weight (block amax A, range D = max - min): Q8_0 A/127 * 0.5625;
 *    Q4_0 A/8 * 1.02; Q5_0 A/16 * 1.04; Q4_1 D/15 * 0.51 + 2^-10 (|min| + D);
 *    Q5_1 D/31 * 0.52 + 2^-10 (|min| + D).  K-quants (scales fitted, then quantized):
 *    RMS error over RMS weight, on these roughly normal weights, at most Q2_K 0.45,
 *    Q3_K 0.25, Q4_K 0.12, Q5_K 0.06, Q6_K 0.03 (measured: 0.340, 0.193, 0.087, 0.044,
 *    0.024), and no weight off by more than its block's largest |w|.
 *  - recipes: which tensor gets which type (Q4_K_M's use_more_bits layers, the
 *    classifier, the fall-backs of stories260K's 64- and 172-wide rows).
 *  - corrupt files are refused with one line; model_quantize refuses bad input.
 */
#include <criterion/criterion.h>

#include "tests/model/helpers.h"
#include "model/formats/gguf_write.h"
#include "model/compute/kernels.h"
#include "model/compute/pool.h"
#include "model/half.h"
#include "model/loader.h"
#include "model/compute/quant.h"

#include <math.h>

/* ---- The generator (also used to make the golden values) ---------------------------- */

static uint64_t sm_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float u01(uint64_t *s) { return (float)(sm_next(s) >> 40) * 0x1p-24f; }
/* roughly normal (sum of four uniforms), an outlier one time in 64 */
static float gen_value(uint64_t *s)
{
    float v = ((u01(s) + u01(s)) + (u01(s) + u01(s))) - 2.0f;
    if (sm_next(s) % 64 == 0) v *= 6.0f;
    return v;
}
/* each row its own scale in [0.05, 1.05) */
static void gen_matrix(float *m, int rows, int cols, uint64_t seed)
{
    uint64_t s = seed;
    for (int r = 0; r < rows; r++) {
        float sc = 0.05f + u01(&s);
        for (int c = 0; c < cols; c++) m[(size_t)r * cols + c] = gen_value(&s) * sc;
    }
}
static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static const int all_types[] = { MT_Q4_0, MT_Q4_1, MT_Q5_0, MT_Q5_1, MT_Q8_0,
                                 MT_Q2_K, MT_Q3_K, MT_Q4_K, MT_Q5_K, MT_Q6_K };
#define N_TYPES ((int)(sizeof all_types / sizeof all_types[0]))

/* W (rows, cols) of type from the generator; the caller frees. */
static void *make_weights(int type, int rows, int cols, uint64_t seed, float **f32_out)
{
    float *w = malloc((size_t)rows * cols * 4);
    cr_assert_not_null(w);
    gen_matrix(w, rows, cols, seed);
    size_t nb = mtensor_row_bytes(type, cols) * (size_t)rows;
    cr_assert_gt(nb, 0);
    uint8_t *q = malloc(nb);
    cr_assert_not_null(q);
    cr_assert_eq(quant_quantize_rows(type, w, q, rows, cols), nb);
    if (f32_out)
        *f32_out = w;
    else
        free(w);
    return q;
}

/* ---- Golden values (llama.cpp's ggml, see the header) --------------------------------- */

typedef struct {
    int type, rows;
    uint64_t hash;
    uint32_t out[16];
} golden;

static const golden goldens[] = {
    { MT_Q4_0,
      5,
      0x8eeca673aa05b989ull,
      { 0x3ef7b7d6, 0x3e09d8b7, 0xbf05c83c, 0xbe5ccee5, 0x3e0d5c7d, 0xc12e051c, 0x3ff3183a, 0xc0df9790, 0x411cb9a1,
        0xbfd1c488 } },
    { MT_Q4_0,
      8,
      0x76fa10eb49447877ull,
      { 0x3f4f194e, 0xbf05b4d5, 0x4024558d, 0x3fa96603, 0x4003115e, 0x409fcb95, 0xbe33755a, 0x3f0d6678, 0x4069e919,
        0x406d3c4c, 0x40190b56, 0x3f963cc2, 0x3e8dec5e, 0x3e0f5d2b, 0x3ee8f2ae, 0xc04eee9f } },
    { MT_Q4_1,
      5,
      0xea986e8780125c97ull,
      { 0xbe9113af, 0x40d8ac12, 0x3f15cefe, 0x404feb24, 0x3fe4973c, 0x3e73e088, 0x405264c0, 0xc00aa930, 0x3f71a780,
        0x402a5490 } },
    { MT_Q4_1,
      8,
      0x79193ae0934124acull,
      { 0xbe942ea4, 0x3e01cb10, 0x3e60b188, 0xbd1feae0, 0xbee8fb4a, 0x3fbca9dd, 0x3f17a70a, 0x3edfe2ac, 0xc1138a72,
        0xbe3b5b40, 0xbf798240, 0x3f9d6f5c, 0x40a7bbb6, 0xc05b1e40, 0x40adca2e, 0xc0b25e80 } },
    { MT_Q5_0,
      5,
      0xcbc6db7309a8d907ull,
      { 0x3eeb6398, 0x408b8c0d, 0x3f57fce8, 0xbe90b828, 0x403ddc97, 0x3eafec68, 0xc042544d, 0x409e0b6a, 0xc04b188e,
        0x4100de5c } },
    { MT_Q5_0,
      8,
      0x143997e823daa66eull,
      { 0x3f486377, 0x3f441b14, 0x3dca38b8, 0x3dc08ef0, 0x3f0009e5, 0x3edac8df, 0x3e454721, 0xbd7449d9, 0x4180e320,
        0xc165aa5a, 0xc00e84ed, 0xc0367bb8, 0x3fa34749, 0x4074cb24, 0x408785ae, 0x406e2b23 } },
    { MT_Q5_1,
      5,
      0xf7cab3f432f95b77ull,
      { 0x3ec896f0, 0xc0642d5e, 0xc0387602, 0xbffe16d8, 0x3f55e732, 0xc02321c4, 0xc08f7d63, 0x3ef1e260, 0xbfb1b9f8,
        0x3eeffee0 } },
    { MT_Q5_1,
      8,
      0x9ca36de9e26e0a5eull,
      { 0xc0916c65, 0x3ed73768, 0xbf10a050, 0xc08f2fa2, 0xc0d8cf10, 0xbfac06e8, 0xbfb1c859, 0x4024f870, 0x3f0bf950,
        0x3dcba6bc, 0x3f23ca30, 0x3fb6648f, 0x3fa384c2, 0x3f3adc94, 0xbe13b14c, 0x4052b7ee } },
    { MT_Q8_0,
      5,
      0x5d043950dfdd908full,
      { 0xbf7a7b60, 0xbf5b2b2f, 0x3dcab9d8, 0xbc2af480, 0x3f266816, 0xbfcef10a, 0xc06ea6b6, 0x3f926a24, 0xbfb40065,
        0x401f4061 } },
    { MT_Q8_0,
      8,
      0xdba25e715b779f49ull,
      { 0xbebeadd7, 0xbef51574, 0x3eb83c37, 0xbfce76d3, 0x3f4c7f99, 0xc02adbf9, 0x408d9e46, 0x3ec36caa, 0xbe769134,
        0xc0141752, 0x3e1149d0, 0x401e8ab2, 0xbe9d06b2, 0x400bc674, 0x3eeac730, 0x3fbe9b7c } },
    { MT_Q2_K,
      5,
      0x19a15d800bb952efull,
      { 0x3fc4b1e2, 0xc0b0cf9b, 0xc0f2fbfe, 0x3d3de940, 0x3f2bd150, 0xc08b095d, 0xc0d2c11e, 0xc0b22da2, 0x3e8da537,
        0x3f010f48 } },
    { MT_Q2_K,
      8,
      0x0526377be4bf5d8cull,
      { 0x3e94bbf0, 0xc058e808, 0x41117f01, 0xbffe50f0, 0x3f8eda70, 0xc01bcab5, 0x40e70580, 0xc009bb1b, 0xbf4ace50,
        0xc1928548, 0x40a6651a, 0xc05a57e0, 0x4155ebc6, 0xc00711a6, 0x3d918600, 0x3f68abb4 } },
    { MT_Q3_K,
      5,
      0x12c560afd4758262ull,
      { 0x3f8c32f4, 0x4158320c, 0xc04b7ece, 0xbee64d48, 0xc0abc173, 0x3ffe87c0, 0x410e0aa0, 0xbf45f1dc, 0xc009d53e,
        0x40a1610c } },
    { MT_Q3_K,
      8,
      0x988d1f94d07311a1ull,
      { 0x3db567f7, 0x3d883b2c, 0x40302b0d, 0xbf27a3ca, 0x3f9447dd, 0xbf7996ae, 0xbe2c470c, 0x3e7c4133, 0x3e87b1de,
        0xbeb01363, 0x3f18577c, 0xbf595016, 0xbf5fddd2, 0x3f154424, 0x3e063146, 0x3ccb0768 } },
    { MT_Q4_K,
      5,
      0x8395e20aa4384b6bull,
      { 0x3e15615a, 0xbe2baad0, 0x3f491200, 0xbec554f8, 0xbf0799ce, 0xbfd26208, 0x3f960c7c, 0x40229942, 0x40576eac,
        0xc08c693a } },
    { MT_Q4_K,
      8,
      0x96a5a79696f246e4ull,
      { 0x3f3d1ccc, 0x4015f02a, 0xbdda0220, 0x3d360ca0, 0xbe6ab224, 0xbe85e3c2, 0x3d5b8b80, 0xbdf4a780, 0xbef14510,
        0xbf047a44, 0x405d8752, 0x3ce6a840, 0xbe8f2c6c, 0xbe0956d0, 0x3f6f7514, 0xbe077480 } },
    { MT_Q5_K,
      5,
      0x68f034ccc8223981ull,
      { 0xbe1bb260, 0x40750668, 0x4083c71e, 0x3e7fb286, 0xbfbaa534, 0xbf414530, 0xc17b4bae, 0x41648822, 0x3f71c59a,
        0x40ad3f74 } },
    { MT_Q5_K,
      8,
      0xa1884e62b523a7abull,
      { 0x3fcd362e, 0xbf22ba40, 0xbfb34f40, 0x3f02d6f0, 0x3f8a17aa, 0xbfd2b640, 0x4054d268, 0x3e1c6ae8, 0xbee5d810,
        0x3f0e21d4, 0xc01a86ac, 0x4034e43a, 0x3e301698, 0xbfe180f8, 0x3fd75aa8, 0x3e1cc25c } },
    { MT_Q6_K,
      5,
      0x7fe4c452f6d6a609ull,
      { 0xbf262678, 0x3ff6c814, 0xbee3f6dc, 0x3e0df9b8, 0x3fcaa2e3, 0x3f211218, 0xc0268520, 0xbf5bb158, 0x404be78c,
        0x40614a4a } },
    { MT_Q6_K,
      8,
      0x4082ea1cb973a30aull,
      { 0xbeb0c5aa, 0x3f1283a0, 0xc080dcc4, 0xbfb37b80, 0xbf688e06, 0x40b34a50, 0xc06aea0c, 0x3efb4cd0, 0xbf8cb1e6,
        0xbe946984, 0x3f60b790, 0xbf170ea8, 0xbe9ccc4e, 0x4127aa07, 0x408010a7, 0xc08ebca0 } },
};

Test(quant, golden_values_of_llama_cpp)
{
    const int K = 512, N = 2;
    model_pool *pools[2] = { NULL, model_pool_new(2) };
    cr_assert_not_null(pools[1]);
    for (size_t gi = 0; gi < sizeof goldens / sizeof goldens[0]; gi++) {
        const golden *g = &goldens[gi];
        int R = g->rows, t = g->type;
        float *x = malloc((size_t)N * K * 4), *y = malloc((size_t)N * R * 4);
        gen_matrix(x, N, K, 2000 + (uint64_t)t * 10 + (uint64_t)R);
        uint8_t *q = make_weights(t, R, K, 1000 + (uint64_t)t * 10 + (uint64_t)R, NULL);
        uint64_t h = fnv1a(q, mtensor_row_bytes(t, K) * (size_t)R);
        cr_expect_eq(h, g->hash, "%s, %d rows: quantized bytes hash %016llx, llama.cpp's %016llx", quant_type_name(t),
                     R, (unsigned long long)h, (unsigned long long)g->hash);
        mtensor w = { .data = q, .type = t, .rows = R, .cols = K };
        cr_assert_eq(quant_is_serial(t, R), (t == MT_Q4_0 || t == MT_Q4_K) && R == 8);
        for (int p = 0; p < 2; p++) {
            memset(y, 0, (size_t)N * R * 4);
            kernel_matmul(pools[p], y, x, N, &w); /* both rows in one call */
            for (int i = 0; i < N * R; i++) {
                uint32_t b;
                memcpy(&b, &y[i], 4);
                cr_expect_eq(b, g->out[i], "%s, %d rows, output %d (pool %d): %08x (%.9g), llama.cpp %08x",
                             quant_type_name(t), R, i, p, b, (double)y[i], g->out[i]);
            }
        }
        free(q);
        free(x);
        free(y);
    }
    model_pool_free(pools[1]);
}

/* ---- The kernels against the portable statement ---------------------------------------- */

Test(quant, kernels_equal_the_portable_statement)
{
    model_pool *pool = model_pool_new(2);
    cr_assert_not_null(pool);
    const struct {
        int rows, cols;
    } shapes[] = { { 8, 256 }, { 24, 768 }, { 13, 512 }, { 3, 256 }, { 40, 1024 }, { 17, 256 } };
    for (int ti = 0; ti < N_TYPES; ti++) {
        int t = all_types[ti];
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int R = shapes[si].rows, K = shapes[si].cols, N = 9;
            uint8_t *q = make_weights(t, R, K, 77 + (uint64_t)ti * 100 + si, NULL);
            mtensor w = { .data = q, .type = t, .rows = R, .cols = K };
            float *x = malloc((size_t)N * K * 4), *y = malloc((size_t)N * R * 4), *y1 = malloc((size_t)R * 4);
            gen_matrix(x, N, K, 999 + (uint64_t)si);
            /* the portable statement, row by row */
            int fmt = quant_act_format(t);
            void *abuf = malloc(quant_act_bytes(fmt, K, N));
            quant_act a;
            quant_act_init(&a, fmt, K, N, abuf);
            quant_act_rows(&a, x, 0, N);
            for (int n = 1; n <= N; n += 3) {
                kernel_matmul(n % 2 ? pool : NULL, y, x, n, &w);
                for (int r = 0; r < n; r++)
                    for (int j = 0; j < R; j++) {
                        float ref = quant_dot_ref(&a, r, &w, j);
                        cr_assert(memcmp(&ref, &y[(size_t)r * R + j], 4) == 0,
                                  "%s %dx%d, %d rows: out[%d][%d] = %.9g, the statement %.9g", quant_type_name(t), R, K,
                                  n, r, j, (double)y[(size_t)r * R + j], (double)ref);
                    }
            }
            /* the packed layout (8-row panels): the same outputs and rows */
            if (R >= QUANT_PANEL) {
                size_t nbytes = mtensor_row_bytes(t, K) * (size_t)R;
                uint8_t *pk = malloc(nbytes);
                mtensor wp;
                quant_pack(&w, pk, &wp);
                cr_assert_eq(wp.panel, QUANT_PANEL);
                float *yp = malloc((size_t)N * R * 4), *r1 = malloc((size_t)K * 4), *r2 = malloc((size_t)K * 4);
                for (int n = 1; n <= N; n += 4) {
                    kernel_matmul(pool, y, x, n, &w);
                    kernel_matmul(n % 2 ? NULL : pool, yp, x, n, &wp);
                    cr_assert(memcmp(y, yp, (size_t)n * R * 4) == 0, "%s %dx%d, %d rows: packed differs",
                              quant_type_name(t), R, K, n);
                    /* and each output against the statement itself (decoding one row takes
                     * kernels of its own on packed panels) */
                    for (int r = 0; r < n; r++)
                        for (int j = 0; j < R; j++) {
                            float ref = quant_dot_ref(&a, r, &wp, j);
                            cr_assert(memcmp(&ref, &yp[(size_t)r * R + j], 4) == 0,
                                      "%s %dx%d packed, %d rows: out[%d][%d] = %.9g, the statement %.9g",
                                      quant_type_name(t), R, K, n, r, j, (double)yp[(size_t)r * R + j], (double)ref);
                        }
                }
                for (int j = 0; j < R; j++) {
                    mtensor_get_row(&w, j, r1);
                    mtensor_get_row(&wp, j, r2);
                    cr_assert(memcmp(r1, r2, (size_t)K * 4) == 0, "%s: packed row %d differs", quant_type_name(t), j);
                }
                free(pk);
                free(yp);
                free(r1);
                free(r2);
            }
            /* a row alone equals the same row inside the batch of 9 */
            kernel_matmul(pool, y, x, N, &w);
            for (int r = 0; r < N; r += 4) {
                kernel_matmul(NULL, y1, x + (size_t)r * K, 1, &w);
                cr_assert(memcmp(y1, y + (size_t)r * R, (size_t)R * 4) == 0, "%s %dx%d: row %d differs alone",
                          quant_type_name(t), R, K, r);
            }
            free(abuf);
            free(q);
            free(x);
            free(y);
            free(y1);
        }
    }
    model_pool_free(pool);
}

/* Every batch size from 2 to 70 rows (the batched kernels' register blocks of 1..4 rows,
 * and past the 64-row pass over a task's weights), against a matrix packed in 8-row panels
 * with a row-major tail and one without a tail (serial Q4_0 / Q4_K): each output equals
 * the same row decoded alone and quant_dot_ref, bit for bit. */
Test(quant, every_batch_size_equals_one_row_and_the_statement)
{
    model_pool *pool = model_pool_new(2);
    cr_assert_not_null(pool);
    const int NMAX = 70, K = 512;
    const int shapes[] = { 24, 19 };
    float *x = malloc((size_t)NMAX * K * 4);
    cr_assert_not_null(x);
    gen_matrix(x, NMAX, K, 4242);
    for (int ti = 0; ti < N_TYPES; ti++) {
        int t = all_types[ti];
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int R = shapes[si];
            uint8_t *q = make_weights(t, R, K, 555 + (uint64_t)ti * 10 + si, NULL);
            mtensor w = { .data = q, .type = t, .rows = R, .cols = K }, wp;
            uint8_t *pk = malloc(mtensor_row_bytes(t, K) * (size_t)R);
            float *ref = malloc((size_t)NMAX * R * 4), *one = malloc((size_t)NMAX * R * 4),
                  *y = malloc((size_t)NMAX * R * 4);
            cr_assert(pk && ref && one && y);
            quant_pack(&w, pk, &wp);
            cr_assert_eq(wp.panel, QUANT_PANEL);
            int fmt = quant_act_format(t);
            void *abuf = malloc(quant_act_bytes(fmt, K, NMAX));
            cr_assert_not_null(abuf);
            quant_act a;
            quant_act_init(&a, fmt, K, NMAX, abuf);
            quant_act_rows(&a, x, 0, NMAX);
            for (int r = 0; r < NMAX; r++) {
                kernel_matmul(NULL, one + (size_t)r * R, x + (size_t)r * K, 1, &wp);
                for (int j = 0; j < R; j++) ref[(size_t)r * R + j] = quant_dot_ref(&a, r, &wp, j);
            }
            cr_assert(memcmp(one, ref, (size_t)NMAX * R * 4) == 0, "%s %dx%d: one row differs from the statement",
                      quant_type_name(t), R, K);
            /* every type and shape is checked (a failure names its first differing output) */
            int bad = 0, bn = 0, bi = 0;
            float bv = 0.0f;
            for (int n = 2; n <= NMAX; n++) {
                kernel_matmul(n % 3 ? pool : NULL, y, x, n, &wp);
                for (int i = 0; i < n * R; i++)
                    if (memcmp(&y[i], &ref[i], 4) != 0 && bad++ == 0) {
                        bn = n;
                        bi = i;
                        bv = y[i];
                    }
            }
            cr_expect_eq(bad, 0, "%s %dx%d packed: %d outputs differ; first: %d rows, out[%d][%d] = %a, one row alone %a",
                         quant_type_name(t), R, K, bad, bn, bi / R, bi % R, (double)bv, (double)ref[bi]);
            free(abuf);
            free(q);
            free(pk);
            free(ref);
            free(one);
            free(y);
        }
    }
    free(x);
    model_pool_free(pool);
}

/* ---- Against double precision ---------------------------------------------------------- */

Test(quant, dot_against_double)
{
    model_pool *pool = model_pool_new(2);
    const struct {
        int rows, cols, n;
    } shapes[] = { { 16, 256, 3 }, { 12, 1024, 2 }, { 8, 2048, 1 }, { 7, 512, 5 } };
    for (int ti = 0; ti < N_TYPES; ti++) {
        int t = all_types[ti], fmt = quant_act_format(t), blk = fmt == QACT_Q8_K ? 256 : 32;
        double worst = 0;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int R = shapes[si].rows, K = shapes[si].cols, N = shapes[si].n;
            uint8_t *q = make_weights(t, R, K, 5 + (uint64_t)ti * 31 + si, NULL);
            mtensor w = { .data = q, .type = t, .rows = R, .cols = K };
            float *x = malloc((size_t)N * K * 4), *y = malloc((size_t)N * R * 4), *wd = malloc((size_t)K * 4);
            gen_matrix(x, N, K, 4242 + (uint64_t)si);
            for (size_t i = 0; i < (size_t)N * K; i++) x[i] *= 3.0f;
            kernel_matmul(pool, y, x, N, &w);
            for (int j = 0; j < R; j++) {
                mtensor_get_row(&w, j, wd);
                for (int r = 0; r < N; r++) {
                    const float *xr = x + (size_t)r * K;
                    double exact = 0, S = 0, E = 0, M = 0;
                    for (int k = 0; k < K; k++) {
                        exact += (double)wd[k] * xr[k];
                        S += fabs((double)wd[k] * xr[k]);
                    }
                    for (int b = 0; b < K / blk; b++) {
                        double amax = 0, wsum = 0;
                        for (int k = b * blk; k < (b + 1) * blk; k++) {
                            amax = fmax(amax, fabs(xr[k]));
                            wsum += fabs(wd[k]);
                        }
                        double d = amax / 127.0;
                        E += wsum * d * (blk == 32 ? 0.5 + 127.0 * 0x1p-11 : 0.5 + 0x1p-16);
                        if (t == MT_Q4_1 || t == MT_Q5_1) {
                            uint16_t mh;
                            memcpy(&mh, q + (size_t)j * mtensor_row_bytes(t, K) + (size_t)b * quant_block_bytes(t) + 2,
                                   2);
                            M += fabs(model_f16_to_f32(mh)) * 32 * amax * 0x1p-11;
                        }
                    }
                    double tol = E + 1e-5 * S + M, err = fabs(y[(size_t)r * R + j] - exact);
                    cr_assert(err <= tol, "%s %dx%d: out[%d][%d] = %.9g, exact %.9g, error %.3g > %.3g",
                              quant_type_name(t), R, K, r, j, (double)y[(size_t)r * R + j], exact, err, tol);
                    if (tol > 0 && err / tol > worst) worst = err / tol;
                }
            }
            free(q);
            free(x);
            free(y);
            free(wd);
        }
        cr_log_info("%s: worst error / tolerance %.3f", quant_type_name(t), worst);
    }
    model_pool_free(pool);
}

/* ---- Files ------------------------------------------------------------------------------- */

typedef struct {
    int dim, hidden, layers, heads, kv_heads, vocab;
    int tied;
    /* an extra raw tensor replacing the generated one of that name (corruption tests) */
    const char *raw_name;
    int raw_type, raw_dims;
    int64_t raw_ne[2];
    const void *raw_data;
    size_t raw_bytes;
} fspec;

static void add_f32(gguf_writer *w, const fspec *s, const char *name, int rows, int cols, uint64_t seed)
{
    int64_t ne[2] = { cols, rows };
    if (s->raw_name && !strcmp(s->raw_name, name)) {
        cr_assert_eq(gguf_writer_tensor(w, name, s->raw_type, s->raw_ne, s->raw_dims, s->raw_data, s->raw_bytes), 0);
        return;
    }
    size_t n = (size_t)cols * (size_t)(rows ? rows : 1);
    float *v = malloc(n * 4);
    if (rows)
        gen_matrix(v, rows, cols, seed);
    else
        for (size_t i = 0; i < n; i++) v[i] = 1.0f + 0.01f * (float)(i % 7);
    cr_assert_eq(gguf_writer_tensor(w, name, MT_F32, ne, rows ? 2 : 1, v, n * 4), 0, "%s", name);
    free(v);
}

/* A llama GGUF with F32 weights from the generator and a small vocabulary. */
static void build_file(const fspec *s, const char *path)
{
    gguf_writer *w = gguf_writer_new();
    cr_assert_not_null(w);
    gguf_writer_kv_str(w, "general.architecture", "llama");
    gguf_writer_kv_u32(w, "llama.context_length", 64);
    gguf_writer_kv_u32(w, "llama.embedding_length", (uint32_t)s->dim);
    gguf_writer_kv_u32(w, "llama.block_count", (uint32_t)s->layers);
    gguf_writer_kv_u32(w, "llama.feed_forward_length", (uint32_t)s->hidden);
    gguf_writer_kv_u32(w, "llama.attention.head_count", (uint32_t)s->heads);
    gguf_writer_kv_u32(w, "llama.attention.head_count_kv", (uint32_t)s->kv_heads);
    gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_writer_kv_str(w, "tokenizer.ggml.model", "llama");
    char **toks = calloc((size_t)s->vocab, sizeof *toks);
    for (int i = 0; i < s->vocab; i++) {
        toks[i] = th_fake_piece(i);
        cr_assert_not_null(toks[i]);
    }
    cr_assert_eq(gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, (size_t)s->vocab), 0);
    for (int i = 0; i < s->vocab; i++) free(toks[i]);
    free(toks);
    int hd = s->dim / s->heads;
    add_f32(w, s, "token_embd.weight", s->vocab, s->dim, 1);
    add_f32(w, s, "output_norm.weight", 0, s->dim, 0);
    if (!s->tied) add_f32(w, s, "output.weight", s->vocab, s->dim, 2);
    for (int l = 0; l < s->layers; l++) {
        char n[64];
        uint64_t sd = 100 + 10 * (uint64_t)l;
#define T(suffix, rows, cols)                                 \
    do {                                                      \
        snprintf(n, sizeof n, "blk.%d.%s.weight", l, suffix); \
        add_f32(w, s, n, rows, cols, sd++);                   \
    } while (0)
        T("attn_norm", 0, s->dim);
        T("attn_q", s->heads * hd, s->dim);
        T("attn_k", s->kv_heads * hd, s->dim);
        T("attn_v", s->kv_heads * hd, s->dim);
        T("attn_output", s->dim, s->heads * hd);
        T("ffn_norm", 0, s->dim);
        T("ffn_gate", s->hidden, s->dim);
        T("ffn_down", s->dim, s->hidden);
        T("ffn_up", s->hidden, s->dim);
#undef T
    }
    char err[256];
    cr_assert_eq(gguf_writer_write(w, path, err, sizeof err), 0, "%s", err);
    gguf_writer_free(w);
}

static void quantize_ok(const char *in, const char *out, const char *type)
{
    char err[512] = "";
    model_quantize_opts o = { .type = type, .n_threads = 2 };
    int rc = model_quantize(in, out, &o, err, sizeof err);
    cr_assert_eq(rc, 0, "quantize %s to %s: %s", in, type, err);
}

static model *load_ok(const char *path)
{
    model *m = NULL;
    char err[512] = "";
    model_load_opts lo = { .n_threads = 2 };
    cr_assert_eq(model_load(&m, path, &lo, err, sizeof err), 0, "%s", err);
    return m;
}

/* The matrices of layer l in loader order, and their generator seeds in build_file. */
static void layer_mats(model *m, int l, const mtensor *out[7])
{
    layer_weights *w = &m->layers[l];
    out[0] = &w->wq, out[1] = &w->wk, out[2] = &w->wv, out[3] = &w->wo;
    out[4] = &w->w1, out[5] = &w->w2, out[6] = &w->w3;
}
static const uint64_t mat_seed_off[7] = { 1, 2, 3, 4, 6, 7, 8 }; /* q k v o gate down up */

Test(quant, round_trip_quantize_load)
{
    th_tmp t;
    th_tmp_init(&t);
    fspec s = { .dim = 256, .hidden = 512, .layers = 2, .heads = 4, .kv_heads = 2, .vocab = 300, .tied = 0 };
    char src[128];
    snprintf(src, sizeof src, "%s", th_tmp_file(&t, "f32.gguf"));
    build_file(&s, src);
    const struct {
        const char *recipe;
        int type;
        double rms;
    } cases[] = {
        { "Q8_0", MT_Q8_0, 0 },    { "Q4_0", MT_Q4_0, 0 },    { "Q4_1", MT_Q4_1, 0 },    { "Q5_0", MT_Q5_0, 0 },
        { "Q5_1", MT_Q5_1, 0 },    { "Q2_K", MT_Q2_K, 0.45 }, { "Q3_K", MT_Q3_K, 0.25 }, { "Q4_K", MT_Q4_K, 0.12 },
        { "Q5_K", MT_Q5_K, 0.06 }, { "Q6_K", MT_Q6_K, 0.03 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char dst[128];
        snprintf(dst, sizeof dst, "%s", th_tmp_file(&t, "q.gguf"));
        quantize_ok(src, dst, cases[c].recipe);
        model *m = load_ok(dst);
        int K = 0, ty = cases[c].type;
        float *orig = NULL, *row = malloc(512 * 4);
        double se = 0, sw = 0, worst = 0;
        for (int l = 0; l < s.layers; l++) {
            const mtensor *mats[7];
            layer_mats(m, l, mats);
            for (int i = 0; i < 7; i++) {
                const mtensor *mt = mats[i];
                /* Q2_K's recipe gives attn_v Q3_K, ffn_down and attn_output Q3_K */
                int want = ty;
                if (!strcmp(cases[c].recipe, "Q2_K") && (i == 2 || i == 3 || i == 5)) want = MT_Q3_K;
                cr_assert_eq(mt->type, want, "%s: layer %d matrix %d is %s", cases[c].recipe, l, i,
                             mtensor_type_name(mt->type));
                K = mt->cols;
                orig = realloc(orig, (size_t)mt->rows * K * 4);
                gen_matrix(orig, mt->rows, K, 100 + 10 * (uint64_t)l + mat_seed_off[i]);
                int blk = quant_block_elems(mt->type);
                for (int r = 0; r < mt->rows; r++) {
                    mtensor_get_row(mt, r, row);
                    const float *o = orig + (size_t)r * K;
                    for (int b = 0; b < K / blk; b++) {
                        double amax = 0, mn = INFINITY, mx = -INFINITY;
                        for (int k = b * blk; k < (b + 1) * blk; k++) {
                            amax = fmax(amax, fabs(o[k]));
                            mn = fmin(mn, o[k]);
                            mx = fmax(mx, o[k]);
                        }
                        double D = mx - mn, bound;
                        switch (mt->type) {
                        case MT_Q8_0: bound = amax / 127 * 0.5625; break;
                        case MT_Q4_0: bound = amax / 8 * 1.02; break;
                        case MT_Q5_0: bound = amax / 16 * 1.04; break;
                        case MT_Q4_1: bound = D / 15 * 0.51 + 0x1p-10 * (fabs(mn) + D); break;
                        case MT_Q5_1: bound = D / 31 * 0.52 + 0x1p-10 * (fabs(mn) + D); break;
                        default: bound = amax; break; /* K-quants: RMS below */
                        }
                        for (int k = b * blk; k < (b + 1) * blk; k++) {
                            double e = fabs((double)row[k] - o[k]);
                            cr_assert(e <= bound, "%s: layer %d matrix %d row %d weight %d: %.6g for %.6g (bound %.3g)",
                                      mtensor_type_name(mt->type), l, i, r, k, (double)row[k], (double)o[k], bound);
                            if (bound > 0 && e / bound > worst) worst = e / bound;
                            if (mt->type == ty) {
                                se += e * e;
                                sw += (double)o[k] * o[k];
                            }
                        }
                    }
                }
            }
        }
        double rel = sqrt(se / sw);
        if (cases[c].rms > 0)
            cr_assert(rel <= cases[c].rms, "%s: RMS error / RMS weight %.4f > %.2f", cases[c].recipe, rel,
                      cases[c].rms);
        cr_log_info("%s: RMS error / RMS weight %.4f, worst error / bound %.3f", cases[c].recipe, rel, worst);
        /* the classifier: Q6_K (Q8_0 stays Q8_0; the plain K types are every matrix) */
        int pure =
            !strcmp(cases[c].recipe, "Q3_K") || !strcmp(cases[c].recipe, "Q4_K") || !strcmp(cases[c].recipe, "Q5_K");
        cr_assert_eq(m->output.type, pure || ty == MT_Q8_0 ? ty : MT_Q6_K, "%s: output %s", cases[c].recipe,
                     mtensor_type_name(m->output.type));
        /* and the model runs: finite logits */
        model_seq *sq = model_seq_new(m, 16);
        float *lg = malloc((size_t)s.vocab * 4);
        int32_t toks[3] = { 1, 40, 77 };
        cr_assert_eq(model_seq_eval(m, sq, toks, 3, lg), 0);
        for (int i = 0; i < s.vocab; i++) cr_assert(isfinite(lg[i]));
        free(lg);
        model_seq_free(sq);
        free(orig);
        free(row);
        model_free(m);
    }
    th_tmp_cleanup(&t);
}

/* Q4_K_M on 8 layers: attn_v and ffn_down Q6_K in the layers use_more_bits picks
 * (i < n/8, i >= 7n/8, (i - n/8) % 3 == 2: layers 0, 3, 6, 7), Q4_K elsewhere; the
 * tied embedding Q6_K; Q5_K_M the same with Q5_K. */
Test(quant, k_m_recipes)
{
    th_tmp t;
    th_tmp_init(&t);
    fspec s = { .dim = 256, .hidden = 256, .layers = 8, .heads = 2, .kv_heads = 2, .vocab = 260, .tied = 1 };
    char src[128];
    snprintf(src, sizeof src, "%s", th_tmp_file(&t, "f32.gguf"));
    build_file(&s, src);
    const char *recipes[2] = { "Q4_K_M", "Q5_K_M" };
    for (int c = 0; c < 2; c++) {
        char dst[128];
        snprintf(dst, sizeof dst, "%s", th_tmp_file(&t, "km.gguf"));
        quantize_ok(src, dst, recipes[c]);
        model *m = load_ok(dst);
        int base = c == 0 ? MT_Q4_K : MT_Q5_K;
        for (int l = 0; l < 8; l++) {
            int more = l == 0 || l == 3 || l == 6 || l == 7;
            layer_weights *w = &m->layers[l];
            cr_assert_eq(w->wv.type, more ? MT_Q6_K : base, "%s layer %d attn_v", recipes[c], l);
            cr_assert_eq(w->w2.type, more ? MT_Q6_K : base, "%s layer %d ffn_down", recipes[c], l);
            cr_assert_eq(w->wq.type, base);
            cr_assert_eq(w->wk.type, base);
            cr_assert_eq(w->wo.type, base);
            cr_assert_eq(w->w1.type, base);
            cr_assert_eq(w->w3.type, base);
        }
        cr_assert_eq(m->tok_embd.type, MT_Q6_K);
        cr_assert_eq(m->output.data, m->tok_embd.data);
        cr_assert_str_eq(model_get_info(m)->weight_type, c == 0 ? "Q4_K" : "Q5_K");
        model_free(m);
    }
    th_tmp_cleanup(&t);
}

/* stories260K (dim 64, hidden 172): rows of 64 and 172 are not whole 256-blocks, and
 * 172 not whole 32-blocks: Q4_K_M falls back to Q5_0 (Q4_K) and Q8_0 (Q6_K, the
 * classifier), ffn_down (172 wide) to F16 in every recipe. */
Test(quant, stories260k_fallbacks)
{
    th_tmp t;
    th_tmp_init(&t);
    char *src = th_model_path("stories260K.gguf");
    const struct {
        const char *recipe;
        int mat, out;
    } cases[] = {
        { "Q8_0", MT_Q8_0, MT_Q8_0 },   { "Q4_0", MT_Q4_0, MT_Q8_0 }, { "Q4_K_M", MT_Q5_0, MT_Q8_0 },
        { "Q5_K_M", MT_Q5_1, MT_Q8_0 }, { "Q2_K", MT_Q4_0, MT_Q8_0 },
    };
    model *ref = load_ok(src);
    int V = model_get_info(ref)->vocab_size;
    float *lr = malloc((size_t)V * 4), *lq = malloc((size_t)V * 4);
    int32_t toks[6] = { 1, 403, 407, 261, 378, 260 };
    model_seq *sr = model_seq_new(ref, 16);
    cr_assert_eq(model_seq_eval(ref, sr, toks, 6, lr), 0);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char dst[128];
        snprintf(dst, sizeof dst, "%s", th_tmp_file(&t, "s.gguf"));
        quantize_ok(src, dst, cases[c].recipe);
        model *m = load_ok(dst);
        for (int l = 0; l < m->info.n_layers; l++) {
            layer_weights *w = &m->layers[l];
            cr_assert_eq(w->wq.type, cases[c].mat, "%s: attn_q is %s", cases[c].recipe, mtensor_type_name(w->wq.type));
            cr_assert_eq(w->w1.type, cases[c].mat);
            cr_assert_eq(w->w2.type, MT_F16, "%s: ffn_down is %s", cases[c].recipe, mtensor_type_name(w->w2.type));
        }
        cr_assert_eq(m->output.type, cases[c].out, "%s: output is %s", cases[c].recipe,
                     mtensor_type_name(m->output.type));
        /* the quantized model's logits follow the F32 model's: correlation over the
         * vocabulary, and the F32 model's favourite among the quantized model's top 5 */
        model_seq *sq = model_seq_new(m, 16);
        cr_assert_eq(model_seq_eval(m, sq, toks, 6, lq), 0);
        int best = 0, rank = 0;
        double mr = 0, mq = 0, srr = 0, sqq = 0, srq = 0;
        for (int i = 0; i < V; i++) {
            if (lr[i] > lr[best]) best = i;
            mr += lr[i] / V;
            mq += lq[i] / V;
        }
        for (int i = 0; i < V; i++) {
            rank += lq[i] > lq[best];
            srr += (lr[i] - mr) * (lr[i] - mr);
            sqq += (lq[i] - mq) * (lq[i] - mq);
            srq += (lr[i] - mr) * (lq[i] - mq);
        }
        double corr = srq / sqrt(srr * sqq);
        cr_log_info("%s: logit correlation with F32 %.4f, F32's top token ranked %d", cases[c].recipe, corr, rank);
        cr_assert(corr > 0.97 && rank < 5, "%s: correlation %.4f, F32's top token ranked %d", cases[c].recipe, corr,
                  rank);
        model_seq_free(sq);
        model_free(m);
    }
    model_seq_free(sr);
    model_free(ref);
    free(lr);
    free(lq);
    free(src);
    th_tmp_cleanup(&t);
}

/* Agreement with llama.cpp, bit for bit: stories260K made Q8_0, Q4_0 and Q4_K_M by
 * model_quantize (so ffn_down, 172 columns, falls back to F16), then the logits of
 * "Once upon a time" (ids 1 403 407 261 378) and of 69 greedy steps after it, one
 * token per step (positions up to 74: past 16 and 64, where the attention sums wrap
 * their lanes).  The golden values are FNV-1a 64 hashes of the 70 logit rows' bytes,
 * computed by llama.cpp (commit de3ff81, CPU backend built for AVX-512 without
 * AVX512-FP16, F32 KV cache, no flash attention, 1 thread) through libllama on the
 * files llama-quantize writes, which model_quantize reproduces byte for byte. */
Test(quant, stories260k_logits_equal_llama_cpp)
{
    static const struct {
        const char *type;
        uint64_t hash;
    } cases[] = { { "Q8_0", 0x674cb1b626257e4eull },
                  { "Q4_0", 0x8a11ebb6ac17b602ull },
                  { "Q4_K_M", 0xada9420899bf576aull } };
    th_tmp t;
    th_tmp_init(&t);
    char *src = th_model_path("stories260K.gguf");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char dst[128];
        snprintf(dst, sizeof dst, "%s", th_tmp_file(&t, "agree.gguf"));
        quantize_ok(src, dst, cases[c].type);
        model *m = load_ok(dst);
        int V = model_get_info(m)->vocab_size;
        float *lg = malloc((size_t)V * 4);
        model_seq *sq = model_seq_new(m, 128);
        int32_t toks[80] = { 1, 403, 407, 261, 378 };
        int n = 5;
        uint64_t h = 1469598103934665603ull;
        for (int step = 0; step < 70; step++) {
            cr_assert_eq(model_seq_eval(m, sq, toks, n, lg), 0);
            const unsigned char *b = (const unsigned char *)lg;
            for (size_t i = 0; i < (size_t)V * 4; i++) h = (h ^ b[i]) * 1099511628211ull;
            int best = 0;
            for (int i = 1; i < V; i++)
                if (lg[i] > lg[best]) best = i;
            toks[n++] = best;
        }
        cr_assert_eq(h, cases[c].hash, "%s: logits hash %016llx, llama.cpp's %016llx", cases[c].type,
                     (unsigned long long)h, (unsigned long long)cases[c].hash);
        model_seq_free(sq);
        model_free(m);
        free(lg);
    }
    free(src);
    th_tmp_cleanup(&t);
}

/* ---- Refusals ------------------------------------------------------------------------------ */

Test(quant, corrupt_quantized_tensors_are_refused)
{
    th_tmp t;
    th_tmp_init(&t);
    fspec base = { .dim = 256, .hidden = 256, .layers = 1, .heads = 2, .kv_heads = 2, .vocab = 260, .tied = 1 };
    uint8_t *q = make_weights(MT_Q4_K, 256, 256, 3, NULL);
    char p[128];
    const char *msg;

    /* ffn_up, the file's last tensor, as valid Q4_K blocks; then patched: a row of
     * 288 weights (not whole 256-blocks; the writer refuses to write that) */
    fspec s = base;
    s.raw_name = "blk.0.ffn_up.weight";
    s.raw_type = MT_Q4_K;
    s.raw_dims = 2;
    s.raw_ne[0] = 256;
    s.raw_ne[1] = 256;
    s.raw_data = q;
    s.raw_bytes = mtensor_row_bytes(MT_Q4_K, 256) * 256;
    snprintf(p, sizeof p, "%s", th_tmp_file(&t, "ok.gguf"));
    build_file(&s, p);
    model *m = load_ok(p);
    cr_assert_eq(m->layers[0].w3.type, MT_Q4_K);
    model_free(m);
    size_t n;
    uint8_t *bytes = th_read_file(p, &n);
    const char *name = "blk.0.ffn_up.weight";
    uint8_t *at = memmem(bytes, n, name, strlen(name));
    cr_assert_not_null(at);
    uint8_t *info = at + strlen(name); /* u32 n_dims, u64 ne[0], u64 ne[1], u32 type, u64 offset */
    uint64_t ne0 = 288;
    memcpy(info + 4, &ne0, 8);
    snprintf(p, sizeof p, "%s", th_tmp_file(&t, "partial.gguf"));
    th_write_file(p, bytes, n);
    msg = th_expect_load_error(p, NULL);
    cr_assert(strstr(msg, "ffn_up") && strstr(msg, "Q4_K") && strstr(msg, "256"), "%s", msg);

    /* the same tensor declared Q6_K: its data would be 210 / 144 times longer, past the
     * end of the file */
    memcpy(info + 4, &(uint64_t){ 256 }, 8);
    uint32_t ty = MT_Q6_K;
    memcpy(info + 4 + 16, &ty, 4);
    snprintf(p, sizeof p, "%s", th_tmp_file(&t, "q6k.gguf"));
    th_write_file(p, bytes, n);
    msg = th_expect_load_error(p, NULL);
    cr_assert(strstr(msg, "ffn_up") && strstr(msg, "past the end"), "%s", msg);

    /* a type this reader does not know (IQ2_XXS = 16) */
    ty = 16;
    memcpy(info + 4 + 16, &ty, 4);
    snprintf(p, sizeof p, "%s", th_tmp_file(&t, "iq.gguf"));
    th_write_file(p, bytes, n);
    msg = th_expect_load_error(p, NULL);
    cr_assert(strstr(msg, "unsupported type 16"), "%s", msg);

    /* truncated in the middle of the quantized tensor's blocks */
    ty = MT_Q4_K;
    memcpy(info + 4 + 16, &ty, 4);
    for (size_t cut = n - 1; cut > n - 4000; cut -= 997) {
        snprintf(p, sizeof p, "%s", th_tmp_file(&t, "cut.gguf"));
        th_write_file(p, bytes, cut);
        msg = th_expect_load_error(p, NULL);
        cr_assert(strstr(msg, "past the end") || strstr(msg, "truncated"), "%s", msg);
    }
    free(bytes);

    /* a norm vector stored quantized is refused */
    s = base;
    s.raw_name = "output_norm.weight";
    s.raw_type = MT_Q8_0;
    s.raw_dims = 1;
    s.raw_ne[0] = 256;
    s.raw_ne[1] = 1;
    s.raw_data = q;
    s.raw_bytes = mtensor_row_bytes(MT_Q8_0, 256);
    snprintf(p, sizeof p, "%s", th_tmp_file(&t, "norm.gguf"));
    build_file(&s, p);
    msg = th_expect_load_error(p, NULL);
    cr_assert(strstr(msg, "output_norm") && strstr(msg, "Q8_0"), "%s", msg);

    /* the writer refuses a quantized tensor whose rows are not whole blocks, or a byte
     * count that is not what the shape implies */
    gguf_writer *w = gguf_writer_new();
    int64_t bad[2] = { 288, 2 };
    cr_assert_eq(gguf_writer_tensor(w, "x", MT_Q4_K, bad, 2, q, 2 * 144), MODEL_EINVAL);
    int64_t good[2] = { 256, 2 };
    cr_assert_eq(gguf_writer_tensor(w, "x", MT_Q4_K, good, 2, q, 2 * 144 - 1), MODEL_EINVAL);
    cr_assert_eq(gguf_writer_tensor(w, "x", MT_Q4_K, good, 2, q, 2 * 144), 0);
    gguf_writer_free(w);
    free(q);
    th_tmp_cleanup(&t);
}

Test(quant, quantize_refuses_bad_input)
{
    th_tmp t;
    th_tmp_init(&t);
    char err[512];
    char *src = th_model_path("stories260K.gguf");
    model_quantize_opts o = { .type = "Q7_X" };
    char out[128];
    snprintf(out, sizeof out, "%s", th_tmp_file(&t, "o.gguf"));
    cr_assert_eq(model_quantize(src, out, &o, err, sizeof err), MODEL_EINVAL);
    cr_assert(strstr(err, "unknown type 'Q7_X'") && strstr(err, "Q4_K_M"), "%s", err);
    /* not a GGUF file */
    char *bin = th_model_path("stories260K.bin");
    o.type = "Q8_0";
    cr_assert_lt(model_quantize(bin, out, &o, err, sizeof err), 0);
    cr_assert(strstr(err, "GGUF"), "%s", err);
    /* already quantized: refused unless allowed */
    quantize_ok(src, out, "Q8_0");
    char out2[128];
    snprintf(out2, sizeof out2, "%s/o2.gguf", t.dir);
    o.type = "Q4_0";
    cr_assert_eq(model_quantize(out, out2, &o, err, sizeof err), MODEL_EINVAL);
    cr_assert(strstr(err, "already Q8_0") && strstr(err, "--allow-requantize"), "%s", err);
    o.allow_requantize = 1;
    cr_assert_eq(model_quantize(out, out2, &o, err, sizeof err), 0, "%s", err);
    /* an output that cannot be created */
    cr_assert_eq(model_quantize(src, "/nonexistent-dir/x.gguf", &o, err, sizeof err), MODEL_EIO);
    cr_assert(strstr(err, "/nonexistent-dir/x.gguf"), "%s", err);
    free(src);
    free(bin);
    th_tmp_cleanup(&t);
}

/* The type table and the row sizes. */
Test(quant, type_facts)
{
    const struct {
        int type;
        int blk;
        size_t bytes;
        const char *name;
    } f[] = {
        { MT_Q4_0, 32, 18, "Q4_0" },   { MT_Q4_1, 32, 20, "Q4_1" },   { MT_Q5_0, 32, 22, "Q5_0" },
        { MT_Q5_1, 32, 24, "Q5_1" },   { MT_Q8_0, 32, 34, "Q8_0" },   { MT_Q2_K, 256, 84, "Q2_K" },
        { MT_Q3_K, 256, 110, "Q3_K" }, { MT_Q4_K, 256, 144, "Q4_K" }, { MT_Q5_K, 256, 176, "Q5_K" },
        { MT_Q6_K, 256, 210, "Q6_K" },
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        cr_assert_eq(quant_block_elems(f[i].type), f[i].blk);
        cr_assert_eq(quant_block_bytes(f[i].type), f[i].bytes);
        cr_assert_str_eq(quant_type_name(f[i].type), f[i].name);
        cr_assert_str_eq(mtensor_type_name(f[i].type), f[i].name);
        cr_assert_eq(quant_type_from_name(f[i].name), f[i].type);
        cr_assert_eq(mtensor_row_bytes(f[i].type, 2 * f[i].blk), 2 * f[i].bytes);
        cr_assert_eq(mtensor_row_bytes(f[i].type, f[i].blk + 16), 0, "%s", f[i].name);
        int ok = 1;
        cr_assert_eq(mtensor_bytes(f[i].type, (uint64_t)f[i].blk * 3, &ok), 3 * f[i].bytes);
        cr_assert(ok);
        mtensor_bytes(f[i].type, (uint64_t)f[i].blk * 3 + 1, &ok);
        cr_assert(!ok);
    }
    cr_assert_eq(quant_type_from_name("IQ2_XXS"), -1);
    cr_assert_null(mtensor_type_name(16));
}

/* A NaN or inf in an activation row (a broken model's hidden state) quantizes to
 * saturated int8 values, and the per-32 sums the kernels use are the sums of those
 * int8 values -- not of the unsaturated conversions, which overflow (the kernels
 * multiply the sum, so an INT_MIN there was undefined behaviour). */
Test(quant, activation_sums_with_nan_and_inf)
{
    const int fmts[] = { QACT_Q8_0, QACT_Q8_1 };
    const int K = 64;
    float x[64];
    for (int i = 0; i < K; i++) x[i] = (float)((i * 5) % 11 - 5) / 4.0f;
    x[3] = NAN;
    x[40] = INFINITY;
    x[41] = -INFINITY;
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
        void *buf = malloc(quant_act_bytes(fmts[fi], K, 1));
        cr_assert_not_null(buf);
        quant_act a;
        quant_act_init(&a, fmts[fi], K, 1, buf);
        quant_act_rows(&a, x, 0, 1);
        for (int b = 0; b < K / 32; b++) {
            int32_t sum = 0;
            for (int i = 0; i < 32; i++) sum += a.q[32 * b + i];
            cr_assert_eq(a.x32[b], sum, "format %d block %d: x32 %d, sum of q %d", fmts[fi], b, a.x32[b], sum);
            cr_assert(a.x32[b] >= -32 * 128 && a.x32[b] <= 32 * 127);
        }
        free(buf);
    }
}
