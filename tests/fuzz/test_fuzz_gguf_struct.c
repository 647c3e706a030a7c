/* test_fuzz_gguf_struct.c -- replay fuzz/fuzz_gguf_struct.c's committed inputs (see replay.h). */
#define LLVMFuzzerTestOneInput fuzz_one
#define LLVMFuzzerInitialize   fuzz_init
#include "fuzz/fuzz_gguf_struct.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#include "tests/fuzz/replay.h"

Test(fuzz_gguf_struct, replay)
{
    int argc = 0;
    char **argv = NULL;
    cr_assert_eq(fuzz_init(&argc, &argv), 0);
    fuzz_one((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_gguf_struct", fuzz_one);
    cr_assert_geq(n, 1, "no committed inputs for fuzz_gguf_struct");
}
