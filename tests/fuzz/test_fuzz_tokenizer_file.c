/* test_fuzz_tokenizer_file.c -- replay fuzz/fuzz_tokenizer_file.c's committed inputs (see replay.h). */
#define LLVMFuzzerTestOneInput fuzz_one
#define LLVMFuzzerInitialize   fuzz_init
#include "fuzz/fuzz_tokenizer_file.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

#include "tests/fuzz/replay.h"

Test(fuzz_tokenizer_file, replay)
{
    int argc = 0;
    char **argv = NULL;
    cr_assert_eq(fuzz_init(&argc, &argv), 0);
    fuzz_one((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_tokenizer_file", fuzz_one);
    cr_assert_geq(n, 1, "no committed inputs for fuzz_tokenizer_file");
}
