/* layers.c -- forward and backward of every layer the trainer uses.
 *
 * Plain float32 loops, written so that gcc vectorises them without
 * reassociating sums: dot products use explicit 8-lane vectors (GNU vector
 * extension) reduced in a fixed order, and the backward matmuls are axpy loops.
 * Results therefore depend only on the inputs, never on timing.
 * Derivations are the textbook ones; each backward is checked against finite
 * differences in tests/train/test_gradcheck.c.
 */
#include "train/train_internal.h"

#include <math.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));

static inline v8f v8_load(const float *p)
{
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float v8_sum(v8f v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

static float dot(const float *a, const float *b, int n)
{
    v8f acc = { 0 };
    int i = 0;
    for (; i + 8 <= n; i += 8) acc += v8_load(a + i) * v8_load(b + i);
    float s = v8_sum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *restrict y, float a, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* ---- Embedding ------------------------------------------------------------------ */

void embed_forward(float *out, const float *E, const int32_t *tokens, int T, int D)
{
    for (int t = 0; t < T; t++) memcpy(out + (size_t)t * D, E + (size_t)tokens[t] * D, sizeof(float) * D);
}

void embed_backward(float *dE, const float *dout, const int32_t *tokens, int T, int D)
{
    for (int t = 0; t < T; t++) axpy(dE + (size_t)tokens[t] * D, 1.0f, dout + (size_t)t * D, D);
}

/* ---- RMSNorm --------------------------------------------------------------------- */

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int T, int D, float eps)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *o = out + (size_t)t * D;
        float r = 1.0f / sqrtf(dot(xr, xr, D) / D + eps);
        rstd[t] = r;
        for (int i = 0; i < D; i++) o[i] = xr[i] * r * w[i];
    }
}

/* y_i = w_i x_i r, r = (mean x^2 + eps)^-1/2, dr/dx_j = -r^3 x_j / D:
 * dx_j = r w_j dy_j - (r^3 / D) x_j sum_i dy_i w_i x_i ; dw_i = sum_t dy_i x_i r */
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd, int T,
                      int D)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D, *dy = dout + (size_t)t * D;
        float *dxr = dx + (size_t)t * D;
        float r = rstd[t];
        float s = 0.0f;
        for (int i = 0; i < D; i++) s += dy[i] * w[i] * xr[i];
        float c = r * r * r * s / D;
        for (int i = 0; i < D; i++) {
            dxr[i] += r * w[i] * dy[i] - c * xr[i];
            dw[i] += dy[i] * xr[i] * r;
        }
    }
}

/* ---- Matmul ------------------------------------------------------------------------ */

void matmul_forward(float *out, const float *x, const float *W, int T, int I, int O)
{
    enum { TILE = 16 }; /* rows of W kept hot in L1 across all positions */
    for (int o0 = 0; o0 < O; o0 += TILE) {
        int o1 = o0 + TILE < O ? o0 + TILE : O;
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * I;
            float *yr = out + (size_t)t * O;
            int o = o0;
            for (; o + 4 <= o1; o += 4) {
                const float *w0 = W + (size_t)o * I, *w1 = w0 + I, *w2 = w1 + I, *w3 = w2 + I;
                v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
                int i = 0;
                for (; i + 8 <= I; i += 8) {
                    v8f xv = v8_load(xr + i);
                    a0 += xv * v8_load(w0 + i);
                    a1 += xv * v8_load(w1 + i);
                    a2 += xv * v8_load(w2 + i);
                    a3 += xv * v8_load(w3 + i);
                }
                float s0 = v8_sum(a0), s1 = v8_sum(a1), s2 = v8_sum(a2), s3 = v8_sum(a3);
                for (; i < I; i++) {
                    s0 += xr[i] * w0[i];
                    s1 += xr[i] * w1[i];
                    s2 += xr[i] * w2[i];
                    s3 += xr[i] * w3[i];
                }
                yr[o] = s0;
                yr[o + 1] = s1;
                yr[o + 2] = s2;
                yr[o + 3] = s3;
            }
            for (; o < o1; o++) yr[o] = dot(xr, W + (size_t)o * I, I);
        }
    }
}

/* C (M, N) += A B with A read through strides (A[m, k] = A[m * sam + k * sak])
 * and B (K, N) row-major with row stride ldb.  Register-blocked 4 x 16; every
 * element sums over k in increasing order whatever block it falls in. */
