/* adamw.c -- AdamW (Loshchilov & Hutter, "Decoupled Weight Decay
 * Regularization"), the learning-rate schedule and the gradient norm.
 *
 *   m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
 *   w -= lr * ( (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * w )
 * with wd applied only to matrices (not to RMSNorm weights).
 */
#include "train/train_internal.h"

#include <math.h>

void adamw_update(train_net *n, float lr, float beta1, float beta2, float eps, float wd, long step)
{
    const float bc1 = 1.0f - powf(beta1, (float)step), bc2 = 1.0f - powf(beta2, (float)step);
    for (int ti = 0; ti < n->n_tensors; ti++) {
        const train_tensor *t = &n->tensors[ti];
        const float decay = t->decay ? wd : 0.0f;
        float *w = n->w + t->offset, *g = n->g + t->offset;
        float *m = n->m + t->offset, *v = n->v + t->offset;
        const size_t cnt = (size_t)t->rows * t->cols;
        for (size_t i = 0; i < cnt; i++) {
            m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
            v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
            float mh = m[i] / bc1, vh = v[i] / bc2;
            w[i] -= lr * (mh / (sqrtf(vh) + eps) + decay * w[i]);
        }
    }
}

float train_lr_at(long step, long steps, long warmup, float lr, float min_lr)
{
    if (warmup > 0 && step < warmup) return lr * (float)(step + 1) / (float)warmup;
    long span = steps - warmup;
    if (span <= 1) return lr;
    double frac = (double)(step - warmup) / (double)(span - 1);
    if (frac > 1.0) frac = 1.0;
    return (float)(min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(3.141592653589793 * frac)));
}

double train_grad_norm(const train_net *n)
{
    double s = 0.0;
    for (size_t i = 0; i < n->n_params; i++) s += (double)n->g[i] * n->g[i];
    return sqrt(s);
}
