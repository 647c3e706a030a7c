/* test_hugepages.c -- weight memory: large blocks sit on 2 MiB boundaries, are
 * filled on 4 KiB pages (cheap faults at load time) and then moved onto transparent
 * huge pages by model_weights_huge (fewer TLB misses when a decode step streams
 * every weight), LMSERVE_NO_HUGEPAGES=1 keeps 4 KiB pages, and model_unmap releases
 * the whole rounded-up mapping (no address space leaks). */
#include "tests/model/helpers.h"
#include "model/loader.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>

#define MIB ((size_t)1 << 20)

/* 1 if every page of [p, p + n) is mapped, 0 if none is (mincore says ENOMEM). */
static int all_mapped(const void *p, size_t n)
{
    unsigned char vec[4096];
    size_t pages = (n + 4095) / 4096;
    cr_assert_leq(pages, sizeof vec);
    if (mincore((void *)p, n, vec) == 0) return 1;
    cr_assert_eq(errno, ENOMEM, "mincore: %s", strerror(errno));
    for (size_t i = 0; i < pages; i++) /* any page still mapped? */
        if (mincore((char *)p + i * 4096, 4096, vec) == 0) return -1;
    return 0;
}

/* AnonHugePages (kB) of the mapping that starts at p, from /proc/self/smaps. */
static long huge_kb(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(f);
    char line[512];
    int in = 0;
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = lo <= (uintptr_t)p && (uintptr_t)p < hi;
            continue;
        }
        if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    }
    fclose(f);
    return kb;
}

static int thp_available(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 0;
    char s[128] = "";
    if (!fgets(s, sizeof s, f)) s[0] = '\0';
    fclose(f);
    return strstr(s, "[always]") || strstr(s, "[madvise]");
}

Test(hugepages, map_len_rounds_only_large_blocks)
{
    cr_assert_eq(model_map_len(0), 0);
    cr_assert_eq(model_map_len(100), 100);
    cr_assert_eq(model_map_len(2 * MIB - 1), 2 * MIB - 1);
    cr_assert_eq(model_map_len(2 * MIB), 2 * MIB);
    cr_assert_eq(model_map_len(2 * MIB + 1), 4 * MIB);
    cr_assert_eq(model_map_len(5 * MIB + 3), 6 * MIB);
}

Test(hugepages, large_blocks_are_aligned_zeroed_and_released)
{
    size_t n = 3 * MIB + 5, len = 0;
    unsigned char *p = model_alloc_weights(n, &len);
    cr_assert_not_null(p);
    cr_assert_eq((uintptr_t)p % (2 * MIB), 0, "not on a 2 MiB boundary: %p", (void *)p);
    cr_assert_eq(len, 4 * MIB);
    cr_assert_eq(len, model_map_len(n));
    for (size_t i = 0; i < len; i += 4096) cr_assert_eq(p[i], 0);
    memset(p, 0xab, len); /* writable to the end of the rounded mapping */
    cr_assert_eq(all_mapped(p, len), 1);
    model_unmap(p, n); /* the size the caller knows, not the rounded length */
    cr_assert_eq(all_mapped(p, len), 0, "model_unmap left part of the mapping behind");
}

Test(hugepages, small_blocks_keep_their_size)
{
    size_t len = 0;
    unsigned char *p = model_alloc_weights(10000, &len);
    cr_assert_not_null(p);
    cr_assert_eq(len, 10000);
    memset(p, 1, len);
    model_unmap(p, 10000);
    cr_assert_eq(all_mapped(p, 10000), 0);
}

static int thp_always(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char s[128] = "";
    if (f && !fgets(s, sizeof s, f)) s[0] = '\0';
    if (f) fclose(f);
    return strstr(s, "[always]") != NULL;
}

/* An 8 MiB block filled, then (when `collapse`) given to model_weights_huge: its
 * AnonHugePages.  The kernel may be short of free 2 MiB blocks; a few fresh tries
 * make that unlikely. */
static long touched_huge_kb(int collapse)
{
    long best = 0;
    for (int attempt = 0; attempt < 4 && best <= 0; attempt++) {
        size_t len = 0;
        unsigned char *p = model_alloc_weights(8 * MIB, &len);
        cr_assert_not_null(p);
        memset(p, 7, len);
        if (collapse) model_weights_huge(p, len, NULL);
        for (size_t i = 0; i < len; i += 4096) cr_assert_eq(p[i], 7, "the contents changed");
        best = huge_kb(p);
        cr_assert_geq(best, 0, "no smaps entry for the block");
        model_unmap(p, 8 * MIB);
        if (!collapse) break;
    }
    return best;
}

Test(hugepages, filled_on_small_pages_then_collapsed)
{
    if (!thp_available()) cr_skip_test("transparent huge pages are off on this kernel");
    unsetenv("LMSERVE_NO_HUGEPAGES");
    if (!thp_always()) /* with "always" every fault may take a huge page anyway */
        cr_assert_eq(touched_huge_kb(0), 0, "a fresh weight block was faulted in on huge pages");
    cr_assert_gt(touched_huge_kb(1), 0, "an 8 MiB weight block got no huge page");
    setenv("LMSERVE_NO_HUGEPAGES", "1", 1);
    cr_assert_eq(model_hugepages_wanted(), 0);
    if (!thp_always()) cr_assert_eq(touched_huge_kb(1), 0, "LMSERVE_NO_HUGEPAGES=1 still got huge pages");
    unsetenv("LMSERVE_NO_HUGEPAGES");
}

Test(hugepages, file_copy_matches_the_file_and_is_released)
{
    th_tmp t;
    th_tmp_init(&t);
    size_t n = 2 * MIB + 12345;
    unsigned char *src = malloc(n);
    cr_assert_not_null(src);
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 131 + (i >> 13));
    const char *path = th_tmp_file(&t, "w.bin");
    th_write_file(path, src, n);
    const uint8_t *d = NULL;
    size_t size = 0;
    char err[256];
    cr_assert_eq(model_map_file(NULL, path, &d, &size, err, sizeof err), 0, "%s", err);
    cr_assert_eq(size, n);
    cr_assert_eq(memcmp(d, src, n), 0);
    cr_assert_eq((uintptr_t)d % (2 * MIB), 0);
    model_unmap(d, size);
    cr_assert_eq(all_mapped(d, model_map_len(n)), 0);
    free(src);
    th_tmp_cleanup(&t);
}
