/* gguf.h -- the GGUF reader (gguf.c): the one parser of GGUF files, used by the
 * model readers (load_gguf.c, gguf_gpt2.c) and by train/ for checkpoints.
 *
 * gguf_open copies the file into private memory and validates the whole header,
 * metadata and tensor table against the file size; afterwards every gguf_str,
 * array and tensor pointer is known to lie inside the copy.  Errors are one
 * line "PATH: what is wrong" in err, and a negative MODEL_E* code (model.h).
 * Self-contained apart from the type lists (tensor_types.h). */
#ifndef LMSERVE_MODEL_GGUF_H
#define LMSERVE_MODEL_GGUF_H

#include "model/tensor_types.h"

#include <stddef.h>
#include <stdint.h>

/* Metadata value types, as the GGUF specification numbers them. */
enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8,
    GGUF_TYPE_UINT16,
    GGUF_TYPE_INT16,
    GGUF_TYPE_UINT32,
    GGUF_TYPE_INT32,
    GGUF_TYPE_FLOAT32,
    GGUF_TYPE_BOOL,
    GGUF_TYPE_STRING,
    GGUF_TYPE_ARRAY,
    GGUF_TYPE_UINT64,
    GGUF_TYPE_INT64,
    GGUF_TYPE_FLOAT64,
    GGUF_TYPE_COUNT
};

typedef struct {
    const char *s; /* inside the file's copy, not NUL-terminated */
    size_t len;
} gguf_str;

typedef struct {
    gguf_str key;
    uint32_t type;     /* GGUF_TYPE_* */
    size_t val_off;    /* file offset of the value */
    uint32_t arr_type; /* arrays: element type and count */
    uint64_t arr_n;
} gguf_kv;

typedef struct {
    gguf_str name;
    int n_dims;
    uint64_t ne[4];  /* ne[0] = columns (fastest varying); unused dims are 1 */
    int type;        /* MT_* (tensor_types.h) */
    uint64_t offset; /* relative to the data section */
    uint64_t n_elems;
    size_t nbytes;
    const uint8_t *data;
} gguf_tensor;

typedef struct {
    const char *path;
    const uint8_t *data;
    size_t size;
    int mapped_by_model; /* the copy belongs to a model (released by model_free) */
    uint32_t version;
    size_t alignment, data_off;
    gguf_kv *kv;
    size_t n_kv;
    gguf_tensor *tensors;
    size_t n_tensors;
    const gguf_tensor **by_name; /* tensors sorted by name (binary search) */
} gguf_file;

struct model;
struct mtensor;

/* Read and validate path.  With m != NULL the file's copy is handed to m (so
 * tensors may point into it after gguf_close); with NULL gguf_close frees it. */
int gguf_open(gguf_file *g, struct model *m, const char *path, char *err, size_t errlen);
void gguf_close(gguf_file *g);

const gguf_kv *gguf_find(const gguf_file *g, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name);
/* Typed reads of a value: 1 on success, 0 if the type does not fit. */
int gguf_kv_uint(const gguf_file *g, const gguf_kv *kv, uint64_t *out);
int gguf_kv_float(const gguf_file *g, const gguf_kv *kv, double *out);
int gguf_kv_bool(const gguf_file *g, const gguf_kv *kv, int *out);
int gguf_kv_string(const gguf_file *g, const gguf_kv *kv, gguf_str *out);
/* Keyed reads that write "PATH: ..." into err on failure. */
int gguf_get_int(const gguf_file *g, const char *key, int required, int64_t dflt, int64_t lo, int64_t hi, int *out,
                 char *err, size_t errlen);
int gguf_get_float(const gguf_file *g, const char *key, double dflt, float *out, char *err, size_t errlen);
/* An optional array with elem_type and exactly n entries (*out NULL if absent). */
int gguf_get_array(const gguf_file *g, const char *key, uint32_t elem_type, uint64_t n, const gguf_kv **out, char *err,
                   size_t errlen);
/* The first element of an array of fixed-size elements. */
const uint8_t *gguf_array_data(const gguf_file *g, const gguf_kv *kv);

/* The strings of an array of strings, in order. */
typedef struct {
    const gguf_file *g;
    size_t off;    /* file offset of the next string */
    uint64_t left; /* strings not yet returned */
} gguf_str_iter;
/* 0 if kv is not an array of strings. */
int gguf_str_iter_init(gguf_str_iter *it, const gguf_file *g, const gguf_kv *kv);
/* The next string into *s (1), or 0 after the last. */
int gguf_str_iter_next(gguf_str_iter *it, gguf_str *s);

/* s equals the NUL-terminated z. */
int gguf_str_eq(gguf_str s, const char *z);
/* s for a message: at most cap - 1 bytes, non-printable bytes as '?', "..." when cut. */
const char *gguf_str_show(gguf_str s, char *buf, size_t cap);

/* ---- For the model readers ---- */

/* A row-major (rows, cols) matrix, pointing into the file: GGUF ne = {cols, rows}. */
int gguf_get_matrix(const gguf_file *g, const char *name, int rows, int cols, int optional, struct mtensor *out,
                    char *err, size_t errlen);
/* A vector of n floats (a heap F32 copy owned by m when stored as F16/BF16). */
int gguf_get_vector(struct model *m, const gguf_file *g, const char *name, int n, int optional, const float **out,
                    char *err, size_t errlen);

#endif /* LMSERVE_MODEL_GGUF_H */
