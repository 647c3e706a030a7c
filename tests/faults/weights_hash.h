/* weights_hash.h -- one fingerprint of a loaded model's weights for the fault tests:
 * FNV-1a over the bytes of the token embedding, the classifier, every layer matrix
 * as the model holds them, and the final norm.  Equal hashes before and after
 * something happened to the file mean the model did not change. */
#ifndef LMSERVE_TESTS_FAULTS_WEIGHTS_HASH_H
#define LMSERVE_TESTS_FAULTS_WEIGHTS_HASH_H

#include "model/model_internal.h"

#include <stdint.h>
#include <string.h>

static inline uint64_t weights_hash(const model *m)
{
    uint64_t h = 1469598103934665603ull;
#define HASH(t)                                                                \
    do {                                                                       \
        const uint8_t *p = (t).data;                                           \
        size_t n = (size_t)(t).rows * mtensor_row_bytes((t).type, (t).cols);   \
        for (size_t i = 0; p && i < n; i++) h = (h ^ p[i]) * 1099511628211ull; \
    } while (0)
    HASH(m->tok_embd);
    HASH(m->output);
    for (int l = 0; l < m->info.n_layers; l++) {
        HASH(m->layers[l].wq);
        HASH(m->layers[l].wk);
        HASH(m->layers[l].wv);
        HASH(m->layers[l].wo);
        HASH(m->layers[l].w1);
        HASH(m->layers[l].w2);
        HASH(m->layers[l].w3);
    }
#undef HASH
    const float *v = m->out_norm;
    for (int i = 0; i < m->info.dim; i++) {
        uint32_t b;
        memcpy(&b, &v[i], 4);
        h = (h ^ b) * 1099511628211ull;
    }
    return h;
}

#endif
