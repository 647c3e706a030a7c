/* fuzz_safetensors.c -- libFuzzer target: arbitrary bytes as a safetensors file.
 * Accepted files have every tensor's bytes read (sums), so the validated ranges
 * are really inside the buffer. */
#include "model/formats/safetensors.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "";
    st_file *f = NULL;
    if (st_open_mem(&f, data, size, "fuzz", err, sizeof err) != 0) {
        if (f || !err[0]) abort();
        return 0;
    }
    volatile unsigned sum = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        for (size_t k = 0; k < t->nbytes; k++) sum += ((const unsigned char *)t->data)[k];
    }
    st_close(f);
    return 0;
}
