/* test_fuzz_schema.c -- replay fuzz/fuzz_schema.c's committed inputs (see replay.h). */
#define LLVMFuzzerTestOneInput fuzz_one
#include "fuzz/fuzz_schema.c"
#undef LLVMFuzzerTestOneInput

#include "tests/fuzz/replay.h"

Test(fuzz_schema, replay)
{
    fuzz_one((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_schema", fuzz_one);
    cr_assert_geq(n, 1, "no committed inputs for fuzz_schema");
}
