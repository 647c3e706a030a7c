/* fuzz_torchzip.c -- libFuzzer target: arbitrary bytes as a torch.save file.
 * Every input either parses into a value tree (then every tensor is read in full,
 * so the bounds the reader accepted are really exercised) or is rejected with a
 * message.  Seeds: tests/fuzz-seeds/fuzz_torchzip (files from write_course_pt.py). */
#include "model/formats/torchzip.h"

#include <stdint.h>
#include <stdlib.h>

static void walk(const tz_value *v, int depth)
{
    if (!v || depth > 64) return;
    if (v->kind == TZ_TENSOR && v->t.numel <= (1 << 20)) {
        double *d = malloc((size_t)(v->t.numel ? v->t.numel : 1) * sizeof *d);
        if (d) tz_tensor_to_f64(&v->t, d);
        free(d);
    }
    for (size_t i = 0; i < v->n; i++) walk(v->items[i], depth + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "";
    tz_file *f = NULL;
    if (tz_open_mem(&f, data, size, "fuzz", err, sizeof err) != 0) {
        if (f || !err[0]) abort();
        return 0;
    }
    walk(tz_root(f), 0);
    tz_close(f);
    return 0;
}
