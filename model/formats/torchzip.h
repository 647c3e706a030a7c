/* torchzip.h -- read PyTorch `torch.save` files (the zip format) without Python.
 *
 * Design
 * ------
 * A torch.save file is a zip archive holding `<prefix>/data.pkl` (a pickle that
 * describes the object tree) and `<prefix>/data/<key>` (one raw little-endian
 * storage per key).  tz_open mmaps the file, reads the zip central directory
 * (zip64 records too), and runs the pickle in a small *data-only* virtual
 * machine: only the opcodes torch.save emits are understood, and the only
 * callables it will "call" are an allow-list of constructors whose effect is
 * re-implemented here (tensor rebuild, OrderedDict, storage types).  Nothing
 * is ever executed; any other global is an error naming it.
 *
 * The result is a tree of tz_value (dicts keep insertion order).  Tensors
 * point into the mmapped storage; their extent is checked against the
 * storage entry.  Values live as long as the tz_file.
 *
 * Format facts (from the fixture files, see tests/data/SOURCES.md, and the zip
 * APPNOTE): entries are STORED; local headers carry zero sizes (flag 0x0808),
 * so sizes come from the central directory and the data offset from the local
 * header's name + extra lengths; the archive prefix varies (look for "PREFIX/data.pkl").
 */
#ifndef LMSERVE_TORCHZIP_H
#define LMSERVE_TORCHZIP_H

#include <stddef.h>
#include <stdint.h>

/* ---- Types ---------------------------------------------------------------- */

enum {
    TZ_NONE,
    TZ_BOOL,
    TZ_INT,
    TZ_FLOAT,
    TZ_STR,
    TZ_TUPLE,
    TZ_LIST,
    TZ_DICT,
    TZ_TENSOR,
    TZ_GLOBAL,
    TZ_STORAGE,
};

/* Storage element types. */
enum { TZ_F32, TZ_F16, TZ_BF16, TZ_F64, TZ_I64, TZ_I32, TZ_I16, TZ_I8, TZ_U8, TZ_BOOL_T };

#define TZ_MAX_DIMS 8

typedef struct {
    int dtype; /* TZ_F32 ... */
    int ndim;
    int64_t shape[TZ_MAX_DIMS];
    int64_t stride[TZ_MAX_DIMS];  /* in elements */
    int64_t offset;               /* storage offset, in elements */
    const unsigned char *storage; /* start of the storage (inside the mmap) */
    int64_t storage_numel;
    int64_t numel; /* product of shape */
} tz_tensor;

typedef struct tz_value tz_value;
struct tz_value {
    int kind;  /* TZ_* */
    int64_t i; /* TZ_BOOL, TZ_INT */
    double f;  /* TZ_FLOAT */
    char *s;   /* TZ_STR (NUL-terminated), TZ_GLOBAL ("module.name") */
    size_t slen;
    tz_value **items; /* TUPLE/LIST items; DICT: key0, val0, key1, val1, ... */
    size_t n;         /* number of items (DICT: 2 * pairs) */
    size_t cap;
    tz_tensor t; /* TZ_TENSOR; TZ_STORAGE uses dtype/storage/storage_numel */
};

typedef struct tz_file tz_file;

/* ---- Prototypes ------------------------------------------------------------ */

/* Open and parse path.  Returns 0 or a negative MODEL_E* code with one line in err. */
int tz_open(tz_file **out, const char *path, char *err, size_t errlen);
/* Same, from a caller-owned buffer that must outlive the tz_file (tests, fuzzing). */
int tz_open_mem(tz_file **out, const void *buf, size_t len, const char *name, char *err, size_t errlen);
void tz_close(tz_file *f);

const tz_value *tz_root(const tz_file *f);
/* Dict lookup by string key; NULL if v is not a dict or has no such key. */
const tz_value *tz_dict_get(const tz_value *v, const char *key);
/* Element size in bytes of a TZ_* dtype. */
size_t tz_dtype_size(int dtype);
const char *tz_dtype_name(int dtype);
/* Nonzero if the tensor's elements are laid out row-major without gaps. */
int tz_tensor_is_contiguous(const tz_tensor *t);
/* Copy the tensor's elements, in row-major logical order, into out as floats
 * (any dtype, any strides).  out has room for t->numel floats. */
void tz_tensor_to_f32(const tz_tensor *t, float *out);
/* Same as doubles (for int64 tensors held exactly up to 2^53). */
void tz_tensor_to_f64(const tz_tensor *t, double *out);

#endif /* LMSERVE_TORCHZIP_H */
