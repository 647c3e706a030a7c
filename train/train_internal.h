/* train_internal.h -- the trainer's layers and per-sequence network pass.
 *
 * Included only by the train module and by the tests under tests/train.
 *
 * Legend for shapes: T positions of one sequence, D = dim, H heads, K kv heads,
 * E = head_dim, Q = H*E, KV = K*E, F = hidden_dim, V = vocab.
 * Kernels put outputs first.  Every *_backward ADDS into its gradient outputs
 * (callers zero them), so residual branches simply accumulate.
 */
#ifndef LMSERVE_TRAIN_INTERNAL_H
#define LMSERVE_TRAIN_INTERNAL_H

#include "train/train.h"

/* ---- Layers (layers.c) ----------------------------------------------------- */

/* out (T, D) = E[tokens[t]] ; dE (V, D) += dout at each token's row */
void embed_forward(float *out, const float *E, const int32_t *tokens, int T, int D);
void embed_backward(float *dE, const float *dout, const int32_t *tokens, int T, int D);

/* out = x * rstd * w, rstd (T) = 1 / sqrt(mean(x^2) + eps) */
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int T, int D, float eps);
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd, int T,
                      int D);

/* out (T, O) = x (T, I) W^T, W (O, I) row-major */
void matmul_forward(float *out, const float *x, const float *W, int T, int I, int O);
/* dx (T, I) += dout W (skipped if dx NULL); dW (O, I) += dout^T x (skipped if dW NULL) */
void matmul_backward(float *dx, float *dW, const float *dout, const float *x, const float *W, int T, int I, int O);

/* In place on x (T, n_heads, E): rotate pairs (2i, 2i+1) of each head by
 * pos * theta^(-2i/E), pos = t.  Backward rotates the gradient back. */
void rope_forward(float *x, int T, int n_heads, int E, float theta);
void rope_backward(float *dx, int T, int n_heads, int E, float theta);

/* Causal attention with grouped-query heads: head h reads kv head h / (H / K).
 * q (T, Q), k and v (T, KV), out (T, Q); p (H, T, T) keeps the softmax rows
 * (entries u > t are zero) for the backward pass. */
void attention_forward(float *out, float *p, const float *q, const float *k, const float *v, int T, int H, int K,
                       int E);
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *p, const float *q,
                        const float *k, const float *v, int T, int H, int K, int E);

/* out (n) = silu(g) * u */
void swiglu_forward(float *out, const float *g, const float *u, int n);
void swiglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, int n);

/* probs (T, V) = softmax(logits); returns sum over t of -log probs[t, targets[t]]
 * (double).  Backward: dlogits += scale * (probs - onehot(target)). */
double crossentropy_forward(float *probs, const float *logits, const int32_t *targets, int T, int V);
void crossentropy_backward(float *dlogits, const float *probs, const int32_t *targets, float scale, int T, int V);

/* ---- The network on one sequence (net.c) ----------------------------------- */

typedef struct train_act train_act;
/* Activations and backward scratch for sequences of up to T positions. */
train_act *train_act_new(const train_shape *s, int T);
void train_act_free(train_act *a);

/* Forward tokens[0..T) and, if targets, return the summed cross-entropy (nats)
 * and, if grads, add scale * d(sum loss)/d(params) into grads.  If logits is
 * not NULL, copy the logits (T, V) there. */
double train_net_pass(const train_net *n, train_act *a, const int32_t *tokens, const int32_t *targets, int T,
                      train_params *grads, float scale, float *logits);

/* Views of a parameter-shaped buffer; layers must hold n_layers entries. */
void train_params_view(const train_shape *s, float *base, train_params *p, train_layer *layers);

/* ---- Optimizer (adamw.c) --------------------------------------------------- */

/* One AdamW step at learning rate lr on w, using gradient g and moments m, v;
 * `step` is the 1-based step number (bias correction).  Decoupled weight decay
 * lr * wd * w applies only to tensors with decay set. */
void adamw_update(train_net *n, float lr, float beta1, float beta2, float eps, float wd, long step);
/* Learning rate at 0-based step: linear warmup to lr, then cosine to min_lr. */
float train_lr_at(long step, long steps, long warmup, float lr, float min_lr);
/* Global L2 norm of n->g (fixed summation order, double). */
double train_grad_norm(const train_net *n);

/* ---- Data (data.c) ------------------------------------------------------------ */

typedef struct {
    unsigned char *train;
    size_t n_train;
    unsigned char *val;
    size_t n_val;
} train_data;

int train_data_split(train_data *d, const unsigned char *text, size_t len, float val_frac);
void train_data_free(train_data *d);
uint64_t train_rng_next(uint64_t *s);
/* Draw a training window: tokens = BOS + ctx-1 bytes, targets = next bytes. */
void train_data_window(const unsigned char *buf, size_t n, size_t off, int T, int32_t *tokens, int32_t *targets);

#endif /* LMSERVE_TRAIN_INTERNAL_H */
