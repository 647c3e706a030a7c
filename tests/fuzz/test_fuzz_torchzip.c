/* test_fuzz_torchzip.c -- replay fuzz/fuzz_torchzip.c's committed inputs (see replay.h). */
#define LLVMFuzzerTestOneInput fuzz_one
#define LLVMFuzzerInitialize   fuzz_init
#include "fuzz/fuzz_torchzip.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#include "tests/fuzz/replay.h"

Test(fuzz_torchzip, replay)
{
    fuzz_one((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_torchzip", fuzz_one);
    cr_assert_geq(n, 1, "no committed inputs for fuzz_torchzip");
}
