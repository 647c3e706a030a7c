/* safetensors.h -- read Hugging Face safetensors files (single or sharded).
 *
 * Design
 * ------
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}), then the data buffer; offsets are relative to the
 * buffer.  st_open mmaps the file (or every shard named by a folder's
 * model.safetensors.index.json) and validates every entry before anything
 * uses it: known dtype, shape product x element size == byte length (no
 * overflow), ranges inside the buffer, no overlaps and no holes.  Tensors
 * point into the mmap and live as long as the st_file.
 * Format facts: github.com/huggingface/safetensors README ("Format").
 */
#ifndef LMSERVE_SAFETENSORS_H
#define LMSERVE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    char dtype[8]; /* "F32", "F16", "BF16", "F64", "I64", ... */
    int mt_type;   /* MT_F32 / MT_F16 / MT_BF16, or -1 for other dtypes */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* inside the mmap */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file;

/* path: a .safetensors file, or a folder holding model.safetensors or
 * model.safetensors.index.json (+ shards).  0 or MODEL_E* with one line in err. */
int st_open(st_file **out, const char *path, char *err, size_t errlen);
/* One file from a caller-owned buffer (tests, fuzzing). */
int st_open_mem(st_file **out, const void *buf, size_t len, const char *name, char *err, size_t errlen);
void st_close(st_file *f);

/* Hand the file mappings to a model (released by model_free), so tensors pointing
 * into them outlive st_close.  MODEL_EFORMAT if the model has no room for them. */
struct model;
int st_give_maps(st_file *f, struct model *m);

size_t st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name);

#endif /* LMSERVE_SAFETENSORS_H */
