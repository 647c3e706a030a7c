/* model.c -- model_load's format dispatch, model_free, and helpers shared by
 * the loaders (error lines, mmap, owned heap blocks, half-float conversions).
 *
 * Adding a format: write `int model_load_X(model *, path, opts, err, errlen)`
 * and add one row to file_formats[] (a content probe for files) or
 * dir_formats[] (a probe for folders).  The first probe that claims the path
 * wins; the loader then owns every error message about the file. */
#include "model/loader.h"
#include "model/formats/formats.h"
#include "model/compute/kernels.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- Errors ------------------------------------------------------------------ */

int model_errf(char *err, size_t errlen, int code, const char *path, const char *fmt, ...)
{
    if (!err || errlen == 0) return code;
    int n = snprintf(err, errlen, "%s: ", path ? path : "(null)");
    if (n < 0) n = 0;
    if ((size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* one line: newlines inside (e.g. from a hostile string) become spaces */
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return code;
}

const char *model_strerror(int code)
{
    switch (code) {
    case MODEL_OK: return "success";
    case MODEL_EINVAL: return "invalid argument";
    case MODEL_ENOMEM: return "out of memory";
    case MODEL_EIO: return "input/output error";
    case MODEL_EFORMAT: return "invalid or unsupported model file";
    case MODEL_ERANGE: return "sequence exceeds its context capacity";
    default: return "unknown error";
    }
}

/* ---- Memory the model owns -------------------------------------------------- */

int model_own(model *m, void *block)
{
    if (!block) return MODEL_OK;
    if (m->n_heap == m->cap_heap) {
        int cap = m->cap_heap ? 2 * m->cap_heap : 16;
        void **h = realloc(m->heap, (size_t)cap * sizeof *h);
        if (!h) {
            free(block);
            return MODEL_ENOMEM;
        }
        m->heap = h;
        m->cap_heap = cap;
    }
    m->heap[m->n_heap++] = block;
    return MODEL_OK;
}

void *model_calloc_owned(model *m, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p || model_own(m, p) != MODEL_OK) return NULL;
    return p;
}

/* Anonymous memory for weights, on 2 MiB boundaries and marked for transparent
 * huge pages when it is large enough: a decode step streams every weight once,
 * and with 4 KiB pages that is one TLB miss (a page walk) per 4 KiB -- 15,000
 * per step for a 60 MB model.  The mapping is n bytes rounded up to the
 * alignment; *len gets that length (for munmap).  LMSERVE_NO_HUGEPAGES=1 keeps
 * 4 KiB pages (for comparisons).  NULL when out of memory. */
#define HUGE_ALIGN ((size_t)2 << 20)
size_t model_map_len(size_t n)
{
    return n >= HUGE_ALIGN ? (n + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1) : n;
}

void *model_alloc_weights(size_t n, size_t *len)
{
    int huge = n >= HUGE_ALIGN;
    size_t want = model_map_len(n);
    size_t ask = huge ? want + HUGE_ALIGN : want;
    uint8_t *p = mmap(NULL, ask, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (huge) {
        uintptr_t a = ((uintptr_t)p + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1);
        size_t head = a - (uintptr_t)p, tail = ask - head - want;
        if (head) munmap(p, head);
        if (tail) munmap((uint8_t *)a + want, tail);
        p = (uint8_t *)a;
#ifdef MADV_HUGEPAGE
        const char *no = getenv("LMSERVE_NO_HUGEPAGES");
        if (!(no && no[0] && strcmp(no, "0")))
            madvise(p, want, MADV_HUGEPAGE); /* advice only: without THP we keep 4 KiB pages */
#endif
    }
    *len = want;
    return p;
}

int model_map_file(model *m, const char *path, const uint8_t **data, size_t *size,
                   char *err, size_t errlen)
{
    return model_map_file_at(m, path, 0, data, size, err, errlen);
}

int model_map_file_at(model *m, const char *path, size_t align_at, const uint8_t **data,
                      size_t *size, char *err, size_t errlen)
{
    *data = NULL;
    *size = 0;
    if (m && m->n_maps >= (int)(sizeof m->maps / sizeof m->maps[0]))
        return model_errf(err, errlen, MODEL_EIO, path, "too many mapped files");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return model_errf(err, errlen, MODEL_EIO, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return model_errf(err, errlen, MODEL_EIO, path, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return model_errf(err, errlen, MODEL_EIO, path, "not a regular file");
    }
    size_t len = (size_t)st.st_size;
    void *addr;
    if (len == 0) {
        static const uint8_t empty[1];
        close(fd);
        *data = empty;
        return MODEL_OK;
    }
    /* Copy the file into anonymous memory instead of mapping it: a file mapping
     * raises SIGBUS in whichever thread next touches a page after someone
     * truncates or rewrites the file in place (e.g. `cp new.gguf served.gguf`
     * while the server runs) -- a crash of the whole server that no check can
     * prevent.  A private copy costs one read at load time (the forward pass
     * touches every weight anyway) and makes the loaded model immune to what
     * happens to the file afterwards (tests/integration/test_faults.py). */
    /* The copy starts pad bytes into the page so that file offset align_at lands
     * on a 64-byte boundary (a llama2.c checkpoint's weights follow a 28-byte
     * header: unaligned, every other 32-byte load would straddle a cache line). */
    size_t pad = align_at % 64 ? 64 - align_at % 64 : 0;
    if (pad && !m) {
        close(fd);
        return model_errf(err, errlen, MODEL_EIO, path, "aligned copy needs a model");
    }
    size_t maplen;
    addr = model_alloc_weights(len + pad, &maplen);
    if (!addr) {
        int e = errno;
        close(fd);
        return model_errf(err, errlen, MODEL_ENOMEM, path, "cannot allocate %zu bytes: %s", len, strerror(e));
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, (uint8_t *)addr + pad + got, len - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            munmap(addr, maplen);
            if (r == 0)
                return model_errf(err, errlen, MODEL_EIO, path,
                                  "file shrank while it was being read (%zu of %zu bytes)", got, len);
            return model_errf(err, errlen, MODEL_EIO, path, "cannot read: %s", strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    mprotect(addr, maplen, PROT_READ); /* weights are read-only from here on */
    if (m) {
        m->maps[m->n_maps].addr = addr;
        m->maps[m->n_maps].len = maplen;
        m->n_maps++;
    }
    *data = (const uint8_t *)addr + pad;
    *size = len;
    return MODEL_OK;
}

void model_unmap(const uint8_t *data, size_t size)
{
    if (data && size) munmap((void *)data, model_map_len(size));
}

/* ---- Element types ------------------------------------------------------------ */

size_t mtensor_bytes(int type, uint64_t n, int *ok)
{
    uint64_t r = 0;
    int good = 1;
    switch (type) {
    case MT_F32: good = mul_ok(n, 4, &r); break;
    case MT_F16:
    case MT_BF16: good = mul_ok(n, 2, &r); break;
    case MT_Q8_0:
        good = n % Q8_0_BLOCK == 0 && mul_ok(n / Q8_0_BLOCK, 2 + Q8_0_BLOCK, &r);
        break;
    default: good = 0; break;
    }
    if (r > (uint64_t)SIZE_MAX) good = 0;
    if (ok) *ok = good;
    return good ? (size_t)r : 0;
}

size_t mtensor_row_bytes(int type, int cols)
{
    if (cols < 0) return 0;
    return mtensor_bytes(type, (uint64_t)cols, NULL);
}

const char *mtensor_type_name(int type)
{
    switch (type) {
    case MT_F32: return "F32";
    case MT_F16: return "F16";
    case MT_BF16: return "BF16";
    case MT_Q8_0: return "Q8_0";
    default: return NULL;
    }
}

/* IEEE half <-> single, exact for every half value (subnormals included),
 * round-to-nearest-even on the way down. */
float model_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: value = man * 2^-24 */
        float f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t model_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) { /* below the smallest normal half 2^-14: subnormal or zero */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 rounded to nearest even integer is the subnormal mantissa */
        float r = nearbyintf(a * 0x1p24f);
        return (uint16_t)(sign | (uint16_t)r);
    }
    uint32_t mant = ax & 0x7fffff, e = (ax >> 23) - 112;
    uint32_t h = (e << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float model_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- Hyper-parameters and weight statistics ------------------------------------ */

int model_check_hparams(const model *m, const char *path, char *err, size_t errlen)
{
    const model_info *i = &m->info;
#define HP(cond, ...) \
    do { if (!(cond)) return model_errf(err, errlen, MODEL_EFORMAT, path, __VA_ARGS__); } while (0)
    HP(i->dim > 0 && i->dim <= (1 << 16), "embedding width %d is out of range [1, 65536]", i->dim);
    HP(i->hidden_dim > 0 && i->hidden_dim <= (1 << 18), "feed-forward width %d is out of range [1, 262144]", i->hidden_dim);
    HP(i->n_layers > 0 && i->n_layers <= 1024, "layer count %d is out of range [1, 1024]", i->n_layers);
    HP(i->n_heads > 0 && i->n_heads <= i->dim, "head count %d is out of range [1, dim %d]", i->n_heads, i->dim);
    HP(i->dim % i->n_heads == 0, "embedding width %d is not a multiple of the head count %d", i->dim, i->n_heads);
    HP(i->n_kv_heads > 0 && i->n_kv_heads <= i->n_heads, "kv head count %d is out of range [1, %d]", i->n_kv_heads, i->n_heads);
    HP(i->n_heads % i->n_kv_heads == 0, "head count %d is not a multiple of the kv head count %d", i->n_heads, i->n_kv_heads);
    HP(i->head_dim * i->n_heads == i->dim, "head size %d times head count %d is not the width %d", i->head_dim, i->n_heads, i->dim);
    HP(i->head_dim % 2 == 0, "head size %d is odd (RoPE needs pairs)", i->head_dim);
    HP(i->rope_dim > 0 && i->rope_dim <= i->head_dim && i->rope_dim % 2 == 0,
       "rope dimension count %d must be even and in [2, head size %d]", i->rope_dim, i->head_dim);
    HP(i->vocab_size > 0 && i->vocab_size <= (1 << 22), "vocabulary size %d is out of range [1, 4194304]", i->vocab_size);
    HP(i->ctx_len > 0 && i->ctx_len <= (1 << 20), "context length %d is out of range [1, 1048576]", i->ctx_len);
    HP(isfinite(i->rope_theta) && i->rope_theta > 0, "rope frequency base %g is not a positive number", (double)i->rope_theta);
    HP(isfinite(i->norm_eps) && i->norm_eps > 0 && i->norm_eps < 1, "norm epsilon %g is out of range (0, 1)", (double)i->norm_eps);
#undef HP
    return MODEL_OK;
}

static void count_tensor(const mtensor *t, size_t per_type[4], size_t *params, size_t *bytes)
{
    if (!t->data) return;
    size_t n = (size_t)t->rows * (size_t)t->cols;
    *params += n;
    *bytes += (size_t)t->rows * mtensor_row_bytes(t->type, t->cols);
    int slot = t->type == MT_F32 ? 0 : t->type == MT_F16 ? 1 : t->type == MT_BF16 ? 2 : 3;
    per_type[slot] += n;
}

void model_fill_weight_stats(model *m)
{
    size_t per[4] = {0}, params = 0, bytes = 0;
    size_t vec = (size_t)m->info.dim * (2 * (size_t)m->info.n_layers + 1); /* norms, always F32 */
    count_tensor(&m->tok_embd, per, &params, &bytes);
    if (m->output.data != m->tok_embd.data) count_tensor(&m->output, per, &params, &bytes);
    for (int l = 0; l < m->info.n_layers && m->layers; l++) {
        const layer_weights *w = &m->layers[l];
        const mtensor *ts[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3};
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) count_tensor(ts[k], per, &params, &bytes);
    }
    /* the dominant type is the one holding most matrix weights (ties: the lower slot) */
    static const int types[4] = {MT_F32, MT_F16, MT_BF16, MT_Q8_0};
    int best = 0;
    for (int k = 1; k < 4; k++)
        if (per[k] > per[best]) best = k;
    snprintf(m->type_name, sizeof m->type_name, "%s", mtensor_type_name(types[best]));
    m->info.weight_type = m->type_name;
    m->info.n_params = params + vec;
    m->info.weight_bytes = bytes + vec * sizeof(float);
}

/* ---- Format dispatch ------------------------------------------------------------ */

typedef int (*model_loader_fn)(model *, const char *, const model_load_opts *, char *, size_t);

/* A file probe looks at the first bytes (head, n of them) and the file size. */
typedef struct {
    const char *name;
    int (*probe)(const uint8_t *head, size_t n, uint64_t file_size);
    model_loader_fn load;
} file_format;

/* A folder probe looks at the folder (e.g. for config.json). */
typedef struct {
    const char *name;
    int (*probe)(const char *dir);
    model_loader_fn load;
} dir_format;

static int probe_gguf(const uint8_t *head, size_t n, uint64_t file_size)
{
    (void)file_size;
    return n >= 4 && memcmp(head, "GGUF", 4) == 0;
}

/* llama2.c has no magic: accept a header whose fields are plausible. */
static int probe_llama2c(const uint8_t *head, size_t n, uint64_t file_size)
{
    if (n < 28 || file_size < 28) return 0;
    int32_t h[7];
    memcpy(h, head, sizeof h);
    return h[0] > 0 && h[1] > 0 && h[2] > 0 && h[3] > 0 && h[4] > 0 && h[4] <= h[3] &&
           h[5] != 0 && h[6] > 0 && h[0] % h[3] == 0;
}

static const file_format file_formats[] = {
    {"gguf", probe_gguf, model_load_gguf},
    {"llama2c", probe_llama2c, model_load_llama2c},
};

/* Folder formats (Hugging Face, course artifacts) are added here by their readers. */
static const dir_format dir_formats[] = {
    {"course", probe_course_dir, model_load_course}, /* model/formats/load_course.c */
    {"hf", probe_hf_dir, model_load_hf},             /* model/formats/load_hf.c */
};

static int load_dispatch(model *m, const char *path, const model_load_opts *opts,
                         char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return model_errf(err, errlen, MODEL_EIO, path, "cannot open: %s", strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        for (size_t i = 0; i < sizeof dir_formats / sizeof dir_formats[0]; i++)
            if (dir_formats[i].probe && dir_formats[i].probe(path))
                return dir_formats[i].load(m, path, opts, err, errlen);
        return model_errf(err, errlen, MODEL_EFORMAT, path,
                          "unsupported folder (no model format recognised in it)");
    }
    if (!S_ISREG(st.st_mode))
        return model_errf(err, errlen, MODEL_EIO, path, "not a regular file or folder");
    uint8_t head[64];
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return model_errf(err, errlen, MODEL_EIO, path, "cannot open: %s", strerror(errno));
    while (n < sizeof head) {
        ssize_t r = read(fd, head + n, sizeof head - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return model_errf(err, errlen, MODEL_EIO, path, "cannot read: %s", strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    for (size_t i = 0; i < sizeof file_formats / sizeof file_formats[0]; i++)
        if (file_formats[i].probe(head, n, (uint64_t)st.st_size))
            return file_formats[i].load(m, path, opts, err, errlen);
    if (n == 0) return model_errf(err, errlen, MODEL_EFORMAT, path, "file is empty");
    return model_errf(err, errlen, MODEL_EFORMAT, path,
                      "unknown model format (no GGUF magic, and the first %zu bytes are not a "
                      "plausible llama2.c header)", n < 28 ? n : (size_t)28);
}

/* Give back the whole pages of [p, p + n) when they lie in one of the model's
 * private file copies (nothing else points into a packed tensor's old bytes). */
static void release_pages(model *m, const void *p, size_t n)
{
    uintptr_t a = (uintptr_t)p, e = a + n, pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < m->n_maps; i++) {
        uintptr_t lo = (uintptr_t)m->maps[i].addr, hi = lo + m->maps[i].len;
        if (a < lo || e > hi) continue;
        uintptr_t b = (a + pg - 1) / pg * pg, t = e / pg * pg;
        if (t > b) madvise((void *)b, t - b, MADV_DONTNEED);
        return;
    }
}

/* Repack the F32 matmul weights into the kernels' panel layout (kernels.h):
 * one aligned block for all of them; the row-major bytes are released where
 * they are a private file copy.  A tied classifier is packed once and the
 * embedding lookup reads the packed copy.  Out of memory: left row-major
 * (same kernels as before, still deterministic). */
static void pack_weights(model *m)
{
    if (!kernel_can_pack(MT_F32) || getenv("LMSERVE_NO_PACK")) return;
    int nl = m->info.n_layers;
    int n = 0, cap = 7 * nl + 1;
    mtensor **ts = malloc(sizeof *ts * (size_t)cap);
    if (!ts) return;
    for (int l = 0; l < nl; l++) {
        layer_weights *w = &m->layers[l];
        mtensor *c[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3};
        for (int i = 0; i < 7; i++) ts[n++] = c[i];
    }
    ts[n++] = &m->output;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const mtensor *t = ts[i];
        if (t->data && t->type == MT_F32 && !t->panel && t->rows >= KERNEL_PANEL)
            total += ((size_t)t->rows * t->cols * sizeof(float) + 63) & ~(size_t)63;
    }
    size_t buflen = 0;
    float *buf = total ? model_alloc_weights(total, &buflen) : NULL;
    if (!buf) {
        free(ts);
        return;
    }
    m->packed = buf;
    m->packed_len = buflen;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        mtensor *t = ts[i];
        if (!(t->data && t->type == MT_F32 && !t->panel && t->rows >= KERNEL_PANEL)) continue;
        const void *old = t->data;
        size_t bytes = (size_t)t->rows * t->cols * sizeof(float);
        kernel_pack_f32(t, (float *)((char *)buf + off), t);
        off += (bytes + 63) & ~(size_t)63;
        if (m->tok_embd.data == old)
            m->tok_embd = *t; /* tied: the lookup reads the packed copy */
        release_pages(m, old, bytes);
    }
    mprotect(buf, buflen, PROT_READ); /* like the file copies: read-only from here on */
    free(ts);
}

int model_load(model **out, const char *path, const model_load_opts *opts,
               char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!out) return MODEL_EINVAL;
    *out = NULL;
    if (!path) return model_errf(err, errlen, MODEL_EINVAL, "(null)", "no model path given");
    model_load_opts defaults = {0};
    if (!opts) opts = &defaults;
    model *m = calloc(1, sizeof *m);
    if (!m) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    m->tok.bos_id = m->tok.eos_id = m->tok.unk_id = -1;
    m->path = strdup(path);
    if (!m->path) {
        free(m);
        return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    }
    int rc = load_dispatch(m, path, opts, err, errlen);
    if (rc == MODEL_OK) {
        pack_weights(m);
        m->info.arch = m->arch_name;
        m->info.format = m->format_name;
        m->info.bos_id = m->tok.bos_id;
        m->info.eos_id = m->tok.eos_id;
        m->info.bos_ends_text = !strcmp(m->format_name, "llama2c") && m->tok.bos_id >= 0;
        m->info.add_bos = m->tok.add_bos;
        m->pool = model_pool_new(opts->n_threads);
        if (!m->pool) rc = model_errf(err, errlen, MODEL_ENOMEM, path, "cannot start the thread pool");
    }
    if (rc != MODEL_OK) {
        if (err && errlen && !err[0]) model_errf(err, errlen, rc, path, "%s", model_strerror(rc));
        model_free(m);
        return rc;
    }
    *out = m;
    return MODEL_OK;
}

void model_free(model *m)
{
    if (!m) return;
    model_pool_free(m->pool);
    forward_scratch_free(m->scratch);
    tokenizer_free(&m->tok);
    for (int i = 0; i < m->n_maps; i++) munmap(m->maps[i].addr, m->maps[i].len);
    if (m->packed) munmap(m->packed, m->packed_len);
    for (int i = 0; i < m->n_heap; i++) free(m->heap[i]);
    free(m->heap);
    free(m->path);
    free(m);
}

void model_parallel(model *m, void (*fn)(void *arg, int task, int n_tasks), void *arg,
                    int n_tasks)
{
    if (n_tasks <= 0) return;
    if (m && m->pool) {
        model_pool_run(m->pool, fn, arg, n_tasks);
        return;
    }
    for (int t = 0; t < n_tasks; t++) fn(arg, t, n_tasks);
}

const model_info *model_get_info(const model *m)
{
    return m ? &m->info : NULL;
}
