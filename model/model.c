/* model.c -- model_load (the format dispatch, then the weights repacked for the
 * kernels and the thread pool started), model_free, model_get_info.
 *
 * Adding a format: write `int model_load_X(model *, path, opts, err, errlen)`
 * and add one row to file_formats[] (a content probe for files) or
 * dir_formats[] (a probe for folders).  The first probe that claims the path
 * wins; the loader then owns every error message about the file. */
#include "model/compute/forward.h"
#include "model/compute/kernels.h"
#include "model/compute/pool.h"
#include "model/formats/formats.h"
#include "model/loader.h"
#include "model/tokenizers/tokenizer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *model_strerror(int code)
{
    switch (code) {
    case MODEL_OK: return "success";
    case MODEL_EINVAL: return "invalid argument";
    case MODEL_ENOMEM: return "out of memory";
    case MODEL_EIO: return "input/output error";
    case MODEL_EFORMAT: return "invalid or unsupported model file";
    case MODEL_ERANGE: return "sequence exceeds its context capacity";
    case MODEL_ECHAT_RAISE: return "the chat template refused the conversation";
    case MODEL_ECHAT_UNSUPPORTED: return "the chat template uses an unsupported construct";
    case MODEL_ECHAT_EVAL: return "the chat template could not be rendered";
    default: return "unknown error";
    }
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
        m->info.tokenizer = m->tok.kind == TOK_SPM ? "sentencepiece"
                            : m->tok.kind == TOK_BPE_BYTES ? "byte-level-bpe" : "course-bpe";
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
