/* loader.c -- helpers every part of the model module shares (loader.h): error
 * lines, memory the model owns, private copies of files, element-type sizes. */
#include "model/loader.h"

#include <errno.h>
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
