/* serve.c -- placeholder until the `serve` sub-command lands (see its issue). */
#include "cli/cli.h"

#include <stdio.h>

int cli_serve(int argc, char **argv)
{
    (void)argc; (void)argv;
    fprintf(stderr, "lmserve: 'serve' is not built yet\n");
    return 2;
}
