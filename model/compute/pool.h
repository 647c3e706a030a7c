/* pool.h -- a per-model pool of worker threads for the kernels (pool.c).
 * Internal to model/. */
#ifndef LMSERVE_MODEL_POOL_H
#define LMSERVE_MODEL_POOL_H

#include "model/model_internal.h"

#include <stddef.h>

typedef void (*model_pool_fn)(void *arg, int task, int n_tasks);

/* n_threads includes the caller; <= 0 means the number of CPUs.  NULL if out of memory. */
model_pool *model_pool_new(int n_threads);
void model_pool_free(model_pool *p);
int model_pool_size(const model_pool *p);
/* Run fn(arg, t, n_tasks) for t in [0, n_tasks), spread over the pool and the
 * calling thread; returns when all are done. */
void model_pool_run(model_pool *p, model_pool_fn fn, void *arg, int n_tasks);
/* Scratch memory kept by the pool between calls (grown on demand); NULL on
 * failure or when p is NULL.  Valid until the next call; not reentrant. */
void *model_pool_scratch(model_pool *p, size_t bytes);

#endif /* LMSERVE_MODEL_POOL_H */