static void gemm_acc(float *C, int ldc, const float *A, int sam, int sak, const float *B, int ldb, int M, int N, int K)
{
    int m = 0;
    for (; m + 4 <= M; m += 4) {
        const float *a0 = A + (size_t)m * sam, *a1 = a0 + sam, *a2 = a1 + sam, *a3 = a2 + sam;
        float *c0 = C + (size_t)m * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        int n = 0;
        for (; n + 16 <= N; n += 16) {
            v8f s00 = { 0 }, s01 = { 0 }, s10 = { 0 }, s11 = { 0 }, s20 = { 0 }, s21 = { 0 }, s30 = { 0 }, s31 = { 0 };
            for (int k = 0; k < K; k++) {
                const float *b = B + (size_t)k * ldb + n;
                v8f b0 = v8_load(b), b1 = v8_load(b + 8);
                size_t ak = (size_t)k * sak;
                float x0 = a0[ak], x1 = a1[ak], x2 = a2[ak], x3 = a3[ak];
                s00 += x0 * b0;
                s01 += x0 * b1;
                s10 += x1 * b0;
                s11 += x1 * b1;
                s20 += x2 * b0;
                s21 += x2 * b1;
                s30 += x3 * b0;
                s31 += x3 * b1;
            }
            for (int j = 0; j < 8; j++) {
                c0[n + j] += s00[j];
                c0[n + 8 + j] += s01[j];
                c1[n + j] += s10[j];
                c1[n + 8 + j] += s11[j];
                c2[n + j] += s20[j];
                c2[n + 8 + j] += s21[j];
                c3[n + j] += s30[j];
                c3[n + 8 + j] += s31[j];
            }
        }
        for (; n < N; n++) {
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int k = 0; k < K; k++) {
                float b = B[(size_t)k * ldb + n];
                size_t ak = (size_t)k * sak;
                s0 += a0[ak] * b;
                s1 += a1[ak] * b;
                s2 += a2[ak] * b;
                s3 += a3[ak] * b;
            }
            c0[n] += s0;
            c1[n] += s1;
            c2[n] += s2;
            c3[n] += s3;
        }
    }
    for (; m < M; m++) {
        const float *a0 = A + (size_t)m * sam;
        float *c0 = C + (size_t)m * ldc;
        int n = 0;
        for (; n + 8 <= N; n += 8) {
            v8f s0 = { 0 };
            for (int k = 0; k < K; k++) s0 += a0[(size_t)k * sak] * v8_load(B + (size_t)k * ldb + n);
            for (int j = 0; j < 8; j++) c0[n + j] += s0[j];
        }
        for (; n < N; n++) {
            float s0 = 0;
            for (int k = 0; k < K; k++) s0 += a0[(size_t)k * sak] * B[(size_t)k * ldb + n];
            c0[n] += s0;
        }
    }
}

void matmul_backward(float *dx, float *dW, const float *dout, const float *x, const float *W, int T, int I, int O)
{
    /* dx[t, i] += sum_o dout[t, o] W[o, i] */
    if (dx) gemm_acc(dx, I, dout, O, 1, W, I, T, I, O);
    /* dW[o, i] += sum_t dout[t, o] x[t, i] */
    if (dW) gemm_acc(dW, I, dout, 1, O, x, I, O, I, T);
}

/* ---- RoPE (adjacent pairs, llama2.c / GGUF llama layout) ---------------------------- */

static void rope_rotate(float *x, int T, int n_heads, int E, float theta, float sign)
{
    for (int i = 0; i < E; i += 2) {
        double freq = pow((double)theta, -(double)i / E);
        for (int t = 0; t < T; t++) {
            double ang = t * freq;
            float c = (float)cos(ang), s = sign * (float)sin(ang);
            for (int h = 0; h < n_heads; h++) {
                float *p = x + ((size_t)t * n_heads + h) * E + i;
                float a = p[0], b = p[1];
                p[0] = a * c - b * s;
                p[1] = a * s + b * c;
            }
        }
    }
}

void rope_forward(float *x, int T, int n_heads, int E, float theta) { rope_rotate(x, T, n_heads, E, theta, 1.0f); }

/* The rotation is orthogonal: its transpose is the rotation by -angle. */
void rope_backward(float *dx, int T, int n_heads, int E, float theta) { rope_rotate(dx, T, n_heads, E, theta, -1.0f); }

/* ---- Attention ------------------------------------------------------------------------ */

