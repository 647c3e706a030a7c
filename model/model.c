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
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
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
    return h[0] > 0 && h[1] > 0 && h[2] > 0 && h[3] > 0 && h[4] > 0 && h[4] <= h[3] && h[5] != 0 && h[6] > 0 &&
           h[0] % h[3] == 0;
}

static const file_format file_formats[] = {
    { "gguf", probe_gguf, model_load_gguf },
    { "llama2c", probe_llama2c, model_load_llama2c },
};

/* Folder formats (Hugging Face, course artifacts) are added here by their readers. */
static const dir_format dir_formats[] = {
    { "course", probe_course_dir, model_load_course }, /* model/formats/load_course.c */
    { "hf", probe_hf_dir, model_load_hf },             /* model/formats/load_hf.c */
};

static int load_dispatch(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) return model_errf(err, errlen, MODEL_EIO, path, "cannot open: %s", strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        for (size_t i = 0; i < sizeof dir_formats / sizeof dir_formats[0]; i++)
            if (dir_formats[i].probe && dir_formats[i].probe(path))
                return dir_formats[i].load(m, path, opts, err, errlen);
        return model_errf(err, errlen, MODEL_EFORMAT, path, "unsupported folder (no model format recognised in it)");
    }
    if (!S_ISREG(st.st_mode)) return model_errf(err, errlen, MODEL_EIO, path, "not a regular file or folder");
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
                      "plausible llama2.c header)",
                      n < 28 ? n : (size_t)28);
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

/* 1 if [p, p + n) lies in one of the model's private file copies (writable until
 * model_protect). */
static int in_own_copy(const model *m, const void *p, size_t n)
{
    uintptr_t a = (uintptr_t)p;
    for (int i = 0; i < m->n_maps; i++) {
        uintptr_t lo = (uintptr_t)m->maps[i].addr;
        if (a >= lo && a + n <= lo + m->maps[i].len) return 1;
    }
    return 0;
}

/* ---- Packing the matrices for the kernels ------------------------------------------ */

/* A run of whole panels of one matrix, packed by one pool task: from src into dst,
 * or in place (src == dst) through a panel-sized buffer.  The tail rows after the
 * last panel are copied by the piece that has `tail` set (out of place only). */
typedef struct {
    const mtensor *t;
    const uint8_t *src;
    uint8_t *dst;
    int p0, p1;
    int tail;
} pack_piece;

typedef struct {
    const pack_piece *pieces;
    pthread_mutex_t mu; /* guards bufs: one panel buffer per running task */
    void **bufs;
    int n_bufs;
} pack_job;

static void pack_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    pack_job *j = arg;
    const pack_piece *pc = &j->pieces[task];
    const mtensor *t = pc->t;
    int P = kernel_pack_rows(t->type);
    size_t rb = mtensor_row_bytes(t->type, t->cols), pbytes = (size_t)P * rb;
    void *buf = NULL;
    if (pc->src == pc->dst) {
        pthread_mutex_lock(&j->mu);
        buf = j->bufs[--j->n_bufs]; /* never empty: at most one task per buffer runs */
        pthread_mutex_unlock(&j->mu);
    }
    for (int p = pc->p0; p < pc->p1; p++) {
        const uint8_t *from = pc->src + (size_t)p * pbytes;
        if (buf) {
            memcpy(buf, from, pbytes);
            from = buf;
        }
        mtensor panel = *t, unused;
        panel.data = from;
        panel.rows = P;
        kernel_pack(&panel, pc->dst + (size_t)p * pbytes, &unused);
    }
    if (pc->tail && pc->src != pc->dst) {
        size_t done = (size_t)(t->rows / P) * pbytes;
        memcpy(pc->dst + done, pc->src + done, (size_t)t->rows * rb - done);
    }
    if (buf) {
        pthread_mutex_lock(&j->mu);
        j->bufs[j->n_bufs++] = buf;
        pthread_mutex_unlock(&j->mu);
    }
}

/* Repack the matmul weights the kernels have a panel layout for (F32: 16-row
 * panels; block-quantized types: 8-row panels of interleaved blocks; kernels.h) on
 * the pool's threads.  A matrix inside the model's private file copy (a GGUF or
 * llama2.c file: all of them) is packed in place, a panel at a time (the layout
 * is panel-local), so the weights take their file's size once and are touched
 * once more after the read; any other (not aligned for the kernels, or a
 * format's converted copy) is packed into one new aligned block and its old
 * pages are released where they are a private file copy.  A tied classifier is
 * packed once and the embedding lookup reads the packed copy.  Out of memory:
 * left row-major (the same arithmetic, still deterministic). */
