/* test_fuzz_chat_template.c -- replay fuzz/fuzz_chat_template.c's committed inputs (see replay.h). */
#include "fuzz/fuzz_chat_template.c"

#include "tests/fuzz/replay.h"

Test(fuzz_chat_template, replay)
{
    LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
    int n = fuzz_replay_all("fuzz_chat_template", LLVMFuzzerTestOneInput);
    cr_assert_geq(n, 8, "too few committed inputs for fuzz_chat_template");
}
