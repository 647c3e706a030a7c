/* generate.c -- placeholder until the `generate` sub-command lands (see its issue). */
#include "cli/cli.h"

#include <stdio.h>

int cli_generate(int argc, char **argv)
{
    (void)argc; (void)argv;
    fprintf(stderr, "lmserve: 'generate' is not built yet\n");
    return 2;
}