#define PACK_PIECE_BYTES ((size_t)2 << 20)
static void pack_weights(model *m)
{
    if (getenv("LMSERVE_NO_PACK")) return;
    int nl = m->info.n_layers;
    int n = 0;
    mtensor **ts = malloc(sizeof *ts * (size_t)(7 * nl + 1));
    if (!ts) return;
    for (int l = 0; l < nl; l++) {
        layer_weights *w = &m->layers[l];
        mtensor *c[] = { &w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3 };
        for (int i = 0; i < 7; i++) ts[n++] = c[i];
    }
    ts[n++] = &m->output;
    /* what goes where: in place, or into the new block (offsets first) */
    size_t *dst_off = calloc((size_t)n, sizeof *dst_off);
    int *inplace = calloc((size_t)n, sizeof *inplace);
    size_t total = 0, max_panel = 0;
    int n_pieces = 0;
    for (int i = 0; ts && dst_off && inplace && i < n; i++) {
        const mtensor *t = ts[i];
        int P = t->data && !t->panel ? kernel_pack_rows(t->type) : 0;
        if (!P || t->rows < P) continue;
        size_t rb = mtensor_row_bytes(t->type, t->cols), bytes = (size_t)t->rows * rb;
        size_t pbytes = (size_t)P * rb;
        inplace[i] = (uintptr_t)t->data % KERNEL_PACK_ALIGN == 0 && in_own_copy(m, t->data, bytes) ? 1 : -1;
        if (inplace[i] < 0) {
            dst_off[i] = total;
            total += (bytes + 63) & ~(size_t)63;
        }
        if (pbytes > max_panel) max_panel = pbytes;
        int per = (int)(PACK_PIECE_BYTES / pbytes) > 0 ? (int)(PACK_PIECE_BYTES / pbytes) : 1;
        n_pieces += (t->rows / P + per - 1) / per;
    }
    size_t buflen = 0;
    char *block = total ? model_alloc_weights(total, &buflen) : NULL;
    int threads = model_pool_size(m->pool);
    pack_job job = { .n_bufs = 0 };
    pack_piece *pieces = n_pieces ? calloc((size_t)n_pieces, sizeof *pieces) : NULL;
    job.bufs = calloc((size_t)threads, sizeof *job.bufs);
    int mu_ok = pthread_mutex_init(&job.mu, NULL) == 0;
    int ok = dst_off && inplace && (total == 0 || block) && (n_pieces == 0 || pieces) && job.bufs && mu_ok;
    for (int i = 0; ok && i < threads; i++) {
        job.bufs[i] = max_panel ? aligned_alloc(64, (max_panel + 63) & ~(size_t)63) : NULL;
        if (max_panel && !job.bufs[i])
            ok = 0;
        else
            job.n_bufs++;
    }
    if (ok && n_pieces) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (!inplace[i]) continue;
            const mtensor *t = ts[i];
            int P = kernel_pack_rows(t->type), full = t->rows / P;
            size_t pbytes = (size_t)P * mtensor_row_bytes(t->type, t->cols);
            int per = (int)(PACK_PIECE_BYTES / pbytes) > 0 ? (int)(PACK_PIECE_BYTES / pbytes) : 1;
            uint8_t *dst = inplace[i] > 0 ? (uint8_t *)t->data : (uint8_t *)block + dst_off[i];
            for (int p = 0; p < full; p += per)
                pieces[k++] = (pack_piece){ .t = t,
                                            .src = t->data,
                                            .dst = dst,
                                            .p0 = p,
                                            .p1 = p + per < full ? p + per : full,
                                            .tail = p + per >= full };
        }
        job.pieces = pieces;
        model_pool_run(m->pool, pack_task, &job, n_pieces);
        for (int i = 0; i < n; i++) {
            if (!inplace[i]) continue;
            mtensor *t = ts[i];
            const void *old = t->data;
            size_t bytes = (size_t)t->rows * mtensor_row_bytes(t->type, t->cols);
            if (inplace[i] < 0) t->data = block + dst_off[i];
            t->panel = kernel_pack_rows(t->type);
            if (m->tok_embd.data == old) m->tok_embd = *t; /* tied: the lookup reads the packed copy */
            if (inplace[i] < 0) release_pages(m, old, bytes);
        }
        if (block) {
            m->packed = block;
            m->packed_len = buflen;
            block = NULL;
        }
    }
    if (block) munmap(block, buflen);
    for (int i = 0; job.bufs && i < job.n_bufs; i++) free(job.bufs[i]);
    if (mu_ok) pthread_mutex_destroy(&job.mu);
    free(job.bufs);
    free(pieces);
    free(inplace);
    free(dst_off);
    free(ts);
}

