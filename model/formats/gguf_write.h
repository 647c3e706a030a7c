/* gguf_write.h -- write GGUF v3 files (used by the trainer, the random-model
 * generator and the tests that build hostile files).
 *
 * Collect key/value pairs and tensors, then write them in one go.  Tensor
 * data is copied when added, so the caller may free its buffers at once.
 * ne[] follows GGUF/GGML order: ne[0] is the number of columns (the fastest
 * varying dimension), so a row-major (rows, cols) matrix is ne = {cols, rows}.
 * Every function returns 0 or a negative MODEL_E* code. */
#ifndef LMSERVE_GGUF_WRITE_H
#define LMSERVE_GGUF_WRITE_H

#include "model/tensor_types.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);

int gguf_writer_kv_str(gguf_writer *w, const char *key, const char *val);
int gguf_writer_kv_u32(gguf_writer *w, const char *key, uint32_t val);
int gguf_writer_kv_i32(gguf_writer *w, const char *key, int32_t val);
int gguf_writer_kv_f32(gguf_writer *w, const char *key, float val);
int gguf_writer_kv_bool(gguf_writer *w, const char *key, int val);
int gguf_writer_kv_arr_str(gguf_writer *w, const char *key, const char *const *vals, size_t n);
int gguf_writer_kv_arr_f32(gguf_writer *w, const char *key, const float *vals, size_t n);
int gguf_writer_kv_arr_i32(gguf_writer *w, const char *key, const int32_t *vals, size_t n);

/* A value already in GGUF's serialized form (val[0..len) as it follows the value type
 * in a file): for copying pairs from another file.  vtype is the GGUF value type. */
int gguf_writer_kv_raw(gguf_writer *w, const char *key, uint32_t vtype, const void *val, size_t len);

/* type is an MT_* (tensor_types.h); nbytes must equal what ne and type imply. */
int gguf_writer_tensor(gguf_writer *w, const char *name, int type, const int64_t *ne, int n_dims, const void *data,
                       size_t nbytes);

/* Write the file (alignment 32).  On error writes one line into err. */
int gguf_writer_write(gguf_writer *w, const char *path, char *err, size_t errlen);

#endif
