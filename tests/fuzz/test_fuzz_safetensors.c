/* test_fuzz_safetensors.c -- replay fuzz/fuzz_safetensors.c's committed inputs (see replay.h). */
#define LLVMFuzzerTestOneInput fuzz_one
#define LLVMFuzzerInitialize   fuzz_init
#include "fuzz/fuzz_safetensors.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#include "tests/fuzz/replay.h"

Test(fuzz_safetensors, replay)
{
    fuzz_one((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_safetensors", fuzz_one);
    cr_assert_geq(n, 1, "no committed inputs for fuzz_safetensors");
}
