/* loader.c -- helpers every part of the model module shares (loader.h): error
 * lines, memory the model owns, growing arrays, private copies of files,
 * element-type sizes. */
#include "model/loader.h"
#include "model/compute/quant.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
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

/* ---- Memory the model owns -------------------------------------------------- */

void *model_grow(void *p, size_t n, size_t *cap, size_t size, size_t first)
{
    if (n < *cap) return p;
    size_t nc = *cap ? *cap : first;
    if (*cap && nc > SIZE_MAX / 2) return NULL;
    if (*cap) nc *= 2;
    if (nc > SIZE_MAX / size) return NULL;
    void *q = realloc(p, nc * size);
    if (q) *cap = nc;
    return q;
}

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

/* Anonymous memory for weights, on 2 MiB boundaries when it is large enough
 * (so that model_weights_huge can later give it huge pages, whole).  It is not
 * advised for huge pages here: a fault on fresh huge-page memory must find and
 * clear a free 2 MiB block, and on a VM whose host takes free memory back
 * (balloon free-page reporting) can cost seconds of CPU for a large model,
 * depending on what was freed before -- while 4 KiB pages come from memory the
 * guest just used.  So weights are read on 4 KiB pages and collapsed into huge
 * pages afterwards, off the start-up path.  The mapping is n bytes rounded up to
 * the alignment; *len gets that length (for munmap).  NULL when out of memory. */
#define HUGE_ALIGN ((size_t)2 << 20)
size_t model_map_len(size_t n) { return n >= HUGE_ALIGN ? (n + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1) : n; }

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
    }
    *len = want;
    return p;
}

int model_hugepages_wanted(void)
{
    const char *no = getenv("LMSERVE_NO_HUGEPAGES");
    return !(no && no[0] && strcmp(no, "0"));
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux 6.1; older kernels answer EINVAL */
#endif

int model_weights_huge(void *p, size_t len, atomic_int *stop)
{
    if (!p || len < HUGE_ALIGN || !model_hugepages_wanted()) return 0;
    int got = 0;
#ifdef MADV_HUGEPAGE
    /* The advice first: khugepaged then collapses whatever MADV_COLLAPSE could not
     * (an older kernel, or no free 2 MiB block just then). */
    madvise(p, len, MADV_HUGEPAGE);
    for (size_t off = 0; off + HUGE_ALIGN <= len; off += HUGE_ALIGN) {
        if (stop && atomic_load(stop)) break;
        if (madvise((uint8_t *)p + off, HUGE_ALIGN, MADV_COLLAPSE) == 0)
            got++;
        else if (errno == EINVAL)
            break; /* no MADV_COLLAPSE: the advice alone */
    }
#endif
    return got;
}

/* ---- Reading files --------------------------------------------------------------- */

/* Reads [0, len) of fd into dst in chunks that several threads take in turn: the
 * cost of a large read is mostly the kernel's (faulting in and clearing the
 * fresh pages, then copying from the page cache), which both cores can share. */
#define READ_CHUNK ((size_t)8 << 20)
typedef struct {
    int fd;
    uint8_t *dst;
    size_t len;
    atomic_size_t next;
    atomic_int err;         /* first failure: an errno, or -1 when the file ended early */
    atomic_size_t short_at; /* where it ended, for the message */
} file_read;

static void *read_chunks(void *arg)
{
    file_read *r = arg;
    for (;;) {
        size_t off = atomic_fetch_add(&r->next, READ_CHUNK);
        if (off >= r->len || atomic_load(&r->err)) break;
        size_t end = r->len - off < READ_CHUNK ? r->len : off + READ_CHUNK;
        while (off < end) {
            ssize_t n = pread(r->fd, r->dst + off, end - off, (off_t)off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                int e = n < 0 ? errno : -1, zero = 0;
                if (atomic_compare_exchange_strong(&r->err, &zero, e)) atomic_store(&r->short_at, off);
                return NULL;
            }
            off += (size_t)n;
        }
    }
    return NULL;
}

/* 0, or an errno, or -1 when the file ended before len (*at: where). */
static int read_file_parallel(int fd, uint8_t *dst, size_t len, int threads, size_t *at)
{
    file_read r = { .fd = fd, .dst = dst, .len = len };
    atomic_init(&r.next, 0);
    atomic_init(&r.err, 0);
    atomic_init(&r.short_at, 0);
    pthread_t th[16];
    int n = 0;
    if (threads > 16) threads = 16;
    while (n < threads - 1 && (size_t)(n + 1) * READ_CHUNK < len && pthread_create(&th[n], NULL, read_chunks, &r) == 0)
        n++; /* a thread that cannot start leaves its share to the others */
    read_chunks(&r);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    *at = atomic_load(&r.short_at);
    return atomic_load(&r.err);
}

/* 1 if the file was written to (or truncated, or extended) between two fstat calls
 * on the same descriptor: a copy read in between may mix old and new bytes -- a
 * header from one version with weights of another, which the format's checks
 * would accept (tests/faults/test_file_changes_during_load.c).  The times are the
 * file system's, which advance in clock ticks of a few ms: a rewrite to the same
 * size within the tick of the write before the first fstat goes unseen; a change
 * of size never does. */
static int file_changed(const struct stat *a, const struct stat *b)
{
    return a->st_size != b->st_size || a->st_mtim.tv_sec != b->st_mtim.tv_sec ||
           a->st_mtim.tv_nsec != b->st_mtim.tv_nsec || a->st_ctim.tv_sec != b->st_ctim.tv_sec ||
           a->st_ctim.tv_nsec != b->st_ctim.tv_nsec;
}

int model_map_file(model *m, const char *path, const uint8_t **data, size_t *size, char *err, size_t errlen)
{
    return model_map_file_at(m, path, 0, data, size, err, errlen);
}

int model_map_file_at(model *m, const char *path, size_t align_at, const uint8_t **data, size_t *size, char *err,
                      size_t errlen)
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
     * touches every weight anyway), made by m->n_threads threads at once, and
     * makes the loaded model immune to what happens to the file afterwards
     * (tests/integration/test_faults.py, tests/faults/test_model_file.c).  With
     * m the copy stays writable: model_load repacks matrices inside it, then
     * makes it read-only. */
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
    size_t at = 0;
    int rerr = read_file_parallel(fd, (uint8_t *)addr + pad, len, m && m->n_threads > 1 ? m->n_threads : 1, &at);
    struct stat after = st;
    int changed = !rerr && (fstat(fd, &after) != 0 || file_changed(&st, &after));
    close(fd);
    if (rerr || changed) {
        munmap(addr, maplen);
        if (changed)
            return model_errf(err, errlen, MODEL_EIO, path,
                              "file changed while it was being read (%zu bytes, now %lld); "
                              "load it again once it is written",
                              len, (long long)after.st_size);
        if (rerr < 0)
            return model_errf(err, errlen, MODEL_EIO, path, "file shrank while it was being read (%zu of %zu bytes)",
                              at, len);
        return model_errf(err, errlen, MODEL_EIO, path, "cannot read: %s", strerror(rerr));
    }
    if (m) {
        /* kept writable until model_load has packed the matrices in place, then
         * made read-only with the rest (model_protect) */
        m->maps[m->n_maps].addr = addr;
        m->maps[m->n_maps].len = maplen;
        m->n_maps++;
    } else {
        mprotect(addr, maplen, PROT_READ); /* read-only from here on */
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
    default: r = quant_bytes(type, n, &good); break; /* block-quantized (compute/quant.h) */
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
    default: return quant_is_quantized(type) ? quant_type_name(type) : NULL;
    }
}