void attention_forward(float *out, float *p, const float *q, const float *k, const float *v, int T, int H, int K, int E)
{
    const int Q = H * E, KV = K * E, group = H / K;
    const float scale = 1.0f / sqrtf((float)E);
    for (int h = 0; h < H; h++) {
        int kh = h / group;
        for (int t = 0; t < T; t++) {
            const float *qt = q + (size_t)t * Q + h * E;
            float *pr = p + ((size_t)h * T + t) * T;
            float mx = -INFINITY;
            for (int u = 0; u <= t; u++) {
                pr[u] = dot(qt, k + (size_t)u * KV + kh * E, E) * scale;
                if (pr[u] > mx) mx = pr[u];
            }
            float sum = 0.0f;
            for (int u = 0; u <= t; u++) {
                pr[u] = expf(pr[u] - mx);
                sum += pr[u];
            }
            float inv = 1.0f / sum;
            for (int u = 0; u <= t; u++) pr[u] *= inv;
            for (int u = t + 1; u < T; u++) pr[u] = 0.0f;
            float *ot = out + (size_t)t * Q + h * E;
            memset(ot, 0, sizeof(float) * E);
            for (int u = 0; u <= t; u++) axpy(ot, pr[u], v + (size_t)u * KV + kh * E, E);
        }
    }
}

/* o_t = sum_u p_tu v_u, p_t = softmax(s_t), s_tu = scale q_t.k_u:
 * dp_tu = do_t.v_u, dv_u += p_tu do_t, ds_tu = p_tu (dp_tu - sum_w p_tw dp_tw),
 * dq_t += scale sum_u ds_tu k_u, dk_u += scale ds_tu q_t */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *p, const float *q,
                        const float *k, const float *v, int T, int H, int K, int E)
{
    const int Q = H * E, KV = K * E, group = H / K;
    const float scale = 1.0f / sqrtf((float)E);
    float dp[8192]; /* T <= 8192 (train_shape_check) */
    for (int h = 0; h < H; h++) {
        int kh = h / group;
        for (int t = 0; t < T; t++) {
            const float *pr = p + ((size_t)h * T + t) * T;
            const float *dot_ = dout + (size_t)t * Q + h * E;
            const float *qt = q + (size_t)t * Q + h * E;
            float *dqt = dq + (size_t)t * Q + h * E;
            float pd = 0.0f; /* sum_u p_tu dp_tu */
            for (int u = 0; u <= t; u++) {
                dp[u] = dot(dot_, v + (size_t)u * KV + kh * E, E);
                pd += pr[u] * dp[u];
            }
            for (int u = 0; u <= t; u++) {
                const float *ku = k + (size_t)u * KV + kh * E;
                axpy(dv + (size_t)u * KV + kh * E, pr[u], dot_, E);
                float dsu = pr[u] * (dp[u] - pd) * scale;
                if (dsu != 0.0f) {
                    axpy(dqt, dsu, ku, E);
                    axpy(dk + (size_t)u * KV + kh * E, dsu, qt, E);
                }
            }
        }
    }
}

/* ---- SwiGLU ------------------------------------------------------------------------------ */

void swiglu_forward(float *out, const float *g, const float *u, int n)
{
    for (int i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        out[i] = g[i] * s * u[i];
    }
}

/* silu'(g) = s (1 + g (1 - s)), s = sigmoid(g) */
void swiglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, int n)
{
    for (int i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        du[i] += dout[i] * g[i] * s;
        dg[i] += dout[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    }
}

/* ---- Cross-entropy ----------------------------------------------------------------------- */

double crossentropy_forward(float *probs, const float *logits, const int32_t *targets, int T, int V)
{
    double loss = 0.0;
    for (int t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * V;
        float *pr = probs + (size_t)t * V;
        float mx = l[0];
        for (int i = 1; i < V; i++)
            if (l[i] > mx) mx = l[i];
        double sum = 0.0;
        for (int i = 0; i < V; i++) {
            pr[i] = expf(l[i] - mx);
            sum += pr[i];
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < V; i++) pr[i] *= inv;
        if (targets) loss += -(l[targets[t]] - mx - log(sum));
    }
    return loss;
}

void crossentropy_backward(float *dlogits, const float *probs, const int32_t *targets, float scale, int T, int V)
{
    for (int t = 0; t < T; t++) {
        const float *pr = probs + (size_t)t * V;
        float *d = dlogits + (size_t)t * V;
        for (int i = 0; i < V; i++) d[i] += scale * pr[i];
        d[targets[t]] -= scale;
    }
}
