/* gguf.h -- the GGUF reader's tables, for gguf.c and other GGUF-based loaders
 * (e.g. a gpt2 architecture reader).  Internal to model/.
 *
 * gguf_open maps the file and validates the whole header, metadata and tensor
 * table against the file size; afterwards every gguf_str, array and tensor
 * pointer is known to lie inside the mapping. */
#ifndef LMSERVE_MODEL_GGUF_H
#define LMSERVE_MODEL_GGUF_H

#include "model/model_internal.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *s; /* inside the mapping, not NUL-terminated */
    size_t len;
} gguf_str;

typedef struct {
    gguf_str key;
    uint32_t type;     /* GGUF value type */
    size_t val_off;    /* file offset of the value */
    uint32_t arr_type; /* arrays: element type and count */
    uint64_t arr_n;
} gguf_kv;

typedef struct {
    gguf_str name;
    int n_dims;
    uint64_t ne[4];     /* ne[0] = columns (fastest varying); unused dims are 1 */
    int type;           /* MT_* */
    uint64_t offset;    /* relative to the data section */
    uint64_t n_elems;
    size_t nbytes;
    const uint8_t *data;
} gguf_tensor;

typedef struct {
    const char *path;
    const uint8_t *data;
    size_t size;
    int mapped_by_model; /* the mapping belongs to a model (released by model_free) */
    uint32_t version;
    size_t alignment, data_off;
    gguf_kv *kv;
    size_t n_kv;
    gguf_tensor *tensors;
    size_t n_tensors;
    const gguf_tensor **by_name; /* tensors sorted by name (binary search) */
} gguf_file;

/* Map and validate path.  With m != NULL the mapping is handed to m. */
int gguf_open(gguf_file *g, model *m, const char *path, char *err, size_t errlen);
void gguf_close(gguf_file *g);

const gguf_kv *gguf_find(const gguf_file *g, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name);
/* Typed reads of a value: 1 on success, 0 if the type does not fit. */
int gguf_kv_uint(const gguf_file *g, const gguf_kv *kv, uint64_t *out);
int gguf_kv_float(const gguf_file *g, const gguf_kv *kv, double *out);
int gguf_kv_bool(const gguf_file *g, const gguf_kv *kv, int *out);
int gguf_kv_string(const gguf_file *g, const gguf_kv *kv, gguf_str *out);
/* Keyed reads that write "PATH: ..." into err on failure. */
int gguf_get_int(const gguf_file *g, const char *key, int required, int64_t dflt, int64_t lo,
                 int64_t hi, int *out, char *err, size_t errlen);
int gguf_get_float(const gguf_file *g, const char *key, double dflt, float *out, char *err, size_t errlen);
/* An optional array with elem_type and exactly n entries (*out NULL if absent). */
int gguf_get_array(const gguf_file *g, const char *key, uint32_t elem_type, uint64_t n,
                   const gguf_kv **out, char *err, size_t errlen);
const uint8_t *gguf_array_data(const gguf_file *g, const gguf_kv *kv);
int gguf_get_matrix(const gguf_file *g, const char *name, int rows, int cols, int optional,
                    mtensor *out, char *err, size_t errlen);
int gguf_get_vector(model *m, const gguf_file *g, const char *name, int n, int optional,
                    const float **out, char *err, size_t errlen);

#endif