/* The weights are read-only from here on: the file copies and the packed block. */
static void model_protect(model *m)
{
    for (int i = 0; i < m->n_maps; i++) mprotect(m->maps[i].addr, m->maps[i].len, PROT_READ);
    if (m->packed) mprotect(m->packed, m->packed_len, PROT_READ);
}

/* Moves the weights onto huge pages after the load, at the lowest priority, while
 * the model is already in use (model_weights_huge; stopped by model_free). */
static void *huge_main(void *arg)
{
    model *m = arg;
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    for (int i = 0; i < m->n_maps && !atomic_load(&m->huge_stop); i++)
        model_weights_huge(m->maps[i].addr, m->maps[i].len, &m->huge_stop);
    if (m->packed && !atomic_load(&m->huge_stop)) model_weights_huge(m->packed, m->packed_len, &m->huge_stop);
    return NULL;
}

static void huge_start(model *m)
{
    if (!model_hugepages_wanted()) return;
    atomic_init(&m->huge_stop, 0);
    m->huge_started = pthread_create(&m->huge_thread, NULL, huge_main, m) == 0; /* else 4 KiB pages */
}

void model_settle(model *m)
{
    if (!m || !m->huge_started) return;
    pthread_join(m->huge_thread, NULL);
    m->huge_started = 0;
}

int model_load(model **out, const char *path, const model_load_opts *opts, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!out) return MODEL_EINVAL;
    *out = NULL;
    if (!path) return model_errf(err, errlen, MODEL_EINVAL, "(null)", "no model path given");
    model_load_opts defaults = { 0 };
    if (!opts) opts = &defaults;
    model *m = calloc(1, sizeof *m);
    if (!m) return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    m->tok.bos_id = m->tok.eos_id = m->tok.unk_id = -1;
    m->path = strdup(path);
    if (!m->path) {
        free(m);
        return model_errf(err, errlen, MODEL_ENOMEM, path, "out of memory");
    }
    /* the pool first: the readers and the packing use its threads */
    m->pool = model_pool_new(opts->n_threads);
    if (!m->pool) {
        model_free(m);
        return model_errf(err, errlen, MODEL_ENOMEM, path, "cannot start the thread pool");
    }
    m->n_threads = model_pool_size(m->pool);
    int rc = load_dispatch(m, path, opts, err, errlen);
    if (rc == MODEL_OK) {
        pack_weights(m);
        model_protect(m);
        m->info.arch = m->arch_name;
        m->info.format = m->format_name;
        m->info.bos_id = m->tok.bos_id;
        m->info.eos_id = m->tok.eos_id;
        m->info.bos_ends_text = !strcmp(m->format_name, "llama2c") && m->tok.bos_id >= 0;
        m->info.add_bos = m->tok.add_bos;
        m->info.tokenizer = m->tok.kind == TOK_SPM         ? "sentencepiece"
                            : m->tok.kind == TOK_BPE_BYTES ? "byte-level-bpe"
                                                           : "course-bpe";
    }
    if (rc != MODEL_OK) {
        if (err && errlen && !err[0]) model_errf(err, errlen, rc, path, "%s", model_strerror(rc));
        model_free(m);
        return rc;
    }
    huge_start(m);
    *out = m;
    return MODEL_OK;
}

void model_free(model *m)
{
    if (!m) return;
    if (m->huge_started) {
        atomic_store(&m->huge_stop, 1);
        model_settle(m);
    }
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

void model_parallel(model *m, void (*fn)(void *arg, int task, int n_tasks), void *arg, int n_tasks)
{
    if (n_tasks <= 0) return;
    if (m && m->pool) {
        model_pool_run(m->pool, fn, arg, n_tasks);
        return;
    }
    for (int t = 0; t < n_tasks; t++) fn(arg, t, n_tasks);
}

const model_info *model_get_info(const model *m) { return m ? &m->info : NULL; }
