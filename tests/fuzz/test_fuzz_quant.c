/* test_fuzz_quant.c -- replay fuzz/fuzz_quant.c's committed inputs (see replay.h). */
#define LLVMFuzzerTestOneInput fuzz_one
#define LLVMFuzzerInitialize   fuzz_init
#include "fuzz/fuzz_quant.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#include "tests/fuzz/replay.h"

Test(fuzz_quant, replay)
{
    fuzz_one((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_quant", fuzz_one);
    cr_assert_geq(n, 10, "too few committed inputs for fuzz_quant (%d)", n);
}
