/* test_fuzz_grammar.c -- replay fuzz/fuzz_grammar.c's committed inputs (see replay.h). */
#define LLVMFuzzerTestOneInput fuzz_one
#include "fuzz/fuzz_grammar.c"
#undef LLVMFuzzerTestOneInput

#include "tests/fuzz/replay.h"

Test(fuzz_grammar, replay)
{
    fuzz_one((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_grammar", fuzz_one);
    cr_assert_geq(n, 1, "no committed inputs for fuzz_grammar");
}
