/* loader.h -- helpers every part of the model module shares (loader.c): error
 * lines, memory the model owns, growing arrays, private copies of files,
 * element-type sizes.
 * Internal to model/; not a public header.
 *
 * Every reader validates sizes against the file before it reads, and reports
 * one line "PATH: what is wrong" through model_errf. */
#ifndef LMSERVE_MODEL_LOADER_H
#define LMSERVE_MODEL_LOADER_H

#include "model/model_internal.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Write "path: <formatted message>" into err (if err and errlen are non-zero)
 * and return code, so callers can write `return model_errf(...)`. */
int model_errf(char *err, size_t errlen, int code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Load a whole regular file into private memory (an anonymous mapping filled
 * with pread, by m->n_threads threads when m is given: never a file mapping, so
 * truncating or rewriting the file later cannot SIGBUS the server).  If m is not
 * NULL the mapping is recorded in m->maps (released by model_free) and stays
 * writable until model_load makes the model's memory read-only (model_protect);
 * otherwise it is read-only at once and the caller munmaps *data.
 * An empty file is mapped as (a valid pointer, size 0). */
int model_map_file(model *m, const char *path, const uint8_t **data, size_t *size, char *err, size_t errlen);
/* model_map_file, with file offset align_at placed on a 64-byte boundary in
 * memory (m must not be NULL when align_at % 64 != 0: the model keeps the map). */
int model_map_file_at(model *m, const char *path, size_t align_at, const uint8_t **data, size_t *size, char *err,
                      size_t errlen);
void model_unmap(const uint8_t *data, size_t size);
/* The length of the mapping model_map_file makes for a file of size bytes
 * (large copies are rounded up to 2 MiB huge-page boundaries): for munmap. */
size_t model_map_len(size_t size);
/* Anonymous read-write memory for weights, 2 MiB-aligned when n >= 2 MiB, on
 * 4 KiB pages until model_weights_huge; *len = the mapping's length. */
void *model_alloc_weights(size_t n, size_t *len);
/* Move [p, p + len) (from model_alloc_weights) onto transparent huge pages:
 * advised (MADV_HUGEPAGE) and collapsed 2 MiB at a time (MADV_COLLAPSE), until
 * *stop (if given) is set.  Returns the number of 2 MiB blocks collapsed.  Does
 * nothing when LMSERVE_NO_HUGEPAGES=1 (model_hugepages_wanted() is 0). */
int model_weights_huge(void *p, size_t len, atomic_int *stop);
int model_hugepages_wanted(void);

/* Room for one more element in an array p of elements of `size` bytes that holds n of
 * *cap: p itself while n < *cap, else p reallocated to twice *cap (`first` when *cap
 * is 0), with *cap updated.  NULL when that fails; p is then untouched and still the
 * caller's.  Callers write `T *q = model_grow(a, n, &cap, sizeof *q, 16)`. */
void *model_grow(void *p, size_t n, size_t *cap, size_t size, size_t first);

/* calloc that is recorded as owned by m; NULL on failure (nothing leaks). */
void *model_calloc_owned(model *m, size_t n, size_t size);

/* Size in bytes of n elements of an MT_* type (n % 32 == 0 for Q8_0); 0 for an
 * unknown type.  Sets *ok = 0 on overflow or bad n. */
size_t mtensor_bytes(int type, uint64_t n, int *ok);
const char *mtensor_type_name(int type); /* "F32", ...; NULL if unknown */
/* Bytes of one row of cols elements; 0 if the type is unknown or cols does not suit
 * it (Q8_0 needs cols % 32 == 0). */
size_t mtensor_row_bytes(int type, int cols);

/* Keep the pointer to a malloc'd block so model_free frees it; 0, or MODEL_ENOMEM
 * after freeing the block. */
int model_own(model *m, void *block);

/* Overflow-checked arithmetic: return 0 on overflow. */
static inline int mul_ok(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline int add_ok(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }

#endif
