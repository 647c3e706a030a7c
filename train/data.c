/* data.c -- text to byte tokens, the held-out split and training windows. */
#include "train/train_internal.h"

#include <stdlib.h>
#include <string.h>

enum { CHUNK = 8192 };

void train_data_free(train_data *d)
{
    if (!d) return;
    free(d->train);
    free(d->val);
    memset(d, 0, sizeof *d);
}

/* Every k-th chunk of CHUNK bytes (k = round(1/val_frac), counting from chunk
 * k-1) goes to validation; the rest is the training stream.  val_frac = 0
 * holds nothing out. */
int train_data_split(train_data *d, const unsigned char *text, size_t len, float val_frac)
{
    memset(d, 0, sizeof *d);
    if (!(val_frac >= 0.0f && val_frac < 1.0f)) return TRAIN_EINVAL;
    d->train = malloc(len ? len : 1);
    d->val = malloc(len ? len : 1);
    if (!d->train || !d->val) {
        train_data_free(d);
        return TRAIN_ENOMEM;
    }
    size_t k = val_frac > 0.0f ? (size_t)(1.0f / val_frac + 0.5f) : 0;
    if (val_frac > 0.0f && k < 2) k = 2;
    for (size_t c = 0, off = 0; off < len; c++, off += CHUNK) {
        size_t n = len - off < CHUNK ? len - off : CHUNK;
        if (k && c % k == k - 1) {
            memcpy(d->val + d->n_val, text + off, n);
            d->n_val += n;
        } else {
            memcpy(d->train + d->n_train, text + off, n);
            d->n_train += n;
        }
    }
    /* A short text with val_frac > 0 but fewer than k chunks: hold out its tail. */
    if (k && d->n_val == 0 && len >= 2 * (size_t)k) {
        size_t nv = len / k;
        d->n_train = len - nv;
        memcpy(d->val, text + d->n_train, nv);
        d->n_val = nv;
    }
    return 0;
}

void train_data_window(const unsigned char *buf, size_t n, size_t off, int T, int32_t *tokens, int32_t *targets)
{
    (void)n; /* the caller guarantees off + T <= n */
    tokens[0] = TRAIN_BOS;
    for (int t = 1; t < T; t++) tokens[t] = TRAIN_BYTE0 + buf[off + t - 1];
    for (int t = 0; t < T; t++) targets[t] = TRAIN_BYTE0 + buf[off + t];
}
